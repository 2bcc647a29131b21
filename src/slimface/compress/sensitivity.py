"""Sensitivity analysis: what each single change of the teacher costs in search metric, per MAC saved.

The source paper converted only the layers a sensitivity analysis found insensitive; this measures it.
For every convertible conv of a family (the convs its student may split, :func:`convertible_convs`)
and every prunable width group, *one* change is applied to the trained teacher and nothing else:

* ``separable`` -- that conv becomes depthwise + pointwise, warm-started from the teacher conv as the
  supernet is (:func:`slimface.compress.warmstart.warm_start`: rank-1 SVD, or the activation fit);
* ``shrink`` -- that group keeps only its smallest width choice (channels sorted by importance first,
  as the warm start sorts them, so the strongest ones stay).

Each variant, and the unchanged teacher (the baseline), then goes through the same fixed procedure:
``steps`` steps of the student objective (:class:`~slimface.compress.ofa.OFATask` with the variant's
config fixed, the teacher as its teacher, constant lr, the same batches in the same order) and the
search metric after BN recalibration (:func:`~slimface.compress.search.identity_metric`, or
``recon_metric`` without a recognizer) on the validation identities. A row's ``delta`` is its metric
minus the baseline's: the baseline went through the same fine-tune, so the short training itself
cancels out. ``delta_per_gmac`` = delta / GMACs saved; ``student.separable: auto`` reads the
``separable`` rows (:mod:`slimface.compress.conv_types`).

Writes ``sensitivity.json`` (every row, the baseline, the settings) and ``sensitivity.md``; the plot
is :func:`slimface.evaluate.figures.plot_sensitivity`'s (evaluate sits above compress).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from slimface.compress.bn import Batch
from slimface.compress.config import OFAConfig
from slimface.compress.ofa import OFATask
from slimface.compress.search import identity_metric, recon_metric
from slimface.compress.space import Config, ConfigSpace, macs_of
from slimface.compress.warmstart import sort_channels, warm_start
from slimface.families.base import Family
from slimface.families.registry import build_generator
from slimface.fileio import atomic_write
from slimface.models.blocks import convertible_convs
from slimface.nn.counts import format_count

SCHEMA = "slimface.sensitivity/1"
Change = Literal["separable", "shrink"]


@dataclass
class SensitivityRow:
    """One single change: ``name`` (conv module or width group), what changed, its cost and effect."""

    name: str
    change: Change
    detail: str  # "3x3 conv -> separable", "64 -> 8 channels"
    macs: int
    macs_saved: int
    metric: float
    delta: float  # metric - baseline metric (negative: the change hurts)

    @property
    def delta_per_gmac(self) -> float:
        """Metric change per GMAC saved (NaN when nothing is saved)."""
        return self.delta / (self.macs_saved / 1e9) if self.macs_saved > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        per = self.delta_per_gmac
        return {**dataclasses.asdict(self), "delta_per_gmac": None if math.isnan(per) else per}


@dataclass
class SensitivityTable:
    """Every row of one family's analysis and the baseline it is measured against."""

    family: str
    metric: str  # "identity" (cosine similarity, loss recognizer) or "recon" (-L1)
    steps: int
    baseline_metric: float
    baseline_macs: int
    rows: list[SensitivityRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "family": self.family, "metric": self.metric, "steps": self.steps,
                "baseline": {"metric": self.baseline_metric, "macs": self.baseline_macs},
                "rows": [r.as_dict() for r in self.rows]}

    def markdown(self) -> str:
        lines = [f"# Sensitivity of the {self.family} teacher", "",
                 f"Each row changes one thing of the teacher, then {self.steps} fine-tune steps and BN "
                 f"recalibration; metric: {self.metric} on the validation identities. Baseline (the unchanged "
                 f"teacher, same procedure): metric {self.baseline_metric:.4f}, {format_count(self.baseline_macs)} "
                 "MACs. Sorted by metric change per GMAC saved, worst first; width groups with a single width "
                 "choice have nothing to shrink and are left out.", "",
                 "| layer / group | change | MACs saved | metric change | change per GMAC saved |",
                 "|---|---|---:|---:|---:|"]
        ordered = sorted(self.rows, key=lambda r: (r.delta_per_gmac if r.macs_saved > 0 else math.inf, r.name))
        for r in ordered:
            lines.append(f"| `{r.name}` | {r.change}: {r.detail} | {format_count(r.macs_saved)} | "
                         f"{r.delta:+.3g} | {r.delta_per_gmac:+.3g} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """``sensitivity.json`` and ``sensitivity.md`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"
        return {"json": atomic_write(out / "sensitivity.json", text),
                "md": atomic_write(out / "sensitivity.md", self.markdown())}


def _trainable(net: nn.Module) -> nn.Module:
    """A (deep-copied, frozen) teacher made trainable again for its short fine-tune."""
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train()


class _Procedure:
    """The fixed fine-tune + metric every variant (and the baseline) goes through."""

    def __init__(self, family: Family, teacher: nn.Module, teacher_disc: nn.Module, student: OFAConfig,
                 steps: int, train_batches: Sequence[Batch], val_batches: Sequence[Batch],
                 bn_batches: Sequence[Batch], recognizer: nn.Module | None, seed: int) -> None:
        self.family, self.teacher, self.teacher_disc = family, teacher, teacher_disc
        # constant lr (no decay) over exactly ``steps`` steps: a short, identical fine-tune for every variant
        self.student = dataclasses.replace(student, train=dataclasses.replace(student.train, steps=max(steps, 1)),
                                           decay_steps=0)
        self.steps = steps
        self.train_batches, self.val_batches, self.bn_batches = train_batches, val_batches, bn_batches
        self.recognizer, self.seed = recognizer, seed

    def score(self, net: nn.Module, space: ConfigSpace, cfg: Config) -> float:
        if self.steps > 0:
            loss_rec = self.recognizer if self.student.identity_weight > 0 else None
            task = OFATask(self.family, net, self.teacher, self.teacher_disc, self.student, space=space,
                           recognizer=loss_rec, seed=self.seed, fixed_config=cfg)
            try:
                for step in range(self.steps):
                    task.train_step(self.train_batches[step % len(self.train_batches)], step)
            finally:
                task.student_taps.remove()
                task.teacher_taps.remove()
        if self.recognizer is not None:
            return identity_metric(net, cfg, self.val_batches, self.recognizer, self.bn_batches)
        return recon_metric(net, cfg, self.val_batches, self.bn_batches)


def analyse(family: Family, teacher: nn.Module, teacher_disc: nn.Module, student: OFAConfig, *,
            steps: int, train_batches: Sequence[Batch], val_batches: Sequence[Batch],
            bn_batches: Sequence[Batch], recognizer: nn.Module | None = None, seed: int = 0,
            fit_batches: Sequence[Sequence[torch.Tensor]] | None = None,
            progress: Callable[[str], None] | None = None) -> SensitivityTable:
    """The sensitivity table of ``family``'s trained ``teacher`` (a frozen generator; see the module
    docstring). ``student``: the supernet's settings (objective weights, Adam, lr, warm-start fit);
    ``train_batches`` feed the ``steps`` fine-tune steps (cycled, same order for every variant);
    ``fit_batches``: teacher inputs for the activation fit when ``student.warm_start_fit`` asks."""
    if steps > 0 and not train_batches:
        raise ValueError("a sensitivity fine-tune needs training batches")
    device = next(teacher.parameters()).device
    t = teacher  # the unchanged reference; every variant is a copy or a fresh build
    arch = dict(resolution=t.resolution, channels=t.channels, width_mult=t.width_mult)  # type: ignore[union-attr]
    proc = _Procedure(family, t, teacher_disc, student, steps, train_batches, val_batches, bn_batches,
                      recognizer, seed)
    space = ConfigSpace.from_supernet(family, t)
    full = space.largest()
    say = progress or (lambda _: None)

    def fresh_copy() -> nn.Module:
        return _trainable(copy.deepcopy(t))

    base_macs = int(macs_of(t, None))
    torch.manual_seed(seed)
    baseline = proc.score(fresh_copy(), space, full)
    table = SensitivityTable(family.name, "identity" if recognizer is not None else "recon", steps, baseline,
                             base_macs)
    convs = convertible_convs(build_generator(family.name, separable=True, **arch))  # type: ignore[arg-type]
    groups = [g for g in space.groups if len(space.choices[g]) > 1]  # a single choice: nothing to shrink
    total = len(convs) + len(groups)
    fit = fit_batches if student.warm_start_fit == "activations" else None
    for i, name in enumerate(convs):
        net = build_generator(family.name, separable=[name], **arch).to(device)  # type: ignore[arg-type]
        warm_start(net, t, sort=False, batches=fit, images=student.warm_start_fit_images)
        k = net.get_submodule(name).depthwise.kernel_size[0]
        torch.manual_seed(seed)
        metric = proc.score(net.train(), space, full)
        macs = int(macs_of(net, None))
        table.rows.append(SensitivityRow(name, "separable", f"{k}x{k} conv -> separable", macs, base_macs - macs,
                                         metric, metric - baseline))
        if (i + 1) % 10 == 0 or i + 1 == total:
            say(f"  sensitivity {i + 1}/{total}")
    for j, group in enumerate(groups):
        net = fresh_copy()
        sort_channels(net, [group])
        cfg = {**full, group: space.choices[group][0]}
        torch.manual_seed(seed)
        metric = proc.score(net, space, cfg)
        macs = int(macs_of(net, cfg))
        table.rows.append(SensitivityRow(group, "shrink", f"{full[group]} -> {cfg[group]} channels", macs,
                                         base_macs - macs, metric, metric - baseline))
        n = len(convs) + j + 1
        if n % 10 == 0 or n == total:
            say(f"  sensitivity {n}/{total}")
    return table


def load_table(path: str | Path) -> Mapping[str, Any]:
    """A written ``sensitivity.json`` as plain data."""
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


__all__ = ["SCHEMA", "SensitivityRow", "SensitivityTable", "analyse", "load_table"]
