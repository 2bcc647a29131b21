"""What the evaluate, bench and report stages read of a run: a small context, not the whole Pipeline.

The pipeline builds it (``Pipeline.context()``) from its config and the objects it loads on demand:
the run's paths and settings these stages read, the data splits, datasets, the teachers, the loss
recognizer and the judges. So these stages depend on nothing above them, and can be driven by any
caller that can fill one in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from slimface.evaluate.config import BenchConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimface.data.splits import DataBundle
    from slimface.models.judge import Judge


@dataclass
class RunContext:
    """A run as the final stages see it. Callables load lazily (and are cached by their owner)."""

    name: str
    out: Path
    seed: int
    device: "torch.device"
    families: list[str]
    stages: list[str]  # every stage of the run, in order
    data_kind: str
    resolution: int
    channels: int
    teacher_widths: dict[str, float]  # family -> the teacher's width multiplier
    eval_batch_size: int
    eval_probes_per_group: int  # cap probes per pose group (0: every test probe)
    dlib_probes_per_group: int
    bench: BenchConfig
    recognizer_info: dict[str, Any]  # what the report says about the loss recognizer
    data: Callable[[], "DataBundle"]
    pair_dataset: Callable[[list], Any]
    batches: Callable[[list, int], list]  # fixed, ordered batches of pairs
    teacher: Callable[[str], "nn.Module"]  # the frozen teacher generator of a family
    recognizer: Callable[[], "nn.Module"]  # the loss recognizer (frozen)
    judges: Callable[[], dict[str, "Judge"]]  # the independent judges, primary first
    # per family: which teacher each student was distilled from -> (record, report lines, families
    # whose student rows must be left out)
    provenance: Callable[[], tuple[dict[str, Any], list[str], set[str]]]
    # the family's mobile teacher (student.mobile_teacher), None when the run has none
    mobile_teacher: Callable[[str], Optional["nn.Module"]] = lambda family: None
    # the student's modules (names or patterns) its export kept fp32 in int8 (deploy.int8_nodes / int8_fp32)
    int8_fp32_modules: Callable[[str], list[str]] = lambda family: []

    def family_dir(self, family: str) -> Path:
        return self.out / family


__all__ = ["RunContext"]
