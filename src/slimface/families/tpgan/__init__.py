"""TP-GAN (Huang et al. 2017): two-pathway generator, conditional patch discriminator, synthesis loss.

``model.py`` (generator, shared with PIM), ``task.py`` (teacher objective, extended by PIM),
``config.py`` (its loss weights), ``student.py`` (prunable groups and distillation layers, shared with
PIM); :data:`FAMILY` is what the registry holds. This module imports no torch (a run config validates
against it); the model and task modules are imported when something is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from slimface.families.base import GanMode, StudentSpec
from slimface.families.tpgan.config import TPGANLossConfig
from slimface.families.tpgan.student import STUDENT_SPEC

if TYPE_CHECKING:
    from torch import nn

    from slimface.families.tpgan.model import TPGANGenerator
    from slimface.families.tpgan.task import TPGANTask


class TPGANFamily:
    """The ``tpgan`` family (a :class:`slimface.families.Family`): global encoder-decoder + four
    landmark-patch pathways, conditional patch discriminator."""

    name = "tpgan"
    student_spec: StudentSpec = STUDENT_SPEC
    gan_mode: GanMode = "bce"
    loss_config: type = TPGANLossConfig

    def build_generator(self, *, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                        separable: bool = False, sub: Mapping[str, int] | None = None) -> "TPGANGenerator":
        from slimface.families.tpgan.model import TPGANGenerator

        return TPGANGenerator(resolution, channels, width_mult, separable, sub)

    def build_discriminator(self, *, resolution: int = 128, channels: int = 3,
                            width_mult: float = 1.0) -> "nn.Module":
        """TP-GAN's conditional patch discriminator D(profile, frontal)."""
        from slimface.models.discriminators import PatchDiscriminator

        return PatchDiscriminator(resolution, channels, width_mult, conditional=True)

    def make_teacher_task(self, generator: "nn.Module", discriminator: "nn.Module",
                          recognizer: "nn.Module | None" = None, *, num_subjects: int = 0, loss: Any = None,
                          lr: float = 2e-4, seed: int = 0) -> "TPGANTask":
        from slimface.families.tpgan.task import TPGANTask

        return TPGANTask(generator, discriminator, recognizer, num_subjects=num_subjects, loss=loss, lr=lr,
                         seed=seed)

    def __repr__(self) -> str:
        return f"<family {self.name}>"


FAMILY = TPGANFamily()

__all__ = ["FAMILY", "TPGANFamily"]
