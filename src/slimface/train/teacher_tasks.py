"""Teacher training for TP-GAN and PIM: one GAN task, PIM = TP-GAN + joint recognizer + domain D.

TP-GAN's synthesis loss (Huang et al. 2017, eq. 7; reference.md section 3), each term a mean so the
published weights apply as printed in the paper (which normalises by W x H):

    L = pixel (1 @R, 1 @R/2, 1.5 @R/4) + 0.3 sym + 1e-3 adv + 3e-3 ip + 1e-4 tv
        + 3 local-patch L1 + cls * cross-entropy(identity head on the encoder feature)

* ``adv``: non-saturating cGAN on ``D(profile, frontal)`` (the conditional patch D);
* ``ip``: L1 between a *frozen* recognizer's features of output and ground truth (optional);
* ``tv``: the paper's lambda_4 = 1e-4 (the official code's TV_WEIGHT is 1e-3; reference.md lists
  that one) -- we use the published value;
* ``cls``: our choice 0.1 (the paper adds the encoder-feature cross-entropy without a printed
  weight); the classifier head is ``Dropout(0.7) -> Linear(256, num_subjects)`` as in the official
  ``FeaturePredict`` (keep_prob 0.3);
* ``local``: L1 of each predicted patch against the ground-truth frontal cropped at the canonical box
  where that patch is pasted (official PART_W = 3).

PIM adds (documented choices; PIM has no public code): the recognizer is *trained jointly* --
cross-entropy on real frontals and on (detached) generated frontals through a linear head -- and the
generator's identity-preserving loss uses it; the generator also gets ``rec_cls`` x cross-entropy of
its output through that recognizer, and ``domain`` x a non-saturating adversarial loss from a small
domain discriminator that tells generated from real frontal faces (cross-domain adversarial training).

Adam, lr 2e-4, betas (0.5, 0.999) for every network; one D step per G step.

Randomness with a batch dimension -- TP-GAN's z and the identity head's dropout mask -- is drawn per
step with :class:`slimface.train.distributed.StepRandom` from ``(seed, step)`` for the global batch and
cut to this rank's rows, so a DDP run with N processes matches a 1-process run with the same global
batch (BatchNorm statistics are synchronised by the Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.config import check, from_dict
from slimface.errors import ConfigError
from slimface.models.patches import PATCH_NAMES, canonical_crops, patch_boxes
from slimface.nn.modes import module_mode
from slimface.train.distributed import StepRandom
from slimface.train.losses import (
    freeze,
    gan_loss_d,
    gan_loss_g,
    identity_loss,
    multiscale_l1,
    symmetry_loss,
    total_variation,
)

BETAS = (0.5, 0.999)


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


@dataclass
class PIMLossConfig(TPGANLossConfig):
    """TP-GAN's weights plus PIM's joint-recognizer and domain-adversarial terms."""

    rec_cls: float = 3e-3
    domain: float = 1e-3


def _inner(net: nn.Module) -> nn.Module:
    """The plain module under a DDP wrapper (for attributes only; calls go through the wrapper)."""
    return getattr(net, "module", net)


def _feature_fn(recognizer: nn.Module) -> Callable[[Tensor], Tensor]:
    """Unnormalised features if the recognizer offers them (what TP-GAN compares), else ``embed``."""
    fn = getattr(recognizer, "features", None)
    if callable(fn) and not isinstance(fn, nn.Module):
        return fn  # type: ignore[no-any-return]
    return recognizer.embed  # type: ignore[no-any-return, operator]


class IdentityHead(nn.Sequential):
    """``Dropout(p) -> Linear`` (state_dict keys ``1.weight``/``1.bias``, as a plain Sequential).

    ``forward(feature, keep)`` applies a given keep mask (B, D) of 0/1 instead of drawing one, so the
    mask can come from the step's process-count-independent generator; without ``keep`` (or in eval
    mode) it is the plain Sequential.
    """

    def __init__(self, feat_dim: int, num_classes: int, p: float = 0.7) -> None:
        super().__init__(nn.Dropout(p), nn.Linear(feat_dim, num_classes))

    @property
    def p(self) -> float:
        return float(self[0].p)  # type: ignore[union-attr]

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if keep is None or not self.training:
            return super().forward(x)
        return self[1](x * keep.to(x.dtype) / (1.0 - self.p))


def _adam(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=BETAS)


class TPGANTask:
    """TP-GAN teacher training (a :class:`slimface.train.loop.TrainTask`).

    Batch keys: ``profile``, ``frontal`` (B, C, H, W in [-1, 1]), ``landmarks`` (B, 5, 2 profile pixel
    x, y), ``subject`` (int64 in [0, num_subjects)). ``recognizer`` (optional) is frozen and used for
    the identity-preserving loss only.
    """

    loss_config_cls: type[TPGANLossConfig] = TPGANLossConfig

    def __init__(self, generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None = None,
                 *, num_subjects: int, loss: dict[str, Any] | TPGANLossConfig | None = None,
                 lr: float = 2e-4, seed: int = 0) -> None:
        """``seed``: with the step, seeds the per-sample noise (z, dropout masks); pass the run's
        ``train.seed``."""
        if num_subjects < 1:
            raise ConfigError(f"num_subjects = {num_subjects}: the identity classifier needs >= 1 training subject")
        if lr <= 0:
            raise ConfigError(f"teacher lr {lr} must be > 0")
        self.cfg = loss if isinstance(loss, TPGANLossConfig) else from_dict(self.loss_config_cls, loss, "loss")
        self.num_subjects = num_subjects
        self.seed = int(seed)
        self.resolution = int(generator.resolution)  # type: ignore[arg-type]
        self.boxes = patch_boxes(self.resolution)
        feat_dim = 256
        self.nets: dict[str, nn.Module] = {
            "generator": generator,
            "discriminator": discriminator,
            "id_head": IdentityHead(feat_dim, num_subjects, 0.7),
        }
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "generator": _adam(list(generator.parameters()) + list(self.nets["id_head"].parameters()), lr),
            "discriminator": _adam(discriminator.parameters(), lr),
        }
        self.schedulers: dict[str, Any] = {}
        self.frozen_recognizer: nn.Module | None = None
        if recognizer is not None and self._freezes_recognizer():
            if not getattr(recognizer, "differentiable", True):
                raise ConfigError("the identity-preserving loss needs a differentiable recognizer "
                                  "(a LightCNN); dlib's cannot back-propagate")
            self.frozen_recognizer = freeze(recognizer)
        family = getattr(generator, "family", "tpgan")
        self.fingerprint = f"{family}@{self.resolution} w{getattr(generator, 'width_mult', 1.0)}"

    def _freezes_recognizer(self) -> bool:
        return True

    @property
    def frozen_nets(self) -> dict[str, nn.Module]:
        return {"recognizer": self.frozen_recognizer} if self.frozen_recognizer is not None else {}

    # ------------------------------------------------------------------------------------ pieces
    def _unpack(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        for key in ("profile", "frontal", "subject"):
            if key not in batch:
                raise KeyError(f"TP-GAN batches need {key!r}; got keys {sorted(batch)}")
        subject = batch["subject"].long()
        if int(subject.min()) < 0 or int(subject.max()) >= self.num_subjects:
            raise ValueError(f"subject ids must lie in [0, {self.num_subjects}), got "
                             f"[{int(subject.min())}, {int(subject.max())}]")
        return batch["profile"], batch["frontal"], batch.get("landmarks"), subject

    def _identity_features(self) -> Callable[[Tensor], Tensor] | None:
        rec = self.frozen_recognizer
        return None if rec is None else _feature_fn(rec)

    def _synthesis_losses(self, out: dict[str, Any], profile: Tensor, frontal: Tensor,
                          subject: Tensor, keep: Tensor | None = None) -> dict[str, Tensor]:
        """TP-GAN's generator terms (unweighted) for one forward pass; ``keep``: the identity head's
        dropout mask (None: the head draws its own)."""
        c, r = self.cfg, self.resolution
        fake = out["image"]
        weights = {r: c.pixel_full, r // 2: c.pixel_half, r // 4: c.pixel_quarter}
        targets = canonical_crops(frontal, self.boxes)
        terms = {
            "pixel": multiscale_l1(out["images"], frontal, weights),
            "sym": symmetry_loss(fake),
            "adv": gan_loss_g(self.nets["discriminator"](profile, fake)),
            "tv": total_variation(fake),
            "local": sum((out["patches"][n] - targets[n]).abs().mean() for n in PATCH_NAMES) / len(PATCH_NAMES),
            "cls": F.cross_entropy(self.nets["id_head"](out["feature"], keep), subject),
        }
        feat = self._identity_features()
        if feat is not None:
            terms["ip"] = identity_loss(feat, fake, frontal)
        return terms  # type: ignore[return-value]

    def _weighted(self, terms: dict[str, Tensor]) -> Tensor:
        c = self.cfg
        w = {"pixel": 1.0, "sym": c.symmetry, "adv": c.adversarial, "tv": c.tv, "local": c.local,
             "cls": c.classification, "ip": c.identity}
        w.update(self._extra_weights())
        return sum(w[k] * v for k, v in terms.items())  # type: ignore[return-value]

    def _extra_weights(self) -> dict[str, float]:
        return {}

    def _discriminator_step(self, profile: Tensor, frontal: Tensor, fake: Tensor) -> Tensor:
        d = self.nets["discriminator"]
        loss = gan_loss_d(d(profile, frontal), d(profile, fake.detach()))
        opt = self.optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def _extra_steps(self, profile: Tensor, frontal: Tensor, fake: Tensor, subject: Tensor) -> dict[str, Tensor]:
        """Hook for PIM's recognizer and domain-D updates (before the generator step)."""
        return {}

    def _extra_generator_terms(self, fake: Tensor, frontal: Tensor, subject: Tensor) -> dict[str, Tensor]:
        return {}

    # -------------------------------------------------------------------------------------- step
    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        profile, frontal, landmarks, subject = self._unpack(batch)
        if self.frozen_recognizer is not None:
            self.frozen_recognizer.to(profile.device)
        for net in self.nets.values():
            net.train()
        rnd = StepRandom(self.seed, step, profile.shape[0], profile.device, stream="tpgan-teacher")
        gen_kwargs: dict[str, Any] = {}
        noise_dim = int(getattr(_inner(self.nets["generator"]), "noise_dim", 0) or 0)
        if noise_dim:
            gen_kwargs["noise"] = rnd.randn(noise_dim, dtype=profile.dtype)
        out = self.nets["generator"](profile, landmarks, outputs="train", **gen_kwargs)
        fake = out["image"]
        head = _inner(self.nets["id_head"])
        keep = None
        if isinstance(head, IdentityHead) and head.p > 0:
            keep = (rnd.rand(out["feature"].shape[1]) >= head.p).to(profile.dtype)
        logs = {"d": self._discriminator_step(profile, frontal, fake)}
        logs.update(self._extra_steps(profile, frontal, fake, subject))
        terms = self._synthesis_losses(out, profile, frontal, subject, keep)
        terms.update(self._extra_generator_terms(fake, frontal, subject))
        total = self._weighted(terms)
        opt = self.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        logs.update({f"g_{k}": v.detach() for k, v in terms.items()})
        logs["g_total"] = total.detach()
        result = {k: float(v) for k, v in logs.items()}
        bad = [k for k, v in result.items() if v != v or v in (float("inf"), float("-inf"))]
        if bad:
            raise FloatingPointError(f"non-finite loss {bad[0]} at step {step}; lower the lr or check the data")
        return result

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Triplets for a grid: profile, its frontalisation (eval mode, z = 0), ground truth."""
        with module_mode(self.nets["generator"]) as gen:
            profile, frontal = batch["profile"], batch["frontal"]
            fake = gen(profile, batch.get("landmarks"))
        return torch.stack([profile, fake, frontal], 1).flatten(0, 1)


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
        from slimface.models.discriminators import DomainDiscriminator

        if recognizer is None:
            from slimface.models.recognizer import build_recognizer

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


def make_tpgan_task(generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None = None,
                    *, num_subjects: int, loss: dict[str, Any] | None = None, lr: float = 2e-4,
                    seed: int = 0) -> TPGANTask:
    """The ``make_teacher_task`` of the ``tpgan`` family."""
    return TPGANTask(generator, discriminator, recognizer, num_subjects=num_subjects, loss=loss, lr=lr,
                     seed=seed)


def make_pim_task(generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None = None,
                  *, num_subjects: int, loss: dict[str, Any] | None = None, lr: float = 2e-4,
                  seed: int = 0) -> PIMTask:
    """The ``make_teacher_task`` of the ``pim`` family."""
    return PIMTask(generator, discriminator, recognizer, num_subjects=num_subjects, loss=loss, lr=lr,
                   seed=seed)


__all__ = ["IdentityHead", "TPGANLossConfig", "PIMLossConfig", "TPGANTask", "PIMTask", "make_tpgan_task", "make_pim_task"]
