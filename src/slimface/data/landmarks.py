"""Where the 5 facial landmarks come from: a CSV manifest or dlib's 5-point model.

Landmarks are (5, 2) float32 (x, y) pixel coordinates in the file's own pixel grid, ordered
left_eye, right_eye, nose, mouth_left, mouth_right ("left" = smaller x), see DESIGN.md.
"""

from __future__ import annotations

import functools

import csv
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from slimface.errors import DataError

LANDMARK_COLUMNS = ("lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry")


def normalize_relpath(file: str) -> str:
    """Manifest keys: forward slashes, no leading './'."""
    s = file.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def read_manifest(path: Path, required: tuple[str, ...] = ("file",)) -> dict[str, dict[str, str]]:
    """Read a CSV manifest into {relative file path: row}; DataError for a missing column or duplicate file."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"manifest {path} lacks column(s) {', '.join(missing)} (has: {', '.join(header) or 'nothing'}); "
                    f"required: {', '.join(required)}"
                )
            lm = [c for c in LANDMARK_COLUMNS if c in header]
            if lm and len(lm) != len(LANDMARK_COLUMNS):
                raise DataError(
                    f"manifest {path} has only some landmark columns ({', '.join(lm)}); "
                    f"give all of {', '.join(LANDMARK_COLUMNS)} or none"
                )
            rows: dict[str, dict[str, str]] = {}
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                key = normalize_relpath(row.get("file", ""))
                if not key:
                    raise DataError(f"manifest {path} line {line}: empty 'file' value; fix or remove the line")
                if key in rows:
                    raise DataError(f"manifest {path} line {line}: file {key} is listed twice; remove one line")
                row["_line"] = str(line)
                rows[key] = row
            return rows
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path} is not UTF-8 CSV text ({e}); re-save it as CSV") from None
    except csv.Error as e:
        raise DataError(f"manifest {path} is not valid CSV ({e}); fix the file") from None


def landmarks_from_row(row: dict[str, str]) -> np.ndarray | None:
    """(5,2) float32 from the 10 landmark columns; None if the row has none (all empty).

    Raises ValueError for non-numeric or partly empty values (the caller applies its policy).
    """
    vals = [row.get(c, "") for c in LANDMARK_COLUMNS]
    if all(v == "" for v in vals):
        return None
    arr = np.array([float(v) for v in vals], dtype=np.float32).reshape(5, 2)
    if not np.all(np.isfinite(arr)):
        raise ValueError("non-finite landmark value")
    return arr


class LandmarkSource(ABC):
    """Gives the 5 landmarks of an image, or None when it has none."""

    @abstractmethod
    def __call__(self, path: Path, *, required: bool = False) -> np.ndarray | None:
        """Landmarks for ``path``; with ``required=True`` a miss raises DataError instead of returning None."""


class ManifestLandmarks(LandmarkSource):
    """Landmarks from ``ROOT/manifest.csv`` (columns ``file`` + lex..mry; ``file`` relative to ROOT)."""

    def __init__(self, manifest: Path, root: Path | None = None) -> None:
        self.manifest = Path(manifest)
        self.root = Path(root) if root is not None else self.manifest.parent
        self._rows = read_manifest(self.manifest, ("file", *LANDMARK_COLUMNS))

    def __call__(self, path: Path, *, required: bool = False) -> np.ndarray | None:
        try:
            key = normalize_relpath(Path(path).resolve().relative_to(self.root.resolve()).as_posix())
        except ValueError:
            key = normalize_relpath(str(path))
        row = self._rows.get(key)
        lm = None
        if row is not None:
            try:
                lm = landmarks_from_row(row)
            except ValueError as e:
                raise DataError(f"manifest {self.manifest} line {row['_line']}: bad landmark value for {key} ({e})") from None
        if lm is None and required:
            raise DataError(f"no landmarks for {path} in {self.manifest}; add its row or use landmarks='dlib'")
        return lm


# --- dlib -------------------------------------------------------------------------------

#: dlib's 5-point model gives two corners per eye and the nose *base* (subnasale) N. With M the
#: eye midpoint, the canonical 128 crop has the eye line at y 41, the nose tip at 65, the subnasale
#: near 75 and the mouth line at 89, so: nose tip = M + 0.7 (N - M), mouth centre = M + 1.4 (N - M).
NOSE_TIP_FRACTION = 0.7
MOUTH_FRACTION = 1.4
#: Mouth corner half-width as a fraction of the inter-ocular vector (TP-GAN canonical face: 15/42).
MOUTH_HALF_WIDTH = 15.0 / 42.0


def dlib5_to_ours(points: np.ndarray) -> np.ndarray:
    """Convert dlib's 5 points to ours (``left_eye, right_eye, nose, mouth_left, mouth_right``).

    Eye centres are the corner means, sorted by x so 'left' is the smaller x; the nose tip and the
    mouth are estimated along the eye-midpoint -> nose-base direction (constants above) and the
    mouth corners are placed +-MOUTH_HALF_WIDTH x the eye vector around the mouth centre, so they
    follow in-plane rotation and foreshorten with the eyes under yaw. Good to a few pixels on
    near-frontal faces; on strong profiles only a rough guide (give landmarks in a file instead).
    """
    p = np.asarray(points, dtype=np.float64).reshape(5, 2)
    e1, e2 = p[0:2].mean(axis=0), p[2:4].mean(axis=0)
    le, re = (e1, e2) if e1[0] <= e2[0] else (e2, e1)
    mid = (le + re) / 2.0
    base = p[4]
    nose = mid + NOSE_TIP_FRACTION * (base - mid)
    mouth = mid + MOUTH_FRACTION * (base - mid)
    half = MOUTH_HALF_WIDTH * (re - le)
    return np.stack([le, re, nose, mouth - half, mouth + half]).astype(np.float32)


def face_recognition_models_dir() -> Path:
    """The ``models/`` folder of the face_recognition_models package, found without importing it
    (its ``__init__`` imports ``pkg_resources``, which may be missing)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the face_recognition_models package is not installed; pip install face-recognition-models==0.3.0")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@functools.lru_cache(maxsize=1)
def dlib_models() -> tuple[Any, Any]:
    """dlib's HOG frontal face detector and 5-point shape predictor (loaded once per process)."""
    try:
        import dlib
    except ImportError:
        raise DataError("dlib is not installed; pip install dlib-bin (or give landmarks in a file)") from None
    model = face_recognition_models_dir() / "shape_predictor_5_face_landmarks.dat"
    if not model.is_file():
        raise DataError(f"dlib landmark model not found at {model}; reinstall face-recognition-models")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))


class DlibLandmarks(LandmarkSource):
    """dlib HOG frontal face detector + 5-point shape predictor (largest detected face).

    The HOG detector finds near-frontal faces (up to roughly +-45 deg yaw); on stronger
    profiles it usually finds nothing and this returns None (or raises with ``required``).
    """

    def __init__(self, upsample: int = 1) -> None:
        self.detector, self.predictor = dlib_models()
        self.upsample = upsample

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks for a uint8 (H,W) or (H,W,3) array, or None if no face is found."""
        img = np.ascontiguousarray(image, dtype=np.uint8)
        rects = self.detector(img, self.upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self.predictor(img, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)
        return dlib5_to_ours(pts)

    def __call__(self, path: Path, *, required: bool = False) -> np.ndarray | None:
        from slimface.data.images import open_image

        img = open_image(Path(path))
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        lm = self.detect(arr)
        if lm is None and required:
            raise DataError(f"no face found in {path}; crop the face more loosely or give landmarks in manifest.csv")
        return lm
