"""PIM (Zhao et al., "Towards Pose Invariant Face Recognition in the Wild", CVPR 2018).

PIM has no public code (reference.md section 3). Its face-frontalization sub-net is a TP-GAN-like
dual-path generator (global encoder-decoder + landmark-patch pathways); its discriminative sub-net is a
recognition CNN trained jointly with it, plus cross-domain adversarial training between generated and
real frontal faces. We therefore build PIM as a *configuration* of :class:`TPGANGenerator` (same
code, same module/group names, so compression treats it like TP-GAN), with these documented choices:

* no random noise pathway: z is dropped and so are the deconvolved noise maps at s32/s64/s128 (the
  identity feature still seeds the bottleneck through the decoder fc);
* a lighter decoder: 2 resblocks at s8 and 1 at each of s16, s32, s64 (TP-GAN: 3, 2, 2, 2);
* encoder and local pathways as TP-GAN;
* 4x4 stride-2 transposed convs (TP-GAN's official 3x3 give even and odd rows different taps: the
  horizontal stripes; ``TPGANArch.up_kernel``).

At 128x128, width 1.0 this gives fewer params and MACs than TP-GAN, in the direction of the source
paper's Table 3 (PIM 12.7M/57.9G vs TP-GAN 14.3M/78.3G); we do not chase those figures (our TP-GAN
follows the official code, 157.4M/93.0G). The recognizer, the domain discriminator and the joint
objective live in :class:`slimface.families.pim.task.PIMTask`.
"""

from __future__ import annotations

from typing import Mapping

from slimface.families.tpgan.model import TPGANArch, TPGANGenerator

PIM_ARCH = TPGANArch(z_dim=0, noise_maps=False, noise_std=0.0, enc_res_s8=4, dec_res=(2, 1, 1, 1),
                     local_bottleneck_res=2, up_kernel=4)


class PIMGenerator(TPGANGenerator):
    """PIM's frontalization sub-net: the TP-GAN generator with :data:`PIM_ARCH`."""

    family = "pim"
    arch_config = PIM_ARCH

    def __init__(self, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                 separable: bool = False, sub: Mapping[str, int] | None = None) -> None:
        super().__init__(resolution, channels, width_mult, separable, sub, arch=PIM_ARCH)


__all__ = ["PIM_ARCH", "PIMGenerator"]
