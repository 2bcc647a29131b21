"""The evaluate and bench stages of a run: every model judged on the same probes, timed fairly.

Models compared: the raw profiles (no frontalization baseline), each teacher, each compressed
student (PyTorch fp32), and its ONNX Runtime fp32 / int8 exports when they exist.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from slimface.evaluate.context import RunContext
from slimface.evaluate.quality import image_quality
from slimface.evaluate.rank1 import bootstrap_rank1, embed_all, group_rates, pose_group, rank1_hits, yaw_group
from slimface.fileio import atomic_write

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


def _frontalizers(ctx: RunContext, refused: dict[str, str] | None = None) -> dict[str, Frontalize]:
    """Every model to judge; ``refused`` collects family -> why its int8 model was refused on this CPU."""
    from slimface.export_format import load_export

    models: dict[str, Frontalize] = {"no frontalization": lambda x, lm: x}
    for fam in ctx.families:
        teacher = ctx.teacher(fam)
        models[f"{fam} teacher"] = lambda x, lm, g=teacher: g(x, lm)
        mobile = ctx.mobile_teacher(fam)
        if mobile is not None:
            models[f"{fam} mobile teacher"] = lambda x, lm, g=mobile: g(x, lm)
        export_dir = ctx.family_dir(fam) / "export"
        if not export_dir.exists():  # a teacher-only run: `slimface evaluate` right after training it
            print(f"  {fam}: no exported student in {export_dir}; evaluating the teacher only", flush=True)
            continue
        student = load_export(export_dir).eval().to(ctx.device)
        models[f"{fam} compressed"] = lambda x, lm, g=student: g(x, lm)
        for suffix, label in (("model.onnx", "ONNX fp32"), ("model.int8.onnx", "ONNX int8")):
            path = export_dir / suffix
            from slimface.deploy.runtime import load_or_refusal

            rt, why = load_or_refusal(path)
            if why is not None and refused is not None:  # reported instead of a collapsed rank-1
                refused[fam] = why
                print(f"  {fam}: {why}", flush=True)
            if rt is not None:
                models[f"{fam} compressed ({label})"] = (
                    lambda x, lm, r=rt: torch.as_tensor(
                        np.asarray(r(x.cpu().numpy(), lm.cpu().numpy())), dtype=torch.float32, device=x.device)
                )
    return models


#: the loss recognizer's name in results: its rank-1 is reported, marked as seen in training
LOSS_RECOGNIZER = "loss recognizer"


def _scorers(ctx: RunContext) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Who scores rank-1, in report order: the independent judges (primary first), then the loss
    recognizer. Values: (an object with ``embed``, what the report says about it)."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, judge in ctx.judges().items():
        out[name] = (judge, {**asdict(judge.info)})
    out[LOSS_RECOGNIZER] = (ctx.recognizer(), {"name": LOSS_RECOGNIZER, **ctx.recognizer_info,
                                               "seen_in_training": True})
    return out


def _scored_subset(n_probes: int, groups: list[int], per_group: int) -> list[int]:
    """Probe indices a slow judge (dlib) scores: at most ``per_group`` per group, spread evenly."""
    if per_group <= 0:
        return list(range(n_probes))
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    keep: list[int] = []
    for idx in by_group.values():
        step = max(1, len(idx) // per_group)
        keep.extend(idx[::step][:per_group])
    return sorted(keep)


def _ceiling(scorer: Any, frontals: list[Tensor], subjects: list[str], gallery_emb: Tensor,
             gallery_subjects: list[str], bs: int) -> float:
    """Rank-1 (%) of ground-truth frontal images (not the gallery's own) against the gallery."""
    if not frontals:
        return float("nan")
    emb = embed_all(scorer, frontals, bs)
    return float(100.0 * rank1_hits(emb, subjects, gallery_emb, gallery_subjects).mean())


def evaluate_run(ctx: RunContext) -> dict[str, Any]:
    """Rank-1 per yaw (and pitch x yaw) by every judge and by the loss recognizer, bootstrap
    intervals, image quality (with the high-frequency artefact ratio), and figures for every model."""
    from slimface.evaluate.figures import image_grid, plot_rank1_vs_yaw

    data = ctx.data()
    out = ctx.out / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    probes = _subsample(data.test_pairs, ctx.eval_probes_per_group, data.has_pitch)
    bs = ctx.eval_batch_size
    batches = ctx.batches(probes, bs)
    gallery_ds = ctx.pair_dataset([(g, g) for g in data.gallery])
    gallery_images = [gallery_ds[i]["frontal"] for i in range(len(gallery_ds))]
    gallery_subjects = [g.subject for g in data.gallery]
    subjects = [p[0].subject for p in probes]
    yaw_groups = [yaw_group(p[0].yaw) for p in probes]
    pose_groups = [pose_group(p[0].pitch, p[0].yaw) for p in probes]
    scorers = _scorers(ctx)
    # a slow judge (dlib) scores a subset of the probes; the others score every probe
    subsets = {name: (_scored_subset(len(probes), yaw_groups, ctx.dlib_probes_per_group)
                      if name == "dlib" else list(range(len(probes)))) for name in scorers}
    subset_sets = {name: set(idx) for name, idx in subsets.items()}
    gallery_emb = {name: embed_all(sc, gallery_images, bs) for name, (sc, _) in scorers.items()}
    # each judge's ceiling: ground-truth frontals (other illuminations than the gallery's) of its probes
    gallery_paths = {str(g.path) for g in data.gallery}
    judges_info: dict[str, Any] = {}
    for name, (sc, info) in scorers.items():
        seen: dict[str, Any] = {}
        for i in subsets[name]:
            f = probes[i][1]
            if str(f.path) not in gallery_paths:
                seen.setdefault(str(f.path), f)
        front_ds = ctx.pair_dataset([(f, f) for f in seen.values()])
        ceiling = _ceiling(sc, [front_ds[k]["frontal"] for k in range(len(front_ds))],
                           [f.subject for f in seen.values()], gallery_emb[name], gallery_subjects, bs)
        judges_info[name] = {**info, "probes": len(subsets[name]), "ceiling_rank1": ceiling,
                             "ceiling_images": len(seen)}
        print(f"  scorer {name:16s} ({info['kind']}; {'SEEN in training' if info['seen_in_training'] else 'independent'})"
              f": ceiling {ceiling:5.1f} on {len(seen)} ground-truth frontals", flush=True)

    grid_ids = _grid_probe_ids(probes)
    results: dict[str, Any] = {"probes": len(probes), "gallery": len(gallery_subjects), "models": {},
                               "primary_judge": next(iter(scorers)), "scorers": judges_info}
    hits: dict[str, dict[str, np.ndarray]] = {}
    grid_images: dict[str, dict[int, Tensor]] = {}
    results["int8_refused"] = refused = {}
    for name, fn in _frontalizers(ctx, refused).items():
        # the ONNX copies of a student are judged by the fast scorers only (dlib adds nothing there)
        active = {k: v for k, v in scorers.items() if not ("ONNX" in name and k == "dlib")}
        embs: dict[str, list[Tensor]] = {k: [] for k in active}
        quality, kept = [], {}
        offset = 0
        with torch.no_grad():
            for batch in batches:
                x, lm = batch["profile"].to(ctx.device), batch["landmarks"].to(ctx.device)
                y = fn(x, lm).clamp(-1, 1)
                for k, (sc, _) in active.items():
                    rows = [j for j in range(y.shape[0]) if offset + j in subset_sets[k]]
                    if rows:
                        embs[k].append(embed_all(sc, [y[rows]], bs))
                quality.append(image_quality(y, batch["frontal"].to(ctx.device)))
                for j in range(y.shape[0]):
                    if offset + j in grid_ids:
                        kept[offset + j] = y[j].cpu()
                offset += y.shape[0]
        entry: dict[str, Any] = {"rank1_by": {}, "rank1_ci_by": {},
                                 "quality": {k: float(np.mean([q[k] for q in quality])) for k in quality[0]}}
        hits[name] = {}
        for k in active:
            idx = subsets[k]
            h = rank1_hits(torch.cat(embs[k]), [subjects[i] for i in idx], gallery_emb[k], gallery_subjects)
            hits[name][k] = h
            groups_k = [yaw_groups[i] for i in idx]
            entry["rank1_by"][k] = _str_keys(group_rates(h, groups_k))
            entry["rank1_ci_by"][k] = {str(g): list(ci) for g, ci in
                                       bootstrap_rank1(h, groups_k, seed=ctx.seed).items()}
            if data.has_pitch and k == results["primary_judge"]:
                entry["rank1_pitch_yaw"] = _str_keys(group_rates(h, [pose_groups[i] for i in idx]))
        primary = results["primary_judge"]
        entry["rank1"] = entry["rank1_by"][primary]
        results["models"][name] = entry
        grid_images[name] = kept
        r = entry["rank1"]
        others = "  ".join(f"{k} {_avg6(v):5.2f}" for k, v in entry["rank1_by"].items() if k != primary)
        print(f"  {name:34s} {primary} avg {_avg6(r):6.2f}  " + "  ".join(
            f"{k}°:{v:5.1f}" for k, v in r.items() if k not in ("avg", "0"))
            + f"  | {others}  SSIM {entry['quality']['ssim']:.3f}  HF {entry['quality']['hf_ratio']:.2f}", flush=True)

    # every student (and mobile teacher) against its own teacher, on the same probes: the paired
    # difference and its interval; a student also against its mobile teacher (the pruning loss)
    def paired(name: str, base: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, h in hits[name].items():
            groups_k = [yaw_groups[i] for i in subsets[k]]
            rates = group_rates(h, groups_k)
            ref = group_rates(hits[base][k], groups_k)
            ci = bootstrap_rank1(h, groups_k, baseline=hits[base][k], seed=ctx.seed)
            out[k] = {str(g): {"diff": rates[g] - ref[g], "ci": list(ci[g])} for g in rates}
        return out

    for name, entry in results["models"].items():
        fam, _, rest = name.partition(" ")
        teacher, mobile = f"{fam} teacher", f"{fam} mobile teacher"
        if (rest.startswith("compressed") or name == mobile) and teacher in hits:
            entry["vs_teacher"] = paired(name, teacher)
        if rest.startswith("compressed") and mobile in hits:
            entry["vs_mobile"] = paired(name, mobile)

    # Figures 3-4: per probe row -> input, ground truth, each model's output
    rows, labels = [], []
    ds = ctx.pair_dataset([probes[i] for i in sorted(grid_ids)])
    model_names = [n for n in grid_images if n != "no frontalization" and "ONNX" not in n]
    for k, i in enumerate(sorted(grid_ids)):
        item = ds[k]
        rows.append([item["profile"], item["frontal"]] + [grid_images[n][i] for n in model_names])
        labels.append(f"{probes[i][0].subject} yaw {probes[i][0].yaw:+d}")
    image_grid(rows, labels, ["input", "ground truth"] + model_names, out / "frontalization_grid.png")
    per_yaw = {n: {int(k): v for k, v in e["rank1"].items() if k != "avg"} for n, e in results["models"].items()
               if "ONNX" not in n}
    plot_rank1_vs_yaw(per_yaw, out / "rank1_vs_yaw.png")
    atomic_write(out / "results.json", json.dumps(results, indent=2))
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


def bench_run(ctx: RunContext) -> dict[str, Any]:
    """Table 4: teacher vs compressed student latency and memory, at the run's size and full size."""
    from slimface.compress.extract import scale_config_to_full
    from slimface.evaluate.arch_bench import bench_report
    from slimface.export_format import load_export
    from slimface.evaluate.bench import RUNTIME_LABELS, benchmark_runtimes, benchmark_teacher_student
    from slimface.nn.profile import count_macs, count_params

    b = ctx.bench
    out = ctx.out / "bench"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for fam in ctx.families:
        teacher = ctx.teacher(fam).eval()
        export_dir = ctx.family_dir(fam) / "export"
        student = load_export(export_dir).eval()
        inputs = teacher.example_inputs()
        r = benchmark_teacher_student(teacher, student, inputs, warmup=b.warmup, runs=b.runs, threads=b.threads)
        for key, net in (("teacher", teacher), ("student", student)):
            r[key]["params"] = count_params(net)
            r[key]["macs"] = count_macs(net, inputs)
        entry: dict[str, Any] = {"run_size": r}
        from slimface.deploy.runtime import load_or_refusal

        loaded = {label: load_or_refusal(export_dir / name, threads=b.threads)
                  for name, label in (("model.onnx", RUNTIME_LABELS[1]), ("model.int8.onnx", RUNTIME_LABELS[2]))}
        onnx = {label: rt for label, (rt, _) in loaded.items() if rt is not None}
        entry["int8_refused"] = loaded[RUNTIME_LABELS[2]][1]  # int8 refused on this CPU: not timed
        entry["runtimes"] = benchmark_runtimes(student, inputs, onnx, warmup=b.warmup, runs=b.runs,
                                               threads=b.threads)
        if b.full_size:
            found = json.loads((ctx.family_dir(fam) / "search" / "result.json").read_text())
            full_cfg = scale_config_to_full(fam, found["config"], ctx.resolution, ctx.channels, ctx.teacher_widths[fam],
                                            channel_multiple=found.get("channel_multiple"))
            # ... plus the deployment runtimes of that full-size student (PyTorch fp32 / ORT fp32 /
            # ORT int8, random weights, calibrated on random inputs): under entry["full_size"]["runtimes"]
            full = bench_report(fam, 128, 1.0, student=full_cfg, warmup=b.full_size_warmup,
                                runs=b.full_size_runs, threads=b.threads, runtimes=True,
                                separable=getattr(student, "separable", True),  # the run's design
                                max_kernel=getattr(student, "max_kernel", None),
                                int8_fp32_modules=ctx.int8_fp32_modules(fam))  # as the export chose them
            entry["full_size"] = full
        results[fam] = entry
        rs = entry["run_size"]
        print(f"  {fam}: run size speedup {rs['speedup']:.2f}x, memory {rs.get('memory_reduction', float('nan')):.2f}x"
              + (f"; full size speedup {entry['full_size']['speedup']:.2f}x, memory "
                 f"{entry['full_size'].get('memory_reduction', float('nan')):.2f}x" if "full_size" in entry else "")
              + (f"; full size int8 vs ORT fp32 {entry['full_size']['runtimes']['int8_vs_ort_fp32']:.2f}x"
                 if "int8_vs_ort_fp32" in entry.get("full_size", {}).get("runtimes", {}) else ""),
              flush=True)
    atomic_write(out / "bench.json", json.dumps(results, indent=2, default=float))
    return {"bench": str(out / "bench.json")}


__all__ = ["evaluate_run", "bench_run"]
