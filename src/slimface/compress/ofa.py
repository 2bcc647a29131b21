"""Once-for-all supernet training: every step trains a randomly sampled sub-network by distillation.

The supernet is the family's student (separable convs) at full width; each step samples a channel
config (with ``student.separable: search`` also a conv type per convertible conv: the ``conv:`` keys,
which budget sampling shrinks towards separable as it narrows widths) from a generator seeded by
``(seed, step)`` only (identical on every DDP rank), activates it,
and updates the shared weight slices with the objective of :mod:`slimface.compress.distill`. The
student's D starts as a copy of the teacher's D (the reference found random init unstable).

DDP: the configuration is a function of ``(seed, step)`` (same on every rank); a generator with a
per-sample code (``noise_dim`` > 0, e.g. TP-GAN's z) gets its noise from
:class:`~slimface.train.distributed.StepRandom` (global batch, sliced to this rank), and BN statistics
are synchronised by the Trainer, so N processes follow the 1-process run with the same global batch.

BatchNorm: all sub-networks share one set of running statistics, so a sub-network is scored after
recalibrating them for it (:mod:`slimface.compress.bn`).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from slimface.compress.bn import Batch
from slimface.compress.config import OFAConfig
from slimface.compress.distill import DistillLoss, FeatureTaps, Mapper, is_conditional
from slimface.compress.space import Config, ConfigSpace, activate, active_config
from slimface.errors import CheckpointError, ConfigError
from slimface.families.base import Family
from slimface.compress.search import identity_metric, recon_metric
from slimface.nn.modes import freeze, unwrap
from slimface.train.distributed import StepRandom, shared_generator
from slimface.train.schedule import linear_decay

#: batches (of ``bn_batches``, else ``val_batches``) that recalibrate BN before :meth:`OFATask.evaluate_config`
EVAL_BN_BATCHES = 4


# -------------------------------------------------------------------- the task
class OFATask:
    """TrainTask for the once-for-all student.

    nets: ``student`` (supernet), ``disc`` (copy of the teacher's D), ``mappers`` (:class:`Mapper`).
    Optimisers: ``student`` (generator + mappers, trained together) and ``disc``.
    """

    #: nets whose parameters a step may leave without gradient (the Trainer wraps them in DDP with
    #: ``find_unused_parameters``): the student runs one sub-network and only the image path (CR-GAN's
    #: encoder view head is not part of it), the critic is asked for its score only (CR-GAN's view head)
    unused_parameters = ("student", "disc")

    def __init__(
        self,
        family: Family,
        supernet: nn.Module,
        teacher: nn.Module,
        teacher_disc: nn.Module,
        config: OFAConfig | None = None,
        *,
        space: ConfigSpace | None = None,
        recognizer: nn.Module | None = None,
        val_batches: Sequence[Batch] | None = None,
        bn_batches: Sequence[Batch] | None = None,
        seed: int = 0,
        budget_macs: float = 0.0,
        fixed_config: Mapping[str, int] | str | None = None,
    ) -> None:
        """``config``: the ``student:`` section (``train.lr`` and ``train.steps`` drive the optimisers and
        their lr schedule). ``seed``: with the step, seeds the sampled sub-networks and the per-sample
        noise (the run's seed). ``budget_macs``: the search budget in MACs that sampling ``budget``
        aims under. ``fixed_config`` trains that one sub-network every step (fine-tuning: the stage
        passes ``replace(student, train=finetune.train)``). ``bn_batches`` of the training data
        recalibrate BN before :meth:`evaluate_config` scores ``val_batches``."""
        c = config if config is not None else OFAConfig()
        c.validate()
        self.cfg = c
        self.seed = int(seed)
        self.budget_macs = float(budget_macs)
        self.family = family
        self.space = space or ConfigSpace.from_supernet(family, supernet)
        self.fixed: Config | None = None
        if fixed_config is not None:
            self.fixed = self.space.decode(fixed_config) if isinstance(fixed_config, str) else dict(fixed_config)
            self.space.validate(self.fixed)
        self._conv_macs: Callable[[Config], int] = lambda cfg: 0
        if c.sampling == "budget" and self.fixed is None:
            self._conv_macs = self._budget_model(unwrap(supernet))
        names = list(family.student_spec.distill)
        self.teacher = freeze(teacher)
        device = next(supernet.parameters()).device
        disc = copy.deepcopy(unwrap(teacher_disc))
        for p in disc.parameters():
            p.requires_grad_(True)
        disc.train()
        mappers = Mapper(supernet, self.teacher, names).to(device)
        self.channels = int(getattr(unwrap(supernet), "channels", 3))
        self.loss = DistillLoss(c, is_conditional(disc, self.channels),
                                freeze(recognizer) if recognizer is not None else None, family.gan_mode)
        self.nets: dict[str, nn.Module] = {"student": supernet, "disc": disc.to(device), "mappers": mappers}
        betas = (c.beta1, c.beta2)
        lr = c.train.lr
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "student": torch.optim.Adam(list(supernet.parameters()) + list(mappers.parameters()), lr=lr, betas=betas),
            "disc": torch.optim.Adam(disc.parameters(), lr=lr, betas=betas),
        }
        decay = linear_decay(c.train.steps, c.decay)
        self.schedulers: dict[str, Any] = {
            k: torch.optim.lr_scheduler.LambdaLR(o, decay) for k, o in self.optimizers.items()
        }
        self.student_taps = FeatureTaps(supernet, names, "student")
        self.teacher_taps = FeatureTaps(self.teacher, names, "teacher")
        self.recognizer = self.loss.recognizer
        self.val_batches = list(val_batches or [])
        self.bn_batches = list(bn_batches or [])
        self.last_config = ""
        res = getattr(unwrap(supernet), "resolution", "?")
        mult = getattr(unwrap(supernet), "width_mult", "?")
        self.fingerprint = f"{type(self).__name__}:{getattr(family, 'name', family)}@{res} w{mult}"
        if self.fixed is not None:
            self.fingerprint += f" cfg={self.space.encode(self.fixed)}"

    @property
    def frozen_nets(self) -> dict[str, nn.Module]:
        nets = {"teacher": self.teacher}
        return nets if self.recognizer is None else {**nets, "recognizer": self.recognizer}

    # ---------------------------------------------------------------- config choice
    def _budget_model(self, net: nn.Module) -> Callable[[Config], int]:
        """Conv MACs as a formula of the widths (for near-budget sampling); checks the budget is
        reachable at all."""
        from slimface.nn.counts import format_count
        from slimface.nn.profile import ConvMacsModel

        if self.budget_macs <= 0:
            raise ConfigError("sampling 'budget' needs a MACs budget > 0 (the search budget)")
        if not hasattr(net, "example_inputs"):
            raise ConfigError("sampling 'budget' needs a generator with example_inputs(); use 'uniform'")
        model = ConvMacsModel(net, net.example_inputs(1))  # type: ignore[operator]
        smallest = model(self.space.smallest())
        if smallest > self.budget_macs:
            raise ConfigError(
                f"budget {format_count(self.budget_macs)} is below the smallest sub-network's conv MACs "
                f"({format_count(smallest)}); raise the search budget or sample 'uniform'"
            )
        return model

    def configs_for_step(self, step: int) -> list[Config]:
        """The sub-networks trained at ``step`` (same on every rank: seeded by (seed, step))."""
        if self.fixed is not None:
            return [dict(self.fixed)]
        gen = shared_generator(self.seed, step)
        if self.cfg.sampling == "sandwich":
            return [self.space.largest(), self.space.smallest(), self.space.sample(gen)]
        if self.cfg.sampling == "budget":
            low = self.cfg.budget_low
            target = self.budget_macs * (low + (1 - low) * float(torch.rand((), generator=gen)))
            return [self.space.shrink(self.space.sample(gen), self._conv_macs, target, gen)]
        return [self.space.sample(gen)]

    def _activate(self, cfg: Config | None) -> None:
        from slimface.nn.super_layers import width_part

        activate(self.nets["student"], cfg)  # widths and (student.separable: search) conv types
        unwrap(self.nets["mappers"]).set_widths(width_part(cfg) or None)  # type: ignore[operator]

    # ---------------------------------------------------------------- one step
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        student, disc, mappers = self.nets["student"], self.nets["disc"], self.nets["mappers"]
        opt_g, opt_d = self.optimizers["student"], self.optimizers["disc"]
        profile, target = batch["profile"], batch["frontal"]
        landmarks = batch.get("landmarks")
        configs = self.configs_for_step(step)
        student.train()
        disc.train()

        with torch.no_grad():
            self.teacher_taps.clear()
            t_out = self.teacher(profile, landmarks)
            t_feats = self.teacher_taps.collect()

        opt_g.zero_grad(set_to_none=True)
        fakes: list[Tensor] = []
        sums: dict[str, float] = {}
        noise_dim = int(getattr(unwrap(student), "noise_dim", 0) or 0)
        rnd = StepRandom(self.seed, step, profile.shape[0], profile.device, stream="ofa-student")
        views = (StepRandom(self.seed, step, profile.shape[0], profile.device, stream="identity-views")
                 if self.cfg.identity_jitter else None)  # drawn only when the identity term takes views
        for cfg in configs:
            self._activate(cfg)
            self.student_taps.clear()
            if noise_dim:  # one z per sub-network, the same for sample i under any process count
                fake = student(profile, landmarks, noise=rnd.randn(noise_dim, dtype=profile.dtype))
            else:
                fake = student(profile, landmarks)
            s_feats = self.student_taps.collect()
            mapped = mappers(s_feats) if self.cfg.distill_weight > 0 else None
            total, parts = self.loss.generator_loss(disc, profile, fake, target, mapped, t_feats, t_out, views)
            (total / len(configs)).backward()
            fakes.append(fake.detach())
            for k, v in {"loss_g": float(total.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v / len(configs)
        opt_g.step()

        opt_d.zero_grad(set_to_none=True)  # drops the grads the G step left on D
        train_d = self.cfg.gan_weight > 0  # without a GAN term nothing reads D: training it is wasted time
        d_parts: dict[str, float] = {}
        if train_d:
            loss_d = sum(self.loss.discriminator_loss(disc, profile, target, f, rnd.rand) for f in fakes) / len(fakes)
            assert isinstance(loss_d, Tensor)
            loss_d.backward()
            opt_d.step()
            d_parts["loss_d"] = float(loss_d.detach())
        for name, s in self.schedulers.items():
            if train_d or name != "disc":
                s.step()

        self.last_config = self.space.encode(configs[-1])
        self._activate(None)
        largest = self.space.largest()
        frac = sum(configs[-1][g] / largest[g] for g in self.space.widths) / len(self.space.widths)
        return {**sums, **d_parts, "width_frac": frac}

    # ---------------------------------------------------------------- evaluation
    def evaluate_config(self, cfg: Config, metric: Callable[[nn.Module, Config], float] | None = None) -> float:
        """Validation metric of one sub-network (BN recalibrated, supernet state unchanged).

        Default metric: identity similarity with a recognizer, else the negative L1 to the ground
        truth, both on ``val_batches``.
        """
        student = unwrap(self.nets["student"])
        if metric is not None:
            return float(metric(student, cfg))
        bn = self.bn_batches[:EVAL_BN_BATCHES] or self.val_batches[:EVAL_BN_BATCHES]
        if self.recognizer is not None:
            return identity_metric(student, cfg, self.val_batches, self.recognizer, bn)
        return recon_metric(student, cfg, self.val_batches, bn)

    def evaluate_extremes(self) -> dict[str, float]:
        """Metric of the largest and smallest sub-networks (the reference tracks both in training);
        with a fixed config, of that sub-network only."""
        if not self.val_batches:
            return {}
        if self.fixed is not None:
            return {"chosen": self.evaluate_config(self.fixed)}
        return {
            "largest": self.evaluate_config(self.space.largest()),
            "smallest": self.evaluate_config(self.space.smallest()),
        }

    def on_eval(self, step: int) -> dict[str, float]:
        return self.evaluate_extremes()

    def sample_configs(self) -> list[Config]:
        if self.fixed is not None:
            return [dict(self.fixed)]
        return [self.space.largest(), self.space.smallest()]

    @torch.no_grad()
    def sample(self, batch: Batch) -> Tensor:
        """Rows of profile, teacher, the :meth:`sample_configs` sub-networks (largest, smallest) and
        ground truth, for the first 4 faces."""
        n = min(4, batch["profile"].shape[0])
        profile, target = batch["profile"][:n], batch["frontal"][:n]
        lm = batch.get("landmarks")
        lm = lm[:n] if lm is not None else None
        student = unwrap(self.nets["student"])
        rows = [profile, self.teacher(profile, lm)]
        for cfg in self.sample_configs():
            with active_config(student, cfg):
                rows.append(student(profile, lm))
        rows.append(target)
        return torch.cat(rows, dim=0).clamp(-1, 1)

    # ---------------------------------------------------------------- checkpoint extras
    def extra_state(self) -> dict[str, Any]:
        return {"space": json.dumps(self.space.to_dict(), sort_keys=True), "sampling": self.cfg.sampling}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("space")
        mine = json.dumps(self.space.to_dict(), sort_keys=True)
        if saved is not None and saved != mine:
            raise CheckpointError(
                "checkpoint was trained with another search space (different family, width or StudentSpec); "
                "resume with the same model settings or start a new run directory"
            )


__all__ = ["OFATask"]
