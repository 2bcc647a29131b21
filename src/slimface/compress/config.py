"""What the compression stages consume: the ``student:``, ``finetune:`` and ``search:`` sections.

One dataclass per stage, nested as is in the run config (slimface.pipeline_config) and handed to the
stage (no copy in between): :class:`OFAConfig` is the supernet stage's (its distillation weights are
:class:`DistillConfig`'s, which :class:`~slimface.compress.distill.DistillLoss` reads), the fine-tune stage
trains with the same objective and :class:`FinetuneConfig`'s ``train``, and :class:`SearchConfig` is
the search's, with the :class:`Budget` parsed and checked when the config loads. Light on purpose (no
torch): a run config loads, and every mistake in it is reported, before any heavy import.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

from slimface.config import check, check_kernel_cap
from slimface.errors import ConfigError
from slimface.nn.counts import format_count, parse_count
from slimface.train.config import TrainConfig

GanMode = Literal["bce", "wgan-gp"]
#: the named ``student.separable`` settings (or a list of fnmatch patterns)
SEPARABLE_CHOICES = ("all", "none", "auto", "search")


@dataclass
class DistillConfig:
    """Loss weights of the compression objective (reference defaults, reference.md §1):
    λ_recon = ``recon_weight``, λ_distill = ``distill_weight``, λ_gan = ``gan_weight``.

    ``gan_mode``: ``"bce"`` is the paper's cGAN (non-saturating -log D(x, G(x)) for G); ``"wgan-gp"``
    suits a teacher critic trained with WGAN-GP (CR-GAN); None keeps the family's own
    (``Family.gan_mode``). ``identity_weight`` (λ_id) > 0 adds the identity-preserving L1 on frozen
    recognizer features (needs a recognizer). ``teacher_weight`` (λ_out) > 0 adds output distillation,
    the L1 between the student's and the teacher's images: the teacher's output is an easier target than
    the ground truth and carries what the teacher learned about identity.
    """

    recon_weight: float = 100.0
    teacher_weight: float = 0.0  # output distillation: L1 to the teacher's image
    distill_weight: float = 1.0
    gan_weight: float = 1.0
    identity_weight: float = 0.0
    identity_lowpass: bool = False  # the identity term reads both images through a binomial low-pass
    # whose recognizer features the identity term matches: the ground-truth frontal ("truth"), or the
    # teacher's output ("teacher": the student imitates the identity the teacher keeps, which it can
    # reach, instead of chasing what the loss recognizer alone separates)
    identity_target: Literal["truth", "teacher"] = "truth"
    # the identity term reads both images through one random view per sample (a shift of up to this
    # many pixels, edges replicated, and a horizontal flip): features that only the loss recognizer
    # reads at one exact alignment stop paying, those that survive a view change (as another
    # recognizer's would) keep paying. 0: the images as they are
    identity_jitter: int = 0
    gan_mode: Optional[GanMode] = None  # None: the family's own (bce; wgan-gp for crgan)
    gp_weight: float = 10.0

    def validate(self) -> None:
        for name in ("recon_weight", "teacher_weight", "distill_weight", "gan_weight", "identity_weight", "gp_weight"):
            v = getattr(self, name)
            check(v >= 0, f"student.{name} must be >= 0, got {v}")
        check(self.identity_jitter >= 0, f"student.identity_jitter must be >= 0 pixels, got {self.identity_jitter}")
        check(self.identity_target in ("truth", "teacher"),
              f"student.identity_target {self.identity_target!r}: use 'truth' or 'teacher'")
        check(self.gan_mode in (None, "bce", "wgan-gp"), f"student.gan_mode {self.gan_mode!r}: use 'bce' or 'wgan-gp'")


@dataclass
class OFAConfig(DistillConfig):
    """The supernet stage (``student:``): sub-network sampling, warm start, the objective's weights
    (:class:`DistillConfig`), Adam and the lr schedule, and its ``train:`` section.

    Sampling -- ``uniform``: one random sub-network per step (the reference); ``sandwich``: largest +
    smallest + random; ``budget``: random sub-networks shrunk under a MAC target in
    ``[budget_low, 1] x`` the search budget, so a short run trains the region the search will pick from.
    ``warm_start``: start the supernet from the teacher (copied layers, rank-1 factorised separable convs,
    channels sorted by importance) rather than from random weights (slimface.compress.warmstart).
    ``warm_start_fit``: how a separable conv gets its teacher conv -- ``"svd"``, the closest rank-1
    factorisation of the kernel (weights only); ``"activations"``, then a least-squares fit of the
    conv's output on the teacher's own input activations over ``warm_start_fit_images`` training
    profiles, kept only where it is closer than the SVD on them.
    Reference optimiser: Adam (``beta1``, ``beta2``), lr ``train.lr`` constant, then decaying linearly
    to 0 over the last ``decay_steps`` of ``train.steps`` (None: the second half).
    ``seed``: the compression seed, added to the run's top-level ``seed`` by the supernet, search and
    fine-tune stages only, so the compression can be repeated from one trained teacher (the top-level
    seed also keys data, recognizers and teacher); 0 keeps every earlier run's keys and results.

    Conv types (``separable``): which of the family's convertible convs the student splits into
    depthwise + pointwise. ``all`` (the family's student spec, what every earlier run built), ``none``
    (normal convs only: the width-only "mobile teacher" space), a list of fnmatch patterns (separable
    where one matches the conv's module name or a width group it writes; ``!pattern`` takes its
    matches out again) or ``auto`` (from this run's sensitivity table: the ``ceil(separable_keep x n)``
    convs whose conversion costs most metric per MAC saved stay normal; slimface.compress.conv_types)
    or ``search`` (no type fixed: each convertible conv is a per-conv choice of the design space,
    trained by the supernet, picked by the search under the budget and materialised by export).
    Kernel cap (``max_kernel``): every odd conv kernel of the student larger than this is shrunk to it
    (the centre of the teacher's kernel; slimface.models.blocks.cap_kernels). TP-GAN's 7x7 and 5x5
    full-resolution layers cost most of a narrow student's MACs whatever its widths, so at a tight
    budget they leave the search little room; None keeps the family's kernels.
    Width steps (``channel_multiple``): every prunable group's choices are the multiples of this many
    channels in its allowed range (None: the family's ``StudentSpec.multiple``). A narrow preset's
    groups are 16-32 channels wide, so steps of 8 stop a dense student at half of some widths; steps
    of 4 reach quarter widths, where dense convs (with ``max_kernel: 3``) fit a 10x budget.
    Sensitivity (``sensitivity``; also run when ``separable: auto`` needs it): every convertible conv
    made separable alone and every prunable group shrunk alone, each scored after BN recalibration and
    a fixed ``sensitivity_steps``-step fine-tune (slimface.compress.sensitivity).

    Mobile teacher (``mobile_teacher``, after GAN Compression): a stage before the supernet trains the
    student design at full width (the supernet's largest sub-network, warm-started from the teacher)
    with this objective, until its rank-1 on the validation identities (loss recognizer) is within
    ``mobile_gap`` points of the teacher's or ``mobile_steps``; the supernet then starts from it and
    is distilled from it, so the conversion loss (mobile teacher vs teacher) and the pruning loss
    (student vs mobile teacher) are paid, and reported, separately. MACs budgets stay relative to the
    original teacher. ``mobile_pretrained`` installs a shipped one (``weights/<family>.mobile.*``,
    trained by ``configs/pretrain.yaml``) instead, verified like a shipped teacher.

    Shipped supernet (``supernet_pretrained``, after once-for-all: train the supernet once, then
    search and fine-tune per budget): the supernet stage installs ``weights/<family>.supernet.*``
    (supernet, its discriminator and distillation mappers, trained by ``configs/pretrain.yaml`` for
    many more steps than a run can give) instead of training, so a run's minutes go to search and
    fine-tune. The shipped file names the budget and teacher it was trained for (its manifest entry).
    ``supernet_init_shipped`` trains the supernet on from those files (verified the same way) instead
    of from the teacher's warm start: continued pretraining when the objective changed (another loss
    recognizer or identity weight) without paying the whole distillation again.
    """

    sampling: Literal["uniform", "sandwich", "budget"] = "uniform"
    budget_low: float = 0.5
    warm_start: bool = False
    warm_start_fit: Literal["svd", "activations"] = "svd"
    warm_start_fit_images: int = 256
    beta1: float = 0.5
    beta2: float = 0.999
    decay_steps: Optional[int] = None
    seed: int = 0
    separable: Union[str, list[str]] = "all"  # all | none | auto | search | [fnmatch patterns]
    separable_keep: float = 0.25  # auto: the share of convertible convs kept normal
    max_kernel: Optional[int] = None  # cap on the student's odd conv kernels (3, 5...); None: the family's
    channel_multiple: Optional[int] = None  # width choices in steps of this many channels; None: the family's
    sensitivity: bool = False  # run the sensitivity stage (also run when separable is auto)
    sensitivity_steps: int = 10  # the fixed fine-tune of every sensitivity variant (0: BN recalibration only)
    mobile_teacher: bool = False  # train the student design at full width first; distil the supernet from it
    mobile_steps: int = 1000  # the mobile teacher's step limit (its train section is train's, with these steps)
    mobile_gap: float = 1.0  # stop once its validation rank-1 is within this many points of the teacher's
    mobile_eval_every: int = 100  # steps between those validation checks
    mobile_pretrained: bool = False  # load the shipped mobile teacher (weights/) instead of training it
    supernet_pretrained: bool = False  # load the shipped supernet (weights/) instead of training it
    supernet_init_shipped: bool = False  # train the supernet on from the shipped one (its new objective)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        super().validate()
        check(self.seed >= 0, f"student.seed must be >= 0, got {self.seed}")
        if isinstance(self.separable, str):
            check(self.separable in SEPARABLE_CHOICES,
                  f"student.separable {self.separable!r}: use all, none, auto, search or a list of fnmatch patterns "
                  "over conv module / width-group names")
        else:
            check(len(self.separable) > 0 and all(p.strip() for p in self.separable),
                  f"student.separable {self.separable!r}: a pattern list needs at least one non-empty pattern "
                  "(use none for no separable conv)")
        check(0 <= self.separable_keep <= 1, f"student.separable_keep must be in [0, 1], got {self.separable_keep}")
        check_kernel_cap(self.max_kernel, "student.max_kernel")
        check(self.channel_multiple is None or self.channel_multiple >= 1,
              f"student.channel_multiple must be a positive channel count or null, got {self.channel_multiple}")
        check(self.channel_multiple is None or not self.supernet_pretrained,
              "student.channel_multiple changes the width choices the shipped supernet was trained on; "
              "set student.supernet_pretrained=false to train one for them")
        check(not (self.supernet_init_shipped and self.supernet_pretrained),
              "student.supernet_init_shipped trains on from the shipped supernet; it excludes supernet_pretrained "
              "(which loads it without training): set one of them")
        check(self.sensitivity_steps >= 0, f"student.sensitivity_steps must be >= 0, got {self.sensitivity_steps}")
        check(not (self.mobile_teacher and self.separable in ("none", "search")),
              f"student.mobile_teacher trains the student's fixed separable design at full width; with "
              f"separable {self.separable!r} that is the teacher itself: use all, auto or patterns, or drop mobile_teacher")
        check(not self.mobile_pretrained or self.mobile_teacher,
              "student.mobile_pretrained loads a shipped mobile teacher; set student.mobile_teacher=true too")
        check(self.mobile_steps >= 1, f"student.mobile_steps must be >= 1, got {self.mobile_steps}")
        check(self.mobile_gap >= 0, f"student.mobile_gap must be >= 0 (rank-1 points), got {self.mobile_gap}")
        check(self.mobile_eval_every >= 1, f"student.mobile_eval_every must be >= 1, got {self.mobile_eval_every}")
        check(self.sampling in ("uniform", "sandwich", "budget"),
              f"student.sampling {self.sampling!r}: use 'uniform', 'sandwich' or 'budget'")
        check(0 < self.budget_low <= 1, f"student.budget_low must be in (0, 1], got {self.budget_low}")
        check(self.warm_start_fit in ("svd", "activations"),
              f"student.warm_start_fit {self.warm_start_fit!r}: use 'svd' or 'activations'")
        check(self.warm_start_fit_images >= 1,
              f"student.warm_start_fit_images must be >= 1, got {self.warm_start_fit_images}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "student.beta1/beta2 must be in [0, 1)")
        check(self.decay_steps is None or 0 <= self.decay_steps <= self.train.steps,
              f"student.decay_steps must be in [0, train.steps={self.train.steps}], got {self.decay_steps}")

    @property
    def runs_sensitivity(self) -> bool:
        """Whether the run has a sensitivity stage for this student (asked for, or needed by ``auto``)."""
        return self.sensitivity or self.separable == "auto"

    @property
    def decay(self) -> int:
        """Steps of the final linear lr decay (``decay_steps``, or half of ``train.steps``)."""
        return self.train.steps // 2 if self.decay_steps is None else self.decay_steps


@dataclass
class FinetuneConfig:
    """The fine-tune stage: the chosen sub-network trains with the student objective for ``train``.

    It runs on the *supernet* with the chosen config fixed at every step (``OFATask(...,
    fixed_config=)``): the loss, the teacher-initialised D, the mappers (sliced to the active student
    channels) and checkpoints are those of supernet training, gradients only reach the kept slices, and
    BN running statistics become that sub-network's own; export then materialises it
    (:func:`slimface.compress.extract.extract_subnet`). The cost is memory for the unused channels.

    ``enabled: false`` skips the training: the sub-network is exported with the supernet's own weights
    (BN recalibrated at export, as for every export): for a supernet trained long enough (a shipped one)
    that its sub-networks need no adaptation, or to measure what the fine-tune adds.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))
    enabled: bool = True


class Budget(str):
    """The search budget: a reduction factor against the teacher (``"10x"``) or a MACs count
    (``"72.8M"``, ``"2.5G"``, ``"300000000"``, or a plain number in the file).

    A ``str`` (so it is written and keyed as it was given) parsed and checked when made, i.e. when the
    run config loads: ``factor`` (> 1) or ``count`` (> 0) is set. :meth:`macs` is the budget in MACs.
    """

    factor: Optional[float]
    count: Optional[float]

    def __new__(cls, value: Union[str, int, float, "Budget"]) -> "Budget":
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{value!r} is not a budget; use e.g. 10x, 72.8M, 2.5G or a number of MACs")
        text = str(value).strip()
        self = super().__new__(cls, text)
        self.factor, self.count = None, None
        if re.fullmatch(r"[0-9.eE+-]+\s*[xX]", text):
            try:
                self.factor = float(text[:-1])
            except ValueError:
                raise ValueError(f"{text!r} is not a reduction factor; use e.g. 10x") from None
            if not self.factor > 1:
                raise ValueError(f"{text}: a reduction factor must be above 1 (e.g. 10x)")
            return self
        try:
            self.count = parse_count(value if isinstance(value, (int, float)) else text)
        except ValueError:
            raise ValueError(f"{text!r} is not a budget; use a reduction factor (10x), a MACs count "
                             "(72.8M, 2.5G) or a number") from None
        if not self.count > 0 or self.count != self.count or self.count == float("inf"):
            raise ValueError(f"{text}: a MACs budget must be a positive count, e.g. 300M")
        return self

    @classmethod
    def from_config(cls, value: object, where: str) -> "Budget":
        """How :func:`slimface.config.from_dict` loads a budget: a bad one is a one-line ConfigError."""
        try:
            return cls(value)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def macs(self, teacher_macs: Callable[[], float]) -> float:
        """The budget in MACs; ``teacher_macs()`` is asked only for a reduction factor."""
        return teacher_macs() / self.factor if self.factor is not None else float(self.count)  # type: ignore[arg-type]

    def describe(self, macs: float) -> str:
        return f"{format_count(macs)} ({self} of the teacher)" if self.factor is not None else format_count(macs)


def parse_latency(text: str | float | int) -> float:
    """'15ms' / '0.015s' / '15' (ms) -> milliseconds; raises ConfigError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        scale = 1.0
        for suffix, mult in (("ms", 1.0), ("us", 1e-3), ("s", 1000.0)):
            if s.endswith(suffix):
                s, scale = s[: -len(suffix)], mult
                break
        try:
            value = float(s) * scale
        except ValueError:
            raise ConfigError(f"latency {text!r} is not a duration; use e.g. 15ms or 0.015s") from None
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"latency {text!r} must be a positive duration, e.g. 15ms")
    return value


@dataclass
class SearchConfig:
    """The search stage (``search:``): the budget, the evolutionary search (reference defaults:
    population 100, parent ratio 0.25, mutation ratio 0.5), the validation/BN batches that score a
    candidate, and an optional predicted-latency budget on ``runtime``'s latency table."""

    budget: Budget = field(default_factory=lambda: Budget("10x"))
    method: Literal["auto", "exhaustive", "evolution"] = "auto"
    population: int = 100
    generations: int = 5
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1  # evolution: each group of a mutated child is resampled with this probability
    val_batches: int = 4
    bn_batches: int = 4
    # what scores a candidate on the validation identities: "identity" (cosine similarity of the loss
    # recognizer's embeddings of output and ground-truth frontal) or "recon" (negative L1 to the
    # ground-truth frontal: no recognizer, so no candidate is chosen for what one recognizer likes)
    metric: Literal["identity", "recon"] = "identity"
    # predicted-latency budget on `runtime`, as well as the MACs budget: a duration ("15ms") or a
    # factor of the teacher's latency in that runtime at the priced size ("10x")
    latency: Optional[str] = None
    runtime: Literal["torch", "ort", "ort-int8"] = "ort"  # whose latency table prices the candidates
    latency_table: Optional[str] = None  # a `slimface latency-table` JSON; default: built in the search dir
    # the size candidates are priced at: "run" (the supernet's own), "full" (128x128 at the family's
    # official widths, where a small preset's student is deployed) or "RESOLUTIONxWIDTH" ("64x0.5")
    latency_size: str = "run"
    # the threads the latency table is timed on: the thread count the student will be deployed with
    # (also where deploy.int8_nodes: faster reads which convs int8 slows down)
    threads: int = 1

    def latency_at(self) -> tuple[int, float] | None:
        """(resolution, width multiplier) of ``latency_size``; None for the run's own size."""
        if self.latency_size == "run":
            return None
        if self.latency_size == "full":
            return 128, 1.0
        res, width = self.latency_size.lower().split("x")
        return int(res), float(width)

    def latency_factor(self) -> float | None:
        """The factor of a relative latency budget ("10x" -> 10.0); None for a duration or none."""
        text = str(self.latency or "").strip().lower()
        return float(text[:-1]) if text.endswith("x") else None

    def validate(self) -> None:
        check(self.method in ("auto", "exhaustive", "evolution"),
              f"search.method {self.method!r} is unknown; use auto, exhaustive or evolution")
        check(self.latency is None or bool(re.fullmatch(r"\s*([0-9]*\.?[0-9]+)(e-?[0-9]+)?\s*(ms|s|us|x)?\s*", str(self.latency))),
              f"search.latency must be a duration like 15ms or a factor of the teacher's latency like 10x, "
              f"got {self.latency!r}")
        check(self.latency_factor() is None or self.latency_factor() > 1,  # type: ignore[operator]
              f"search.latency {self.latency!r}: a factor of the teacher's latency must be above 1, e.g. 10x")
        if self.latency is not None and self.latency_factor() is None:
            try:
                parse_latency(self.latency)
            except ConfigError as e:
                raise ConfigError(f"search.{e}") from None
        check(self.latency_size in ("run", "full")
              or bool(re.fullmatch(r"(64|128)x[0-9]*\.?[0-9]+", self.latency_size.lower())),
              f"search.latency_size {self.latency_size!r} is unknown; use run, full or RESOLUTIONxWIDTH like 128x1.0")
        check(self.latency_at() is None or 0 < self.latency_at()[1] <= 4,  # type: ignore[index]
              f"search.latency_size {self.latency_size!r}: the width must be in (0, 4]")
        check(self.threads >= 1, f"search.threads must be a thread count >= 1, got {self.threads}")
        check(self.population >= 2, f"search.population must be at least 2, got {self.population}")
        check(self.generations >= 0, f"search.generations must be >= 0, got {self.generations}")
        check(0 < self.parent_ratio <= 1, f"search.parent_ratio must be in (0, 1], got {self.parent_ratio}")
        check(0 <= self.mutation_ratio <= 1, f"search.mutation_ratio must be in [0, 1], got {self.mutation_ratio}")
        check(0 <= self.mutate_prob <= 1, f"search.mutate_prob must be in [0, 1], got {self.mutate_prob}")
        check(self.val_batches >= 1 and self.bn_batches >= 1, "search.val_batches and bn_batches must be >= 1")
        check(self.metric in ("identity", "recon"), f"search.metric {self.metric!r} is unknown; use identity or recon")


__all__ = ["Budget", "DistillConfig", "FinetuneConfig", "GanMode", "OFAConfig", "SEPARABLE_CHOICES", "SearchConfig",
           "parse_latency"]
