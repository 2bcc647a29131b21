"""Figures for the report: image grids (paper Figs. 3–4), rank-1 vs yaw, the MACs/identity Pareto plot and
the sensitivity plot (metric change vs MACs saved).

Grids are composed with PIL so their pixel size is exact and predictable (cells are shown at native
resolution, times ``scale``); plots use matplotlib's Agg backend, saved without tight cropping so
``figsize × dpi`` is the output size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from torch import Tensor  # noqa: E402

from slimface.fileio import atomic_write  # noqa: E402

GRID_PAD = 2
GRID_BACKGROUND = (255, 255, 255)


def tensor_to_pil(image: Tensor) -> Image.Image:
    """``(C, H, W)`` in [-1, 1] (C = 1 or 3) -> an RGB PIL image."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) image tensor, got {tuple(image.shape)}")
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy()), mode="RGB")


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` with newlines at spaces so that each line fits ``width`` pixels (a single word that
    is wider stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and _text_size(draw, f"{lines[-1]} {word}", font)[0] <= width - GRID_PAD:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def image_grid(
    rows: Sequence[Sequence[Tensor | None]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    out: str | Path = "grid.png",
    scale: int = 1,
) -> Path:
    """Write a PNG grid: one row per example (e.g. input | ground truth | each model's output).

    Every cell is ``(C, H, W)`` in [-1, 1]; ``None`` leaves a blank cell. Cells are ``max H × max W``
    (times ``scale``, nearest-neighbour), separated by ``GRID_PAD`` pixels; labels add a left column
    and/or a top row just wide/high enough for the text. Returns the written path.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("image_grid needs at least one non-empty row")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    ncols = max(len(r) for r in rows)
    if col_labels is not None and len(col_labels) != ncols:
        raise ValueError(f"{len(col_labels)} column labels for {ncols} columns")
    cells = [img for r in rows for img in r if img is not None]
    if not cells:
        raise ValueError("image_grid got only empty cells")
    cell_h = max(int(c.shape[-2]) for c in cells) * scale
    cell_w = max(int(c.shape[-1]) for c in cells) * scale

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = (max(_text_size(probe, t, font)[0] for t in row_labels) + 2 * GRID_PAD) if row_labels else 0
    if col_labels is not None:  # wrap at spaces so a long model name stays over its own column
        col_labels = [_wrap(probe, t, font, cell_w) for t in col_labels]
    label_h = (max(_text_size(probe, t, font)[1] for t in col_labels) + 2 * GRID_PAD + 2) if col_labels else 0
    width = label_w + ncols * cell_w + (ncols + 1) * GRID_PAD
    height = label_h + len(rows) * cell_h + (len(rows) + 1) * GRID_PAD
    canvas = Image.new("RGB", (width, height), GRID_BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for j in range(ncols if col_labels else 0):
        x = label_w + GRID_PAD + j * (cell_w + GRID_PAD)
        draw.multiline_text((x + GRID_PAD, GRID_PAD), col_labels[j], fill=(0, 0, 0), font=font,  # type: ignore[index]
                            spacing=1)
    for i, row in enumerate(rows):
        y = label_h + GRID_PAD + i * (cell_h + GRID_PAD)
        if row_labels:
            th = _text_size(draw, row_labels[i], font)[1]
            draw.text((GRID_PAD, y + (cell_h - th) // 2), row_labels[i], fill=(0, 0, 0), font=font)
        for j, img in enumerate(row):
            if img is None:
                continue
            pil = tensor_to_pil(img)
            if scale != 1:
                pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
            x = label_w + GRID_PAD + j * (cell_w + GRID_PAD)
            canvas.paste(pil, (x, y))
    return atomic_write(out, lambda f: canvas.save(f, format="PNG"))


def plot_rank1_vs_yaw(
    results: Mapping[str, Mapping[Any, float]],
    out: str | Path,
    figsize: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
    title: str = "Rank-1 vs yaw",
) -> Path:
    """Line plot of rank-1 (%) against |yaw| for each model; non-numeric groups (``avg``) are skipped."""
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        for model, per_group in results.items():
            pts = sorted((float(k), float(v)) for k, v in per_group.items() if isinstance(k, (int, float)))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=model)
        ax.set_xlabel("|yaw| (degrees)")
        ax.set_ylabel("rank-1 (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if results:
            ax.legend(loc="lower left", fontsize="small")
        return _save(fig, out, dpi)
    finally:
        plt.close(fig)


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the points not dominated in (fewer ``macs``, higher ``metric``), by increasing MACs."""
    order = sorted(range(len(points)), key=lambda i: (float(points[i]["macs"]), -float(points[i]["metric"])))
    front: list[int] = []
    best = -float("inf")
    for i in order:
        m = float(points[i]["metric"])
        if m > best:
            front.append(i)
            best = m
    return front


def plot_pareto(
    points: Sequence[Mapping[str, Any]],
    out: str | Path,
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
    metric_label: str = "identity metric",
    budget: float | None = None,
) -> Path:
    """Scatter of candidate sub-networks (``macs`` vs ``metric``) with the Pareto front drawn as a
    step line and ``chosen`` points starred; an optional MACs ``budget`` is a vertical dashed line.
    Each point is a dict with ``macs``, ``metric``, optional ``config`` and ``chosen``."""
    if not points:
        raise ValueError("plot_pareto needs at least one point")
    macs = np.array([float(p["macs"]) for p in points])
    metric = np.array([float(p["metric"]) for p in points])
    unit, div = _mac_unit(float(macs.max()))
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        ax.scatter(macs / div, metric, s=14, c="tab:gray", alpha=0.6, label="candidates")
        front = pareto_front(points)
        ax.step(macs[front] / div, metric[front], where="post", c="tab:blue", lw=1.5, label="Pareto front")
        ax.scatter(macs[front] / div, metric[front], s=22, c="tab:blue")
        chosen = [i for i, p in enumerate(points) if p.get("chosen")]
        if chosen:
            ax.scatter(macs[chosen] / div, metric[chosen], s=160, marker="*", c="tab:red", zorder=5, label="chosen")
        if budget is not None:
            ax.axvline(budget / div, ls="--", c="tab:red", lw=1, label="budget")
        _label_axes(ax, unit, metric_label, "lower right")
        return _save(fig, out, dpi)
    finally:
        plt.close(fig)


def plot_sensitivity(
    rows: Sequence[Mapping[str, Any]],
    out: str | Path,
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
    metric_label: str = "metric change",
    title: str = "Sensitivity: one change at a time",
) -> Path:
    """Scatter of each single change's metric change (``delta``) against the MACs it saves
    (``macs_saved``), one marker per ``change`` kind (a sensitivity table's rows); the zero line is
    the unchanged teacher after the same fine-tune."""
    if not rows:
        raise ValueError("plot_sensitivity needs at least one row")
    saved = np.array([float(r["macs_saved"]) for r in rows])
    unit, div = _mac_unit(float(np.abs(saved).max()))
    styles = {"separable": ("o", "tab:blue", "conv -> separable"), "shrink": ("^", "tab:orange", "group -> smallest width")}
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        for kind in dict.fromkeys(str(r["change"]) for r in rows):
            marker, colour, label = styles.get(kind, ("s", "tab:gray", kind))
            pick = [i for i, r in enumerate(rows) if r["change"] == kind]
            ax.scatter(saved[pick] / div, [float(rows[i]["delta"]) for i in pick], s=18, marker=marker,
                       c=colour, alpha=0.75, label=label)
        ax.axhline(0.0, c="black", lw=0.8)
        ax.set_title(title)
        _label_axes(ax, f"{unit} saved", metric_label, "lower left")
        return _save(fig, out, dpi)
    finally:
        plt.close(fig)


def _label_axes(ax: Any, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """Axis labels, a light grid and a small legend: the house style of the scatter plots."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="small")


def _mac_unit(top: float) -> tuple[str, float]:
    """The axis unit for MAC counts up to ``top`` and its divisor."""
    return ("GMACs", 1e9) if top >= 1e8 else ("MMACs", 1e6) if top >= 1e5 else ("MACs", 1.0)


def _save(fig: Any, out: str | Path, dpi: int) -> Path:
    """Written atomically, like every file of a run: a figure replaced in a copied run folder (hard
    links) never changes the original's."""
    return atomic_write(out, lambda f: fig.savefig(f, dpi=dpi, format="png"))
