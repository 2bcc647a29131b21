"""What every dataset loader shares: the bad-file policy and the folder/manifest helpers.

:class:`Collector` walks a dataset's files under a policy -- ``"stop"`` raises :class:`DataError` on the
first bad file (naming it and the problem), ``"skip"`` skips it and counts it by reason in
``index.report`` (:class:`LoadReport`). A loader's parser raises :class:`BadFile` for a file it cannot
use and :class:`Ignored` for one its protocol deliberately leaves out. The Multi-PIE, CAS-PEAL-R1 and
folder loaders build on this module; :mod:`slimface.data.loaders` picks between them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from slimface.data.images import ImageFileError, is_image_file, open_image, probe_header
from slimface.data.landmarks import landmarks_from_row, normalize_relpath, read_manifest
from slimface.data.records import FaceRecord, LoadReport, Policy
from slimface.errors import DataError

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


__all__ = ["BadFile", "CONTENT_REASONS", "Collector", "Ignored", "LAYOUT_HINTS", "ParseFn", "apply_manifest_row",
           "check_root", "list_images", "load_manifest_if_any"]
