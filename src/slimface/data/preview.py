"""A contact sheet of a written synthetic dataset: rows = identities, columns = yaws.

Reads ``ROOT/manifest.csv`` (and ``ROOT/dataset.json`` for the frontal illumination) with the
csv module only, so it works on any dataset in the DESIGN.md synth layout without the loaders.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from slimface.errors import DataError
from slimface.fileio import atomic_write

ALL_YAWS: tuple[int, ...] = (-90, -75, -60, -45, -30, -15, 0, 15, 30, 45, 60, 75, 90)
_HEADER = 14


def _frontal_illumination(root: Path) -> int:
    try:
        return int(json.loads((root / "dataset.json").read_text()).get("frontal_illumination", 7))
    except (OSError, ValueError, AttributeError):
        return 7


def make_preview(root: str | Path, out: str | Path, subjects: int = 8,
                 yaws: Sequence[int] = ALL_YAWS, cell: int = 64) -> Path:
    """Write a grid PNG of the first ``subjects`` identities at ``yaws`` (frontal light, pitch 0).

    Missing cells stay empty (grey), so a partial dataset still previews.
    """
    root, out = Path(root), Path(out)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest} does not exist; render the dataset first (slimface data synth)")
    light = _frontal_illumination(root)
    cells: dict[tuple[str, int], str] = {}
    order: list[str] = []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                yaw, pitch, ill = int(row["yaw"]), int(row["pitch"]), int(row["illumination"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{manifest}: malformed row {row!r}; re-render the dataset") from exc
            if pitch != 0 or ill != light:
                continue
            sub = row["subject"]
            if sub not in order:
                order.append(sub)
            cells[(sub, yaw)] = row["file"]
    if not order:
        raise DataError(f"{manifest} has no pitch-0 images with illumination {light:02d}")
    rows = order[:subjects]
    sheet = Image.new("RGB", (cell * len(yaws), _HEADER + cell * len(rows)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for j, yaw in enumerate(yaws):
        draw.text((j * cell + cell // 2 - 10, 1), f"{yaw:+d}" if yaw else "0", fill=(230, 230, 230))
    for i, sub in enumerate(rows):
        for j, yaw in enumerate(yaws):
            rel = cells.get((sub, yaw))
            if rel is None:
                continue
            with Image.open(root / rel) as im:
                tile = im.convert("RGB").resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (j * cell, _HEADER + i * cell))
    return atomic_write(out, lambda f: sheet.save(f, format="PNG", optimize=True))
