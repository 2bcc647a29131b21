"""Frontalize a user's photos with an exported generator.

For each photo: find 5 landmarks, align the face to the training crop, run the model, write
``<stem>_aligned.png`` (the model's input), ``<stem>_frontal.png`` (its output) and
``<stem>_side_by_side.png`` (aligned input with the landmarks used and where they came from drawn
on it | output).

Where the landmarks come from, first that applies (landmarks given by the user win):
1. ``--landmarks`` CSV (``file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry``, pixels of the original
   photo; ``file`` matched against the photo's path as given, or its file name); a photo without
   a row fails;
2. a ``.5pt`` file beside the photo (5 lines ``x y``, same order), see
   :mod:`slimface.data.landmark_files`;
3. CFP fiducials (a photo under ``Data/Images/`` with ``Data/Fiducials/.../NN.txt``): they bound the
   face, and dlib's 68-point predictor places the landmarks in that box;
4. the detector chain of :mod:`slimface.data.face_detect` (dlib HOG, then dlib's CNN detector),
   then the 68-point predictor; profiles get their hidden eye from the pose template.
Several faces: the largest detection is used and a warning names how many were found.

Alignment (:func:`align_face`): the yaw whose template (:func:`slimface.data.pose.pose_template`,
the landmark positions of the training crops at that yaw) the landmarks fit best, then the weighted
least-squares similarity (rotation, uniform scale, translation) onto that template at resolution
R; the hidden eye and mouth corner weigh ``cos(yaw)``. From |yaw| 60 on, the hidden eye and corner
fed to the model are the template's (where training put them), whatever the source said.

Exit status of the command (:func:`run_frontalize`): 0 when every photo was written, 1 when any
failed (the summary line counts failures by cause), 2 for bad usage (bad model or CSV, raised).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from slimface.data import face_detect
from slimface.data.face_detect import Detection, Detector, FaceFit
from slimface.data.landmark_files import cfp_fiducials_for, fiducial_box, read_fiducials, read_5pt, sidecar_5pt
from slimface.data.pose import (
    HIDDEN_FROM_YAW,
    apply_similarity,
    estimate_yaw,
    hidden_points,
    point_weights,
    pose_template,
    weighted_similarity,
)
from slimface.data.records import CANONICAL_LANDMARKS_128 as CANONICAL_128
from slimface.deploy.runtime import Frontalizer, load_frontalizer
from slimface.errors import DataError

__all__ = [
    "CANONICAL_LANDMARKS_128",
    "CANONICAL_MOUTH_CENTRE_128",
    "Result",
    "frontalize_files",
    "run_frontalize",
    "read_landmarks_csv",
    "find_landmarks",
    "similarity_transform",
    "align_face",
    "draw_alignment",
    "summarize",
    "exit_code",
]

CANONICAL_LANDMARKS_128 = CANONICAL_128.astype(np.float64)
CANONICAL_MOUTH_CENTRE_128 = np.array([65.0, 89.0])
CSV_COLUMNS = ["file", "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry"]

#: Failure causes, as the summary line names them.
CAUSES = {
    "missing": "file not found",
    "unreadable": "not a readable image",
    "no_row": "no row in the landmarks file",
    "bad_landmarks": "unusable landmark file",
    "no_face": "no face found",
}


@dataclass
class Result:
    """Outcome for one photo; ``message`` is the one line shown to the user, ``cause`` a key of
    :data:`CAUSES` for a failure. ``method``: where the landmarks came from (``csv``, ``5pt``,
    ``fiducials``, or the detector's name)."""

    source: Path
    ok: bool
    message: str
    frontal_path: Path | None = None
    side_by_side_path: Path | None = None
    landmarks: np.ndarray | None = None          # (5,2) in the original photo
    aligned_landmarks: np.ndarray | None = None  # (5,2) in the aligned crop fed to the model
    warnings: list[str] = field(default_factory=list)
    cause: str = ""
    method: str = ""
    yaw: float | None = None
    aligned_path: Path | None = None


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


def find_landmarks(
    path: Path,
    rgb: np.ndarray,
    table: dict[str, np.ndarray] | None = None,
    chain: Sequence[Detector] | None = None,
    fiducials: Path | None | bool = True,
) -> tuple[FaceFit | None, str, str]:
    """The landmarks of one photo, by the precedence in the module doc: ``(fit, cause, message)``
    with ``fit`` None on failure (``cause`` a key of :data:`CAUSES`). ``fiducials``: True looks for
    CFP fiducials beside the photo, a path uses that file, False/None never uses any."""
    if table is not None:
        lm = _lookup(table, path)
        if lm is None:
            return None, "no_row", f"{path}: no row for {path.name} in the landmarks file; skipped"
        return FaceFit(np.asarray(lm, dtype=np.float64), estimate_yaw(lm), "csv"), "", ""
    side = sidecar_5pt(path)
    if side is not None:
        try:
            lm = read_5pt(side)
        except DataError as e:
            return None, "bad_landmarks", f"{path}: {e}"
        return FaceFit(lm, estimate_yaw(lm), "5pt"), "", ""
    fid = cfp_fiducials_for(path) if fiducials is True else (fiducials or None)
    if fid is not None:
        try:
            box = fiducial_box(read_fiducials(fid))
        except DataError as e:
            return None, "bad_landmarks", f"{path}: {e}"
        strong = "profile" in Path(fid).parts  # CFP's profile folder
        fit = face_detect.landmarks_in_box(rgb, Detection(box, 1.0, "fiducials"), strong=strong)
        return fit, "", ""
    chain = face_detect.build_chain() if chain is None else chain
    fit = face_detect.find_face(rgb, chain)
    if fit is None:
        names = ", ".join(d.name for d in chain)
        return None, "no_face", (f"{path}: no face found (detectors tried: {names}); give its landmarks "
                                 "with --landmarks CSV or a .5pt file beside it")
    return fit, "", ""


# ----------------------------------------------------------------------------- alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) mapping ``src`` points onto ``dst``: a 2x3 matrix."""
    return weighted_similarity(src, dst)


def align_face(
    image: Image.Image, landmarks: np.ndarray, resolution: int, yaw: float | None = None
) -> tuple[Image.Image, np.ndarray]:
    """Warp ``image`` to the ``resolution``^2 training crop at the face's yaw (estimated from the
    landmarks when not given); returns (crop, landmarks in the crop, hidden ones from the template
    at a profile)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    yaw = estimate_yaw(lm) if yaw is None else float(yaw)
    dst = pose_template(yaw, resolution)
    m = weighted_similarity(lm, dst, point_weights(yaw))
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)  # PIL wants output -> input
    crop = image.transform(
        (resolution, resolution), Image.Transform.AFFINE, data=tuple(inv[:2].reshape(-1)),
        resample=Image.Resampling.BICUBIC,
    )
    aligned = apply_similarity(m, lm)
    if abs(yaw) >= HIDDEN_FROM_YAW:
        idx = list(hidden_points(yaw))
        aligned[idx] = dst[idx]
    return crop, aligned


def draw_alignment(crop: Image.Image, aligned: np.ndarray, label: str, yaw: float) -> Image.Image:
    """The aligned crop (RGB) with the landmarks fed to the model (eyes green, nose red, mouth
    blue; the hidden eye/corner of a profile hollow) and ``label`` (where they came from)."""
    img = crop.convert("RGB")
    d = ImageDraw.Draw(img)
    r = max(1.0, img.width / 64)
    colours = [(0, 220, 0), (0, 220, 0), (255, 40, 40), (40, 120, 255), (40, 120, 255)]
    hidden = set(hidden_points(yaw)) if abs(yaw) >= HIDDEN_FROM_YAW else set()
    for i, (x, y) in enumerate(np.asarray(aligned, dtype=np.float64)):
        box = (x - r, y - r, x + r, y + r)
        if i in hidden:
            d.ellipse(box, outline=colours[i])
        else:
            d.ellipse(box, fill=colours[i])
    if img.width >= 64:
        font = ImageFont.load_default()
        d.rectangle((0, 0, img.width, 11), fill=(0, 0, 0))
        d.text((2, 0), label, fill=(255, 255, 255), font=font)
    return img


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


def open_photo(path: Path) -> tuple[Image.Image | None, str, str]:
    """(RGB photo, "", "") or (None, cause, message): EXIF rotation applied."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im).convert("RGB"), "", ""
    except FileNotFoundError:
        return None, "missing", f"{path}: file not found"
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return None, "unreadable", f"{path}: not a readable image ({type(e).__name__}); skipped"


def _process_one(
    path: Path,
    model: Frontalizer,
    out_dir: Path,
    table: dict[str, np.ndarray] | None,
    resolution: int,
    mode: str,
    stem: str,
    chain: Sequence[Detector] | None,
) -> Result:
    photo, cause, msg = open_photo(path)
    if photo is None:
        return Result(path, False, msg, cause=cause)
    fit, cause, msg = find_landmarks(path, np.asarray(photo), table, chain)
    if fit is None:
        return Result(path, False, msg, cause=cause)
    warnings: list[str] = []
    if fit.faces > 1:
        warnings.append(f"{path}: {fit.faces} faces found; used the largest one")
    try:
        crop, aligned = align_face(photo, fit.landmarks, resolution, fit.yaw)
    except DataError as e:  # e.g. landmarks that coincide
        return Result(path, False, f"{path}: {e}", cause="bad_landmarks")
    crop = crop.convert(mode)
    y = model(_to_input(crop), aligned[None].astype(np.float32))
    out_img = _to_image(y[0])
    aligned_path = out_dir / f"{stem}_aligned.png"
    frontal_path = out_dir / f"{stem}_frontal.png"
    sbs_path = out_dir / f"{stem}_side_by_side.png"
    crop.save(aligned_path)
    out_img.save(frontal_path)
    label = f"{fit.method} yaw{fit.yaw:+.0f}"  # the hidden points of a profile are drawn hollow
    sbs = Image.new("RGB", (2 * resolution, resolution))
    sbs.paste(draw_alignment(crop, aligned, label, fit.yaw), (0, 0))
    sbs.paste(out_img.convert("RGB"), (resolution, 0))
    sbs.save(sbs_path)
    msg = f"{path}: wrote {frontal_path.name} and {sbs_path.name} (landmarks: {fit.method}, yaw {fit.yaw:+.0f})"
    return Result(path, True, msg, frontal_path, sbs_path, np.asarray(fit.landmarks), aligned, warnings,
                  method=fit.method, yaw=fit.yaw, aligned_path=aligned_path)


def frontalize_files(
    images: Iterable[str | Path],
    model_path: str | Path | Frontalizer,
    out_dir: str | Path,
    landmarks_file: str | Path | None = None,
    resolution: int | None = None,
    report: Callable[[str], None] | None = None,
    detectors: Sequence[str] | Sequence[Detector] | None = None,
) -> list[Result]:
    """Frontalize each photo; per-photo problems become a failed :class:`Result`, never an exception.

    ``model_path``: an exported model (anything :func:`load_frontalizer` reads) or a loaded
    Frontalizer. ``resolution`` overrides/supplies the crop size when the model does not record it
    (default 128). ``report`` is called with each one-line message as it happens (e.g. ``print``).
    ``detectors``: the fallback chain (names or detector objects; default ``hog``, ``cnn``).
    A bad model file or landmarks CSV raises (they concern the whole batch).
    """
    model = model_path if isinstance(model_path, Frontalizer) else load_frontalizer(model_path)
    res = resolution or model.resolution or 128
    mode = "L" if model.channels == 1 else "RGB"
    table = read_landmarks_csv(landmarks_file) if landmarks_file is not None else None
    chain: Sequence[Detector] | None = None
    if detectors is not None:
        chain = [face_detect.build_chain([d])[0] if isinstance(d, str) else d for d in detectors]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results: list[Result] = []
    for item in images:
        p = Path(item)
        r = _process_one(p, model, out, table, res, mode, _unique_stem(p, used), chain)
        results.append(r)
        if report is not None:
            for w in r.warnings:
                report(f"warning: {w}")
            report(r.message if r.ok else f"error: {r.message}")
    return results


def summarize(results: list[Result]) -> str:
    """One line: how many photos succeeded; failures counted by cause, detectors by use."""
    ok = [r for r in results if r.ok]
    line = f"frontalized {len(ok)} of {len(results)} photo(s)"
    if ok:
        used = Counter(r.method for r in ok)
        line += " (landmarks: " + ", ".join(f"{n} {m}" for m, n in used.most_common()) + ")"
    failed = [r for r in results if not r.ok]
    if failed:
        causes = Counter(r.cause or "other" for r in failed)
        line += f"; {len(failed)} failed: " + ", ".join(
            f"{n} {CAUSES.get(c, c)}" for c, n in sorted(causes.items(), key=lambda kv: (-kv[1], kv[0])))
    return line


def exit_code(results: list[Result]) -> int:
    """0 when every photo was written, 1 when any failed (or there were none)."""
    return 0 if results and all(r.ok for r in results) else 1


def run_frontalize(
    images: list[str | Path],
    model_path: str | Path | Frontalizer,
    out_dir: str | Path,
    landmarks_file: str | Path | None = None,
    report: Callable[[str], None] = print,
    detectors: Sequence[str] | None = None,
) -> int:
    """CLI body: a line per photo and a summary; exit code 0 if every photo was written, else 1
    (bad usage raises a SlimfaceError, which the CLI turns into exit code 2)."""
    results = frontalize_files(images, model_path, out_dir, landmarks_file, report=report, detectors=detectors)
    report(summarize(results))
    return exit_code(results)
