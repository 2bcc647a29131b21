"""Image-quality metrics between a synthesized frontal face and its ground truth, in pure torch.

All metrics take ``(B, C, H, W)`` tensors in the project's [-1, 1] range, map them to [0, 1] (data
range 1) and return one value per image, so per-yaw breakdowns are a simple group-by:

- ``l1``:   mean absolute error on the [0, 1] scale (half the [-1, 1] training L1);
- ``psnr``: 10·log10(1 / MSE) in dB; identical images give ``inf``;
- ``ssim``: Wang et al. 2004 with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, computed
  on the "valid" region (no padding, as the reference MATLAB code) and averaged over channels;
- ``hf_ratio``: the output's high-frequency energy (mean squared 3×3 Laplacian) relative to the ground
  truth's. 1 for the ground truth itself; stripes and checkerboards (a generator fooling its
  identity loss) push it above 1, blur below — an artefact figure SSIM and PSNR do not give.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: PSNR of identical images is infinite; :func:`image_quality` caps at this before averaging.
PSNR_CAP_DB = 100.0


def _to01(x: Tensor) -> Tensor:
    return (x.double().clamp(-1, 1) + 1) * 0.5


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"quality metrics need two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean absolute error on the [0, 1] scale, ``(B,)``."""
    _check_pair(a, b)
    return (_to01(a) - _to01(b)).abs().flatten(1).mean(1).float()


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean squared error on the [0, 1] scale, ``(B,)`` (float64 for exact PSNR)."""
    _check_pair(a, b)
    return (_to01(a) - _to01(b)).pow(2).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB for data range 1; ``inf`` where the images are identical."""
    err = mse(a, b)
    out = torch.full_like(err, math.inf)
    nz = err > 0
    out[nz] = 10.0 * torch.log10(1.0 / err[nz])
    return out.float()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the SSIM window is its outer product)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-image SSIM, ``(B,)``: mean of the SSIM map over the valid region and the channels."""
    _check_pair(a, b)
    if a.shape[-1] < window or a.shape[-2] < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {tuple(a.shape[-2:])}")
    x, y = _to01(a), _to01(b)
    g = gaussian_window(window, sigma).to(x.device)

    def band(n: int) -> Tensor:  # (n - window + 1, n): row i holds the window at columns i..i+window-1
        m = torch.zeros(n - window + 1, n, dtype=g.dtype, device=g.device)
        for i in range(m.shape[0]):
            m[i, i : i + window] = g
        return m

    bh, bw = band(x.shape[-2]), band(x.shape[-1]).T

    def blur(t: Tensor) -> Tensor:
        # separable Gaussian over the valid region as two matrix products: float64 matmuls are ~10x
        # faster than float64 depthwise convs, and the result is the same sums
        return bh @ t @ bw

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return smap.flatten(1).mean(1).float()


_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def high_frequency_energy(x: Tensor) -> Tensor:
    """Per image: mean squared response of a 3×3 Laplacian ("valid" region, every channel) on [0, 1]."""
    x = _to01(x)
    c = x.shape[1]
    kernel = torch.tensor(_LAPLACIAN, dtype=x.dtype, device=x.device).expand(c, 1, 3, 3)
    return F.conv2d(x, kernel, groups=c).pow(2).flatten(1).mean(1)


def hf_ratio(pred: Tensor, target: Tensor) -> Tensor:
    """High-frequency energy of ``pred`` over that of ``target``, pooled over the batch (a scalar)."""
    _check_pair(pred, target)
    return (high_frequency_energy(pred).sum() / high_frequency_energy(target).sum().clamp_min(1e-12)).float()


def image_quality(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Batch means of L1, PSNR (each image capped at ``PSNR_CAP_DB``) and SSIM, and the batch's
    high-frequency energy ratio."""
    return {
        "l1": float(l1(pred, target).mean()),
        "psnr": float(psnr(pred, target).clamp(max=PSNR_CAP_DB).mean()),
        "ssim": float(ssim(pred, target).mean()),
        "hf_ratio": float(hf_ratio(pred, target)),
    }
