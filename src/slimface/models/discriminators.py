"""Patch discriminators shared by TP-GAN and PIM (CR-GAN has its own critic).

:class:`PatchDiscriminator` is TP-GAN's ``discriminatorLocal``: 3x3 stride-2 convs 64 (no BN), 128,
256, 512, a resblock, a stride-2 conv 512, a resblock, and a 1x1 conv to one logit per patch -- 4x4
patch logits at 128x128. At 64x64 the last conv keeps stride 1 so the output stays 4x4 (each logit then
sees twice the relative face area, matching the 128 model's patch grid). With ``conditional=True``
(the default for teachers) it scores ``concat(profile, frontal)`` (2C channels), the cGAN form the
compression stage needs (its student D is initialised from this one).

:class:`DomainDiscriminator` is PIM's small cross-domain critic: generated vs real frontal faces.

Both are built from super layers with :class:`~slimface.models.blocks.Widths` so widths scale with the
width multiplier; they are never pruned.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from slimface.models.blocks import ConvBlock, ResBlock, Widths
from slimface.nn.super_layers import SuperConv2d


class PatchDiscriminator(nn.Module):
    """TP-GAN's local (patch) discriminator; ``forward(x, y=None)`` -> (B, 1, 4, 4) logits.

    Conditional: ``forward(profile, frontal)`` scores the pair (inputs concatenated on channels).
    """

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                 conditional: bool = True) -> None:
        super().__init__()
        if resolution not in (64, 128):
            raise ValueError(f"discriminator resolution must be 64 or 128, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {channels}")
        self.resolution, self.channels, self.conditional = resolution, channels, conditional
        w = Widths(width_mult)
        c0 = w("d.h0", 64)
        c1, c2, c3, c4 = w("d.h1", 128), w("d.h2", 256), w("d.h3", 512), w("d.h4", 512)
        in_c = Widths.fixed(2 * channels if conditional else channels)
        self.net = nn.Sequential(OrderedDict(
            h0=ConvBlock(in_c, c0, 3, 2, norm=False),
            h1=ConvBlock(c0, c1, 3, 2),
            h2=ConvBlock(c1, c2, 3, 2),
            h3=ConvBlock(c2, c3, 3, 2),
            h3_res=ResBlock(c3, w("d.h3_res.mid", 512), 3),
            h4=ConvBlock(c3, c4, 3, 2 if resolution == 128 else 1),
            h4_res=ResBlock(c4, w("d.h4_res.mid", 512), 3),
            logits=SuperConv2d(c4, Widths.fixed(1), 1),
        ))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if self.conditional:
            if y is None:
                raise ValueError("a conditional discriminator scores (profile, frontal) pairs; pass both")
            x = torch.cat([x, y], 1)
        elif y is not None:
            raise ValueError("an unconditional discriminator takes one image")
        return self.net(x)


class DomainDiscriminator(nn.Module):
    """PIM's domain critic: is a frontal face real or generated? (B, 1, 4, 4) logits at 64 or 128.

    A lighter patch D (stride-2 convs 64, 128, 256, then stride-2/1 to 4x4 and a 1x1 logit conv); it
    pushes generated faces towards the real-frontal *distribution* (cross-domain adversarial training),
    complementing the pair-wise cGAN D.
    """

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if resolution not in (64, 128):
            raise ValueError(f"discriminator resolution must be 64 or 128, got {resolution}")
        w = Widths(width_mult)
        c0, c1, c2, c3 = w("dd.h0", 64), w("dd.h1", 128), w("dd.h2", 256), w("dd.h3", 256)
        self.net = nn.Sequential(OrderedDict(
            h0=ConvBlock(Widths.fixed(channels), c0, 3, 2, norm=False),
            h1=ConvBlock(c0, c1, 3, 2),
            h2=ConvBlock(c1, c2, 3, 2),
            h3=ConvBlock(c2, c3, 3, 2),
            h4=ConvBlock(c3, c3, 3, 2 if resolution == 128 else 1),
            logits=SuperConv2d(c3, Widths.fixed(1), 1),
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


__all__ = ["PatchDiscriminator", "DomainDiscriminator"]
