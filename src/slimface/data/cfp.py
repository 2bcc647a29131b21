"""CFP (Celebrities in Frontal-Profile): read a local copy's photos, fiducials and protocol.

Layout (reference.md section 4)::

    ROOT/Data/Images/<id>/{frontal,profile}/NN.jpg        (optionally Images/{train,test}/<id>/...)
    ROOT/Data/Fiducials/<id>/{frontal,profile}/NN.txt     (30 lines x,y; optional)
    ROOT/Protocol/Pair_list_F.txt, Pair_list_P.txt        lines "<index> ../Data/Images/<id>/<kind>/NN.jpg"
    ROOT/Protocol/Split/{FF,FP}/01..10/{same,diff}.txt    lines "i,j" (FP: frontal index, profile index)

:func:`load_cfp` checks all of it and names the first problem (file and line) as a DataError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slimface.data.landmark_files import cfp_fiducials_for
from slimface.errors import DataError

__all__ = ["CfpPhoto", "CfpFold", "CfpBenchmark", "load_cfp", "is_cfp_root"]

KINDS = {"F": "frontal", "P": "profile"}
#: Which list each split's first and second index refer to.
SPLIT_KINDS = {"FF": ("F", "F"), "FP": ("F", "P")}


@dataclass(frozen=True)
class CfpPhoto:
    """One listed photo: its index in its pair list (1-based as CFP writes them)."""

    index: int
    kind: str  # "frontal" | "profile"
    subject: str
    path: Path
    fiducials: Path | None = None

    @property
    def number(self) -> str:
        return self.path.stem


@dataclass
class CfpFold:
    """One fold of a split: (i, j) index pairs of the same and of different identities."""

    name: str
    same: list[tuple[int, int]] = field(default_factory=list)
    diff: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class CfpBenchmark:
    """A CFP copy: the two photo lists (by index) and the splits found (``FF``, ``FP``)."""

    root: Path
    frontal: dict[int, CfpPhoto]
    profile: dict[int, CfpPhoto]
    splits: dict[str, list[CfpFold]]

    def photos(self) -> Iterator[CfpPhoto]:
        yield from self.frontal.values()
        yield from self.profile.values()

    def pairs(self, split: str = "FP") -> list[list[tuple[CfpPhoto, CfpPhoto, bool]]]:
        """Per fold: (first photo, second photo, same identity?) -- same pairs first."""
        if split not in self.splits:
            raise DataError(f"{self.root}: no Protocol/Split/{split} folder; this copy has {', '.join(self.splits) or 'none'}")
        a_kind, b_kind = SPLIT_KINDS[split]
        lists = {"F": self.frontal, "P": self.profile}
        return [[(lists[a_kind][i], lists[b_kind][j], same) for pairs, same in ((f.same, True), (f.diff, False))
                 for i, j in pairs] for f in self.splits[split]]

    def gallery(self) -> list[CfpPhoto]:
        """One frontal per identity: the lowest-numbered one."""
        best: dict[str, CfpPhoto] = {}
        for p in sorted(self.frontal.values(), key=lambda p: (p.subject, p.number)):
            best.setdefault(p.subject, p)
        return list(best.values())


def is_cfp_root(root: Path) -> bool:
    """Whether ``root`` looks like a CFP copy (has the two pair lists)."""
    return (root / "Protocol" / "Pair_list_F.txt").is_file() and (root / "Protocol" / "Pair_list_P.txt").is_file()


def _resolve(root: Path, rel: str) -> Path:
    """A pair-list path (relative to Protocol/) in this copy, trying an Images/{train,test}/ level."""
    direct = Path(os.path.normpath(root / "Protocol" / rel.replace("\\", "/")))
    if direct.is_file():
        return direct
    parts = Path(rel.replace("\\", "/")).parts
    if "Images" in parts:
        tail = parts[parts.index("Images") + 1:]
        for level in ("test", "train"):
            cand = root / "Data" / "Images" / level / Path(*tail)
            if cand.is_file():
                return cand
    return direct


def _read_pair_list(root: Path, code: str) -> dict[int, CfpPhoto]:
    path = root / "Protocol" / f"Pair_list_{code}.txt"
    if not path.is_file():
        raise DataError(f"{root} is not a CFP copy: {path} is missing (expected Protocol/Pair_list_F.txt and _P.txt)")
    kind = KINDS[code]
    out: dict[int, CfpPhoto] = {}
    missing: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        parts = s.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<index> <path>', got {s[:60]!r}")
        idx, rel = int(parts[0]), parts[1].strip()
        if idx in out:
            raise DataError(f"{path}:{lineno}: index {idx} is listed twice")
        photo = _resolve(root, rel)
        p = Path(rel.replace("\\", "/")).parts
        if len(p) < 3 or p[-2] != kind:
            raise DataError(f"{path}:{lineno}: {rel} is not a .../<id>/{kind}/NN.jpg path")
        if not photo.is_file():
            missing.append(rel)
        out[idx] = CfpPhoto(idx, kind, p[-3], photo, cfp_fiducials_for(photo))
    if not out:
        raise DataError(f"{path} lists no photos")
    if missing:
        raise DataError(f"{len(missing)} photo(s) of {path.name} are missing under {root / 'Data' / 'Images'} "
                        f"(first: {missing[0]}); restore the copy")
    return out


def _read_split(root: Path, split: str, frontal: dict[int, CfpPhoto], profile: dict[int, CfpPhoto]) -> list[CfpFold]:
    base = root / "Protocol" / "Split" / split
    lists = {"F": frontal, "P": profile}
    a_kind, b_kind = SPLIT_KINDS[split]
    folds = []
    for d in sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        fold = CfpFold(d.name)
        for name, target in (("same", fold.same), ("diff", fold.diff)):
            f = d / f"{name}.txt"
            if not f.is_file():
                raise DataError(f"{f} is missing; each fold folder of Protocol/Split/{split} needs same.txt and diff.txt")
            for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
                s = line.strip()
                if not s:
                    continue
                try:
                    i, j = (int(v) for v in s.replace(" ", "").split(","))
                except ValueError:
                    raise DataError(f"{f}:{lineno}: expected 'i,j' (two indices), got {s[:40]!r}") from None
                if i not in lists[a_kind] or j not in lists[b_kind]:
                    raise DataError(f"{f}:{lineno}: index {i if i not in lists[a_kind] else j} is not in "
                                    f"Pair_list_{a_kind if i not in lists[a_kind] else b_kind}.txt")
                target.append((i, j))
        folds.append(fold)
    if len(folds) < 2:
        raise DataError(f"{base} has {len(folds)} fold folder(s) (01..10 expected); the protocol needs at least 2")
    return folds


def load_cfp(root: str | Path) -> CfpBenchmark:
    """Read and check a CFP copy at ``root`` (DataError naming the first problem)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CFP folder {root} does not exist; give the folder holding Data/ and Protocol/")
    frontal = _read_pair_list(root, "F")
    profile = _read_pair_list(root, "P")
    splits = {s: _read_split(root, s, frontal, profile) for s in SPLIT_KINDS
              if (root / "Protocol" / "Split" / s).is_dir()}
    if "FP" not in splits:
        raise DataError(f"{root / 'Protocol' / 'Split' / 'FP'} is missing; CFP-FP needs its 10 folds")
    return CfpBenchmark(root, frontal, profile, splits)
