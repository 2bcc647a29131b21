"""The evaluate and bench stages of a run: every model judged on the same probes, timed fairly.

Models compared: the raw profiles (no frontalization baseline), each teacher, each compressed
student (PyTorch fp32), and its ONNX Runtime fp32 / int8 exports when they exist.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from slimface.evaluate.quality import image_quality
from slimface.evaluate.rank1 import embed_all, pose_group, rank1_per_group, yaw_group

if TYPE_CHECKING:
    from slimface.pipeline import Pipeline

Frontalize = Callable[[Tensor, Tensor], Tensor]


def _subsample(pairs: list, per_group: int, has_pitch: bool) -> list:
    """At most ``per_group`` probes per pose group, spread over subjects (0 keeps all)."""
    if per_group <= 0:
        return pairs
    groups: dict[Any, list] = {}
    for p in pairs:
        key = pose_group(p[0].pitch, p[0].yaw) if has_pitch else yaw_group(p[0].yaw)
        groups.setdefault(key, []).append(p)
    out = []
    for key in sorted(groups, key=str):
        items = groups[key]
        step = max(1, len(items) // per_group)
        out.extend(items[::step][:per_group])
    return out


def _frontalizers(pipe: "Pipeline") -> dict[str, Frontalize]:
    from slimface.compress.export import load_export

    models: dict[str, Frontalize] = {"no frontalization": lambda x, lm: x}
    for fam in pipe.cfg.families:
        teacher = pipe.teacher_generator(fam)
        models[f"{fam} teacher"] = lambda x, lm, g=teacher: g(x, lm)
        export_dir = pipe.family_dir(fam) / "export"
        if not export_dir.exists():  # a teacher-only run: `slimface evaluate` right after training it
            print(f"  {fam}: no exported student in {export_dir}; evaluating the teacher only", flush=True)
            continue
        student = load_export(export_dir).eval().to(pipe.device)
        models[f"{fam} compressed"] = lambda x, lm, g=student: g(x, lm)
        for suffix, label in (("model.onnx", "ONNX fp32"), ("model.int8.onnx", "ONNX int8")):
            path = export_dir / suffix
            if path.is_file():
                from slimface.deploy.runtime import load_frontalizer

                rt = load_frontalizer(path)
                models[f"{fam} compressed ({label})"] = (
                    lambda x, lm, r=rt: torch.as_tensor(
                        np.asarray(r(x.cpu().numpy(), lm.cpu().numpy())), dtype=torch.float32, device=x.device)
                )
    return models


def evaluate_run(pipe: "Pipeline") -> dict[str, Any]:
    """Rank-1 per yaw (and pitch x yaw), image quality, and figures for every model of the run."""
    from slimface.evaluate.figures import image_grid, plot_rank1_vs_yaw

    data = pipe.data
    out = pipe.out / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    probes = _subsample(data.test_pairs, pipe.cfg.eval_probes_per_group, data.has_pitch)
    bs = pipe.cfg.eval_batch_size
    batches = pipe.batches(probes, bs)
    recognizer = pipe.recognizer
    gallery_ds = pipe.pair_dataset([(g, g) for g in data.gallery])
    gallery_emb = embed_all(recognizer, (gallery_ds[i]["frontal"] for i in range(len(gallery_ds))), bs)
    gallery_subjects = [g.subject for g in data.gallery]
    subjects = [p[0].subject for p in probes]
    yaw_groups = [yaw_group(p[0].yaw) for p in probes]
    pose_groups = [pose_group(p[0].pitch, p[0].yaw) for p in probes]

    grid_ids = _grid_probe_ids(probes)
    results: dict[str, Any] = {"probes": len(probes), "gallery": len(gallery_subjects), "models": {}}
    grid_images: dict[str, dict[int, Tensor]] = {}
    for name, fn in _frontalizers(pipe).items():
        embs, quality, kept = [], [], {}
        offset = 0
        with torch.no_grad():
            for batch in batches:
                x, lm = batch["profile"].to(pipe.device), batch["landmarks"].to(pipe.device)
                y = fn(x, lm).clamp(-1, 1)
                embs.append(recognizer.embed(y).cpu())
                quality.append(image_quality(y, batch["frontal"].to(pipe.device)))
                for j in range(y.shape[0]):
                    if offset + j in grid_ids:
                        kept[offset + j] = y[j].cpu()
                offset += y.shape[0]
        emb = torch.cat(embs)
        entry = {
            "rank1": _str_keys(rank1_per_group(emb, subjects, yaw_groups, gallery_emb, gallery_subjects)),
            "quality": {k: float(np.mean([q[k] for q in quality])) for k in quality[0]},
        }
        if data.has_pitch:
            entry["rank1_pitch_yaw"] = _str_keys(rank1_per_group(emb, subjects, pose_groups, gallery_emb,
                                                                 gallery_subjects))
        results["models"][name] = entry
        grid_images[name] = kept
        r = entry["rank1"]
        print(f"  {name:34s} rank-1 avg {_avg6(r):6.2f}  " + "  ".join(
            f"{k}°:{v:5.1f}" for k, v in r.items() if k not in ("avg", "0")), flush=True)

    # Figures 3-4: per probe row -> input, ground truth, each model's output
    rows, labels = [], []
    ds = pipe.pair_dataset([probes[i] for i in sorted(grid_ids)])
    model_names = [n for n in grid_images if n != "no frontalization" and "ONNX" not in n]
    for k, i in enumerate(sorted(grid_ids)):
        item = ds[k]
        rows.append([item["profile"], item["frontal"]] + [grid_images[n][i] for n in model_names])
        labels.append(f"{probes[i][0].subject} yaw {probes[i][0].yaw:+d}")
    image_grid(rows, labels, ["input", "ground truth"] + model_names, out / "frontalization_grid.png")
    per_yaw = {n: {int(k): v for k, v in e["rank1"].items() if k != "avg"} for n, e in results["models"].items()
               if "ONNX" not in n}
    plot_rank1_vs_yaw(per_yaw, out / "rank1_vs_yaw.png")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return {"results": str(out / "results.json"), "probes": len(probes)}


def _avg6(r: dict[str, float]) -> float:
    vals = [r[str(y)] for y in (15, 30, 45, 60, 75, 90) if str(y) in r]
    return float(np.mean(vals)) if vals else float("nan")


def _str_keys(d: dict[Any, float]) -> dict[str, float]:
    def key(k: Any) -> str:
        return f"{k[0]}/{k[1]}" if isinstance(k, tuple) else str(k)

    return {key(k): float(v) for k, v in d.items()}


def _grid_probe_ids(probes: list, subjects: int = 2) -> set[int]:
    """One probe per yaw (frontal-light, pitch 0 preferred) for the first few test subjects."""
    chosen: dict[tuple[str, int], int] = {}
    subs = sorted({p[0].subject for p in probes})[:subjects]
    for i, (prof, _) in enumerate(probes):
        if prof.subject in subs and prof.pitch == 0 and prof.yaw > 0:
            key = (prof.subject, prof.yaw)
            if key not in chosen or prof.illumination == 7:
                chosen[key] = i
    return set(chosen.values())


def bench_run(pipe: "Pipeline") -> dict[str, Any]:
    """Table 4: teacher vs compressed student latency and memory, at the run's size and full size."""
    from slimface.compress.export import load_export
    from slimface.compress.profile_cli import bench_report, scale_config_to_full
    from slimface.evaluate.bench import RUNTIME_LABELS, benchmark_runtimes, benchmark_teacher_student
    from slimface.nn.profile import count_macs, count_params

    b = pipe.cfg.bench
    out = pipe.out / "bench"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for fam in pipe.cfg.families:
        teacher = pipe.teacher_generator(fam).eval()
        export_dir = pipe.family_dir(fam) / "export"
        student = load_export(export_dir).eval()
        inputs = teacher.example_inputs()
        r = benchmark_teacher_student(teacher, student, inputs, warmup=b.warmup, runs=b.runs, threads=b.threads)
        for key, net in (("teacher", teacher), ("student", student)):
            r[key]["params"] = count_params(net)
            r[key]["macs"] = count_macs(net, inputs)
        entry: dict[str, Any] = {"run_size": r}
        from slimface.deploy.runtime import load_frontalizer

        onnx = {label: load_frontalizer(export_dir / name, threads=b.threads)
                for name, label in (("model.onnx", RUNTIME_LABELS[1]), ("model.int8.onnx", RUNTIME_LABELS[2]))
                if (export_dir / name).is_file()}
        entry["runtimes"] = benchmark_runtimes(student, inputs, onnx, warmup=b.warmup, runs=b.runs,
                                               threads=b.threads)
        if b.full_size:
            code = json.loads((pipe.family_dir(fam) / "search" / "result.json").read_text())["config"]
            full_cfg = scale_config_to_full(fam, code, pipe.cfg.data.resolution, pipe.cfg.data.channels,
                                            pipe.cfg.teacher(fam).width_mult)
            # ... plus the deployment runtimes of that full-size student (PyTorch fp32 / ORT fp32 /
            # ORT int8, random weights, calibrated on random inputs): under entry["full_size"]["runtimes"]
            full = bench_report(fam, 128, 1.0, student=full_cfg, warmup=b.full_size_warmup,
                                runs=b.full_size_runs, threads=b.threads, runtimes=True)
            entry["full_size"] = full
        results[fam] = entry
        rs = entry["run_size"]
        print(f"  {fam}: run size speedup {rs['speedup']:.2f}x, memory {rs.get('memory_reduction', float('nan')):.2f}x"
              + (f"; full size speedup {entry['full_size']['speedup']:.2f}x, memory "
                 f"{entry['full_size'].get('memory_reduction', float('nan')):.2f}x" if "full_size" in entry else "")
              + (f"; full size int8 vs ORT fp32 {entry['full_size']['runtimes']['int8_vs_ort_fp32']:.2f}x"
                 if "runtimes" in entry.get("full_size", {}) else ""),
              flush=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=float))
    return {"bench": str(out / "bench.json")}


__all__ = ["evaluate_run", "bench_run"]
