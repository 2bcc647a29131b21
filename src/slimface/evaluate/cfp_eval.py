"""CFP-FP: how a frontalizer trained here does on real frontal-profile photos.

For every photo the FP split lists (and one frontal per identity for the gallery): landmarks from
CFP's fiducials when the copy has them (they bound the face; dlib's 68-point predictor places
the points), else the detector chain (dlib HOG, then dlib CNN); the photo is aligned to the
training crop at its yaw (:func:`slimface.deploy.frontalize.align_face`). A photo where both fail
is centre-cropped instead, so every pair is still scored, and counted as ``failed``.

Two conditions: **raw** (aligned frontal vs aligned profile) and **frontalized** (aligned frontal
vs the model's output for the profile). Each judge embeds the crops; a pair's score is the cosine
similarity. Verification over the 10 folds (:mod:`slimface.evaluate.verification`): accuracy with
the threshold chosen on the other 9, EER and AUC per fold, mean and sd; and rank-1 of every
profile against one frontal per identity. Results: ``cfp_fp.md`` + ``cfp_fp.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from slimface.data.cfp import CfpBenchmark, CfpPhoto
from slimface.data.face_detect import Detector
from slimface.data.pose import pose_template
from slimface.deploy.frontalize import align_face, find_landmarks, open_photo
from slimface.deploy.runtime import Frontalizer
from slimface.errors import ConfigError
from slimface.evaluate.context import RunContext
from slimface.evaluate.verification import rank1, summarize_folds, verify_folds
from slimface.fileio import atomic_write

__all__ = ["AlignedPhoto", "align_photo", "evaluate_cfp", "cfp_markdown", "write_cfp_results"]

CONDITIONS = ("raw", "frontalized")


@dataclass
class AlignedPhoto:
    """The model-ready crop of one photo: (C, R, R) float32 in [-1, 1], landmarks at R."""

    crop: np.ndarray
    landmarks: np.ndarray
    method: str  # "fiducials", "5pt", a detector name, or "failed"
    yaw: float


def _to_chw(img: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 127.5 - 1.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def align_photo(photo: CfpPhoto, resolution: int, channels: int, chain: Sequence[Detector] | None = None,
                use_fiducials: bool = True) -> AlignedPhoto:
    """Landmarks (fiducials first, then ``chain``) and the aligned crop; a centre crop when both fail."""
    img, _, _ = open_photo(photo.path)
    if img is None:
        blank = np.zeros((channels, resolution, resolution), dtype=np.float32)
        return AlignedPhoto(blank, pose_template(0.0, resolution), "failed", 0.0)
    fid: Path | None | bool = photo.fiducials if use_fiducials else False
    fit, _, _ = find_landmarks(photo.path, np.asarray(img), None, chain, fiducials=fid)
    if fit is None:
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        crop = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        return AlignedPhoto(_to_chw(crop, channels), pose_template(0.0, resolution), "failed", 0.0)
    crop, aligned = align_face(img, fit.landmarks, resolution, fit.yaw)
    return AlignedPhoto(_to_chw(crop, channels), aligned, fit.method, fit.yaw)


def _embed(judge: Any, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        e = judge.embed(torch.from_numpy(np.ascontiguousarray(batch)))
    return e.detach().float().cpu().numpy()


def evaluate_cfp(
    bench: CfpBenchmark,
    model: Frontalizer,
    judges: dict[str, Any],
    resolution: int | None = None,
    chain: Sequence[Detector] | None = None,
    batch_size: int = 32,
    use_fiducials: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol (see module doc); ``judges``: name -> object with ``embed``."""
    t0 = time.perf_counter()
    res = resolution or model.resolution or 128
    ch = model.channels or 3
    fp = bench.pairs("FP")
    gallery = bench.gallery()
    needed: dict[tuple[str, int], CfpPhoto] = {}
    for fold in fp:
        for a, b, _ in fold:
            needed[(a.kind, a.index)] = a
            needed[(b.kind, b.index)] = b
    for g in gallery:
        needed[(g.kind, g.index)] = g
    for p in bench.profile.values():  # every profile is a rank-1 probe
        needed[(p.kind, p.index)] = p
    keys = sorted(needed, key=lambda k: (k[0], k[1]))
    emb: dict[str, dict[str, dict[tuple[str, int], np.ndarray]]] = {j: {c: {} for c in CONDITIONS} for j in judges}
    methods: dict[str, Counter[str]] = {"frontal": Counter(), "profile": Counter()}
    yaws: dict[str, list[float]] = {"frontal": [], "profile": []}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        aligned = [align_photo(needed[k], res, ch, chain, use_fiducials) for k in chunk]
        for k, a in zip(chunk, aligned):
            methods[k[0]][a.method] += 1
            if a.method != "failed":
                yaws[k[0]].append(a.yaw)
        x = np.stack([a.crop for a in aligned]).astype(np.float32)
        prof = [i for i, k in enumerate(chunk) if k[0] == "profile"]
        y = None
        if prof:
            lms = np.stack([aligned[i].landmarks for i in prof]).astype(np.float32)
            y = np.clip(model(x[prof], lms), -1.0, 1.0).astype(np.float32)
        for name, judge in judges.items():
            e = _embed(judge, x)
            for k, v in zip(chunk, e):
                emb[name]["raw"][k] = v
            if y is not None:
                ey = _embed(judge, y)
                for i, v in zip(prof, ey):
                    emb[name]["frontalized"][chunk[i]] = v
        done = min(start + batch_size, len(keys))
        if report is not None and (done == len(keys) or (start // batch_size) % 10 == 9):
            report(f"cfp-fp: {done}/{len(keys)} photos aligned and embedded ({time.perf_counter() - t0:.0f} s)")

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-12))

    results: dict[str, Any] = {}
    for name in judges:
        results[name] = {}
        for cond in CONDITIONS:
            scores = [[cos(emb[name]["raw"][("frontal", a.index)],
                           emb[name][cond][("profile", b.index)]) for a, b, _ in fold] for fold in fp]
            labels = [[same for _, _, same in fold] for fold in fp]
            summary = summarize_folds(verify_folds(scores, labels))
            probes = sorted(bench.profile.values(), key=lambda p: p.index)
            summary["rank1"] = rank1(
                np.stack([emb[name][cond][("profile", p.index)] for p in probes]), [p.subject for p in probes],
                np.stack([emb[name]["raw"][("frontal", g.index)] for g in gallery]), [g.subject for g in gallery])
            results[name][cond] = summary
    n_pairs = sum(len(f) for f in fp)
    return {
        "benchmark": "cfp-fp",
        "root": str(bench.root),
        "model": str(getattr(model, "source", "") or ""),
        "resolution": res,
        "channels": ch,
        "folds": len(fp),
        "pairs": n_pairs,
        "identities": len(gallery),
        "gallery": "one frontal per identity (its lowest-numbered photo)",
        "probes": len(bench.profile),
        "alignment": {kind: dict(sorted(c.items())) for kind, c in methods.items()},
        "median_abs_yaw": {k: (float(np.median(np.abs(v))) if v else None) for k, v in yaws.items()},
        "detectors": [d.name for d in chain] if chain is not None else ["hog", "cnn"],
        "fiducials_used": use_fiducials,
        "judges": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def cfp_markdown(r: dict[str, Any], judge_notes: dict[str, str] | None = None) -> str:
    """The results as a Markdown section (tables: verification per judge x condition; alignment)."""
    lines = [
        "# CFP-FP",
        "",
        f"Data: `{r['root']}`; model: `{r['model']}` at {r['resolution']} px; {r['pairs']} frontal-profile "
        f"pairs in {r['folds']} folds; rank-1: {r['probes']} profiles against {r['identities']} frontals "
        "(one per identity).",
        "Accuracy: threshold chosen on the other folds; EER and AUC per fold; mean ± sd over folds (%).",
        "",
        "| judge | condition | accuracy | EER | AUC | rank-1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, conds in r["judges"].items():
        for cond, s in conds.items():
            lines.append(
                f"| {name} | {cond} | {_pct(s['accuracy']['mean'])} ± {_pct(s['accuracy']['sd'])} | "
                f"{_pct(s['eer']['mean'])} ± {_pct(s['eer']['sd'])} | {_pct(s['auc']['mean'])} ± "
                f"{_pct(s['auc']['sd'])} | {_pct(s['rank1'])} |")
    lines += ["", "Alignment (photos; `failed` = centre-cropped):", "", "| photos | " +
              " | ".join(sorted({m for c in r["alignment"].values() for m in c})) + " |"]
    methods = sorted({m for c in r["alignment"].values() for m in c})
    lines.append("|---|" + "---|" * len(methods))
    for kind, c in r["alignment"].items():
        lines.append(f"| {kind} | " + " | ".join(str(c.get(m, 0)) for m in methods) + " |")
    if judge_notes:
        lines += [""] + [f"- **{k}**: {v}" for k, v in judge_notes.items()]
    lines += ["", f"Detectors in fallback order: {', '.join(r['detectors'])}; fiducials used: "
              f"{'yes' if r['fiducials_used'] else 'no'}; {r['seconds']} s.", ""]
    return "\n".join(lines)


def write_cfp_results(r: dict[str, Any], out_dir: str | Path, judge_notes: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``cfp_fp.md`` and ``cfp_fp.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "cfp_fp.md", out / "cfp_fp.json"
    atomic_write(js, json.dumps({**r, "judge_notes": judge_notes or {}}, indent=2, default=float) + "\n")
    atomic_write(md, cfp_markdown(r, judge_notes))
    return md, js


def _judges(cfg: Any, names: Sequence[str] | None,
            run: Callable[[], RunContext] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Judges by name (``run``: the run's independent judge; ``loss``: its loss recognizer;
    ``dlib``: dlib's ResNet). By default ``run`` and ``dlib``; a default ``run`` without trained
    weights is left out with a note, an asked-for one is an error. ``run`` gives the run's context
    (``Pipeline(cfg).context()``), asked for only when its judge or recognizer is needed."""
    from slimface.errors import SlimfaceError
    from slimface.models.recognizer import build_recognizer

    asked = list(dict.fromkeys(names)) if names else None
    judges: dict[str, Any] = {}
    notes: dict[str, str] = {}
    ctx = None
    for name in asked or ["run", "dlib"]:
        if name == "dlib":
            judges["dlib"] = build_recognizer("dlib", detect=False)
            notes["dlib"] = "dlib ResNet descriptor (face_recognition_models), trained on real faces; crops as chips"
            continue
        weights = {"run": getattr(cfg.judge, "checkpoint", None) or Path(cfg.out_dir) / "judge" / "judge.safetensors",
                   "loss": getattr(cfg.recognizer, "checkpoint", None)
                   or Path(cfg.out_dir) / "recognizer" / "recognizer.safetensors"}[name]
        if not asked and not Path(weights).is_file():  # no finished run here: nothing to load (or render)
            notes[name] = f"left out: no trained weights at {weights} (pass the run's --config/--out)"
            continue
        if ctx is None:
            if run is None:
                raise ConfigError(f"judge {name!r} needs the run (its config and --out) to load it")
            ctx = run()
        try:
            if name == "run":
                judges["run"] = ctx.judges()["judge"]
                notes["run"] = f"the run's independent judge ({ctx.out / 'judge'}), trained on its synthetic identities"
            else:
                judges["loss"] = ctx.recognizer()
                notes["loss"] = f"the run's loss recognizer ({ctx.out / 'recognizer'}); it shaped the model's training"
        except SlimfaceError as exc:
            if asked:
                raise
            notes[name] = f"left out: {exc}"
    return judges, notes


def run_cfp_benchmark(
    cfg: Any,
    data: str | Path,
    model_path: str | Path,
    recognizers: Sequence[str] | None = None,
    detectors: Sequence[str] | None = None,
    use_fiducials: bool = True,
    results_dir: str | Path | None = None,
    report: Callable[[str], None] | None = print,
    run: Callable[[], RunContext] | None = None,
) -> tuple[Path, Path]:
    """CLI body of ``slimface evaluate --benchmark cfp-fp``: load, judge, write; (md, json) paths.
    ``run``: the run's context (for its judge and loss recognizer), see :func:`_judges`."""
    from slimface.data.cfp import load_cfp
    from slimface.data.face_detect import build_chain
    from slimface.deploy.runtime import load_frontalizer

    bench = load_cfp(data)
    model = load_frontalizer(model_path)
    judges, notes = _judges(cfg, recognizers, run)
    chain = build_chain(detectors) if detectors else build_chain()
    r = evaluate_cfp(bench, model, judges, chain=chain, use_fiducials=use_fiducials, report=report)
    out = Path(results_dir) if results_dir else Path(cfg.out_dir) / "evaluate" / "cfp-fp"
    return write_cfp_results(r, out, notes)
