"""Frontalize a user's photos with an exported generator.

For each photo: find 5 landmarks, align the face to the training crop, run the model, write
``<stem>_frontal.png`` and ``<stem>_side_by_side.png`` (aligned input | output).

Landmarks come either from a CSV (``file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry``, pixel coordinates
in the original photo; ``file`` matched against the photo's path as given, or its file name) or from
dlib: the HOG frontal face detector plus the 5-point shape predictor of ``face_recognition_models``.
dlib's 5 points are two corners per eye and the base of the nose (subnasale); they are converted to
ours (DESIGN.md order ``left_eye, right_eye, nose, mouth_left, mouth_right``) as:

see :func:`slimface.data.landmarks.dlib5_to_ours` (eye centres from the corners; nose tip, mouth
centre and corners estimated from the eye midpoint and the nose base). These are estimates; give a
landmarks CSV for exact points.

dlib's HOG detector is trained on frontal / near-frontal faces: it usually misses profiles beyond
about 45-60 degrees yaw. Such photos get a one-line message telling the user to pass landmarks.
Several faces: the largest detection is used and a warning names how many were found.

Alignment: the similarity transform (rotation, uniform scale, translation; least squares) that
maps the two eye centres and the mouth centre onto the canonical positions left eye (44, 41), right
eye (86, 41), mouth centre (65, 89) at 128x128, scaled by R/128 for resolution R.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from slimface.data.landmarks import dlib5_to_ours, dlib_models
from slimface.data.records import CANONICAL_LANDMARKS_128 as CANONICAL_128
from slimface.deploy.runtime import Frontalizer, load_frontalizer
from slimface.errors import DataError, SlimfaceError

__all__ = [
    "CANONICAL_LANDMARKS_128",
    "CANONICAL_MOUTH_CENTRE_128",
    "Result",
    "frontalize_files",
    "run_frontalize",
    "read_landmarks_csv",
    "detect_landmarks",
    "similarity_transform",
    "align_face",
    "summarize",
]

CANONICAL_LANDMARKS_128 = CANONICAL_128.astype(np.float64)
CANONICAL_MOUTH_CENTRE_128 = np.array([65.0, 89.0])
CSV_COLUMNS = ["file", "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry"]
DETECT_MAX_SIDE = 1024


@dataclass
class Result:
    """Outcome for one photo; ``message`` is the one line shown to the user."""

    source: Path
    ok: bool
    message: str
    frontal_path: Path | None = None
    side_by_side_path: Path | None = None
    landmarks: np.ndarray | None = None          # (5,2) in the original photo
    aligned_landmarks: np.ndarray | None = None  # (5,2) in the aligned crop fed to the model
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- landmarks


def read_landmarks_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``file,lex,ley,...,mry`` rows into ``{file: (5,2) array}`` (keys as written)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {','.join(missing)}; header must be {','.join(CSV_COLUMNS)}")
            out: dict[str, np.ndarray] = {}
            for lineno, row in enumerate(reader, start=2):
                try:
                    vals = [float(row[c]) for c in CSV_COLUMNS[1:]]
                except (TypeError, ValueError):
                    raise DataError(f"{path}:{lineno}: landmark values must be numbers") from None
                if not np.all(np.isfinite(vals)):
                    raise DataError(f"{path}:{lineno}: landmark values must be finite numbers")
                out[row["file"].strip()] = np.array(vals, dtype=np.float64).reshape(5, 2)
    except FileNotFoundError:
        raise DataError(f"landmarks file {path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 CSV file") from None
    return out


def _lookup(table: dict[str, np.ndarray], image: Path) -> np.ndarray | None:
    for key in (str(image), image.as_posix(), image.name):
        if key in table:
            return table[key]
    by_name = [v for k, v in table.items() if Path(k).name == image.name]
    return by_name[0] if len(by_name) == 1 else None


def detect_landmarks(rgb: np.ndarray) -> tuple[np.ndarray | None, int]:
    """dlib detection on an RGB uint8 image: (our 5 landmarks of the largest face or None, #faces)."""
    detector, predictor = dlib_models()
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    img = rgb
    if scale < 1.0:
        img = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    img = np.ascontiguousarray(img)
    upsample = 1 if max(img.shape[:2]) < 800 else 0
    rects = list(detector(img, upsample))
    if not rects:
        return None, 0
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = predictor(img, rect)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
    return dlib5_to_ours(pts / scale).astype(np.float64), len(rects)


# ----------------------------------------------------------------------------- alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) mapping ``src`` points onto ``dst``: a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    if var_s < 1e-12:
        raise DataError("landmarks coincide; cannot align the face")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: Image.Image, landmarks: np.ndarray, resolution: int) -> tuple[Image.Image, np.ndarray]:
    """Warp ``image`` to the ``resolution``^2 training crop; returns (crop, landmarks in the crop)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    src = np.stack([lm[0], lm[1], (lm[3] + lm[4]) / 2.0])
    k = resolution / 128.0
    dst = np.stack([CANONICAL_LANDMARKS_128[0], CANONICAL_LANDMARKS_128[1], CANONICAL_MOUTH_CENTRE_128]) * k
    m = similarity_transform(src, dst)
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)  # PIL wants output -> input
    crop = image.transform(
        (resolution, resolution), Image.Transform.AFFINE, data=tuple(inv[:2].reshape(-1)),
        resample=Image.Resampling.BICUBIC,
    )
    aligned = (m[:, :2] @ lm.T).T + m[:, 2]
    return crop, aligned


def _to_input(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    return a[None]


def _to_image(arr: np.ndarray) -> Image.Image:
    a = np.clip((np.asarray(arr, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if a.shape[0] == 1:
        return Image.fromarray(a[0], mode="L")
    return Image.fromarray(a.transpose(1, 2, 0), mode="RGB")


# ----------------------------------------------------------------------------- batch


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, i = path.stem, 2
    while stem in used:
        stem = f"{path.stem}_{i}"
        i += 1
    used.add(stem)
    return stem


def _process_one(
    path: Path,
    model: Frontalizer,
    out_dir: Path,
    table: dict[str, np.ndarray] | None,
    resolution: int,
    mode: str,
    stem: str,
) -> Result:
    try:
        with Image.open(path) as im:
            im.load()
            photo = ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        return Result(path, False, f"{path}: file not found")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return Result(path, False, f"{path}: not a readable image ({type(e).__name__}); skipped")
    warnings: list[str] = []
    if table is not None:
        lm = _lookup(table, path)
        if lm is None:
            return Result(path, False, f"{path}: no row for {path.name} in the landmarks file; skipped")
    else:
        lm, n = detect_landmarks(np.asarray(photo))
        if lm is None:
            return Result(
                path, False,
                f"{path}: no face found by dlib's frontal detector (it misses strong profiles, "
                "beyond ~45 deg yaw); give its landmarks with --landmarks CSV",
            )
        if n > 1:
            warnings.append(f"{path}: {n} faces found; used the largest one")
    crop, aligned = align_face(photo, lm, resolution)
    crop = crop.convert(mode)
    x = _to_input(crop)
    y = model(x, aligned[None].astype(np.float32))
    out_img = _to_image(y[0])
    frontal_path = out_dir / f"{stem}_frontal.png"
    sbs_path = out_dir / f"{stem}_side_by_side.png"
    out_img.save(frontal_path)
    sbs = Image.new(mode, (2 * resolution, resolution))
    sbs.paste(crop, (0, 0))
    sbs.paste(out_img.convert(mode), (resolution, 0))
    sbs.save(sbs_path)
    msg = f"{path}: wrote {frontal_path.name} and {sbs_path.name}"
    return Result(path, True, msg, frontal_path, sbs_path, np.asarray(lm), aligned, warnings)


def frontalize_files(
    images: Iterable[str | Path],
    model_path: str | Path | Frontalizer,
    out_dir: str | Path,
    landmarks_file: str | Path | None = None,
    resolution: int | None = None,
    report: Callable[[str], None] | None = None,
) -> list[Result]:
    """Frontalize each photo; per-photo problems become a failed :class:`Result`, never an exception.

    ``model_path``: an exported model (anything :func:`load_frontalizer` reads) or a loaded
    Frontalizer. ``resolution`` overrides/supplies the crop size when the model does not record it
    (default 128). ``report`` is called with each one-line message as it happens (e.g. ``print``).
    A bad model file or landmarks CSV raises (they concern the whole batch).
    """
    model = model_path if isinstance(model_path, Frontalizer) else load_frontalizer(model_path)
    res = resolution or model.resolution or 128
    mode = "L" if model.channels == 1 else "RGB"
    table = read_landmarks_csv(landmarks_file) if landmarks_file is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results: list[Result] = []
    for item in images:
        p = Path(item)
        r = _process_one(p, model, out, table, res, mode, _unique_stem(p, used))
        results.append(r)
        if report is not None:
            for w in r.warnings:
                report(f"warning: {w}")
            report(r.message if r.ok else f"error: {r.message}")
    return results


def summarize(results: list[Result]) -> str:
    """One line: how many photos succeeded / failed."""
    ok = sum(r.ok for r in results)
    return f"frontalized {ok} of {len(results)} photo(s)" + (f"; {len(results) - ok} failed" if ok < len(results) else "")


def run_frontalize(
    images: list[str | Path],
    model_path: str | Path,
    out_dir: str | Path,
    landmarks_file: str | Path | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """CLI body: print a line per photo and a summary; exit code 0 if any photo succeeded, else 1."""
    results = frontalize_files(images, model_path, out_dir, landmarks_file, report=report)
    report(summarize(results))
    return 0 if any(r.ok for r in results) else 1
