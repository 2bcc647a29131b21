"""Builders of tiny on-disk datasets that follow the real naming/layouts (used by the data tests)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from slimface.data.multipie import CAMERA_YAW, camera_dir, multipie_name

MANIFEST_COLUMNS = [
    "file", "subject", "session", "recording", "camera", "yaw", "pitch", "illumination",
    "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry",
]


def write_image(path: Path, size: int | tuple[int, int] = 16, mode: str = "RGB", seed: int = 0) -> Path:
    """A small deterministic noise image (PNG/JPEG by extension)."""
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    c = {"RGB": 3, "L": 1}[mode]
    a = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    img = Image.fromarray(a[..., 0] if c == 1 else a, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (header stays readable, decoding fails)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(64, int(len(data) * keep))])
    return path


def build_multipie(
    root: Path,
    *,
    layout: str = "official",
    subjects: Iterable[str] = ("001", "002", "150", "201", "250"),
    sessions: Iterable[tuple[str, str]] = (("01", "01"),),
    cameras: Iterable[str] = ("051", "050", "041", "190", "240", "140", "110"),
    illuminations: Iterable[int] = (0, 7),
    size: int = 16,
) -> list[Path]:
    """Multi-PIE files in the official tree (``sessionXX/multiview/SSS/rr/CC_C/``) or one flat folder."""
    out = []
    k = 0
    for s in subjects:
        for ses, rec in sessions:
            for cam in cameras:
                for il in illuminations:
                    name = multipie_name(s, ses, rec, cam, il)
                    if layout == "official":
                        p = root / f"session{ses}" / "multiview" / s / rec / camera_dir(cam) / name
                    else:
                        p = root / name
                    out.append(write_image(p, size, seed=k))
                    k += 1
    return out


def landmarks_for(yaw: int, size: int) -> list[float]:
    """Deterministic, yaw-dependent landmark values (distinct per yaw so tests can check them)."""
    s = size / 128.0
    shift = yaw / 90.0 * 10.0
    pts = [(44 + shift, 41), (86 + shift, 41), (64 + shift, 65), (50 + shift, 89), (80 + shift, 89)]
    return [round(v * s, 3) for p in pts for v in p]


def write_multipie_manifest(root: Path, files: Iterable[Path], size: int = 16) -> Path:
    """The synthetic data's manifest.csv for Multi-PIE-named files under ``root``."""
    rows = []
    for p in files:
        subj, ses, rec, cam, il = p.stem.split("_")[:5]
        yaw = CAMERA_YAW[cam]
        rows.append([p.relative_to(root).as_posix(), subj, ses, rec, cam, yaw, 0, int(il), *landmarks_for(yaw, size)])
    m = root / "manifest.csv"
    with open(m, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_COLUMNS)
        w.writerows(rows)
    return m


def caspeal_name(subject: str, pose: str, lighting: str = "EU+00", prefix: str = "MY", ext: str = ".png") -> str:
    return f"{prefix}_{subject}_I{lighting}_P{pose}_EN_A0_D0_T0_BB_M0_R1_S0{ext}"


CASPEAL_POSES = ("M+00", "M+22", "M-22", "M+45", "M-67", "U+00", "U+15", "D+00", "D-30")


def build_caspeal(root: Path, subjects: Iterable[str] = ("000064", "000065", "000101"),
                  poses: Iterable[str] = CASPEAL_POSES, size: int = 16) -> list[Path]:
    out = []
    for i, s in enumerate(subjects):
        for j, pose in enumerate(poses):
            out.append(write_image(root / "POSE" / caspeal_name(s, pose), size, mode="L", seed=i * 100 + j))
    return out


def build_folder(root: Path, size: int = 16) -> Path:
    """ROOT/<identity>/<file> + manifest.csv (file,yaw,pitch,illumination + landmarks for some rows)."""
    rows = [["file", "yaw", "pitch", "illumination", "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry"]]
    k = 0
    for ident in ("alice", "bob"):
        for yaw in (0, 30, -60):
            p = write_image(root / ident / f"{ident}_{yaw}.png", size, seed=k)
            k += 1
            lm = landmarks_for(yaw, size) if ident == "alice" else [""] * 10
            rows.append([p.relative_to(root).as_posix(), yaw, 0, 7, *lm])
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def build_synth(root: Path, subjects: int = 4, train_subjects: int = 3, size: int = 16) -> Path:
    """A stand-in for 'slimface synth' output: images/ with Multi-PIE names + manifest + dataset.json."""
    files = build_multipie(root / "images", layout="flat", subjects=[f"{i:03d}" for i in range(1, subjects + 1)],
                           cameras=("051", "050", "080", "110"), illuminations=(7, 1), size=size)
    write_multipie_manifest(root, files, size)
    (root / "dataset.json").write_text(json.dumps({
        "generator": "slimface.synth", "version": 1, "seed": 0, "subjects": subjects, "resolution": size,
        "gray": False, "pitch": False, "illuminations": [1, 7], "frontal_illumination": 7,
        "train_subjects": train_subjects, "complete": True,
    }))
    return root
