"""``load_dataset``: one entry point for every dataset kind, with an explicit bad-file policy.

Policy ``"stop"`` raises :class:`DataError` on the first bad file (naming it and the problem);
``"skip"`` skips it, counts it by reason in ``index.report`` (:class:`LoadReport`) and logs a
one-line summary. Deliberately ignored files (e.g. Multi-PIE cameras 08_1/19_1 that are not
in the 13-pose protocol) are counted in ``report.ignored`` under both policies.

Load time is kept cheap: each image is checked for size > 0 and a readable header; a full
decode happens lazily in :mod:`slimface.data.torch_data` (same policy), or here with
``verify=True``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from slimface.data.images import ImageFileError, is_image_file, open_image, probe_header
from slimface.data.landmarks import landmarks_from_row, normalize_relpath, read_manifest
from slimface.data.records import FaceIndex, FaceRecord, LoadReport, Policy
from slimface.errors import DataError

log = logging.getLogger("slimface.data")

DatasetKind = Literal["multipie", "caspeal", "folder", "synth", "auto"]
LandmarkMode = Literal["manifest", "dlib", "none"]

LAYOUT_HINTS = {
    "multipie": "Multi-PIE names SSS_ss_rr_CCC_ii.png, in the official sessionXX/multiview/SSS/rr/CC_C tree or one flat folder",
    "caspeal": "CAS-PEAL-R1 names like MY_000064_IEU+00_PM+00_EN_A0_D0_T0_BB_M0_R1_S0.tif",
    "folder": "ROOT/<identity>/<image> plus ROOT/manifest.csv with columns file,yaw",
    "synth": "the output folder of 'slimface synth' (dataset.json, manifest.csv, images/)",
}


#: Bad-file reasons about the image itself (not its name or manifest row).
CONTENT_REASONS = frozenset({"missing file", "empty file", "unreadable image", "wrong size", "wrong channel count"})


class BadFile(Exception):
    """A file that cannot be used; ``reason`` is the report category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Ignored(Exception):
    """A valid file that this protocol deliberately leaves out (counted, never an error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# parse(path, relpath, manifest_row or None) -> FaceRecord; raises BadFile / Ignored
ParseFn = Callable[[Path, str, "dict[str, str] | None"], FaceRecord]


def check_root(root: str | Path) -> Path:
    """The dataset folder as a Path; DataError if it is missing or not a folder."""
    p = Path(root).expanduser()
    if not p.exists():
        raise DataError(f"dataset folder not found: {p}; check the path")
    if not p.is_dir():
        raise DataError(f"dataset path {p} is a file, not a folder; give the dataset's root folder")
    return p


def list_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted, hidden files/folders such as ._x.png skipped)."""
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.is_file() and is_image_file(p):
            out.append(p)
    return sorted(out)


def apply_manifest_row(rec: FaceRecord, row: dict[str, str]) -> None:
    """Overwrite subject/yaw/pitch/illumination/landmarks from a manifest row where it gives them.

    The manifest is the explicit source (the synthetic data's CAS-PEAL-style names carry
    6-digit ids, its manifest the DESIGN.md ids 001..N). Raises ValueError for a non-numeric
    value (the caller turns it into 'bad manifest row').
    """
    if row.get("subject", ""):
        rec.subject = row["subject"]
    for col in ("yaw", "pitch", "illumination"):
        v = row.get(col, "")
        if v != "":
            setattr(rec, col, int(round(float(v))))
    lm = landmarks_from_row(row)
    if lm is not None:
        rec.landmarks = lm


class Collector:
    """Walks a dataset folder, applies the policy and fills a :class:`LoadReport`."""

    def __init__(self, root: Path, kind: str, policy: Policy, *, verify: bool = False) -> None:
        if policy not in ("skip", "stop"):
            raise DataError(f"unknown bad-file policy {policy!r}; use 'skip' or 'stop'")
        self.root = root
        self.kind = kind
        self.policy: Policy = policy
        self.verify = verify
        self.report = LoadReport(root=str(root), kind=kind)

    def bad(self, reason: str, file: str | Path, detail: str = "") -> None:
        if self.policy == "stop":
            extra = f" ({detail})" if detail else ""
            # the layout hint only helps when the name/manifest is the problem, not the pixels
            layout = "" if reason in CONTENT_REASONS else f"expected {LAYOUT_HINTS.get(self.kind, 'a supported layout')} - "
            raise DataError(
                f"bad file {file}: {reason}{extra}; {layout}fix or remove it, or load with policy='skip' "
                "(slimface run: --set data.policy=skip)"
            )
        self.report.skip(reason, file)

    def collect(
        self,
        parse: ParseFn,
        manifest: dict[str, dict[str, str]] | None = None,
        *,
        dedupe: bool = True,
        manifest_overrides: bool = True,
    ) -> list[FaceRecord]:
        """Parse, probe and (optionally) merge the manifest into every image under root."""
        records: list[FaceRecord] = []
        channels: dict[int, int] = {}  # id(record) -> stored channel count
        seen: dict[tuple, Path] = {}
        on_disk: set[str] = set()
        for path in list_images(self.root):
            rel = normalize_relpath(path.relative_to(self.root).as_posix())
            on_disk.add(rel)
            self.report.files_seen += 1
            row = manifest.get(rel) if manifest is not None else None
            try:
                rec = parse(path, rel, row)
            except Ignored as ig:
                self.report.ignored[ig.reason] += 1
                continue
            except BadFile as b:
                self.bad(b.reason, path, b.detail)
                continue
            if row is not None and manifest_overrides:
                try:
                    apply_manifest_row(rec, row)
                except ValueError as e:
                    self.bad("bad manifest row", path, f"manifest line {row.get('_line')}: {e}")
                    continue
            try:
                rec.image_size, channels[id(rec)] = probe_header(path)
                if self.verify:
                    open_image(path)
            except ImageFileError as e:
                self.bad(e.reason, path, e.detail)
                continue
            if dedupe:
                key = (rec.subject, rec.session, rec.recording, rec.yaw, rec.pitch, rec.illumination, rec.expression, rec.condition)
                if key in seen:
                    self.bad("duplicate image", path, f"same subject/session/recording/pose/illumination as {seen[key].name}")
                    continue
                seen[key] = path
            records.append(rec)
        records = self._drop_odd_shapes(records, channels)
        if manifest is not None:
            for rel, row in manifest.items():
                if rel not in on_disk:
                    self.bad("listed in manifest but missing", self.root / rel, f"manifest line {row.get('_line')}")
        self.report.loaded = len(records)
        if not records:
            found = "no image files (png/jpg/bmp/tif) found" if self.report.files_seen == 0 else self.report.skipped_text()
            if self.report.ignored and not self.report.skipped:
                found += ", " + ", ".join(f"{n} ignored ({r})" for r, n in self.report.ignored.items())
            raise DataError(
                f"no usable images in {self.root}: {found}; check the layout "
                f"({LAYOUT_HINTS.get(self.kind, 'see README')}), see README"
            )
        return records


    def _drop_odd_shapes(self, records: list[FaceRecord], channels: dict[int, int]) -> list[FaceRecord]:
        """Apply the policy to images whose size or channel count differs from the dataset's usual one.

        A dataset of aligned crops (Multi-PIE, CAS-PEAL, synth) has one size and one colour layout; a file that differs (a
        thumbnail, an RGBA export, a gray frame in an RGB set) would be silently stretched or
        converted into a training pair, so it is a bad file like a truncated one.
        """
        if len(records) < 2 or self.kind == "folder":
            # a plain folder holds a user's photos in any size; the datasets resize them
            return records
        sizes = Counter(r.image_size for r in records)
        chans = Counter(channels[id(r)] for r in records)
        (size, n_size), (chan, n_chan) = sizes.most_common(1)[0], chans.most_common(1)[0]
        kept = []
        for r in records:
            w, h = r.image_size or (0, 0)
            if r.image_size != size:
                self.bad("wrong size", r.path, f"{w}x{h}, while {n_size} other images are {size[0]}x{size[1]}")
            elif channels[id(r)] != chan:
                self.bad("wrong channel count", r.path,
                         f"{channels[id(r)]} channel(s), while {n_chan} other images have {chan}")
            else:
                kept.append(r)
        return kept


def load_manifest_if_any(root: Path, required: tuple[str, ...] = ("file",)) -> dict[str, dict[str, str]] | None:
    p = root / "manifest.csv"
    return read_manifest(p, required) if p.is_file() else None


def _read_dataset_json(root: Path) -> dict:
    p = root / "dataset.json"
    if not p.is_file():
        raise DataError(f"{root} has no dataset.json, so it is not a slimface synthetic dataset; generate one with 'slimface synth' or pick another kind")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{p} is not valid JSON ({e}); regenerate the synthetic dataset") from None
    if not isinstance(meta, dict):
        raise DataError(f"{p} must hold a JSON object; regenerate the synthetic dataset")
    if meta.get("complete") is False:
        raise DataError(f"synthetic dataset {root} is incomplete (generation was interrupted); re-run 'slimface synth'")
    return meta


def detect_kind(root: Path) -> str:
    """Guess the dataset kind from its files (dataset.json, then file names, then manifest)."""
    from slimface.data import caspeal, multipie

    if (root / "dataset.json").is_file():
        return "synth"
    n_mp = n_cp = 0
    for i, p in enumerate(list_images(root)):
        if i >= 500:
            break
        n_mp += multipie.NAME_RE.match(p.stem) is not None
        n_cp += caspeal.parse_caspeal_name(p.stem) is not None
    if n_mp or n_cp:
        return "multipie" if n_mp >= n_cp else "caspeal"
    if (root / "manifest.csv").is_file():
        return "folder"
    raise DataError(
        f"cannot tell the dataset kind of {root}: no Multi-PIE or CAS-PEAL-R1 file names, no dataset.json and "
        "no manifest.csv; pass the kind explicitly (multipie, caspeal, folder, synth), see README"
    )


def _apply_landmark_mode(index: FaceIndex, mode: str) -> None:
    if mode == "manifest":
        return
    if mode == "none":
        for r in index:
            r.landmarks = None
        return
    if mode == "dlib":
        from slimface.data.landmarks import DlibLandmarks

        det = DlibLandmarks()
        for r in index:
            r.landmarks = det(r.path)
            if r.landmarks is None:
                index.report.notes["no face found (dlib)"] += 1
        return
    raise DataError(f"unknown landmarks source {mode!r}; use 'manifest', 'dlib' or 'none'")


def load_dataset(
    kind: DatasetKind,
    root: str | Path,
    policy: Policy = "skip",
    landmarks: LandmarkMode = "manifest",
    *,
    verify: bool = False,
) -> FaceIndex:
    """Load a dataset folder as a :class:`FaceIndex` (``index.report`` tells what was skipped).

    kinds: ``multipie`` (official tree or flat folder of Multi-PIE names), ``caspeal``
    (CAS-PEAL-R1 pose names), ``folder`` (ROOT/<identity>/<file> + manifest.csv),
    ``synth`` (built-in synthetic data: dataset.json + manifest.csv + Multi-PIE or CAS-PEAL
    names), ``auto`` (guess). ``landmarks``: from manifest.csv (None where absent), detected
    with dlib (None where no face is found - counted in ``report.notes``), or none.
    ``verify=True`` fully decodes every image at load time (slower; catches truncated files).
    """
    from slimface.data import caspeal, folder, multipie

    if landmarks not in ("manifest", "dlib", "none"):
        raise DataError(f"unknown landmarks source {landmarks!r}; use 'manifest', 'dlib' or 'none'")
    root_p = check_root(root)
    if kind == "auto":
        kind = detect_kind(root_p)  # type: ignore[assignment]
    if kind == "multipie":
        index = multipie.load_multipie(root_p, policy, verify=verify)
    elif kind == "caspeal":
        index = caspeal.load_caspeal(root_p, policy, verify=verify)
    elif kind == "folder":
        index = folder.load_folder(root_p, policy, verify=verify)
    elif kind == "synth":
        meta = _read_dataset_json(root_p)
        if not (root_p / "manifest.csv").is_file():
            raise DataError(f"synthetic dataset {root_p} has no manifest.csv; re-run 'slimface synth'")
        loader = caspeal.load_caspeal if meta.get("pitch") else multipie.load_multipie
        index = loader(root_p, policy, verify=verify)
        index.kind = index.report.kind = "synth"
        ts = meta.get("train_subjects")
        if ts is not None:
            if not isinstance(ts, (int, list)) or isinstance(ts, bool):
                raise DataError(f"{root_p / 'dataset.json'}: train_subjects must be a count or a list of ids, got {ts!r}")
            index.train_subjects = ts if isinstance(ts, int) else [str(s) for s in ts]
        fi = meta.get("frontal_illumination")
        if isinstance(fi, int) and not isinstance(fi, bool):
            index.frontal_illumination = fi
    else:
        raise DataError(f"unknown dataset kind {kind!r}; use multipie, caspeal, folder, synth or auto")
    _apply_landmark_mode(index, landmarks)
    rep = index.report
    (log.warning if rep.skipped else log.info)("%s", rep.summary())
    return index


__all__ = [
    "BadFile",
    "Collector",
    "DatasetKind",
    "Ignored",
    "LandmarkMode",
    "check_root",
    "detect_kind",
    "list_images",
    "load_dataset",
    "LoadReport",
]
