"""CR-GAN teacher (Tian et al., IJCAI 2018): an encoder/generator pair plus a view-aware WGAN critic.

Follows the official design (reference.md section 3; bluer555/CR-GAN ``model.py``):

* **Encoder** (no normalisation, WGAN-GP style): 3x3 conv C->64, down residual blocks
  ``ReLU-conv3x3-ReLU-conv3x3-avgpool`` with an ``avgpool-conv3x3`` shortcut (64, 128, 256, 512, 512)
  down to 4x4x512, then two heads on the flattened bottleneck: view logits and the identity code z.
* **Generator**: ``[one-hot view || z]`` (128-d) -> fc -> 4x4x512 -> up residual blocks
  ``BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3`` with an ``upsample-conv3x3`` shortcut (512, 256, 128,
  64, 64) -> BN, ReLU, conv3x3 -> C, tanh.
* **Critic**: the encoder's trunk with a view-classification head and a WGAN critic head.

Frontalisation = encode, then generate with the frontal view code and the encoded z.

Choices of this project (the official code differs):

* **13 views** (all Multi-PIE yaws, -90..+90 step 15; the official code has 9, +-60) and
  **z = 115-d**, so the generator input stays the official 128-d and the fc keeps its official size.
* The fully connected layers on/to the 4x4 bottleneck are super linears over the channel-major
  flattened map (``Chans.repeat_spatial``), so their channel side is an ordinary prunable width group.
* Logits, not softmax, come out of the view heads (the official code applies softmax and then
  CrossEntropyLoss, i.e. softmax twice).
* 64x64 inputs use one fewer block on each side (the first down block and the last up block are
  dropped), so the bottleneck stays 4x4.

Width groups are named after the module producing them: ``encoder.stem``, ``encoder.down.s32`` (block
output = shortcut + main path, one coupled group), ``encoder.down.s32.mid`` (the block's inner conv),
``generator.fc``, ``generator.up.s16``, ``generator.up.s16.mid``. ``sN`` is the block's output
resolution, so names are the same at 64 and 128 for the blocks both have.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.errors import DataError
from slimface.models.blocks import Widths, conv
from slimface.models.generator import Generator
from slimface.nn.channels import Chans
from slimface.nn.super_layers import SuperBatchNorm2d, SuperConv2d, SuperLinear

#: Multi-PIE yaws (degrees) in view-index order; index 6 is frontal.
VIEW_YAWS: tuple[int, ...] = tuple(range(-90, 91, 15))
NUM_VIEWS = len(VIEW_YAWS)
FRONTAL_VIEW = VIEW_YAWS.index(0)
#: Generator input is [one-hot view || z], 128-d as in the official code.
CODE_DIM = 128
Z_DIM = CODE_DIM - NUM_VIEWS

# (output resolution, official width) of the down / up blocks at 128x128.
_DOWN_128 = ((64, 64), (32, 128), (16, 256), (8, 512), (4, 512))
_UP_128 = ((8, 512), (16, 256), (32, 128), (64, 64), (128, 64))
STEM_WIDTH = 64
BOTTLENECK = 4


def yaw_to_view(yaw: Tensor | float | int) -> Tensor:
    """Nearest of the 13 Multi-PIE views for yaw(s) in degrees (CAS-PEAL's 22/67 round to 15/60).

    Returns int64 view indices (0 = -90, 6 = frontal, 12 = +90), same shape as ``yaw``. A yaw more
    than half a step outside +-90 is not a face pose this model knows and raises DataError.
    """
    t = torch.as_tensor(yaw, dtype=torch.float32)
    if t.numel() and (not torch.isfinite(t).all() or t.abs().max() > 90 + 7.5):
        bad = t[~torch.isfinite(t) | (t.abs() > 97.5)].flatten()[0].item()
        raise DataError(f"yaw {bad:g} is outside -90..+90 degrees; check the dataset's yaw labels")
    return torch.round((t + 90.0) / 15.0).clamp(0, NUM_VIEWS - 1).long()


def view_onehot(view: Tensor, num_views: int = NUM_VIEWS) -> Tensor:
    """(B,) view indices -> (B, num_views) float one-hot codes."""
    return F.one_hot(view.long(), num_views).float()


def _down_plan(resolution: int) -> tuple[tuple[int, int], ...]:
    if resolution == 128:
        return _DOWN_128
    if resolution == 64:
        return _DOWN_128[1:]
    raise ValueError(f"CR-GAN supports 64 or 128 pixel inputs, got {resolution}")


def _up_plan(resolution: int) -> tuple[tuple[int, int], ...]:
    if resolution == 128:
        return _UP_128
    if resolution == 64:
        return _UP_128[:-1]
    raise ValueError(f"CR-GAN supports 64 or 128 pixel inputs, got {resolution}")


class DownBlock(nn.Module):
    """WGAN-GP residual block down (official ``residualBlock_down``, no normalisation).

    main: ReLU - conv(in->mid) - ReLU - conv(mid->out) - avgpool2; shortcut: avgpool2 - conv(in->out).
    Both branches end in the block's output group (they are summed). ``separable`` splits all three
    3x3 convs (residual-block convs: the insensitive layers).
    """

    def __init__(self, in_c: Chans, mid: Chans, out_c: Chans, separable: bool = False) -> None:
        super().__init__()
        self.shortcut = conv(in_c, out_c, 3, separable=separable)
        self.conv1 = conv(in_c, mid, 3, separable=separable)
        self.conv2 = conv(mid, out_c, 3, separable=separable)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(F.avg_pool2d(x, 2))
        out = self.conv1(F.relu(x))
        out = F.avg_pool2d(self.conv2(F.relu(out)), 2)
        return shortcut + out


class UpBlock(nn.Module):
    """WGAN-GP residual block up with BN (official ``residualBlock_up``).

    main: BN - ReLU - nearest x2 - conv(in->mid) - BN - ReLU - conv(mid->out);
    shortcut: nearest x2 - conv(in->out). The two convs right after the upsampling are the sensitive
    up-sampling operations and stay normal convs; ``separable`` only splits ``conv2``.
    """

    def __init__(self, in_c: Chans, mid: Chans, out_c: Chans, separable: bool = False) -> None:
        super().__init__()
        self.shortcut = SuperConv2d(in_c, out_c, 3)
        self.bn1 = SuperBatchNorm2d(in_c)
        self.conv1 = SuperConv2d(in_c, mid, 3)
        self.bn2 = SuperBatchNorm2d(mid)
        self.conv2 = conv(mid, out_c, 3, separable=separable)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = F.interpolate(F.relu(self.bn1(x)), scale_factor=2.0, mode="nearest")
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return shortcut + out


def _down_trunk(
    w: Widths, prefix: str, channels: int, resolution: int, separable: bool
) -> tuple[SuperConv2d, nn.Sequential, Chans]:
    """Stem conv + down blocks named ``{prefix}.stem`` / ``{prefix}.down.sN``; returns the output layout."""
    stem_c = w(f"{prefix}.stem", STEM_WIDTH)
    stem = SuperConv2d(Widths.fixed(channels), stem_c, 3)
    down, out_c = _block_stack(w, f"{prefix}.down", _down_plan(resolution), stem_c, DownBlock, separable)
    return stem, down, out_c


def _block_stack(w: Widths, prefix: str, plan: Sequence[tuple[int, int]], prev: Chans,
                 block: Callable[..., nn.Module], separable: bool) -> tuple[nn.Sequential, Chans]:
    """One ``block`` per (resolution, full width) of ``plan``, named ``s<res>`` (width groups
    ``{prefix}.s<res>`` and ``{prefix}.s<res>.mid``); returns the stack and its output layout."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    for res, full in plan:
        name = f"{prefix}.s{res}"
        out_c = w(name, full)
        blocks[f"s{res}"] = block(prev, w(f"{name}.mid", full), out_c, separable)
        prev = out_c
    return nn.Sequential(blocks), prev


class CRGANEncoder(nn.Module):
    """x -> (view logits (B, 13), z (B, 115)); module names ``encoder.*`` inside the generator."""

    def __init__(self, w: Widths, channels: int, resolution: int, separable: bool) -> None:
        super().__init__()
        self.stem, self.down, out_c = _down_trunk(w, "encoder", channels, resolution, separable)
        flat = out_c.repeat_spatial(BOTTLENECK * BOTTLENECK)
        self.view_head = SuperLinear(flat, Widths.fixed(NUM_VIEWS))
        self.z_head = SuperLinear(flat, Widths.fixed(Z_DIM))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.down(self.stem(x)).flatten(1)
        return self.view_head(h), self.z_head(h)


class CRGANDecoder(nn.Module):
    """[one-hot view || z] -> image; module names ``generator.*`` inside the generator."""

    def __init__(self, w: Widths, channels: int, resolution: int, separable: bool) -> None:
        super().__init__()
        fc_c = w("generator.fc", _UP_128[0][1])
        # Linear(128 -> 512*4*4), reshaped channel-major to the 4x4 map.
        self.fc = SuperLinear(Widths.fixed(CODE_DIM), fc_c.repeat_spatial(BOTTLENECK * BOTTLENECK))
        self.up, prev = _block_stack(w, "generator.up", _up_plan(resolution), fc_c, UpBlock, separable)
        self.bn = SuperBatchNorm2d(prev)
        self.out = SuperConv2d(prev, Widths.fixed(channels), 3)

    def forward(self, code: Tensor) -> Tensor:
        h = self.up(self.fc(code).view(code.shape[0], -1, BOTTLENECK, BOTTLENECK))
        return torch.tanh(self.out(F.relu(self.bn(h))))


class CRGANGenerator(Generator):
    """Encoder + generator: the pair that frontalises, and what compression slims.

    ``forward(x)`` frontalises (landmarks are ignored; CR-GAN needs none). Because the Trainer may wrap
    this module in DistributedDataParallel, every training-time computation is reachable through
    ``forward`` too: ``forward(x, view=v, outputs="train")`` returns :meth:`forward_train`'s dict and
    ``forward(None, view=v, z=z)`` runs :meth:`generate`.
    """

    family = "crgan"

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                 separable: bool = False, sub: Mapping[str, int] | None = None) -> None:
        super().__init__(resolution, channels, width_mult, separable, sub)
        if channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {channels}")
        w = Widths(width_mult, sub)
        self.num_views = NUM_VIEWS
        self.z_dim = Z_DIM
        self.frontal_view = FRONTAL_VIEW
        self.encoder = CRGANEncoder(w, channels, resolution, separable)
        self.generator = CRGANDecoder(w, channels, resolution, separable)

    def _view_code(self, view: Tensor | None, batch: int, ref: Tensor) -> Tensor:
        if view is None:
            view = torch.full((batch,), self.frontal_view, dtype=torch.long, device=ref.device)
        if view.dim() == 1:
            return view_onehot(view.to(ref.device), self.num_views).to(ref.dtype)
        if view.shape != (batch, self.num_views):
            raise ValueError(
                f"view code must be (B,) indices or (B, {self.num_views}), got {tuple(view.shape)}")
        return view.to(ref)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (view logits, z)."""
        return self.encoder(x)

    def generate(self, view_onehot: Tensor, z: Tensor) -> Tensor:
        """Image of identity code ``z`` seen from view ``view_onehot`` ((B, 13) one-hot or soft)."""
        return self.generator(torch.cat([view_onehot.to(z.dtype), z], 1))

    def forward_train(self, x: Tensor, landmarks: Tensor | None = None,
                      view: Tensor | None = None) -> dict[str, Tensor]:
        """Encode ``x`` and re-generate it at ``view`` ((B,) indices or (B, 13) codes; None = frontal)."""
        view_logits, z = self.encode(x)
        image = self.generate(self._view_code(view, x.shape[0], z), z)
        return {"image": image, "view_logits": view_logits, "z": z}

    def forward(self, x: Tensor | None, landmarks: Tensor | None = None, view: Tensor | None = None,
                z: Tensor | None = None, outputs: Literal["image", "train"] = "image"
                ) -> Tensor | dict[str, Tensor]:  # type: ignore[override]
        if x is None:
            if z is None:
                raise ValueError("generation needs z when no image is given")
            return self.generate(self._view_code(view, z.shape[0], z), z)
        out = self.forward_train(x, landmarks, view)
        return out if outputs == "train" else out["image"]


class CRGANCritic(nn.Module):
    """The official ``_D_xvs``: encoder-like trunk (no BN), view-classification and WGAN critic heads.

    ``forward(x)`` returns the critic score (B, 1) (what the gradient penalty differentiates);
    ``forward(x, heads=True)`` returns ``(view_logits (B, 13), score (B, 1))`` in one pass.
    """

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {channels}")
        self.resolution = resolution
        self.channels = channels
        w = Widths(width_mult)
        self.stem, self.down, out_c = _down_trunk(w, "trunk", channels, resolution, separable=False)
        flat = out_c.repeat_spatial(BOTTLENECK * BOTTLENECK)
        self.view_head = SuperLinear(flat, Widths.fixed(NUM_VIEWS))
        self.critic_head = SuperLinear(flat, Widths.fixed(1))

    def forward(self, x: Tensor, heads: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = self.down(self.stem(x)).flatten(1)
        score = self.critic_head(h)
        if not heads:
            return score
        return self.view_head(h), score


__all__ = [
    "VIEW_YAWS", "NUM_VIEWS", "FRONTAL_VIEW", "CODE_DIM", "Z_DIM", "yaw_to_view", "view_onehot", "DownBlock", "UpBlock",
    "CRGANEncoder", "CRGANDecoder", "CRGANGenerator", "CRGANCritic",
]
