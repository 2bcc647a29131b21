"""Landmark files that datasets ship beside their photos, and finding them for a photo.

* Multi-PIE-style ``.5pt``: 5 lines ``x y`` (spaces, tabs or a comma), our order (DESIGN.md:
  left eye = the subject's right eye, right eye, nose tip, mouth left, mouth right), pixels of the
  photo beside it (``photo.png`` -> ``photo.5pt`` or ``photo.png.5pt``).
* CFP fiducials: ``ROOT/Data/Fiducials/<id>/<frontal|profile>/NN.txt`` for
  ``ROOT/Data/Images/<id>/<kind>/NN.jpg`` (an optional ``train/`` or ``test/`` level under
  ``Images/`` is mirrored under ``Fiducials/``), 30 lines ``x,y``. CFP documents no meaning per
  index (profiles are annotated on the visible half only), so slimface does not guess one: the
  points bound the face (:func:`fiducial_box`) and the 68-point predictor places the landmarks in
  that box; a photo aligned this way needs no detector. Hence landmarks "from fiducials".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from slimface.errors import DataError

__all__ = ["read_5pt", "read_fiducials", "fiducial_box", "sidecar_5pt", "cfp_fiducials_for"]

_SPLIT = re.compile(r"[,\s]+")


def _read_points(path: Path, n: int | None, what: str) -> np.ndarray:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text {what} file") from None
    pts = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        parts = [p for p in _SPLIT.split(s) if p]
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected 'x y' (two numbers), got {s[:40]!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DataError(f"{path}:{lineno}: coordinates must be finite numbers")
        pts.append((x, y))
    if n is not None and len(pts) != n:
        raise DataError(f"{path}: {len(pts)} points, a {what} file has {n} (one 'x y' a line)")
    if not pts:
        raise DataError(f"{path}: no points")
    return np.array(pts, dtype=np.float64)


def read_5pt(path: str | Path) -> np.ndarray:
    """(5, 2) landmarks from a ``.5pt`` file (DataError naming file and line when malformed)."""
    return _read_points(Path(path), 5, ".5pt")


def read_fiducials(path: str | Path) -> np.ndarray:
    """(N, 2) points of a CFP fiducial file (30 lines ``x,y`` in CFP; any count >= 3 accepted)."""
    pts = _read_points(Path(path), None, "fiducial")
    if len(pts) < 3:
        raise DataError(f"{path}: {len(pts)} fiducial points; need at least 3")
    return pts


def fiducial_box(points: np.ndarray, pad: float = 0.1) -> tuple[float, float, float, float]:
    """A face box around fiducial points: their bounding square (side = the longer extent), grown
    by ``pad`` on each side, for the landmark predictor."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    c = (lo + hi) / 2
    half = max(float((hi - lo).max()), 1.0) * (0.5 + pad)
    return (c[0] - half, c[1] - half, c[0] + half, c[1] + half)


def sidecar_5pt(photo: Path) -> Path | None:
    """``photo.5pt`` or ``photo.<ext>.5pt`` beside the photo, if one exists."""
    for cand in (photo.with_suffix(".5pt"), photo.with_name(photo.name + ".5pt")):
        if cand.is_file():
            return cand
    return None


def cfp_fiducials_for(photo: Path) -> Path | None:
    """The CFP fiducial file of a photo under ``.../Data/Images/...``, if it exists."""
    parts = photo.parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "Images" and parts[i - 1] == "Data":
            cand = Path(*parts[:i], "Fiducials", *parts[i + 1:]).with_suffix(".txt")
            return cand if cand.is_file() else None
    return None
