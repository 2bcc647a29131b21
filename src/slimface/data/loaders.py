"""``load_dataset``: one entry point for every dataset kind, with an explicit bad-file policy.

Policy ``"stop"`` raises :class:`DataError` on the first bad file (naming it and the problem);
``"skip"`` skips it, counts it by reason in ``index.report`` (:class:`LoadReport`) and logs a
one-line summary. Deliberately ignored files (e.g. Multi-PIE cameras 08_1/19_1 that are not
in the 13-pose protocol) are counted in ``report.ignored`` under both policies (the policy and the
helpers every loader shares: :mod:`slimface.data.collect`).

Load time is kept cheap: each image is checked for size > 0 and a readable header; a full
decode happens lazily in :mod:`slimface.data.torch_data` (same policy), or here with
``verify=True``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from slimface.data import caspeal, folder, multipie
from slimface.data.collect import check_root, list_images
from slimface.data.records import FaceIndex, Policy
from slimface.errors import DataError

log = logging.getLogger("slimface.data")

DatasetKind = Literal["multipie", "caspeal", "folder", "synth", "auto"]
LandmarkMode = Literal["manifest", "dlib", "none"]


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


__all__ = ["DatasetKind", "LandmarkMode", "detect_kind", "load_dataset"]
