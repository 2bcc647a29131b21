"""PIM (Zhao et al. 2018): TP-GAN's generator without noise and with a lighter decoder, TP-GAN's
discriminator and student spec, and TP-GAN's objective plus a jointly trained recognizer and a
domain discriminator. Everything shared is imported from :mod:`slimface.families.tpgan`; like it,
this module imports no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from slimface.families.pim.config import PIMLossConfig
from slimface.families.pim.student import STUDENT_SPEC
from slimface.families.tpgan import TPGANFamily

if TYPE_CHECKING:
    from torch import nn

    from slimface.families.pim.model import PIMGenerator
    from slimface.families.pim.task import PIMTask


class PIMFamily(TPGANFamily):
    """The ``pim`` family: TP-GAN's with PIM's generator configuration (dual path without noise,
    lighter decoder) and objective (+ jointly trained recognizer and domain discriminator)."""

    name = "pim"
    student_spec = STUDENT_SPEC
    loss_config = PIMLossConfig

    def build_generator(self, *, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                        separable: bool = False, sub: Mapping[str, int] | None = None) -> "PIMGenerator":
        from slimface.families.pim.model import PIMGenerator

        return PIMGenerator(resolution, channels, width_mult, separable, sub)

    def make_teacher_task(self, generator: "nn.Module", discriminator: "nn.Module",
                          recognizer: "nn.Module | None" = None, *, num_subjects: int = 0, loss: Any = None,
                          lr: float = 2e-4, seed: int = 0) -> "PIMTask":
        from slimface.families.pim.task import PIMTask

        return PIMTask(generator, discriminator, recognizer, num_subjects=num_subjects, loss=loss, lr=lr, seed=seed)


FAMILY = PIMFamily()

__all__ = ["FAMILY", "PIMFamily"]
