"""One registry for every model family slimface knows (teachers and their students).

A *family* bundles what the pipeline needs about one frontalization GAN: how to build its generator
(teacher-shaped or student-shaped, full or sub-network widths), its discriminator, its own teacher
training task, and the declarative student spec used by compression. Adding a teacher means
registering a family, not writing new training code.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from slimface.errors import ConfigError


class Generator(nn.Module):
    """Base class of all frontalization generators.

    ``forward(x, landmarks)`` maps profiles (B, C, H, W) in [-1, 1] (+ (B, 5, 2) landmarks in pixel
    coordinates) to frontal faces of the same shape; it is deterministic in eval mode so exported
    students can be compared with their supernet. ``forward_train`` returns everything the family's
    own losses need (multi-scale images, local patches, features...).
    """

    family: str = ""

    def __init__(self, resolution: int, channels: int, width_mult: float, separable: bool,
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
        from slimface.data.records import canonical_landmarks

        x = torch.zeros(batch, self.channels, self.resolution, self.resolution)
        lm = torch.as_tensor(canonical_landmarks(self.resolution), dtype=torch.float32)
        return x, lm.unsqueeze(0).expand(batch, 5, 2).contiguous()

    def arch(self) -> dict[str, Any]:
        """The small architecture description that rebuilds this network (export format)."""
        return {
            "family": self.family,
            "resolution": self.resolution,
            "channels": self.channels,
            "width_mult": self.width_mult,
            "separable": self.separable,
            "sub": dict(self.sub),
        }


@dataclass
class StudentSpec:
    """Which width groups of a family's student are prunable, and how it is distilled.

    ``prunable`` maps fnmatch patterns over group names (e.g. ``"decoder.*"``) to the allowed fraction
    range of the full width; choices are multiples of ``multiple`` inside it. Groups that match no
    pattern keep their full width. ``distill`` names the generator modules whose outputs are matched
    to the teacher's (same module names in teacher and student).
    """

    prunable: dict[str, tuple[float, float]]
    distill: list[str]
    multiple: int = 8

    def choices(self, groups: Mapping[str, int], multiple: int | None = None) -> dict[str, list[int]]:
        step = multiple or self.multiple
        out: dict[str, list[int]] = {}
        for group, full in groups.items():
            for pattern, (lo, hi) in self.prunable.items():
                if fnmatch.fnmatchcase(group, pattern):
                    cands = [c for c in range(step, full + 1, step) if lo * full - 1e-9 <= c <= hi * full + 1e-9]
                    if full not in cands and hi >= 1.0:
                        cands.append(full)
                    out[group] = sorted(set(cands)) or [full]
                    break
        return out


@dataclass
class Family:
    name: str
    build_generator: Callable[..., Generator]
    build_discriminator: Callable[..., nn.Module]
    make_teacher_task: Callable[..., Any]
    student_spec: StudentSpec
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def _load_builtin() -> None:
    # Importing the model modules registers their families.
    from slimface.models import crgan, pim, tpgan  # noqa: F401


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        _load_builtin()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def families() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def build_generator(name: str, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                    separable: bool = False, sub: Mapping[str, int] | None = None) -> Generator:
    """Build a generator; ``separable``/``sub`` give the student supernet / a static sub-network."""
    if resolution not in (64, 128):
        raise ConfigError(f"resolution must be 64 or 128, got {resolution}")
    return get_family(name).build_generator(
        resolution=resolution, channels=channels, width_mult=width_mult, separable=separable, sub=sub
    )


def generator_from_arch(arch: Mapping[str, Any]) -> Generator:
    return build_generator(arch["family"], arch["resolution"], arch["channels"], arch["width_mult"],
                           arch["separable"], arch.get("sub"))
