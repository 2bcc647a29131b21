"""The built-in synthetic multi-pose face dataset (slimface's default data; nothing to download).

Writes procedural heads (:mod:`slimface.data.synth_render`) to disk in the layout of
docs/DESIGN.md: ``ROOT/images/*.png`` with Multi-PIE names (CAS-PEAL-R1 pose names with
``pitch=True``), ``ROOT/manifest.csv`` and ``ROOT/dataset.json`` (written last, atomically, so an
interrupted render is resumed per subject and a finished one is never redone).

Poses: the 13 Multi-PIE yaws at pitch 0; with ``pitch=True`` the CAS-PEAL range (yaw 0, +-15,
+-30, +-45) at pitch -15/0/+15. Illuminations: Multi-PIE codes, always including 07 (frontal flash,
the gallery light); K codes are taken from :data:`ILLUMINATION_ORDER` (07, 04, 10, 01, 13, 18, ...).

CAS-PEAL-style names (``pitch=True``): ``MY_<subject:06d>_<light>_P<U|M|D><yaw:+03d>_EN_A0_D0_T0_BB_M0_R1_S0``
where U/M/D = pitch +15/0/-15 and ``<light>`` encodes the Multi-PIE code: 07 -> ``IEU+00`` (CAS-PEAL's
normal lighting), 00 (ambient only) -> ``IEM+00``, any other code -> ``IF<U|M|D><azimuth:+03d>`` from
its light direction (elevation > 20 deg: U, < -20 deg: D, else M). The manifest always carries the
Multi-PIE code, so no loader needs to parse the light field.

Every image of a subject + pose + illumination is deterministic for a seed; a small per-image
brightness/tone nuisance is derived from (seed, subject, pose, illumination).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

from slimface.config import check
from slimface.data.synth_render import (
    FRONTAL_ILLUMINATION,
    ILLUMINATION_ORDER,
    ILLUMINATION_TABLE,
    RENDER_VERSION,
    FaceParams,
    Identity,
    render_face,
    sample_identity,
    shade,
    to_gray,
)
from slimface.errors import DataError
from slimface.fileio import atomic_write

GENERATOR = "slimface.synth"
VERSION = 1

#: Multi-PIE camera code per yaw (reference.md section 4).
YAW_TO_CAMERA: dict[int, str] = {
    90: "240", 75: "010", 60: "200", 45: "190", 30: "041", 15: "050", 0: "051",
    -15: "140", -30: "130", -45: "080", -60: "090", -75: "120", -90: "110",
}
MULTIPIE_YAWS: tuple[int, ...] = tuple(sorted(YAW_TO_CAMERA))
CASPEAL_YAWS: tuple[int, ...] = (-45, -30, -15, 0, 15, 30, 45)
CASPEAL_PITCHES: tuple[int, ...] = (-15, 0, 15)

MANIFEST_COLUMNS = (
    "file", "subject", "session", "recording", "camera", "yaw", "pitch", "illumination",
    "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry",
)
SESSION = "01"
RECORDING = "01"

__all__ = [
    "SynthConfig", "render_dataset", "render_identities", "identities_metadata", "is_complete",
    "render_face", "sample_identity", "identity_params", "image_name", "MANIFEST_COLUMNS", "YAW_TO_CAMERA",
    "FaceParams", "data_fingerprint", "RENDER_VERSION",
]


@dataclass
class SynthConfig:
    """Settings of the built-in data: ``slimface data synth`` (one field per CLI flag) and a run
    config's ``data.synth`` section, where ``resolution`` is left out (None): the run's
    ``data.resolution`` sets it when the config loads."""

    subjects: int = 337
    train_subjects: int = 200
    resolution: Optional[int] = None  # rendered size: 64 or 128 (set before rendering)
    illuminations: int = 5
    pitch: bool = False
    gray: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Range checks; raises ConfigError naming the value and the fix."""
        check(self.resolution in (None, 64, 128),
              f"synth resolution {self.resolution} is not supported; use 64 or 128")
        check(1 <= self.illuminations <= 20,
              f"synth illuminations {self.illuminations} is out of range; use 1..20")
        check(2 <= self.subjects <= 999,
              f"synth subjects {self.subjects} is out of range; use 2..999 (3-digit Multi-PIE ids)")
        check(1 <= self.train_subjects < self.subjects,
              f"synth train_subjects {self.train_subjects} must be >= 1 and < subjects "
              f"({self.subjects}); lower it or raise --subjects")
        check(0 <= self.seed < 2**32, f"synth seed {self.seed} must be in 0..2**32-1")

    def illumination_codes(self) -> list[int]:
        """The K Multi-PIE illumination codes, ascending; always includes 07."""
        return sorted(ILLUMINATION_ORDER[: self.illuminations])

    def poses(self) -> list[tuple[int, int]]:
        """(yaw, pitch) pairs rendered for every subject and illumination."""
        if self.pitch:
            return [(y, p) for p in CASPEAL_PITCHES for y in CASPEAL_YAWS]
        return [(y, 0) for y in MULTIPIE_YAWS]

    def metadata(self) -> dict[str, Any]:
        """The dataset.json content (without ``complete``); equal metadata = same dataset."""
        poses = self.poses()
        return {
            "generator": GENERATOR,
            "version": VERSION,
            "render_version": RENDER_VERSION,  # a cached render of another renderer is stale
            "seed": self.seed,
            "subjects": self.subjects,
            "resolution": self.resolution,
            "gray": self.gray,
            "pitch": self.pitch,
            "illuminations": self.illumination_codes(),
            "frontal_illumination": FRONTAL_ILLUMINATION,
            "train_subjects": self.train_subjects,
            "yaws": sorted({y for y, _ in poses}),
            "pitches": sorted({p for _, p in poses}),
            "naming": "caspeal" if self.pitch else "multipie",
            "images": self.subjects * len(poses) * self.illuminations,
        }


def data_fingerprint(source: "SynthConfig | dict[str, Any]") -> dict[str, Any]:
    """What identifies the built-in data a network was trained on: the dataset.json fields (generator
    name + version, seed, subjects, train_subjects, resolution, illumination codes, pitch, gray, ...)
    plus the renderer's :data:`RENDER_VERSION`, and ``fingerprint``: 16 hex digits over all of them.

    ``source``: the settings (:class:`SynthConfig`) or a dataset.json read from disk; both give the
    same fingerprint for the same data. It changes with every setting that changes the rendered images
    (and with ``train_subjects``, which moves identities between training and test).
    """
    import hashlib

    meta = source.metadata() if isinstance(source, SynthConfig) else dict(source)
    meta.pop("complete", None)
    meta.setdefault("render_version", RENDER_VERSION)  # dataset.json predates the field: this renderer's
    text = json.dumps(meta, sort_keys=True, default=str)
    return {**meta, "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16]}


# --------------------------------------------------------------------------------------------
# Names and per-image randomness
# --------------------------------------------------------------------------------------------


def subject_id(subject: int) -> str:
    """1-based subject number -> Multi-PIE style 3-digit id."""
    return f"{subject:03d}"


def _signed2(v: float) -> str:
    return f"{'+' if v >= 0 else '-'}{abs(int(round(v))):02d}"


def caspeal_light(code: int) -> str:
    """The CAS-PEAL lighting field used for a Multi-PIE illumination code (module docstring)."""
    if code == FRONTAL_ILLUMINATION:
        return "IEU+00"
    if code == 0:
        return "IEM+00"
    az, el, _ = ILLUMINATION_TABLE[code]
    return f"IF{'U' if el > 20 else 'D' if el < -20 else 'M'}{_signed2(az)}"


def image_name(cfg: SynthConfig, subject: int, yaw: int, pitch: int, code: int) -> str:
    """File name (relative to ROOT) of one image."""
    if cfg.pitch:
        ud = {15: "U", 0: "M", -15: "D"}[pitch]
        stem = (f"MY_{subject:06d}_{caspeal_light(code)}_P{ud}{_signed2(yaw)}"
                f"_EN_A0_D0_T0_BB_M0_R1_S0")
    else:
        stem = f"{subject_id(subject)}_{SESSION}_{RECORDING}_{YAW_TO_CAMERA[yaw]}_{code:02d}"
    return f"images/{stem}.png"


def identity_params(seed: int, subject: int) -> FaceParams:
    """The identity of a subject: independent of workers, order and the other settings."""
    return sample_identity(np.random.default_rng([seed, subject, 0x1D]))


def _nuisance(seed: int, subject: int, yaw: int, pitch: int, code: int) -> tuple[float, tuple]:
    """Small per-image brightness and colour-tone jitter (deterministic)."""
    rng = np.random.default_rng([seed, subject, yaw + 180, pitch + 180, code, 0x2B])
    tint = tuple(float(v) for v in 1.0 + rng.uniform(-0.03, 0.03, 3))
    return float(rng.uniform(0.93, 1.07)), tint


# --------------------------------------------------------------------------------------------
# Rendering one subject (runs in a worker)
# --------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def render_subject(cfg: SynthConfig, root: Path, subject: int,
                   poses: list[tuple[int, int]] | None = None) -> list[list[str]]:
    """Render and write every image of one subject (at ``poses``, default ``cfg.poses()``); returns
    its manifest rows."""
    ident = Identity(identity_params(cfg.seed, subject))
    rows: list[list[str]] = []
    codes = cfg.illumination_codes()
    for yaw, pitch in (cfg.poses() if poses is None else poses):
        geo = ident.geometry(float(yaw), float(pitch), cfg.resolution)
        lm = geo.landmarks
        for code in codes:
            bright, tint = _nuisance(cfg.seed, subject, yaw, pitch, code)
            img = shade(geo, code, bright, tint)
            pil = Image.fromarray(to_gray(img)[..., 0], "L") if cfg.gray else Image.fromarray(img)
            name = image_name(cfg, subject, yaw, pitch, code)
            pil.save(root / name, format="PNG", compress_level=3)
            rows.append([
                name, subject_id(subject), SESSION, RECORDING, YAW_TO_CAMERA[yaw], str(yaw),
                str(pitch), f"{code:02d}", *(_fmt(v) for v in lm.ravel()),
            ])
    return rows


def _rows_to_csv(rows: list[list[str]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(MANIFEST_COLUMNS)
    w.writerows(rows)
    return buf.getvalue()


def _subject_task(args: tuple[SynthConfig, str, int, list[tuple[int, int]]]) -> int:
    """Worker entry: render one subject, then record its rows (atomically) for resuming."""
    cfg, root, subject, poses = args
    rows = render_subject(cfg, Path(root), subject, poses)
    atomic_write(Path(root) / ".parts" / f"{subject_id(subject)}.csv", _rows_to_csv(rows, False))
    return subject


# --------------------------------------------------------------------------------------------
# Dataset API
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(out: str | Path, cfg: SynthConfig) -> bool:
    """True if ``out`` holds a finished render with exactly these parameters."""
    return _complete(Path(out), cfg.metadata())


def _complete(out: Path, want: dict[str, Any]) -> bool:
    meta = _read_json(out / "dataset.json")
    if meta is None or meta.get("complete") is not True or not (out / "manifest.csv").is_file():
        return False
    return all(meta.get(k) == v for k, v in want.items())


def _prepare(out: Path, want: dict[str, Any]) -> None:
    """Make ``out`` ready to (re)render: keep matching partial work, drop stale synth output."""
    meta_path = out / "dataset.json"
    parts = out / ".parts"
    stale = False
    if meta_path.exists():
        meta = _read_json(meta_path)
        if meta is None or meta.get("generator") != GENERATOR:
            raise DataError(
                f"{meta_path} was not written by slimface's synthetic generator; "
                "choose an empty --out directory"
            )
        stale = True  # finished but different parameters
    params = _read_json(parts / "params.json") if parts.is_dir() else None
    if parts.is_dir() and params != want:
        stale = True
    if stale:
        for p in (meta_path, out / "manifest.csv"):
            p.unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
        shutil.rmtree(parts, ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    parts.mkdir(exist_ok=True)
    atomic_write(parts / "params.json", json.dumps(want, sort_keys=True))


def render_dataset(cfg: SynthConfig, out: str | Path, progress: bool = True,
                   workers: int | None = None) -> Path:
    """Render the dataset into ``out`` (cached: returns at once if already complete).

    Work is split by subject over ``workers`` processes (default: min(2, CPUs)); each finished
    subject is recorded under ``out/.parts`` so an interrupted run resumes where it stopped.
    """
    cfg.validate()
    check(cfg.resolution is not None, "synth resolution is not set; use 64 or 128 (a run: data.resolution)")
    return _render(cfg, Path(out), list(range(1, cfg.subjects + 1)), cfg.poses(), cfg.metadata(),
                   progress, workers)


def identities_metadata(cfg: SynthConfig, count: int, max_abs_yaw: int, offset: int = 0) -> dict[str, Any]:
    """The dataset.json content of :func:`render_identities` (without ``complete``)."""
    poses = [(y, p) for y, p in cfg.poses() if abs(y) <= max_abs_yaw and p == 0]
    first = cfg.subjects + offset + 1
    return {**cfg.metadata(), "purpose": "identities beyond the dataset's subjects (a judge's training set)",
            "subject_ids": [first, first + count - 1], "train_subjects": count,
            "yaws": sorted({y for y, _ in poses}), "pitches": [0],
            "images": count * len(poses) * cfg.illuminations}


def render_identities(cfg: SynthConfig, count: int, max_abs_yaw: int, out: str | Path,
                      progress: bool = True, workers: int | None = None, offset: int = 0) -> Path:
    """Render ``count`` identities the dataset of ``cfg`` never contains (subject ids after its last,
    skipping ``offset`` of them, from the same generator and seed) at its yaws with ``|yaw| <= max_abs_yaw``,
    pitch 0, every illumination: more faces for a recognizer to learn, none of them a test identity. A
    synth dataset of its own (same layout; every subject counts as a training subject), cached like the dataset."""
    cfg.validate()
    check(cfg.resolution is not None, "synth resolution is not set; use 64 or 128 (a run: data.resolution)")
    check(count >= 1, f"extra identities {count} must be >= 1")
    check(offset >= 0, f"extra identities' offset {offset} must be >= 0")
    first, last = cfg.subjects + offset + 1, cfg.subjects + offset + count
    check(last <= 999, f"{count} extra identities after the dataset's {cfg.subjects} subjects (offset {offset}) need "
                       f"ids up to {last}, beyond the 3-digit Multi-PIE ids; use at most {999 - cfg.subjects - offset}")
    meta = identities_metadata(cfg, count, max_abs_yaw, offset)
    check(bool(meta["yaws"]), f"no rendered yaw is within max_abs_yaw {max_abs_yaw}")
    poses = [(y, 0) for y in meta["yaws"]]
    return _render(cfg, Path(out), list(range(first, last + 1)), poses, meta, progress, workers)


def _render(cfg: SynthConfig, out: Path, subjects: list[int], poses: list[tuple[int, int]],
            want: dict[str, Any], progress: bool, workers: int | None) -> Path:
    """Render ``subjects`` at ``poses`` into ``out`` unless it already holds a finished render whose
    dataset.json says ``want``; resumable per subject."""
    if _complete(out, want):
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create synth output directory {out}: {exc.strerror}") from exc
    with _render_lock(out, progress):
        if _complete(out, want):  # another process rendered it while this one waited
            return out
        return _render_locked(cfg, out, subjects, poses, want, progress, workers)


@contextlib.contextmanager
def _render_lock(out: Path, say: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` so that two runs sharing a data cache (two families trained
    side by side) render it once: the second waits, then finds it complete. No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: one run at a time per cache
        yield
        return
    with open(out / ".render.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                print(f"another process is rendering {out}; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _render_locked(cfg: SynthConfig, out: Path, subjects: list[int], poses: list[tuple[int, int]],
                   want: dict[str, Any], progress: bool, workers: int | None) -> Path:
    _prepare(out, want)
    parts = out / ".parts"
    todo = [s for s in subjects if not (parts / f"{subject_id(s)}.csv").is_file()]
    nworkers = max(1, min(workers or min(2, os.cpu_count() or 1), len(todo) or 1))

    from tqdm import tqdm

    bar = tqdm(total=len(subjects), initial=len(subjects) - len(todo), unit="subject",
               desc="synth faces", disable=not progress)
    tasks = [(cfg, str(out), s, poses) for s in todo]
    if nworkers == 1:
        for t in tasks:
            _subject_task(t)
            bar.update(1)
    else:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(nworkers) as pool:
            for _ in pool.imap_unordered(_subject_task, tasks):
                bar.update(1)
    bar.close()

    chunks = [(parts / f"{subject_id(s)}.csv").read_text() for s in subjects]
    atomic_write(out / "manifest.csv", _rows_to_csv([], True) + "".join(chunks))
    atomic_write(out / "dataset.json", json.dumps(dict(want, complete=True), indent=2) + "\n")
    shutil.rmtree(parts, ignore_errors=True)
    return out


def config_dict(cfg: SynthConfig) -> dict[str, Any]:
    """Plain dict of the settings (for logs)."""
    return asdict(cfg)
