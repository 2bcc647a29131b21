"""Rank-1 identification: the paper's identity-preservation metric (reference.md §4).

Each synthesized frontal probe is matched to the gallery (one frontal, frontal-light image per test
subject) by the highest cosine similarity of recognizer embeddings; rank-1 is the percentage of probes
whose nearest gallery identity is their own, reported per yaw with ±angles pooled (Table 1) or per
pitch × yaw (Table 2, CAS-PEAL-R1).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slimface.errors import DataError

#: Table 1 columns (Multi-PIE, yaw in degrees, ± pooled).
TABLE1_YAWS: tuple[int, ...] = (90, 75, 60, 45, 30, 15)
#: Table 2 layout (CAS-PEAL-R1): pitch rows, yaw columns.
TABLE2_PITCHES: tuple[int, ...] = (-15, 0, 15)
TABLE2_YAWS: tuple[int, ...] = (0, 15, 30, 45)


def yaw_group(yaw: float) -> int:
    """The reporting group of a yaw: ±angles pool together (``-45 -> 45``), rounded to a degree."""
    return int(round(abs(float(yaw))))


def pose_group(pitch: float, yaw: float) -> tuple[int, int]:
    """The Table 2 group of a pose: ``(pitch rounded, |yaw| rounded)``."""
    return int(round(float(pitch))), yaw_group(yaw)


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def nearest_gallery(probe_emb: Tensor, gallery_emb: Tensor, gallery_subjects: Sequence[Hashable]) -> list[Hashable]:
    """Subject of the cosine-nearest gallery embedding for every probe (ties -> first gallery entry)."""
    if probe_emb.dim() != 2 or gallery_emb.dim() != 2 or probe_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"embeddings must be (N, D) and (M, D), got {tuple(probe_emb.shape)} and "
                         f"{tuple(gallery_emb.shape)}")
    gallery = _as_list(gallery_subjects)
    if len(gallery) != gallery_emb.shape[0]:
        raise ValueError(f"{gallery_emb.shape[0]} gallery embeddings but {len(gallery)} gallery subjects")
    sims = F.normalize(probe_emb.float(), dim=1) @ F.normalize(gallery_emb.float(), dim=1).T
    idx = sims.argmax(dim=1).tolist()
    return [gallery[i] for i in idx]


def rank1_hits(
    probe_emb: Tensor,
    probe_subjects: Sequence[Hashable],
    gallery_emb: Tensor,
    gallery_subjects: Sequence[Hashable],
) -> np.ndarray:
    """Per probe: 1 if its nearest gallery identity is its own, else 0 (int8 array).

    A probe whose subject has no gallery image is a protocol error (it could never be matched), so it
    raises :class:`DataError` instead of silently counting as a miss.
    """
    subjects = _as_list(probe_subjects)
    if len(subjects) != probe_emb.shape[0]:
        raise ValueError(f"{probe_emb.shape[0]} probe embeddings, {len(subjects)} subjects")
    if not subjects:
        raise DataError("rank-1 needs at least one probe; the probe set is empty")
    gallery = _as_list(gallery_subjects)
    known = set(gallery)
    missing = [s for s in subjects if s not in known]
    if missing:
        raise DataError(f"probe subject {missing[0]!r} has no gallery image; add its frontal image to the gallery")
    predicted = nearest_gallery(probe_emb, gallery_emb, gallery)
    return np.array([int(p == s) for s, p in zip(subjects, predicted)], dtype=np.int8)


def group_rates(hits: np.ndarray, probe_groups: Sequence[Hashable]) -> dict[Any, float]:
    """Rank-1 (%) per group, sorted, plus ``"avg"``: the unweighted mean over the groups."""
    groups = _as_list(probe_groups)
    if len(groups) != len(hits):
        raise ValueError(f"{len(hits)} hits but {len(groups)} groups")
    tally: dict[Any, list[int]] = {}
    for hit, group in zip(hits.tolist(), groups):
        t = tally.setdefault(group, [0, 0])
        t[0] += hit
        t[1] += 1
    out: dict[Any, float] = {g: 100.0 * h / n for g, (h, n) in sorted(tally.items(), key=lambda kv: _sort_key(kv[0]))}
    out["avg"] = float(np.mean(list(out.values())))
    return out


def rank1_per_group(
    probe_emb: Tensor,
    probe_subjects: Sequence[Hashable],
    probe_groups: Sequence[Hashable],
    gallery_emb: Tensor,
    gallery_subjects: Sequence[Hashable],
) -> dict[Any, float]:
    """Rank-1 (%) per probe group plus ``"avg"``, the unweighted mean over the groups.

    Groups are whatever the caller passes (e.g. ``yaw_group(yaw)``); they come back sorted. Probes
    without a gallery identity raise :class:`DataError` (see :func:`rank1_hits`).
    """
    if len(_as_list(probe_groups)) != probe_emb.shape[0]:
        raise ValueError(f"{probe_emb.shape[0]} probe embeddings, {len(_as_list(probe_groups))} groups")
    return group_rates(rank1_hits(probe_emb, probe_subjects, gallery_emb, gallery_subjects), probe_groups)


def bootstrap_rank1(
    hits: np.ndarray,
    probe_groups: Sequence[Hashable],
    baseline: np.ndarray | None = None,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[Any, tuple[float, float]]:
    """Percentile bootstrap interval of rank-1 (%) per group and of ``"avg"``, resampling probes
    within each group. With ``baseline`` (hits of another model on the *same* probes) the interval is
    of the paired difference ``rate(hits) - rate(baseline)``: both resampled with the same indices."""
    groups = _as_list(probe_groups)
    if len(groups) != len(hits) or (baseline is not None and len(baseline) != len(hits)):
        raise ValueError("hits, baseline and groups must have one entry per probe")
    rng = np.random.default_rng(seed)
    values = hits.astype(np.float64) - (0 if baseline is None else baseline.astype(np.float64))
    by_group: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    draws: dict[Any, np.ndarray] = {}
    for g, idx in sorted(by_group.items(), key=lambda kv: _sort_key(kv[0])):
        v = values[np.asarray(idx)]
        draws[g] = 100.0 * v[rng.integers(0, len(v), size=(reps, len(v)))].mean(axis=1)
    draws["avg"] = np.mean(np.stack(list(draws.values())), axis=0)
    tail = 100.0 * (1 - level) / 2
    return {g: (float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))) for g, d in draws.items()}


def _sort_key(group: Any) -> tuple[int, Any]:
    # Numbers and tuples sort naturally; anything else after them, by its text.
    if isinstance(group, (int, float)):
        return (0, group)
    if isinstance(group, tuple):
        return (1, group)
    return (2, str(group))


@torch.no_grad()
def embed_all(recognizer: Any, images_iter: Iterable[Tensor], batch_size: int = 64) -> Tensor:
    """Embed a stream of images (single ``(C, H, W)`` tensors or ``(B, C, H, W)`` batches) in
    batches of ``batch_size`` under ``no_grad`` and eval mode; returns ``(N, D)`` on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = bool(getattr(recognizer, "training", False))
    if hasattr(recognizer, "eval"):
        recognizer.eval()
    device = _device_of(recognizer)
    outs: list[Tensor] = []
    pending: list[Tensor] = []
    count = 0

    def flush() -> None:
        nonlocal pending, count
        if pending:
            batch = torch.cat(pending)
            outs.append(recognizer.embed(batch.to(device)).float().cpu())
            pending, count = [], 0

    try:
        for item in images_iter:
            item = item.unsqueeze(0) if item.dim() == 3 else item
            while item.shape[0]:
                take = batch_size - count
                pending.append(item[:take])
                count += min(take, item.shape[0])
                item = item[take:]
                if count >= batch_size:
                    flush()
        flush()
    finally:
        if was_training and hasattr(recognizer, "train"):
            recognizer.train()
    if not outs:
        return torch.zeros(0, int(getattr(recognizer, "embedding_dim", 0)))
    return torch.cat(outs)


def _device_of(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Markdown tables in the paper's layouts


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_of(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def table1_markdown(
    results: Mapping[str, Mapping[Any, float]], yaws: Sequence[int] = TABLE1_YAWS, digits: int = 2
) -> str:
    """Table 1 layout: one row per model, columns ``90° … 15°`` and ``avg``.

    ``avg`` is recomputed as the mean over the table's columns (as in the paper), not taken from the
    input, so a frontal group in the results does not leak into it; a missing value prints as ``–``.
    """
    header = "| model | " + " | ".join(f"{y}°" for y in yaws) + " | avg |"
    rule = "|---|" + "---|" * (len(yaws) + 1)
    lines = [header, rule]
    for model, per_group in results.items():
        vals = [per_group.get(y) for y in yaws]
        cells = [_fmt(v, digits) for v in vals] + [_fmt(_mean_of(vals), digits)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table2_markdown(
    results: Mapping[str, Mapping[Any, float]],
    pitches: Sequence[int] = TABLE2_PITCHES,
    yaws: Sequence[int] = TABLE2_YAWS,
    digits: int = 2,
) -> str:
    """Table 2 layout: one row per (model, pitch), columns yaw ``0° … 45°`` and ``avg``.

    ``results[model]`` maps ``(pitch, yaw)`` groups (see :func:`pose_group`) to rank-1 values.
    """
    header = "| model | pitch | " + " | ".join(f"{y}°" for y in yaws) + " | avg |"
    rule = "|---|---|" + "---|" * (len(yaws) + 1)
    lines = [header, rule]
    for model, per_group in results.items():
        for pitch in pitches:
            vals = [per_group.get((pitch, y)) for y in yaws]
            cells = [_fmt(v, digits) for v in vals] + [_fmt(_mean_of(vals), digits)]
            label = f"{pitch:+d}°" if pitch else "0°"
            lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
