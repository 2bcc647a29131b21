"""The mobile teacher: the student's design at full width, trained before the supernet (GAN Compression).

Converting a teacher's convs to depthwise-separable ones and pruning its channels both cost quality.
Trained at once (one short supernet run from a rank-1 factorised warm start) the two losses mix and
neither is paid in full training. The mobile teacher separates them: the supernet's *largest*
sub-network is trained first, with the student objective, until it recognises the validation
identities nearly as well as the teacher (:class:`MobileTeacherTask` stops at ``mobile_gap`` points);
the supernet then starts from it and distils from it, so only pruning remains.

The stopping rule reads the *loss recognizer* on validation identities (training identities held out
of every training set): a judge is refused, so no training decision is made by a network whose
figures are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.compress.bn import Batch, default_forward
from slimface.compress.ofa import OFATask
from slimface.compress.space import Config, ConfigSpace, active_config
from slimface.families.base import Family
from slimface.models.judge import refuse_judge
from slimface.nn.modes import module_mode, unwrap


@dataclass
class ValidationRank1:
    """Rank-1 of a generator's outputs on fixed validation probes against a gallery of one frontal
    per validation identity, read by the loss recognizer."""

    probes: Sequence[Batch]
    probe_subjects: Sequence[Hashable]
    gallery: Tensor  # (M, C, H, W) ground-truth frontals
    gallery_subjects: Sequence[Hashable]
    recognizer: Any

    def __post_init__(self) -> None:
        refuse_judge(self.recognizer, "the mobile teacher's stopping rule")
        n = sum(int(b["profile"].shape[0]) for b in self.probes)
        if n != len(self.probe_subjects) or n == 0:
            raise ValueError(f"{n} validation probes but {len(self.probe_subjects)} subjects")
        if self.gallery.shape[0] != len(self.gallery_subjects):
            raise ValueError(f"{self.gallery.shape[0]} gallery images but {len(self.gallery_subjects)} subjects")
        with torch.no_grad():
            self._gallery_emb = self.recognizer.embed(self.gallery)

    @torch.no_grad()
    def __call__(self, model: nn.Module, cfg: Config | None = None) -> float:
        """Rank-1 in percent of ``model`` (sub-network ``cfg`` of a supernet, or a plain generator with
        ``cfg=None``) in eval mode, with the BN statistics it has."""
        inner = unwrap(model)
        embs: list[Tensor] = []
        with active_config(inner, cfg), module_mode(inner):
            for batch in self.probes:
                embs.append(self.recognizer.embed(default_forward(inner, batch)))
        # cosine-nearest gallery identity (compress sits below evaluate: no rank1 import here)
        sims = F.normalize(torch.cat(embs).float(), dim=1) @ F.normalize(self._gallery_emb.float(), dim=1).T
        found = [self.gallery_subjects[i] for i in sims.argmax(dim=1).tolist()]
        hits = sum(a == b for a, b in zip(found, self.probe_subjects))
        return 100.0 * hits / len(found)


class MobileTeacherTask(OFATask):
    """:class:`OFATask` fixed at the supernet's largest sub-network, scored by validation rank-1 and
    converged once that is within ``gap`` points of the teacher's (``teacher_rank1``)."""

    def __init__(self, family: Family, supernet: nn.Module, teacher: nn.Module, teacher_disc: nn.Module,
                 config: Any, *, rank1: ValidationRank1, teacher_rank1: float, gap: float,
                 **kwargs: Any) -> None:
        space = kwargs.pop("space", None) or ConfigSpace.from_supernet(family, supernet)
        super().__init__(family, supernet, teacher, teacher_disc, config, space=space,
                         fixed_config=space.largest(), **kwargs)
        self.rank1 = rank1
        self.teacher_rank1 = float(teacher_rank1)
        self.gap = float(gap)

    def on_eval(self, step: int) -> dict[str, float]:
        assert self.fixed is not None
        return {"rank1": self.rank1(self.nets["student"], self.fixed), "teacher_rank1": self.teacher_rank1}

    def converged(self, metrics: Mapping[str, float]) -> bool:
        """Within ``gap`` rank-1 points of the teacher on the validation identities."""
        return metrics.get("eval/rank1", -math.inf) >= self.teacher_rank1 - self.gap


__all__ = ["MobileTeacherTask", "ValidationRank1"]
