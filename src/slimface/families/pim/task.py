"""PIM's teacher objective: TP-GAN's + a jointly trained recognizer + a domain discriminator.

Documented choices (PIM has no public code): the recognizer is *trained jointly* -- cross-entropy on
real frontals and on (detached) generated frontals through a linear head -- and the generator's
identity-preserving loss uses it; the generator also gets ``rec_cls`` x cross-entropy of its output
through that recognizer, and ``domain`` x a non-saturating adversarial loss from a small domain
discriminator that tells generated from real frontal faces (cross-domain adversarial training).
Everything else (synthesis loss, optimisers, per-step randomness) is TP-GAN's
(:mod:`slimface.families.tpgan.task`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor, nn

from slimface.families.pim.config import PIMLossConfig
from slimface.families.tpgan.task import TPGANTask, _adam
from slimface.models.discriminators import DomainDiscriminator
from slimface.models.recognizer import build_recognizer
from slimface.train.losses import gan_loss_d, gan_loss_g


class PIMTask(TPGANTask):
    """PIM: TP-GAN's objective + a jointly trained recognizer + a domain discriminator.

    ``recognizer`` (a LightCNN-style module: ``forward(images) -> (logits, feature)``) is *trained*
    here with its own linear head over ``num_subjects``; when ``None`` a LightCNN-9 at the generator's
    resolution is built.
    """

    loss_config_cls = PIMLossConfig
    cfg: PIMLossConfig

    def __init__(self, generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None = None,
                 *, num_subjects: int, loss: dict[str, Any] | PIMLossConfig | None = None,
                 lr: float = 2e-4, domain_width: float | None = None, seed: int = 0) -> None:
        super().__init__(generator, discriminator, recognizer, num_subjects=num_subjects, loss=loss, lr=lr,
                         seed=seed)
        if recognizer is None:
            recognizer = build_recognizer("lightcnn9", input_size=self.resolution, num_classes=0)
        dim = int(getattr(recognizer, "embedding_dim", 0) or 256)
        channels = int(getattr(generator, "channels", 3))
        width = domain_width if domain_width is not None else float(getattr(generator, "width_mult", 1.0))
        self.nets["recognizer"] = recognizer
        self.nets["rec_head"] = nn.Linear(dim, num_subjects)
        self.nets["domain_d"] = DomainDiscriminator(self.resolution, channels, width)
        self.optimizers["recognizer"] = _adam(
            list(recognizer.parameters()) + list(self.nets["rec_head"].parameters()), lr)
        self.optimizers["domain_d"] = _adam(self.nets["domain_d"].parameters(), lr)

    def _freezes_recognizer(self) -> bool:
        return False

    def _rec_logits_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.nets["recognizer"](images)
        feat = out[1] if isinstance(out, (tuple, list)) else out
        return self.nets["rec_head"](feat), feat

    def _identity_features(self) -> Callable[[Tensor], Tensor] | None:
        if self.cfg.identity <= 0:
            return None
        return lambda images: self._rec_logits_features(images)[1]

    def _extra_weights(self) -> dict[str, float]:
        return {"rec_cls": self.cfg.rec_cls, "domain": self.cfg.domain}

    def _extra_steps(self, profile: Tensor, frontal: Tensor, fake: Tensor, subject: Tensor) -> dict[str, Tensor]:
        dd = self.nets["domain_d"]
        loss_dd = gan_loss_d(dd(frontal), dd(fake.detach()))
        opt = self.optimizers["domain_d"]
        opt.zero_grad(set_to_none=True)
        loss_dd.backward()
        opt.step()
        real_logits, _ = self._rec_logits_features(frontal)
        fake_logits, _ = self._rec_logits_features(fake.detach())
        loss_rec = F.cross_entropy(real_logits, subject) + F.cross_entropy(fake_logits, subject)
        opt = self.optimizers["recognizer"]
        opt.zero_grad(set_to_none=True)
        loss_rec.backward()
        opt.step()
        acc = (real_logits.detach().argmax(1) == subject).float().mean()
        return {"domain_d": loss_dd.detach(), "rec": loss_rec.detach(), "rec_acc": acc}

    def _extra_generator_terms(self, fake: Tensor, frontal: Tensor, subject: Tensor) -> dict[str, Tensor]:
        logits, _ = self._rec_logits_features(fake)
        return {
            "rec_cls": F.cross_entropy(logits, subject),
            "domain": gan_loss_g(self.nets["domain_d"](fake)),
        }


__all__ = ["PIMLossConfig", "PIMTask"]
