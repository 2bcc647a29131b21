"""TP-GAN (Huang et al. 2017): the two-pathway frontalization generator, written once for teacher,
once-for-all supernet and static sub-network.

Layout follows the official code (HRLTY/TP-GAN, ``TP_GAN-Mar6FS.py``; reference.md section 3):

* **global encoder** on ``x ‖ flip(x)`` (2C channels): 7x7 conv -> 64 (+7x7 resblock) @R, 5x5 s2 -> 64
  (+5x5 resblock) @R/2, s2 -> 128 @R/4, -> 256 @R/8, -> 512 @R/16 (+4 resblocks); fc of the flattened
  bottleneck -> 512, max-out of the halves -> the 256-d identity feature.
* **global decoder**: ``[feature ‖ z]`` -> fc -> 64 maps @R/16, deconvolved to "noise" maps of 32/16/8
  channels @R/4, R/2, R; per stage a 3x3 s2 deconv, a skip resblock over [encoder ‖ input ‖ noise], a
  concatenation and resblocks; tanh images at R/4, R/2 and R (the last one also fuses the local
  pathways' pasted features and images).
* **four local pathways** (small U-Nets 64-128-256-512) on patches cropped from the profile around its
  landmarks; outputs pasted at canonical positions and merged by max (:mod:`slimface.models.patches`).

Every layer is a super layer built through :mod:`slimface.models.blocks` with width groups named after
the module path (``encoder.s8``, ``decoder.s16``, ``local.nose.l2``, ``*.res.0.mid``...). Stage names
refer to the spatial size **at 128x128** (the official layout); at 64x64 every stage is half that size
(bottleneck 4x4, fc 4*4*512 -> 512), so group and module names -- and hence student specs and
distillation layers -- are the same at both resolutions. ``separable=True`` (the student) makes every residual
block and every down-sampling/fusion conv depthwise-separable; the image stems, the up-sampling
deconvs (the layers the paper found sensitive) and the image-output convs stay normal.

Deviations from the official graph (all tiny, documented for the README):
* resblock convs have no bias (they are followed by BN; the official convs carry a redundant bias);
* the 8->32 noise deconv is 4x4 stride 4 (official: 3x3 stride 4, which leaves zero gaps);
* 2x2 resblocks at the bottleneck pad bottom/right like TF's 'SAME'.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.data.records import canonical_landmarks
from slimface.models.blocks import ConvBlock, ResBlock, UpBlock, Widths, up2_padding
from slimface.models.generator import Generator
from slimface.models.patches import PATCH_NAMES, crop_all, patch_boxes, paste_max
from slimface.nn.channels import Chans
from slimface.nn.super_layers import SeparableConv2d, SuperConv2d, SuperConvTranspose2d, SuperLinear

# --------------------------------------------------------------------------------------------- layers


class TPResBlock(ResBlock):
    """TP-GAN's residual block (:class:`ResBlock`) for any trunk layout and any kernel size.

    The trunk BN handles concatenated layouts (see SuperBatchNorm2d); even kernels (the 2x2
    bottleneck blocks) pad one pixel bottom/right, like TF's 'SAME', so the size is kept.
    """

    def __init__(self, trunk: Chans, mid: Chans, k: int = 3, separable: bool = False) -> None:
        super().__init__(trunk, mid, k, "lrelu", separable)
        self.even = k % 2 == 0
        if self.even:
            for c in (self.conv1, self.conv2):
                target = c.depthwise if isinstance(c, SeparableConv2d) else c
                assert isinstance(target, nn.Conv2d)
                target.padding = (0, 0)

    def _pad(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, 1, 0, 1)) if self.even else x

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.bn1(self.conv1(self._pad(x))))
        y = self.bn2(self.conv2(self._pad(y)))
        return self.act2(x + y)


def res_chain(w: Widths, trunk: Chans, prefix: str, n: int, k: int = 3, separable: bool = False) -> nn.Sequential:
    """``n`` TP-GAN resblocks on ``trunk``; block i's inner width is group ``{prefix}.{i}.mid``
    (official width = the trunk's)."""
    return nn.Sequential(
        *[TPResBlock(trunk, w(f"{prefix}.{i}.mid", trunk.total), k, separable) for i in range(n)]
    )


def up_to(x: Tensor, ref: Tensor) -> Tensor:
    """Crop a deconv output to the skip tensor's size (odd patch sizes at 64x64: 3 -> 6 vs 5)."""
    return x[..., : ref.shape[-2], : ref.shape[-1]]


# --------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class TPGANArch:
    """The knobs that distinguish TP-GAN from its lighter relatives (PIM).

    ``dec_res``: resblocks at the decoder's s8, s16, s32, s64 stages (s8 counts the official
    ``select8`` block); ``z_dim``/``noise_maps``: the random code fed to the decoder fc and the
    deconvolved maps concatenated at s32/s64/s128; ``noise_std``: training-time z scale (official
    0.02; eval uses z = 0); ``up_kernel``: the kernel of every stride-2 transposed conv (official 3;
    a 3x3 stride-2 kernel gives even and odd output rows different taps, the checkerboard that the
    symmetry loss removes along x only and that shows as horizontal stripes; 4 overlaps evenly).
    """

    z_dim: int = 100
    noise_maps: bool = True
    noise_std: float = 0.02
    enc_res_s8: int = 4
    dec_res: tuple[int, int, int, int] = (3, 2, 2, 2)
    local_bottleneck_res: int = 2
    up_kernel: int = 3


TPGAN_ARCH = TPGANArch()


class TPEncoder(nn.Module):
    """Global encoder: five stages (modules ``s128``..``s8``) and the max-out identity fc."""

    STAGES = (  # name, official width, conv kernel, stride, resblock kernel
        ("s128", 64, 7, 1, 7), ("s64", 64, 5, 2, 5), ("s32", 128, 3, 2, 3), ("s16", 256, 3, 2, 3),
        ("s8", 512, 3, 2, 3),
    )

    def __init__(self, w: Widths, channels: int, resolution: int, arch: TPGANArch, separable: bool) -> None:
        super().__init__()
        prev = Widths.fixed(2 * channels)
        self.layouts: dict[str, Chans] = {}
        for name, full, k, stride, rk in self.STAGES:
            out = w(f"encoder.{name}", full)
            n_res = arch.enc_res_s8 if name == "s8" else 1
            stage = nn.Sequential(OrderedDict(
                # the stem reads the 2C-channel image: kept a normal conv
                conv=ConvBlock(prev, out, k, stride, norm=name != "s128", act="lrelu",
                               separable=separable and name != "s128"),
                res=res_chain(w, out, f"encoder.{name}.res", n_res, rk, separable),
            ))
            self.add_module(name, stage)
            self.layouts[name] = out
            prev = out
        side = resolution // 16
        self.fc = SuperLinear(prev.repeat_spatial(side * side), Widths.fixed(512))

    def forward(self, x2: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        feats: dict[str, Tensor] = {}
        h = x2
        for name, *_ in self.STAGES:
            h = getattr(self, name)(h)
            feats[name] = h
        v = self.fc(h.flatten(1))
        return feats, torch.maximum(v[:, :256], v[:, 256:])


class DecoderStage(nn.Module):
    """One decoder stage: deconv ``up``, skip resblock over [encoder ‖ extras], concat, resblocks."""

    def __init__(self, w: Widths, name: str, prev: Chans, full: int, skip: Chans, skip_k: int,
                 tail: Chans | None, n_res: int, channels: int, image_out: bool, separable: bool,
                 up_kernel: int = 3) -> None:
        super().__init__()
        self.up_layout = w(f"decoder.{name}", full)
        self.up = UpBlock(prev, self.up_layout, k=up_kernel, act="relu")
        self.skip = TPResBlock(skip, w(f"decoder.{name}.skip.mid", skip.total), skip_k, separable)
        trunk = self.up_layout + skip + (tail if tail is not None else Chans(()))
        self.trunk = trunk
        self.res = res_chain(w, trunk, f"decoder.{name}.res", n_res, 3, separable)
        self.out = SuperConv2d(trunk, Widths.fixed(channels), 3) if image_out else None

    def forward(self, prev: Tensor, skip_in: Tensor, tail: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        h = self.res(torch.cat([self.up(prev), self.skip(skip_in), *tail], 1))
        img = torch.tanh(self.out(h)) if self.out is not None else None
        return h, img


class FinalStage(DecoderStage):
    """The full-resolution stage: deconv, 7x7 skip over [enc ‖ noise ‖ input], fusion with the local
    feature/image and the up-sampled half-res image; 5x5 resblock (``res0``), 5x5 conv -> 64
    (``conv1``), resblock (``res1``), conv -> 32 (``conv2``), 3x3 conv -> image (``out``)."""

    def __init__(self, w: Widths, prev: Chans, skip: Chans, tail: Chans, channels: int,
                 separable: bool, up_kernel: int = 3) -> None:
        super().__init__(w, "s128", prev, 64, skip, 7, tail, 0, channels, False, separable, up_kernel)
        t = self.trunk
        self.res0 = res_chain(w, t, "decoder.s128.res0", 1, 5, separable)
        c1 = w("decoder.s128.conv1", 64)
        self.conv1 = ConvBlock(t, c1, 5, act="lrelu", separable=separable)
        self.res1 = res_chain(w, c1, "decoder.s128.res1", 1, 3, separable)
        c2 = w("decoder.s128.conv2", 32)
        self.conv2 = ConvBlock(c1, c2, 3, act="lrelu", separable=separable)
        self.out = SuperConv2d(c2, Widths.fixed(channels), 3)

    def forward(self, prev: Tensor, skip_in: Tensor, tail: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        h = self.res0(torch.cat([self.up(prev), self.skip(skip_in), *tail], 1))
        h = self.conv2(self.res1(self.conv1(h)))
        return h, torch.tanh(self.out(h))


class TPDecoder(nn.Module):
    """Global decoder (stages ``s8``..``s128``, names at 128x128)."""

    def __init__(self, w: Widths, channels: int, resolution: int, arch: TPGANArch, enc: dict[str, Chans],
                 local_feature: Chans, separable: bool) -> None:
        super().__init__()
        self.side = resolution // 16
        self.resolution = resolution
        self.arch = arch
        c2 = Widths.fixed(2 * channels)
        img = Widths.fixed(channels)
        n8, n16, n32, n64 = arch.dec_res
        self.noise8 = w("decoder.noise.s8", 64)
        fc_in = Widths.fixed(256) + (Widths.fixed(arch.z_dim) if arch.z_dim else Chans(()))
        self.fc = SuperLinear(fc_in, self.noise8.repeat_spatial(self.side * self.side))
        empty = Chans(())
        n32l = n64l = n128l = empty
        if arch.noise_maps:
            n32l, n64l, n128l = (w("decoder.noise.s32", 32), w("decoder.noise.s64", 16),
                                 w("decoder.noise.s128", 8))
            self.noise32 = SuperConvTranspose2d(self.noise8, n32l, 4, stride=4, padding=0)
            k, (pad, out_pad) = arch.up_kernel, up2_padding(arch.up_kernel)
            self.noise64 = SuperConvTranspose2d(n32l, n64l, k, stride=2, padding=pad, output_padding=out_pad)
            self.noise128 = SuperConvTranspose2d(n64l, n128l, k, stride=2, padding=pad, output_padding=out_pad)
        trunk8 = self.noise8 + enc["s8"]
        self.s8 = res_chain(w, trunk8, "decoder.s8.res", n8, 2, separable)
        uk = arch.up_kernel
        self.s16 = DecoderStage(w, "s16", trunk8, 512, enc["s16"], 3, None, n16, channels, False, separable, uk)
        self.s32 = DecoderStage(w, "s32", self.s16.trunk, 256, enc["s32"] + c2 + n32l, 3, None, n32,
                                channels, True, separable, uk)
        self.s64 = DecoderStage(w, "s64", self.s32.trunk, 128, enc["s64"] + c2 + n64l, 5, img, n64,
                                channels, True, separable, uk)
        self.s128 = FinalStage(w, self.s64.trunk, enc["s128"] + n128l + c2, local_feature + img + img,
                               channels, separable, uk)

    def forward(self, feats: dict[str, Tensor], feature: Tensor, z: Tensor | None, x2: Tensor,
                local_feat: Tensor, local_img: Tensor) -> dict[str, Tensor]:
        b = feature.shape[0]
        code = feature if z is None else torch.cat([feature, z], 1)
        n8 = F.relu(self.fc(code).view(b, -1, self.side, self.side))
        x2_half, x2_quarter = F.avg_pool2d(x2, 2), F.avg_pool2d(x2, 4)
        noise: list[list[Tensor]] = [[], [], []]
        if self.arch.noise_maps:
            n32 = F.relu(self.noise32(n8))
            n64 = F.relu(self.noise64(n32))
            n128 = F.relu(self.noise128(n64))
            noise = [[n32], [n64], [n128]]
        h = self.s8(torch.cat([n8, feats["s8"]], 1))
        h, _ = self.s16(h, feats["s16"], [])
        h, img32 = self.s32(h, torch.cat([feats["s32"], x2_quarter, *noise[0]], 1), [])
        assert img32 is not None
        up32 = F.interpolate(img32, scale_factor=2.0, mode="bilinear", align_corners=False)
        h, img64 = self.s64(h, torch.cat([feats["s64"], x2_half, *noise[1]], 1), [up32])
        assert img64 is not None
        up64 = F.interpolate(img64, scale_factor=2.0, mode="bilinear", align_corners=False)
        _, img128 = self.s128(h, torch.cat([feats["s128"], *noise[2], x2], 1), [local_feat, local_img, up64])
        assert img128 is not None
        r = self.resolution
        return {r // 4: img32, r // 2: img64, r: img128}


class LocalPathway(nn.Module):
    """One local U-Net (official ``partRotator``): levels l0..l3 down (64, 128, 256, 512), u2..u0 up
    with skip fusion convs; returns the 64-ch feature (group ``local.feature``, shared by all four
    pathways so that their pasted maps can be max-merged) and a tanh patch image."""

    def __init__(self, w: Widths, name: str, in_ch: int, channels: int, feature: Chans, arch: TPGANArch,
                 separable: bool) -> None:
        super().__init__()
        p = f"local.{name}"
        fulls = (64, 128, 256, 512)
        prev = Widths.fixed(in_ch)
        downs: list[Chans] = []
        for i, full in enumerate(fulls):
            lay = w(f"{p}.l{i}", full)
            n_res = arch.local_bottleneck_res if i == 3 else 1
            self.add_module(f"l{i}", nn.Sequential(OrderedDict(
                conv=ConvBlock(prev, lay, 3, 1 if i == 0 else 2, norm=i > 0, act="lrelu",
                               separable=separable and i > 0),
                res=res_chain(w, lay, f"{p}.l{i}.res", n_res, 3, separable),
            )))
            downs.append(lay)
            prev = lay
        for i in (2, 1, 0):
            up = w(f"{p}.u{i}.up", fulls[i])
            lay = feature if i == 0 else w(f"{p}.u{i}", fulls[i])
            self.add_module(f"u{i}", nn.ModuleDict(OrderedDict(
                up=UpBlock(prev, up, k=arch.up_kernel, act="lrelu"),
                fuse=ConvBlock(up + downs[i], lay, 3, act="lrelu", separable=separable),
                res=res_chain(w, lay, f"{p}.u{i}.res", 1, 3, separable),
            )))
            prev = lay
        self.out = SuperConv2d(prev, Widths.fixed(channels), 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skips = []
        h = x
        for i in range(4):
            h = getattr(self, f"l{i}")(h)
            skips.append(h)
        for i in (2, 1, 0):
            m = getattr(self, f"u{i}")
            d = up_to(m["up"](h), skips[i])
            h = m["res"](m["fuse"](torch.cat([d, skips[i]], 1)))
        return h, torch.tanh(self.out(h))


# ---------------------------------------------------------------------------------------- generator


class TPGANGenerator(Generator):
    """TP-GAN generator (global encoder-decoder + four local pathways).

    ``forward(x, landmarks)`` -> frontal image; ``forward(x, landmarks, outputs="train")`` (what the
    teacher task calls, so a DDP wrapper sees it) -> :meth:`forward_train`'s dict. Landmarks are the
    profile's (B, 5, 2) pixel (x, y); ``None`` falls back to the canonical frontal landmarks.
    """

    family = "tpgan"
    arch_config: TPGANArch = TPGAN_ARCH

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                 separable: bool = False, sub: Mapping[str, int] | None = None,
                 arch: TPGANArch | None = None) -> None:
        super().__init__(resolution, channels, width_mult, separable, sub)
        if channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {channels}")
        if resolution not in (64, 128):
            raise ValueError(f"TP-GAN resolution must be 64 or 128, got {resolution}")
        self.arch_cfg = arch or self.arch_config
        w = Widths(width_mult, sub)
        self.boxes = patch_boxes(resolution)
        self.encoder = TPEncoder(w, channels, resolution, self.arch_cfg, separable)
        feature = w("local.feature", 64)
        self.local = nn.ModuleDict({
            n: LocalPathway(w, n, 2 * channels if n == "right_eye" else channels, channels, feature,
                            self.arch_cfg, separable)
            for n in PATCH_NAMES
        })
        self.decoder = TPDecoder(w, channels, resolution, self.arch_cfg, self.encoder.layouts, feature,
                                 separable)

    def _landmarks(self, x: Tensor, landmarks: Tensor | None) -> Tensor:
        if landmarks is None:
            lm = torch.as_tensor(canonical_landmarks(self.resolution), dtype=x.dtype, device=x.device)
            return lm.unsqueeze(0).expand(x.shape[0], 5, 2)
        return landmarks.to(device=x.device, dtype=x.dtype)

    @property
    def noise_dim(self) -> int:
        """Length of the per-sample code z (0: no noise input, e.g. PIM)."""
        return int(self.arch_cfg.z_dim)

    def forward_train(self, x: Tensor, landmarks: Tensor | None = None, *,
                      noise: Tensor | None = None) -> dict[str, Any]:
        """``noise``: optional (B, noise_dim) standard-normal draws for z (scaled by ``noise_std``
        here). Training tasks pass it so that z comes from a per-step, process-count-independent
        generator (:class:`slimface.train.distributed.StepRandom`); without it z is drawn from the
        global RNG in train mode and is 0 in eval mode."""
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected (B, {self.channels}, {self.resolution}, {self.resolution}) images, "
                             f"got {tuple(x.shape)}")
        x2 = torch.cat([x, x.flip(-1)], 1)
        feats, feature = self.encoder(x2)
        crops = crop_all(x, self._landmarks(x, landmarks), self.boxes)
        inputs = dict(crops)
        inputs["right_eye"] = torch.cat([crops["right_eye"], crops["left_eye"]], 1)
        local_feats: dict[str, Tensor] = {}
        patches: dict[str, Tensor] = {}
        for name in PATCH_NAMES:
            local_feats[name], patches[name] = self.local[name](inputs[name])
        fused_feat = paste_max(local_feats, self.boxes, self.resolution)
        fused_img = paste_max(patches, self.boxes, self.resolution)
        z = None
        if self.arch_cfg.z_dim:
            if noise is not None:
                if noise.shape != (x.shape[0], self.arch_cfg.z_dim):
                    raise ValueError(f"noise must be (B, {self.arch_cfg.z_dim}) = ({x.shape[0]}, "
                                     f"{self.arch_cfg.z_dim}), got {tuple(noise.shape)}")
                z = noise.to(device=x.device, dtype=x.dtype) * self.arch_cfg.noise_std
            elif self.training:
                z = torch.randn(x.shape[0], self.arch_cfg.z_dim, device=x.device, dtype=x.dtype)
                z = z * self.arch_cfg.noise_std
            else:
                z = x.new_zeros(x.shape[0], self.arch_cfg.z_dim)
        images = self.decoder(feats, feature, z, x2, fused_feat, fused_img)
        return {
            "image": images[self.resolution],
            "images": images,
            "local_images": fused_img,
            "local_features": fused_feat,
            "patches": patches,
            "feature": feature,
        }

    def forward(self, x: Tensor, landmarks: Tensor | None = None,  # type: ignore[override]
                outputs: Literal["image", "train"] = "image",
                noise: Tensor | None = None) -> Tensor | dict[str, Any]:
        # (no keyword-only parameters: the ONNX tracer passes every default positionally)
        out = self.forward_train(x, landmarks, noise=noise)
        return out if outputs == "train" else out["image"]


__all__ = [
    "TPResBlock", "res_chain", "TPGANArch", "TPGAN_ARCH", "TPEncoder", "TPDecoder",
    "DecoderStage", "LocalPathway", "TPGANGenerator", "FinalStage",
]
