"""Rank-1 identification, image-quality metrics and report figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d

from slimface.errors import DataError
from slimface.evaluate.figures import image_grid, pareto_front, plot_pareto, plot_rank1_vs_yaw
from slimface.evaluate.quality import PSNR_CAP_DB, image_quality, l1, psnr, ssim
from slimface.evaluate.rank1 import (
    embed_all,
    nearest_gallery,
    pose_group,
    rank1_per_group,
    table1_markdown,
    table2_markdown,
    yaw_group,
)

# ---------------------------------------------------------------------------------------------
# Rank-1


def test_yaw_and_pose_groups_pool_signs() -> None:
    assert [yaw_group(y) for y in (-90, 90, -15.0, 14.6, 0, -0.2)] == [90, 90, 15, 15, 0, 0]
    assert pose_group(-15, -30) == (-15, 30) and pose_group(0.0, 45) == (0, 45)


def test_rank1_known_answer_with_pooled_yaws() -> None:
    e = torch.eye(3)
    gallery, gallery_subj = e, ["a", "b", "c"]
    probes = torch.stack([
        e[0] + 0.1 * e[1],  # a @ +45 -> a  (hit)
        e[0] + 0.2 * e[2],  # b @ -45 -> a  (miss)
        e[2],               # c @ +15 -> c  (hit)
        e[1] + 0.5 * e[0],  # a @ -15 -> b  (miss)
        e[1],               # b @ -30 -> b  (hit)
        e[2] + 0.9 * e[0],  # c @ +45 -> c  (hit)
    ])
    subjects = ["a", "b", "c", "a", "b", "c"]
    yaws = [45, -45, 15, -15, -30, 45]
    res = rank1_per_group(probes, subjects, [yaw_group(y) for y in yaws], gallery, gallery_subj)
    assert list(res) == [15, 30, 45, "avg"]
    assert res[45] == pytest.approx(200 / 3)
    assert res[15] == pytest.approx(50.0)
    assert res[30] == pytest.approx(100.0)
    assert res["avg"] == pytest.approx((200 / 3 + 50 + 100) / 3)


def test_matching_is_cosine_not_dot_or_euclidean() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.05, 0.05]])
    probe = torch.tensor([[1.0, 0.9]])
    # dot product and Euclidean distance would both pick "a"; cosine picks "b".
    assert nearest_gallery(probe, gallery, ["a", "b"]) == ["b"]
    res = rank1_per_group(probe, ["b"], [0], gallery, ["a", "b"])
    assert res == {0: 100.0, "avg": 100.0}


def test_rank1_accepts_tensor_subjects_and_rejects_unknown_subjects() -> None:
    g = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    res = rank1_per_group(g, torch.arange(5), torch.zeros(5, dtype=torch.long), g, torch.arange(5))
    assert res[0] == 100.0
    with pytest.raises(DataError, match="'z' has no gallery image"):
        rank1_per_group(g[:1], ["z"], [0], g, list("abcde"))


def test_tables_in_paper_layout() -> None:
    t1 = table1_markdown({"TP-GAN": {90: 64.64, 75: 77.43, 60: 87.72, 45: 95.38, 30: 98.06, 15: 98.68, 0: 100.0,
                                     "avg": 1.0}, "student": {45: 90.0}})
    lines = t1.splitlines()
    assert lines[0] == "| model | 90° | 75° | 60° | 45° | 30° | 15° | avg |"
    # avg is the mean of the six columns (86.985; the paper's 86.99 comes from unrounded values):
    # neither the frontal group nor the input's own "avg" leaks in.
    assert lines[2] == "| TP-GAN | 64.64 | 77.43 | 87.72 | 95.38 | 98.06 | 98.68 | 86.98 |"
    assert lines[3] == "| student | – | – | – | 90.00 | – | – | 90.00 |"
    t2 = table2_markdown({"m": {(p, y): 90.0 + p / 15 + y / 15 for p in (-15, 0, 15) for y in (0, 15, 30, 45)}})
    rows = t2.splitlines()
    assert rows[0] == "| model | pitch | 0° | 15° | 30° | 45° | avg |"
    assert rows[2] == "| m | -15° | 89.00 | 90.00 | 91.00 | 92.00 | 90.50 |"
    assert rows[3].startswith("| m | 0° | 90.00") and rows[4].startswith("| m | +15° | 91.00")


class _CountingRecognizer(torch.nn.Module):
    embedding_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(images.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled() or self.training)
        mean = images.flatten(1).mean(1)
        return torch.stack([mean, torch.ones_like(mean)], 1) * self.scale


def test_embed_all_batches_in_order_without_grad() -> None:
    rec = _CountingRecognizer().train()
    singles = [torch.full((1, 4, 4), float(i)) for i in range(5)]
    stream = [*singles, torch.stack([torch.full((1, 4, 4), float(i)) for i in range(5, 12)])]
    out = embed_all(rec, iter(stream), batch_size=4)
    assert out.shape == (12, 2)
    assert out[:, 0].tolist() == [float(i) for i in range(12)]
    assert rec.batches == [4, 4, 4]
    assert not any(rec.grad_enabled)
    assert rec.training  # mode restored
    assert embed_all(rec, iter([]), batch_size=4).shape == (0, 2)


# ---------------------------------------------------------------------------------------------
# Image quality


def _ref_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Independent NumPy/SciPy SSIM (Wang et al. 2004) for one 2-D [0, 1] image pair, valid region."""
    ax = np.arange(11) - 5.0
    g = np.exp(-(ax**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()

    def filt(a: np.ndarray) -> np.ndarray:
        return convolve2d(a, w[::-1, ::-1], mode="valid")

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(m.mean())


def test_identical_images() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(l1(x, x) == 0)
    assert torch.all(torch.isinf(psnr(x, x)))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    q = image_quality(x, x)
    assert q["psnr"] == PSNR_CAP_DB and q["l1"] == 0.0 and q["ssim"] == pytest.approx(1.0)


def test_psnr_and_l1_for_known_noise() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(1, 1, 32, 32)
    # ±0.2 in [-1, 1] units = ±0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB, L1 0.1.
    noise = torch.where(torch.rand(1, 1, 32, 32, generator=g) > 0.5, 0.2, -0.2)
    assert psnr(target + noise, target).item() == pytest.approx(20.0, abs=1e-4)
    assert l1(target + noise, target).item() == pytest.approx(0.1, abs=1e-6)
    sigma = 0.05  # Gaussian noise: PSNR = -10 log10(MSE) with the empirical MSE
    pred = target + torch.randn(1, 1, 32, 32, generator=g) * sigma
    mse01 = ((pred / 2) ** 2).mean().item()
    assert psnr(pred, target).item() == pytest.approx(-10 * math.log10(mse01), rel=1e-5)


def test_ssim_constant_images_closed_form() -> None:
    a, b = torch.full((1, 1, 16, 16), -0.2), torch.full((1, 1, 16, 16), 0.4)  # 0.4 and 0.7 on [0, 1]
    c1 = 0.01**2
    expected = (2 * 0.4 * 0.7 + c1) / (0.4**2 + 0.7**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_matches_independent_reference_on_blur_and_shift() -> None:
    rng = np.random.default_rng(0)
    img = gaussian_filter(rng.random((48, 40)), 1.0)
    img = (img - img.min()) / (img.max() - img.min())
    blurred = gaussian_filter(img, 1.5)
    shifted = np.roll(img, 2, axis=1)
    to_t = lambda a: torch.from_numpy(a * 2 - 1).float()[None, None]  # noqa: E731
    for other in (blurred, shifted):
        ours = ssim(to_t(img), to_t(other)).item()
        ref = _ref_ssim(img.astype(np.float32).astype(np.float64), other.astype(np.float32).astype(np.float64))
        assert ours < 0.99
        assert ours == pytest.approx(ref, abs=1e-5)
    # RGB: mean over channels.
    rgb = torch.cat([to_t(img), to_t(blurred), to_t(img)], 1)
    rgb2 = torch.cat([to_t(blurred), to_t(blurred), to_t(shifted)], 1)
    per_ch = [ssim(rgb[:, i : i + 1], rgb2[:, i : i + 1]).item() for i in range(3)]
    assert ssim(rgb, rgb2).item() == pytest.approx(float(np.mean(per_ch)), abs=1e-6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------------------------------------
# Figures


def test_image_grid_pixel_size_and_content(tmp_path: Path) -> None:
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 32, 24)
    gray = torch.zeros(1, 32, 24)
    rows = [[red, gray, red], [gray, None, red]]
    out = image_grid(rows, out=tmp_path / "plain.png")
    im = Image.open(out)
    assert im.size == (3 * 24 + 4 * 2, 2 * 32 + 3 * 2)
    px = np.asarray(im.convert("RGB"))
    assert tuple(px[2 + 5, 2 + 5]) == (255, 0, 0)  # first cell is red
    assert tuple(px[2 + 5, 2 + 24 + 2 + 5]) == (128, 128, 128)  # gray 0 -> 128
    assert tuple(px[2 + 32 + 2 + 5, 2 + 24 + 2 + 5]) == (255, 255, 255)  # blank cell
    labelled = image_grid(rows, row_labels=["yaw 90", "yaw 45"], col_labels=["input", "GT", "student"],
                          out=tmp_path / "labelled.png", scale=2)
    w, h = Image.open(labelled).size
    assert w > 3 * 48 + 4 * 2 and h > 2 * 64 + 3 * 2
    with pytest.raises(ValueError, match="row labels"):
        image_grid(rows, row_labels=["one"], out=tmp_path / "bad.png")


def test_image_grid_wraps_long_column_labels(tmp_path: Path) -> None:
    """A model name wider than its column goes on several lines instead of running into the next."""
    from PIL import ImageDraw, ImageFont

    from slimface.evaluate.figures import _wrap

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    wrapped = _wrap(draw, "tpgan compressed (ONNX int8)", font, 64)
    assert wrapped.replace("\n", " ") == "tpgan compressed (ONNX int8)" and "\n" in wrapped
    assert all(draw.textbbox((0, 0), line, font=font)[2] <= 64 for line in wrapped.split("\n"))
    assert _wrap(draw, "GT", font, 64) == "GT"
    cell = torch.zeros(3, 64, 64)
    short = Image.open(image_grid([[cell, cell]], col_labels=["a", "b"], out=tmp_path / "s.png"))
    long = Image.open(image_grid([[cell, cell]], col_labels=["a", "tpgan compressed model"], out=tmp_path / "l.png"))
    assert long.size[0] == short.size[0] and long.size[1] > short.size[1]


def test_pareto_front_known_answer() -> None:
    pts = [
        {"macs": 1e9, "metric": 80.0},
        {"macs": 2e9, "metric": 79.0},  # dominated by the first
        {"macs": 2e9, "metric": 85.0},
        {"macs": 3e9, "metric": 85.0},  # not better than a cheaper one
        {"macs": 4e9, "metric": 90.0},
        {"macs": 0.5e9, "metric": 60.0},
    ]
    assert pareto_front(pts) == [5, 0, 2, 4]


def test_plots_have_expected_size(tmp_path: Path) -> None:
    res = {"teacher": {15: 98.0, 45: 95.0, 90: 64.0, "avg": 85.0}, "student": {15: 97.0, 45: 92.0, 90: 60.0}}
    out = plot_rank1_vs_yaw(res, tmp_path / "r1.png", figsize=(6.4, 4.0), dpi=100)
    assert Image.open(out).size == (640, 400)
    pts = [{"macs": m * 1e9, "metric": v, "config": [8, 16], "chosen": i == 2}
           for i, (m, v) in enumerate([(1, 80), (2, 79), (2, 85), (4, 90)])]
    out = plot_pareto(pts, tmp_path / "sub" / "pareto.png", figsize=(5, 4), dpi=80, budget=3e9)
    assert Image.open(out).size == (400, 320)


def test_figures_replace_a_hard_linked_file_without_changing_its_other_link(tmp_path: Path) -> None:
    """A run folder copied with hard links (cp -al) shares its figures' inodes with the original: a
    figure rewritten in the copy is a new file (written atomically), the original keeps its bytes."""
    import os

    rows = [[torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]]
    for name, write in (("grid.png", lambda out: image_grid(rows, out=out)),
                        ("yaw.png", lambda out: plot_rank1_vs_yaw({"a": {15: 50.0, 30: 40.0}}, out))):
        original, copy = tmp_path / "run" / name, tmp_path / "copy" / name
        copy.parent.mkdir(exist_ok=True)
        original.parent.mkdir(exist_ok=True)
        original.write_bytes(b"the original figure")
        os.link(original, copy)
        write(copy)
        assert original.read_bytes() == b"the original figure"
        assert copy.read_bytes().startswith(b"\x89PNG") and copy.stat().st_nlink == 1
