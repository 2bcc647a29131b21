"""CR-GAN's loss weights and critic schedule: ``teachers.crgan.loss`` (light, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from slimface.config import check


@dataclass
class CRGANLossConfig:
    """Loss weights and critic schedule of the CR-GAN teacher (defaults: the official values).

    ``reconstruction`` weights the official L1 (summed over channels, averaged over pixels and batch),
    so its scale does not depend on the image size. ``identity`` weights the L1 between the frozen
    recognizer's unit-norm embeddings of the reconstruction and of the ground truth (~0.05 per
    dimension for unrelated faces, so a weight that matters against ``reconstruction`` is tens).

    Schedule (not in the official code; both 0 = the official recipe, adversarial from step 0):

    * ``warmup_steps``: for the first ``warmup_steps`` steps only the reconstruction path trains
      (L1 + encoder view + identity); the generation path and the critic are skipped entirely, so a
      warm-up step costs about a sixth of a full step on CPU. A short CPU run needs this: from a random
      start the WGAN critic's gradients swamp the L1 and the encoder never learns to carry identity
      through z (outputs collapse to one blob).
    * ``ramp_steps``: after the warm-up the critic trains every step and the generator's
      adversarial and fake-view weights ramp linearly from 0 to ``adversarial`` / ``view_fake``
      over this many steps (:meth:`adversarial_scale`).
    """

    adversarial: float = 1.0
    gradient_penalty: float = 10.0
    view_real: float = 1.0
    view_fake: float = 1.0
    reconstruction: float = 4.0
    encoder_view: float = 0.01
    identity: float = 0.0
    n_critic: int = 1
    betas: tuple[float, float] = (0.0, 0.9)
    warmup_steps: int = 0
    ramp_steps: int = 0

    def validate(self) -> None:
        for name in ("adversarial", "gradient_penalty", "view_real", "view_fake", "reconstruction",
                     "encoder_view", "identity"):
            check(getattr(self, name) >= 0, f"loss.{name} = {getattr(self, name)} must be >= 0")
        check(self.n_critic >= 1, f"loss.n_critic = {self.n_critic} must be >= 1")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
              f"loss.betas = {self.betas} must be two numbers in [0, 1)")
        for name in ("warmup_steps", "ramp_steps"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                  f"loss.{name} = {value!r} must be an integer >= 0")

    def adversarial_scale(self, step: int) -> float:
        """Factor on the generator's adversarial and fake-view terms at 0-based ``step``.

        0 during the warm-up (then the critic and the generation path are skipped too), then a linear
        ramp reaching 1 after ``ramp_steps`` more steps, 1 from there on.
        """
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)


__all__ = ["CRGANLossConfig"]
