"""Scalar logs (JSON lines), progress display and sample grids for training runs.

No TensorBoard dependency: ``scalars.jsonl`` holds one JSON object per log step
(``{"step": 120, "time": ..., "loss_G": 1.23, ...}``), easy to plot with pandas/matplotlib and safe to
append to. On resume the file is cut back to the resumed step so a run that was killed after its last
checkpoint leaves no duplicate or half-written lines.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from slimface.fileio import atomic_write


class ScalarWriter:
    """Append-only JSONL scalar log."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` and any partial last line (atomic rewrite)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
                keep.append(line)
        atomic_write(self.path, "".join(k + "\n" for k in keep))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        rec: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in scalars.items():
            v = float(v)
            rec[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_scalars(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``scalars.jsonl`` (partial lines skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def format_log_line(step: int, total: int, metrics: dict[str, float], it_s: float | None) -> str:
    """``step 120/500  loss_G 1.234  loss_D 0.456  2.3 it/s``."""
    parts = [f"step {step}/{total}"]
    parts += [f"{k} {float(v):.4g}" for k, v in metrics.items()]
    if it_s is not None:
        parts.append(f"{it_s:.3g} it/s")
    return "  ".join(parts)


class Progress:
    """tqdm bar when interactive, plus a readable log line every ``log_every`` steps either way."""

    def __init__(
        self, total: int, initial: int, enabled: bool, bar: bool, stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.total = total
        use_bar = enabled and bar and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, leave=False) if use_bar else None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, pad: int = 2) -> Path:
    """Write ``(B, C, H, W)`` images in [-1, 1] (C = 1 or 3) as one PNG grid (white padding)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1|3, H, W) images, got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    b, c, h, w = x.shape
    nrow = max(1, min(nrow, b))
    rows = math.ceil(b / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = arr[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)  # L or RGB from the shape
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


__all__ = ["ScalarWriter", "read_scalars", "format_log_line", "Progress", "save_grid"]
