"""What a model family is: the typed :class:`Family` protocol and the :class:`StudentSpec`.

A *family* bundles everything slimface needs about one frontalization GAN: how to build its
generator (teacher-shaped or student-shaped, full or sub-network widths) and its discriminator, its
own teacher training task, the dataclass of that task's loss weights, the GAN loss its discriminator
was trained with, and the declarative student spec used by compression. Each family is a package
under ``slimface/families/<name>/`` (model, task, student spec); :mod:`slimface.families.registry`
holds them. The contract is written out in docs/DESIGN.md, "Adding a teacher".
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:  # this module (and every family's __init__) stays free of torch: a run config loads fast
    from torch import nn

    from slimface.models.generator import Generator

#: the GAN loss a family's discriminator was trained with; the student's discriminator (a copy of
#: the teacher's) keeps it unless ``student.gan_mode`` says otherwise
GanMode = Literal["bce", "wgan-gp"]


@dataclass
class StudentSpec:
    """Which width groups of a family's student are prunable, and how it is distilled.

    ``prunable`` maps fnmatch patterns over group names (e.g. ``"decoder.*"``) to the allowed fraction
    range of the full width; choices are multiples of ``multiple`` inside it. Groups that match no
    pattern keep their full width. ``distill`` names the generator modules whose outputs are matched
    to the teacher's (same module names in teacher and student).
    """

    prunable: dict[str, tuple[float, float]]
    distill: list[str]
    multiple: int = 8

    def choices(self, groups: Mapping[str, int], multiple: int | None = None) -> dict[str, list[int]]:
        step = multiple or self.multiple
        out: dict[str, list[int]] = {}
        for group, full in groups.items():
            for pattern, (lo, hi) in self.prunable.items():
                if fnmatch.fnmatchcase(group, pattern):
                    cands = [c for c in range(step, full + 1, step) if lo * full - 1e-9 <= c <= hi * full + 1e-9]
                    if full not in cands and hi >= 1.0:
                        cands.append(full)
                    out[group] = sorted(set(cands)) or [full]
                    break
        return out

    def unmatched(self, groups: Mapping[str, int] | list[str]) -> list[str]:
        """The ``prunable`` patterns that match none of ``groups`` (a typo in a spec, or a renamed module)."""
        return [p for p in self.prunable if not any(fnmatch.fnmatchcase(g, p) for g in groups)]


@runtime_checkable
class Family(Protocol):
    """One teacher family (see docs/DESIGN.md, "Adding a teacher").

    ``loss_config`` is the dataclass of the teacher objective's weights: ``teachers.<name>.loss`` in
    a run config is loaded into it (unknown keys and wrong types are errors at load time) and handed
    to :meth:`make_teacher_task` as ``loss``.
    """

    name: str
    student_spec: StudentSpec
    gan_mode: GanMode
    loss_config: type

    def build_generator(self, *, resolution: int, channels: int, width_mult: float, separable: bool,
                        sub: Mapping[str, int] | None) -> "Generator":
        """Teacher (``separable=False``), supernet (``separable=True``) or, with ``sub``, a static
        sub-network of the supernet."""
        ...

    def build_discriminator(self, *, resolution: int, channels: int, width_mult: float) -> "nn.Module":
        """The teacher's discriminator (the student's starts as a copy of it)."""
        ...

    def make_teacher_task(self, generator: "Generator", discriminator: "nn.Module", recognizer: "nn.Module | None" = None,
                          *, num_subjects: int, loss: Any = None, lr: float = 2e-4, seed: int = 0) -> Any:
        """The family's teacher objective, a :class:`slimface.train.loop.TrainTask`. ``loss``: a
        ``loss_config`` instance, a dict of its keys, or None (its defaults). Its ``train_step`` steps
        every scheduler in ``task.schedulers`` once (the run attaches the lr decay there)."""
        ...


__all__ = ["Family", "GanMode", "StudentSpec"]
