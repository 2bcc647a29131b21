"""The common face-recognizer interface used by identity losses and rank-1 evaluation.

Every recognizer takes images in the project's convention (``(B, C, H, W)`` float in [-1, 1], RGB or
gray, any size) and does its own conversion to what it was trained on, so callers never need to know
whether it is a grayscale 128×128 LightCNN or dlib's RGB 150×150 ResNet. ``embed`` returns
L2-normalised descriptors, so rank-1 matching is a plain dot product (cosine similarity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ITU-R BT.601 luma weights, the usual RGB->gray conversion (PIL's "L" mode uses the same).
_LUMA = (0.299, 0.587, 0.114)


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` for a tensor that is not ``(B, 1|3, H, W)`` floating point."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"recognizer expects float (B, 1|3, H, W) images in [-1, 1], got {tuple(images.shape)} "
                         f"{images.dtype}")


def to_gray01(images: Tensor) -> Tensor:
    """``(B, 1|3, H, W)`` in [-1, 1] -> ``(B, 1, H, W)`` luma in [0, 1] (differentiable)."""
    check_images(images)
    x = (images.clamp(-1, 1) + 1) * 0.5
    if x.shape[1] == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(dim=1, keepdim=True)
    return x


def resize_square(x: Tensor, size: int) -> Tensor:
    """Bilinear resize to ``size``×``size`` (anti-aliased when shrinking, so small judges see no aliasing)."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class Recognizer(nn.Module):
    """A face recognizer: ``embed(images in [-1, 1]) -> (B, D)`` unit-norm descriptors."""

    #: Descriptor length D.
    embedding_dim: int = 0
    #: Whether ``embed`` is differentiable w.r.t. the images (usable in an identity loss).
    differentiable: bool = False

    def embed(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss_embed(self, images: Tensor) -> Tensor:
        """What an identity term compares (an L1 over its entries): the descriptor itself, except
        where an ensemble keeps each member's unit descriptor so the term stays at one network's scale."""
        return self.embed(images)


__all__ = ["Recognizer", "check_images", "resize_square", "to_gray01"]
