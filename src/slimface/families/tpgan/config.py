"""TP-GAN's loss weights: ``teachers.tpgan.loss`` in a run config (light: no torch, so configs load fast)."""

from __future__ import annotations

from dataclasses import dataclass

from slimface.config import check


@dataclass
class TPGANLossConfig:
    """Weights of TP-GAN's synthesis loss (published lambda values where they exist)."""

    pixel_full: float = 1.0
    pixel_half: float = 1.0
    pixel_quarter: float = 1.5
    symmetry: float = 0.3
    adversarial: float = 1e-3
    identity: float = 3e-3
    classification: float = 0.1
    tv: float = 1e-4
    local: float = 3.0

    def validate(self) -> None:
        for name, value in vars(self).items():
            check(value >= 0, f"loss.{name} = {value} must be >= 0")


__all__ = ["TPGANLossConfig"]
