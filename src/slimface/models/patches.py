"""Local facial patches for TP-GAN-style generators: crop around landmarks, paste at canonical spots.

TP-GAN's four local pathways see patches cropped from the *profile* around its landmarks (eye
centres, nose tip, mouth centre) and their frontal outputs are pasted into full-size canvases at fixed
*canonical* frontal positions, then merged by element-wise max.

Convention (one for crop and paste, 0-based pixel coordinates): a patch of size ``h x w`` centred at
``(cx, cy)`` samples pixel rows ``cy - h/2 + k`` (k = 0..h-1) and columns ``cx - w/2 + k``. So a crop at
an integer centre equals the slice ``image[cy - h/2 : cy + h/2, cx - w/2 : cx + w/2]``, and pasting puts
the patch back exactly there. (The official code uses 1-based MATLAB centres, i.e. its boxes sit one
pixel up/left of ours; the relation between crop and paste is the same.)

Crops use ``F.grid_sample`` (differentiable w.r.t. the image, sub-pixel landmark centres, exportable to
ONNX opset >= 16); pastes are ``F.pad`` with static offsets, so the whole generator traces to a static
graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from slimface.data.records import CANONICAL_LANDMARKS_128

#: Patch names in pathway order; "left" = smaller x in the frontal image (as in the landmark order).
PATCH_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth")

#: Patch sizes (h, w) at 128 x 128 (reference.md section 3).
PATCH_SIZES_128: dict[str, tuple[int, int]] = {
    "left_eye": (40, 40), "right_eye": (40, 40), "nose": (32, 40), "mouth": (32, 48),
}


@dataclass(frozen=True)
class PatchBox:
    """A patch's size and its canonical (frontal) top-left corner at one resolution."""

    name: str
    height: int
    width: int
    top: int
    left: int


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def patch_centres(landmarks: Tensor) -> Tensor:
    """(B, 5, 2) landmarks (x, y) -> (B, 4, 2) patch centres: eyes, nose tip, mouth-corner mean."""
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be (B, 5, 2) (x, y) pixel coordinates, got {tuple(landmarks.shape)}")
    mouth = landmarks[:, 3:5].mean(dim=1, keepdim=True)
    return torch.cat([landmarks[:, 0:3], mouth], dim=1)


def patch_boxes(resolution: int) -> dict[str, PatchBox]:
    """Canonical patch boxes at ``resolution``: sizes and centres scale by resolution / 128."""
    if resolution <= 0 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16, got {resolution}")
    s = resolution / 128.0
    canon = torch.tensor(CANONICAL_LANDMARKS_128.tolist(), dtype=torch.float32).unsqueeze(0)
    centres = patch_centres(canon)[0] * s
    out: dict[str, PatchBox] = {}
    for i, name in enumerate(PATCH_NAMES):
        h, w = (int(round(v * s)) for v in PATCH_SIZES_128[name])
        cx, cy = float(centres[i, 0]), float(centres[i, 1])
        top, left = _round_half_up(cy - h / 2), _round_half_up(cx - w / 2)
        top = min(max(top, 0), resolution - h)
        left = min(max(left, 0), resolution - w)
        out[name] = PatchBox(name, h, w, top, left)
    return out


def crop_patches(image: Tensor, centres: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear crops of ``size`` (h, w) around ``centres`` ((B, 2) x, y pixels) of ``image`` (B, C, H, W).

    Outside the image the border pixel is repeated (a profile's far eye may sit near the edge).
    """
    b, _, H, W = image.shape
    h, w = size
    dtype, device = image.dtype, image.device
    ys = torch.arange(h, dtype=dtype, device=device) - h / 2  # offsets of sampled rows from cy
    xs = torch.arange(w, dtype=dtype, device=device) - w / 2
    cy = centres[:, 1].to(dtype).view(b, 1, 1)
    cx = centres[:, 0].to(dtype).view(b, 1, 1)
    py = cy + ys.view(1, h, 1)  # (B, h, 1) pixel rows
    px = cx + xs.view(1, 1, w)  # (B, 1, w) pixel cols
    # align_corners=False: pixel index i sits at normalised (2 i + 1) / size - 1.
    gy = ((2 * py + 1) / H - 1).expand(b, h, w)
    gx = ((2 * px + 1) / W - 1).expand(b, h, w)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_all(image: Tensor, landmarks: Tensor, boxes: dict[str, PatchBox]) -> dict[str, Tensor]:
    """The four landmark-centred patches of ``image`` (profile crops for the local pathways)."""
    centres = patch_centres(landmarks.to(image.dtype))
    return {
        name: crop_patches(image, centres[:, i], (boxes[name].height, boxes[name].width))
        for i, name in enumerate(PATCH_NAMES)
    }


def canonical_crops(image: Tensor, boxes: dict[str, PatchBox]) -> dict[str, Tensor]:
    """Exact slices of a frontal image at the canonical boxes (the local pathways' targets)."""
    return {n: image[..., b.top:b.top + b.height, b.left:b.left + b.width] for n, b in boxes.items()}


def paste(patch: Tensor, box: PatchBox, resolution: int) -> Tensor:
    """Zero-pad ``patch`` (B, C, h, w) into a ``resolution``² canvas at the canonical box."""
    h, w = patch.shape[-2:]
    if (h, w) != (box.height, box.width):
        raise ValueError(f"{box.name} patch is {h}x{w}, expected {box.height}x{box.width}")
    return F.pad(patch, (box.left, resolution - box.left - w, box.top, resolution - box.top - h))


def paste_max(patches: dict[str, Tensor], boxes: dict[str, PatchBox], resolution: int) -> Tensor:
    """Paste every patch into its own canvas and merge by element-wise max (TP-GAN's part combiner)."""
    out: Tensor | None = None
    for name in PATCH_NAMES:
        canvas = paste(patches[name], boxes[name], resolution)
        out = canvas if out is None else torch.maximum(out, canvas)
    assert out is not None
    return out


__all__ = [
    "PATCH_NAMES", "PATCH_SIZES_128", "PatchBox", "patch_centres", "patch_boxes", "crop_patches",
    "crop_all", "canonical_crops", "paste", "paste_max",
]
