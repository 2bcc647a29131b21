"""CR-GAN's own training objective (the teacher stage of the ``crgan`` family).

One step follows the official two-path recipe (bluer555/CR-GAN ``train.py``), adapted to paired
frontalisation data:

* **generation path**: random z ~ U(-1, 1) and a random one of the 13 views -> image; the critic
  must score it as fake and classify its view as the one asked for (AC-GAN style).
* **reconstruction path**: encode the profile, generate at the frontal view, L1 to the ground-truth
  frontal + adversarial + the critic's view loss at the frontal view; the encoder's own view head
  learns the profile's yaw (official weight 0.01).
* **critic**: WGAN-GP on real (profile and frontal, with their views) vs both fakes, gradient
  penalty on interpolates of the aligned pairs (profile, generated) and (frontal, reconstructed),
  view cross-entropy on the real images.
* optional identity preservation: L1 between a *frozen* recognizer's features of the reconstruction
  and of the ground truth (off by default).
* optional schedule (``loss.warmup_steps`` / ``loss.ramp_steps``, off by default): reconstruction
  path alone first, then the adversarial terms ramp in; see :class:`CRGANLossConfig`.

Per-sample randomness (z, the random views, the gradient-penalty interpolation weights) is drawn per
step with :class:`slimface.train.distributed.StepRandom` from ``(seed, step)`` for the global batch and
cut to this rank's rows, so a DDP run matches a 1-process run with the same global batch (BatchNorm
statistics are synchronised by the Trainer).

Adam with the official WGAN-GP betas (0, 0.9) by default; the official lr is 1e-4, this project's
default 2e-4 follows the compression recipe (pass ``lr=1e-4`` for the official one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.errors import ConfigError, DataError
from slimface.families.crgan.config import CRGANLossConfig
from slimface.families.crgan.model import CRGANCritic, CRGANGenerator, yaw_to_view
from slimface.nn.modes import freeze, module_mode
from slimface.train.distributed import StepRandom
from slimface.train.losses import gradient_penalty, identity_loss, wgan_loss_d, wgan_loss_g


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "module", net)


class CRGANTask:
    """Trains a :class:`CRGANGenerator` (encoder + generator) and its :class:`CRGANCritic`.

    Batches hold ``profile`` and ``frontal`` (B, C, H, W) in [-1, 1] and ``yaw`` (B,) in degrees;
    ``landmarks`` and ``subject`` are accepted and unused (CR-GAN needs neither).
    """

    def __init__(self, generator: CRGANGenerator, discriminator: CRGANCritic,
                 recognizer: nn.Module | None = None, loss: CRGANLossConfig | None = None,
                 lr: float = 2e-4, seed: int = 0) -> None:
        """``seed``: with the step, seeds the per-sample randomness; pass the run's ``train.seed``."""
        if not isinstance(_unwrap(generator), CRGANGenerator):
            raise TypeError(f"CRGANTask needs a CRGANGenerator, got {type(generator).__name__}")
        if not isinstance(_unwrap(discriminator), CRGANCritic):
            raise TypeError(f"CRGANTask needs a CRGANCritic, got {type(discriminator).__name__}")
        if not lr > 0:
            raise ConfigError(f"crgan teacher lr {lr} must be > 0")
        self.cfg = loss or CRGANLossConfig()
        self.cfg.validate()
        self.seed = int(seed)
        if self.cfg.identity > 0 and recognizer is None:
            raise ConfigError("loss.identity > 0 needs a recognizer; pass one or set loss.identity: 0")
        self.recognizer = freeze(recognizer) if recognizer is not None else None
        self.nets: dict[str, nn.Module] = {"generator": generator, "discriminator": discriminator}
        betas = (float(self.cfg.betas[0]), float(self.cfg.betas[1]))
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "generator": torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas),
        }
        self.schedulers: dict[str, Any] = {}

    @property
    def frozen_nets(self) -> dict[str, nn.Module]:
        return {"recognizer": self.recognizer} if self.recognizer is not None else {}

    # -- helpers -------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        for key in ("profile", "frontal", "yaw"):
            if key not in batch:
                raise DataError(f"crgan training batch lacks {key!r}; use the paired dataset (PairDataset)")
        device = next(_unwrap(self.nets["generator"]).parameters()).device
        profile = batch["profile"].to(device, torch.float32)
        frontal = batch["frontal"].to(device, torch.float32)
        if profile.shape != frontal.shape:
            raise DataError(f"profile {tuple(profile.shape)} and frontal {tuple(frontal.shape)} batches "
                            "differ in shape; pair images of one resolution")
        views = yaw_to_view(torch.as_tensor(batch["yaw"]).detach().cpu()).to(device)
        return profile, frontal, views

    def _fakes(self, profile: Tensor, frontal_views: Tensor, rnd: StepRandom
               ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Generation-path image (random z and view from ``rnd``) and reconstruction-path output."""
        gen = self.nets["generator"]
        inner = _unwrap(gen)
        z = rnd.rand(inner.z_dim, dtype=profile.dtype) * 2 - 1
        rand_views = rnd.randint(inner.num_views)
        x_gen = gen(None, view=rand_views, z=z)
        rec = gen(profile, view=frontal_views, outputs="train")
        return x_gen, rand_views, rec["image"], rec

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        """n_critic critic updates, then one generator (encoder + generator) update.

        During the warm-up (``loss.warmup_steps``) only the reconstruction path runs: no generation
        path, no critic update, no adversarial or fake-view term.
        """
        cfg = self.cfg
        gen, critic = self.nets["generator"], self.nets["discriminator"]
        opt_d = self.optimizers["discriminator"]
        gen.train()
        critic.train()
        profile, frontal, prof_views = self._inputs(batch)
        b = profile.shape[0]
        front_views = torch.full((b,), _unwrap(gen).frontal_view, dtype=torch.long, device=profile.device)
        rnd = StepRandom(self.seed, step, b, profile.device, stream="crgan-teacher")
        scale = cfg.adversarial_scale(step)

        if scale == 0.0:
            rec = gen(profile, view=front_views, outputs="train")
            x_rec = rec["image"]
            return self._generator_update(x_rec, rec, frontal, prof_views, scale, {})

        x_gen, rand_views, x_rec, rec = self._fakes(profile, front_views, rnd)
        real = torch.cat([profile, frontal])
        real_views = torch.cat([prof_views, front_views])

        # ---- critic -----------------------------------------------------------------------
        d_stats: dict[str, float] = {}
        for i in range(cfg.n_critic):
            if i == 0:
                fake = torch.cat([x_gen, x_rec]).detach()
            else:
                with torch.no_grad():
                    g2, _, r2, _ = self._fakes(profile, front_views, rnd)
                fake = torch.cat([g2, r2])
            view_logits, s_real = critic(real, heads=True)
            s_fake = critic(fake)
            # real/fake rows are [profiles ‖ frontals]: one weight per pair member and sample
            pair_alpha = rnd.rand(2)
            gp = gradient_penalty(critic, real, fake, torch.cat([pair_alpha[:, 0], pair_alpha[:, 1]]))
            view_ce = F.cross_entropy(view_logits, real_views)
            d_loss = wgan_loss_d(s_real, s_fake) + cfg.gradient_penalty * gp + cfg.view_real * view_ce
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            d_stats = {
                "d_loss": float(d_loss.detach()),
                "wasserstein": float((s_real.mean() - s_fake.mean()).detach()),
                "gp": float(gp.detach()),
                "d_view_ce": float(view_ce.detach()),
                "d_view_acc": float((view_logits.detach().argmax(1) == real_views).float().mean()),
            }

        # ---- generator (encoder + generator) ------------------------------------------------
        fake_logits, s_fake = critic(torch.cat([x_gen, x_rec]), heads=True)
        adv = wgan_loss_g(s_fake)
        view_fake = F.cross_entropy(fake_logits, torch.cat([rand_views, front_views]))
        extra = scale * (cfg.adversarial * adv + cfg.view_fake * view_fake)
        d_stats.update({"g_adv": float(adv.detach()), "g_view_ce": float(view_fake.detach())})
        stats = self._generator_update(x_rec, rec, frontal, prof_views, scale, d_stats, extra)
        opt_d.zero_grad(set_to_none=True)  # the G step left gradients on the critic; drop them
        return stats

    def _generator_update(self, x_rec: Tensor, rec: dict[str, Tensor], frontal: Tensor,
                          prof_views: Tensor, scale: float, stats: dict[str, float],
                          extra: Tensor | None = None) -> dict[str, float]:
        """Reconstruction-path losses (+ ``extra``, the scaled adversarial terms); one G/E step."""
        cfg = self.cfg
        opt_g = self.optimizers["generator"]
        recon = (x_rec - frontal).abs().sum(1).mean()
        enc_view = F.cross_entropy(rec["view_logits"], prof_views)
        g_loss = cfg.reconstruction * recon + cfg.encoder_view * enc_view
        if extra is not None:
            g_loss = g_loss + extra
        if cfg.identity > 0 and self.recognizer is not None:
            rec_model = self.recognizer.to(x_rec.device)
            ident = identity_loss(rec_model.embed, x_rec, frontal)  # type: ignore[operator]
            g_loss = g_loss + cfg.identity * ident
            stats["identity"] = float(ident.detach())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for sched in self.schedulers.values():  # once per train_step: this is its last update
            sched.step()
        stats.update({
            "g_loss": float(g_loss.detach()),
            "adv_scale": float(scale),
            "recon_l1": float((x_rec.detach() - frontal).abs().mean()),
            "enc_view_acc": float((rec["view_logits"].detach().argmax(1) == prof_views).float().mean()),
        })
        return stats

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """Rows for a grid: profiles, their frontalisations (eval mode), ground-truth frontals."""
        with module_mode(self.nets["generator"]) as gen:
            profile, frontal, _ = self._inputs(batch)
            out = gen(profile)
        return torch.cat([profile, out, frontal])

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


__all__ = ["CRGANLossConfig", "CRGANTask"]
