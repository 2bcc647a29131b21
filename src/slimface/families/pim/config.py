"""PIM's loss weights: ``teachers.pim.loss`` (TP-GAN's plus PIM's own terms; light, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from slimface.families.tpgan.config import TPGANLossConfig


@dataclass
class PIMLossConfig(TPGANLossConfig):
    """TP-GAN's weights plus PIM's joint-recognizer and domain-adversarial terms."""

    rec_cls: float = 3e-3
    domain: float = 1e-3


__all__ = ["PIMLossConfig"]
