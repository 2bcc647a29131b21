"""TP-GAN's teacher objective (PIM's, in :mod:`slimface.families.pim.task`, extends it).

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

Adam, lr 2e-4, betas (0.5, 0.999) for every network; one D step per G step.

Randomness with a batch dimension -- TP-GAN's z and the identity head's dropout mask -- is drawn per
step with :class:`slimface.train.distributed.StepRandom` from ``(seed, step)`` for the global batch and
cut to this rank's rows, so a DDP run with N processes matches a 1-process run with the same global
batch (BatchNorm statistics are synchronised by the Trainer).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.config import from_dict
from slimface.errors import ConfigError
from slimface.families.tpgan.config import TPGANLossConfig
from slimface.models.patches import PATCH_NAMES, canonical_crops, patch_boxes
from slimface.nn.modes import freeze, module_mode
from slimface.train.distributed import StepRandom
from slimface.train.losses import (
    gan_loss_d,
    gan_loss_g,
    identity_loss,
    multiscale_l1,
    symmetry_loss,
    total_variation,
)

BETAS = (0.5, 0.999)


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
        gen = _inner(generator)
        self.fingerprint = f"{gen.family}@{self.resolution} w{gen.width_mult}"

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
        for sched in self.schedulers.values():
            sched.step()
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


__all__ = ["IdentityHead", "TPGANLossConfig", "TPGANTask"]
