"""CR-GAN (Tian et al. 2018): encoder + view-conditioned generator, WGAN-GP critic with a view head.

``model.py`` (generator, critic, the 13 views), ``task.py`` (teacher objective), ``config.py`` (its
loss weights), ``student.py`` (prunable groups and distillation layers); :data:`FAMILY` is what the
registry holds. This module imports no torch; the model and task modules are imported when built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from slimface.config import from_dict
from slimface.families.base import GanMode, StudentSpec
from slimface.families.crgan.config import CRGANLossConfig
from slimface.families.crgan.student import STUDENT_SPEC

if TYPE_CHECKING:
    from torch import nn

    from slimface.families.crgan.model import CRGANCritic, CRGANGenerator
    from slimface.families.crgan.task import CRGANTask


class CRGANFamily:
    """The ``crgan`` family (a :class:`slimface.families.Family`): encoder + view-conditioned
    generator, WGAN-GP critic with a view head."""

    name = "crgan"
    student_spec: StudentSpec = STUDENT_SPEC
    gan_mode: GanMode = "wgan-gp"  # its critic was trained as a Wasserstein critic: the student keeps that loss
    loss_config: type = CRGANLossConfig

    def build_generator(self, *, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                        separable: bool = False, sub: Mapping[str, int] | None = None) -> "CRGANGenerator":
        from slimface.families.crgan.model import CRGANGenerator

        return CRGANGenerator(resolution, channels, width_mult, separable, sub)

    def build_discriminator(self, *, resolution: int = 128, channels: int = 3,
                            width_mult: float = 1.0) -> "CRGANCritic":
        from slimface.families.crgan.model import CRGANCritic

        return CRGANCritic(resolution, channels, width_mult)

    def make_teacher_task(self, generator: "nn.Module", discriminator: "nn.Module",
                          recognizer: "nn.Module | None" = None, *, num_subjects: int = 0, loss: Any = None,
                          lr: float = 2e-4, seed: int = 0) -> "CRGANTask":
        """``num_subjects`` is unused: CR-GAN has no identity classifier (identity is kept by
        reconstruction and, optionally, the recognizer loss)."""
        from slimface.families.crgan.task import CRGANTask

        cfg = loss if isinstance(loss, CRGANLossConfig) else from_dict(CRGANLossConfig, loss, "loss")
        return CRGANTask(generator, discriminator, recognizer, cfg, lr, seed)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<family {self.name}>"


FAMILY = CRGANFamily()

__all__ = ["FAMILY", "CRGANFamily"]
