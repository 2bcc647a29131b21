"""Plain folders: ``ROOT/<identity>/<image>`` plus ``ROOT/manifest.csv`` giving each file's pose.

Manifest columns: ``file`` (relative to ROOT, e.g. ``alice/0001.png``) and ``yaw`` (degrees)
are required; optional ``pitch``, ``illumination``, ``session``, ``recording``, ``expression``
and the 10 landmark columns ``lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry`` (pixel coordinates in that
file). The identity is the first folder of ``file``. Images not in the manifest are bad files
(their pose is unknown); manifest rows whose file is missing are bad too.
"""

from __future__ import annotations

from pathlib import Path

from slimface.data.landmarks import landmarks_from_row, read_manifest
from slimface.data.collect import BadFile, Collector, check_root
from slimface.data.records import FaceIndex, FaceRecord, Policy
from slimface.errors import DataError


def _int(row: dict[str, str], col: str, default: int) -> int:
    v = row.get(col, "")
    return default if v == "" else int(round(float(v)))


def parse_folder_file(path: Path, rel: str, row: dict[str, str] | None) -> FaceRecord:
    """One file + its manifest row -> FaceRecord; raises BadFile."""
    if row is None:
        raise BadFile("not in manifest", f"add a manifest.csv row for {rel}")
    parts = rel.split("/")
    if len(parts) < 2:
        raise BadFile("not in an identity folder", f"put {rel} under ROOT/<identity>/")
    if row.get("yaw", "") == "":
        raise BadFile("bad manifest row", f"manifest line {row.get('_line')}: empty yaw for {rel}")
    try:
        rec = FaceRecord(
            path=path,
            subject=parts[0],
            yaw=_int(row, "yaw", 0),
            pitch=_int(row, "pitch", 0),
            illumination=_int(row, "illumination", 0),
            session=row.get("session", "") or "01",
            recording=row.get("recording", "") or "01",
            expression=row.get("expression", "") or "N",
            landmarks=landmarks_from_row(row),
            dataset="folder",
        )
    except ValueError as e:
        raise BadFile("bad manifest row", f"manifest line {row.get('_line')}: {e}") from None
    return rec


def load_folder(root: str | Path, policy: Policy = "skip", *, verify: bool = False) -> FaceIndex:
    """Load a plain identity-folder dataset. No default split: pass ``train_subjects`` to split()."""
    root_p = check_root(root)
    mpath = root_p / "manifest.csv"
    if not mpath.is_file():
        raise DataError(
            f"plain folder dataset {root_p} needs {mpath} with columns file,yaw "
            "(optional pitch, illumination and landmark columns), see README"
        )
    manifest = read_manifest(mpath, ("file", "yaw"))
    has_illum = any(r.get("illumination", "") != "" for r in manifest.values())
    col = Collector(root_p, "folder", policy, verify=verify)
    records = col.collect(parse_folder_file, manifest, dedupe=False, manifest_overrides=False)
    # Gallery illumination: Multi-PIE's frontal flash (7) when illumination codes are given, else 0 (the default).
    return FaceIndex(records, report=col.report, kind="folder", root=root_p, policy=policy,
                     frontal_illumination=7 if has_illum else 0)
