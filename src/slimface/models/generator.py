"""The base class of every frontalization generator (teachers, supernets and exported students).

A family's generator subclasses :class:`Generator`; its contract (forward with landmarks, the
``noise`` keyword, width groups named after modules) is written in docs/DESIGN.md, "Adding a
teacher". ``arch()`` is what an export stores to rebuild the network
(:func:`slimface.families.generator_from_arch`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from slimface.data.records import canonical_landmarks


class Generator(nn.Module):
    """Base class of all frontalization generators.

    ``forward(x, landmarks)`` maps profiles (B, C, H, W) in [-1, 1] (+ (B, 5, 2) landmarks in pixel
    coordinates) to frontal faces of the same shape; it is deterministic in eval mode so exported
    students can be compared with their supernet. ``forward_train`` returns everything the family's
    own losses need (multi-scale images, local patches, features...). ``family`` names the family
    that builds it (the registry key, written into ``arch()``). ``separable`` says which convertible
    convs are depthwise-separable: True (all: the family's student), False (none: the teacher) or
    the sorted module names of those that are (a mix, :func:`slimface.models.blocks.set_conv_types`);
    ``"search"`` on a supernet whose convertible convs are choices of both types (the active
    config's ``conv:`` keys pick one; :func:`slimface.models.blocks.make_conv_choices`).
    ``max_kernel``: the kernel cap of a student design (:func:`slimface.models.blocks.cap_kernels`;
    None keeps the family's kernels), recorded in ``arch()`` only when set so that the designs
    without one keep their arch and fingerprints.
    """

    family: str = ""
    max_kernel: int | None = None
    channel_multiple: int | None = None  # a supernet's width step (student.channel_multiple); None: the family's

    def __init__(self, resolution: int, channels: int, width_mult: float, separable: bool | str | list[str],
                 sub: Mapping[str, int] | None) -> None:
        super().__init__()
        self.resolution = resolution
        self.channels = channels
        self.width_mult = width_mult
        self.separable = separable
        self.sub = dict(sub or {})

    def forward_train(self, x: Tensor, landmarks: Tensor | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, landmarks: Tensor | None = None) -> Tensor:
        return self.forward_train(x, landmarks)["image"]

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, Tensor]:
        """Inputs for profiling/export: a blank image and the canonical landmarks."""
        x = torch.zeros(batch, self.channels, self.resolution, self.resolution)
        lm = torch.as_tensor(canonical_landmarks(self.resolution), dtype=torch.float32)
        return x, lm.unsqueeze(0).expand(batch, 5, 2).contiguous()

    def cap_kernels(self, max_kernel: int | None) -> None:
        """Cap this generator's kernels (:func:`slimface.models.blocks.cap_kernels`) and record the
        cap in ``arch()``; None changes nothing."""
        if max_kernel is None:
            return
        from slimface.models.blocks import cap_kernels

        cap_kernels(self, max_kernel)
        self.max_kernel = max_kernel

    def arch(self) -> dict[str, Any]:
        """The small architecture description that rebuilds this network (export format)."""
        out = {
            "family": self.family,
            "resolution": self.resolution,
            "channels": self.channels,
            "width_mult": self.width_mult,
            "separable": self.separable,
            "sub": dict(self.sub),
        }
        if self.max_kernel is not None:
            out["max_kernel"] = self.max_kernel
        return out


__all__ = ["Generator"]
