"""CMU Multi-PIE: file names, camera -> yaw, expressions, and the setting-2 protocol.

Accepted layouts (both scanned recursively, so ROOT may be ``Multi-Pie/data`` or any parent):

* the official tree ``ROOT/sessionXX/multiview/SSS/rr/CC_C/SSS_ss_rr_CCC_ii.png``
  (e.g. ``session01/multiview/001/01/05_1/001_01_01_051_07.png``); where a file sits in such a
  tree, its folders must agree with its name ('name does not match its folders' otherwise);
* a flat (or any) folder of cropped images with Multi-PIE names, png/jpg/...; a suffix after
  the five fields is allowed (``001_01_01_051_07_crop128.png``).

File name fields: subject (001-346), session (01-04), recording (01-03), camera, illumination
(00-19; 07 = frontal flash). Only the 13 cameras of the +-90 deg yaw range are used; cameras
08_1 and 19_1 (elevated views) are counted in ``report.ignored``; other camera codes are bad
files. If ``ROOT/manifest.csv`` exists (the synthetic data writes one), its yaw/pitch/
illumination/landmark columns override what the name implies.
"""

from __future__ import annotations

import re
from pathlib import Path

from slimface.data.collect import BadFile, Collector, Ignored, check_root, load_manifest_if_any
from slimface.data.records import FaceIndex, FaceRecord, Policy

#: Camera code -> yaw in degrees (reference.md section 4).
CAMERA_YAW: dict[str, int] = {
    "240": 90, "010": 75, "200": 60, "190": 45, "041": 30, "050": 15, "051": 0,
    "140": -15, "130": -30, "080": -45, "090": -60, "120": -75, "110": -90,
}
YAW_CAMERA: dict[int, str] = {v: k for k, v in CAMERA_YAW.items()}
#: Real Multi-PIE cameras outside the 13-pose protocol (elevated views).
OTHER_CAMERAS = frozenset({"081", "191"})
FRONTAL_CAMERA = "051"
FRONTAL_ILLUMINATION = 7
SETTING2_TRAIN_MAX_ID = 200

#: (session, recording) -> expression. N neutral, S smile, U surprise, Q squint, D disgust,
#: C scream. Session 4 has two neutral recordings (01 and 02).
EXPRESSIONS: dict[tuple[str, str], str] = {
    ("01", "01"): "N", ("01", "02"): "S",
    ("02", "01"): "N", ("02", "02"): "U", ("02", "03"): "Q",
    ("03", "01"): "N", ("03", "02"): "S", ("03", "03"): "D",
    ("04", "01"): "N", ("04", "02"): "N", ("04", "03"): "C",
}

NAME_RE = re.compile(
    r"^(?P<subject>\d{3})_(?P<session>\d{2})_(?P<recording>\d{2})_(?P<camera>\d{3})_(?P<illum>\d{2})(?:[_\-.].*)?$"
)
_SESSION_DIR = re.compile(r"^session(\d{2})$")


def camera_dir(camera: str) -> str:
    """'051' -> '05_1' (the official tree's camera folder)."""
    return f"{camera[:2]}_{camera[2]}"


def multipie_name(subject: str, session: str, recording: str, camera: str, illumination: int, ext: str = ".png") -> str:
    """The official file name, e.g. ``001_01_01_051_07.png``."""
    return f"{subject}_{session}_{recording}_{camera}_{illumination:02d}{ext}"


def parse_multipie(path: Path, rel: str, row: dict[str, str] | None = None, *, dataset: str = "multipie") -> FaceRecord:
    """One Multi-PIE file -> FaceRecord; raises BadFile / Ignored (see module doc)."""
    m = NAME_RE.match(path.stem)
    if m is None:
        raise BadFile("unparseable name", f"{path.name} is not SSS_ss_rr_CCC_ii")
    subject, session, recording, camera, illum = m.group("subject", "session", "recording", "camera", "illum")
    if camera in OTHER_CAMERAS:
        raise Ignored(f"camera {camera} (not one of the 13 protocol poses)")
    if camera not in CAMERA_YAW:
        raise BadFile("unknown camera", f"camera {camera}")
    illumination = int(illum)
    if illumination > 19:
        raise BadFile("bad illumination", f"illumination {illum} is not 00-19")
    parts = rel.split("/")
    if len(parts) >= 6 and parts[-5] == "multiview" and _SESSION_DIR.match(parts[-6]):
        want = [f"session{session}", "multiview", subject, recording, camera_dir(camera)]
        if parts[-6:-1] != want:
            raise BadFile("name does not match its folders", f"expected {'/'.join(want)}/")
    return FaceRecord(
        path=path,
        subject=subject,
        yaw=CAMERA_YAW[camera],
        pitch=0,
        illumination=illumination,
        session=session,
        recording=recording,
        expression=EXPRESSIONS.get((session, recording), "?"),
        dataset=dataset,
    )


def load_multipie(root: str | Path, policy: Policy = "skip", *, verify: bool = False) -> FaceIndex:
    """Load a Multi-PIE folder (either layout). Default split: setting 2 (ids 001-200 train)."""
    root_p = check_root(root)
    col = Collector(root_p, "multipie", policy, verify=verify)
    manifest = load_manifest_if_any(root_p)
    records = col.collect(parse_multipie, manifest)
    index = FaceIndex(records, report=col.report, kind="multipie", root=root_p, policy=policy,
                      frontal_illumination=FRONTAL_ILLUMINATION)
    index.train_subjects = setting2_train_subjects(index)
    return index


def setting2_train_subjects(index: FaceIndex) -> list[str]:
    """Setting 2's training subjects present in ``index``: numeric ids 001-200."""
    return [s for s in index.subjects() if s.isdigit() and int(s) <= SETTING2_TRAIN_MAX_ID]


def neutral(index: FaceIndex) -> FaceIndex:
    """Neutral-expression images: recording 01 of every session plus session 4 recording 02."""
    return index.filter(expressions={"N"})


def setting2(index: FaceIndex) -> tuple[FaceIndex, FaceIndex]:
    """Multi-PIE setting 2: neutral expression, all sessions, all 20 illuminations, the 13 yaws
    within +-90 deg; subjects 001-200 train, the rest (137 in the full set) test."""
    return neutral(index).split_by_id(SETTING2_TRAIN_MAX_ID)
