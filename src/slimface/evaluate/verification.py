"""Face verification by folds (the CFP / LFW protocol), as pure functions of scores and labels.

A pair has a similarity ``score`` (higher = more alike) and a label (True = same identity).
Per fold k of K:

* **accuracy** -- the threshold is chosen on the other K-1 folds' pairs (the one that classifies
  most of them right; candidates are the midpoints between consecutive distinct scores plus one
  below all and one above all; ties go to the smallest threshold), then fold k's pairs are
  classified ``same`` when ``score >= threshold``;
* **EER** -- on fold k's own pairs: with FAR(t) = share of different-identity pairs with score >= t
  and FRR(t) = share of same-identity pairs with score < t, over t at every distinct score and
  above the highest, the t where |FAR - FRR| is smallest gives EER = (FAR + FRR) / 2;
* **AUC** -- on fold k's own pairs: the probability that a same pair outscores a different pair
  (ties count one half; the Mann-Whitney statistic).

Summaries are mean and standard deviation over folds (population sd, ``ddof=0``, as the usual
CFP/LFW evaluation scripts report it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "best_threshold",
    "accuracy_at",
    "eer",
    "auc",
    "FoldResult",
    "verify_folds",
    "summarize_folds",
    "rank1",
]


def _arrays(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def accuracy_at(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, threshold: float) -> float:
    """Share of pairs classified right with ``same = score >= threshold``."""
    s, y = _arrays(scores, labels)
    if s.size == 0:
        return float("nan")
    return float(((s >= threshold) == y).mean())


def best_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """The threshold with the highest accuracy on these pairs (see module doc for candidates/ties)."""
    s, y = _arrays(scores, labels)
    if s.size == 0:
        raise ValueError("no pairs to choose a threshold on")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    accs = np.array([((s >= t) == y).mean() for t in cands])
    return float(cands[int(np.argmax(accs))])


def eer(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Equal error rate (see module doc); NaN when one class is missing."""
    s, y = _arrays(scores, labels)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    u = np.unique(s)
    ts = np.concatenate([u, [u[-1] + 1.0]])
    far = np.array([(neg >= t).mean() for t in ts])
    frr = np.array([(pos < t).mean() for t in ts])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2.0)


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties 1/2); NaN when one class is missing."""
    s, y = _arrays(scores, labels)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


@dataclass
class FoldResult:
    """One fold: threshold chosen on the others, accuracy at it, EER and AUC on the fold itself."""

    fold: int
    threshold: float
    accuracy: float
    eer: float
    auc: float
    pairs: int


def verify_folds(
    fold_scores: Sequence[Sequence[float] | np.ndarray], fold_labels: Sequence[Sequence[bool] | np.ndarray]
) -> list[FoldResult]:
    """The protocol over K >= 2 folds (lists of per-fold scores and labels)."""
    if len(fold_scores) != len(fold_labels):
        raise ValueError("one label list per score list")
    if len(fold_scores) < 2:
        raise ValueError("need at least 2 folds (the threshold is chosen on the others)")
    folds = [_arrays(s, y) for s, y in zip(fold_scores, fold_labels)]
    out = []
    for k, (s, y) in enumerate(folds):
        rest_s = np.concatenate([f[0] for i, f in enumerate(folds) if i != k])
        rest_y = np.concatenate([f[1] for i, f in enumerate(folds) if i != k])
        t = best_threshold(rest_s, rest_y)
        out.append(FoldResult(k + 1, t, accuracy_at(s, y, t), eer(s, y), auc(s, y), int(s.size)))
    return out


def summarize_folds(results: Sequence[FoldResult]) -> dict[str, object]:
    """``{metric: {"mean", "sd"}}`` for accuracy, EER and AUC, plus the per-fold rows."""
    out: dict[str, object] = {}
    for key in ("accuracy", "eer", "auc"):
        v = np.array([getattr(r, key) for r in results], dtype=np.float64)
        out[key] = {"mean": float(np.nanmean(v)) if v.size else float("nan"),
                    "sd": float(np.nanstd(v)) if v.size else float("nan")}
    out["folds"] = [asdict(r) for r in results]
    return out


def rank1(
    probe_emb: np.ndarray, probe_ids: Sequence[Hashable], gallery_emb: np.ndarray, gallery_ids: Sequence[Hashable]
) -> float:
    """Share of probes whose most similar gallery entry (cosine; rows need not be unit length) has
    their identity."""
    p = np.asarray(probe_emb, dtype=np.float64)
    g = np.asarray(gallery_emb, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    best = np.argmax(p @ g.T, axis=1)
    return float(np.mean([gallery_ids[j] == pid for j, pid in zip(best, probe_ids)]))
