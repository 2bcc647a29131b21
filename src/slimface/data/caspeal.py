"""CAS-PEAL-R1 (pose subset): file-name parsing and loading.

A name is ``_``-separated fields, e.g. ``MY_000064_IEU+00_PM+00_EN_A0_D0_T0_BB_M0_R1_S0``:
gender+age (``MY``), subject id (``000064``), lighting ``I`` + source (E ambient, F
fluorescent, L incandescent) + elevation (U/M/D) + azimuth (``IEU+00`` = ambient/normal),
pose ``P`` + U/M/D (looking up/middle/down: pitch +15/0/-15) + signed yaw (00/15/22/30/45/67),
expression ``E`` + letter (N neutral, L laugh, F frown, S surprise, C closed eyes, O open
mouth), accessory ``A0``-``A6``, distance ``D0``-``D2``, time/session ``T0``-``T2``, background
``B`` + colour letter, then ``M``/``R``/``S`` flags. Fields after the subject id are matched by
their leading letter, not their position, so re-ordered or extra fields still parse; the pose
field is required. Images are grayscale.

Record mapping: subject = the id as written, yaw/pitch from the pose field, expression letter,
session = the time field (``T0``), illumination = 0 for ambient ``IEU+00`` (the gallery
illumination) else a distinct code (:func:`lighting_code`), and ``condition`` = lighting,
accessory, distance and background so pairs only join images of one shot.
"""

from __future__ import annotations

import re
from pathlib import Path

from slimface.data.collect import BadFile, Collector, check_root, load_manifest_if_any
from slimface.data.records import FaceIndex, FaceRecord, Policy

PITCH = {"U": 15, "M": 0, "D": -15}
_FIELDS = {
    "lighting": re.compile(r"^I([EFL])([UMD])([+-]\d{2})$"),
    "pose": re.compile(r"^P([UMD])([+-]\d{2})$"),
    "expression": re.compile(r"^E([A-Z])$"),
    "accessory": re.compile(r"^A(\d)$"),
    "distance": re.compile(r"^D(\d)$"),
    "time": re.compile(r"^T(\d)$"),
    "background": re.compile(r"^B([A-Z])$"),
}
_PREFIX = re.compile(r"^[MF][YMO]$")
AMBIENT_LIGHT = "EU+00"


def lighting_code(source: str, elevation: str, azimuth: int) -> int:
    """Integer illumination id: 0 = ambient ``EU+00`` (the gallery light), else
    1 + 1000*source(E,F,L) + 200*elevation(U,M,D) + (azimuth + 99); distinct for every code."""
    if (source, elevation, azimuth) == ("E", "U", 0):
        return 0
    if not -99 <= azimuth <= 99:
        raise ValueError(f"lighting azimuth {azimuth} is out of range")
    return 1 + 1000 * "EFL".index(source) + 200 * "UMD".index(elevation) + (azimuth + 99)


def parse_caspeal_name(stem: str) -> dict[str, str | int] | None:
    """Fields of a CAS-PEAL-R1 name (without extension), or None if it is not one."""
    tokens = stem.split("_")
    if len(tokens) < 3 or not _PREFIX.match(tokens[0]) or not tokens[1].isdigit():
        return None
    out: dict[str, str | int] = {"subject": tokens[1]}
    for tok in tokens[2:]:
        for name, rx in _FIELDS.items():
            m = rx.match(tok)
            if m and name not in out:
                if name == "lighting":
                    out["light_source"], out["light_elev"], out["light_az"] = m.group(1), m.group(2), int(m.group(3))
                    out["lighting"] = tok[1:]
                elif name == "pose":
                    out["pitch"], out["yaw"] = PITCH[m.group(1)], int(m.group(2))
                else:
                    out[name] = m.group(1)
                break
    if "yaw" not in out:
        return None
    return out


def parse_caspeal(path: Path, rel: str, row: dict[str, str] | None = None, *, dataset: str = "caspeal") -> FaceRecord:
    """One CAS-PEAL-R1 file -> FaceRecord; raises BadFile (see module doc)."""
    f = parse_caspeal_name(path.stem)
    if f is None:
        raise BadFile("unparseable name", f"{path.name} is not a CAS-PEAL-R1 name with a P[UMD]+dd pose field")
    yaw = int(f["yaw"])
    if abs(yaw) > 90:
        raise BadFile("bad pose", f"yaw {yaw}")
    try:
        illum = lighting_code(str(f.get("light_source", "E")), str(f.get("light_elev", "U")), int(f.get("light_az", 0)))
    except ValueError as e:
        raise BadFile("unparseable name", str(e)) from None
    condition = "_".join(
        [
            f"I{f.get('lighting', AMBIENT_LIGHT)}",
            f"A{f.get('accessory', '0')}",
            f"D{f.get('distance', '0')}",
            f"B{f.get('background', 'B')}",
        ]
    )
    return FaceRecord(
        path=path,
        subject=str(f["subject"]),
        yaw=yaw,
        pitch=int(f["pitch"]),
        illumination=illum,
        session=f"T{f.get('time', '0')}",
        recording="01",
        expression=str(f.get("expression", "N")),
        dataset=dataset,
        condition=condition,
    )


def load_caspeal(root: str | Path, policy: Policy = "skip", *, verify: bool = False) -> FaceIndex:
    """Load CAS-PEAL-R1 pose images (any folder structure). Gallery illumination: ambient (0).

    No standard subject split exists: pass ``train_subjects`` to :meth:`FaceIndex.split`.
    """
    root_p = check_root(root)
    col = Collector(root_p, "caspeal", policy, verify=verify)
    records = col.collect(parse_caspeal, load_manifest_if_any(root_p))
    return FaceIndex(records, report=col.report, kind="caspeal", root=root_p, policy=policy, frontal_illumination=0)
