"""The settings of a training run: the ``train:`` section of every stage, and what the Trainer reads.

One dataclass for both (no copy in the run config): a stage's ``train:`` section in a run config is a
:class:`TrainConfig`, and the pipeline hands it to the :class:`~slimface.train.loop.Trainer` with the
per-stage fields (:data:`RUN_FIELDS`: where it writes, its seed and resume key) filled in. Light on
purpose (no torch), so a run config loads and is checked before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from slimface.config import check

#: set per stage by the caller (``slimface run``: OUT/<stage>, seed + a stage offset, the stage's resume
#: key), never in a run config's ``train:`` section
RUN_FIELDS = ("seed", "out_dir", "progress", "key", "key_reason")


@dataclass
class TrainConfig:
    """How long and how a stage trains (``train:``), and where (the :data:`RUN_FIELDS`)."""

    steps: int = 1000
    batch_size: int = 16  # global batch: each of N processes gets batch_size // N
    lr: float = 2e-4  # the stage's optimisers (its task builds them; the loop itself steps no lr)
    log_every: int = 50
    ckpt_every: int = 200  # 0: only at the end (and on SIGINT/SIGTERM)
    sample_every: Optional[int] = None  # None: half way and at the end; 0: never
    keep_last: int = 2
    # NHWC weights and batches while training (every net of the task, frozen ones too): oneDNN's conv
    # training step is 1.1-1.4x faster so on CPU; the nets are NCHW again when fit() returns
    channels_last: bool = True
    deterministic: bool = False
    num_workers: int = 0  # >0 loses bit-identical resume (worker RNG), not the sampler position
    eval_every: int = 0  # 0: only at the end (if the task has on_eval)
    sample_count: int = 8  # images in a sample grid
    resume: bool = True
    # --- per stage, set by the caller (RUN_FIELDS)
    seed: int = 0
    out_dir: Path = Path("runs/train")
    progress: bool = True
    # what this run is trained from (the pipeline's resume key: its inputs' content and settings). A
    # checkpoint made under another key is moved aside (checkpoints.stale-<key>/) and training starts
    # again from step 0, saying ``key_reason`` in one line; "" turns the check off
    key: str = ""
    key_reason: str = ""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    @property
    def sample_period(self) -> int:
        """Steps between sample grids (``sample_every``, or half the steps when it is None)."""
        return max(self.steps // 2, 1) if self.sample_every is None else self.sample_every

    def validate(self) -> None:
        check(self.steps >= 1, f"train.steps must be at least 1, got {self.steps}")
        check(self.batch_size >= 1, f"train.batch_size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        check(self.ckpt_every >= 0, f"train.ckpt_every must be >= 0 (0 = only at the end), got {self.ckpt_every}")
        check(self.sample_every is None or self.sample_every >= 0,
              f"train.sample_every must be >= 0 (0 = never), got {self.sample_every}")
        check(self.keep_last >= 1, f"train.keep_last must be >= 1, got {self.keep_last}")
        check(self.num_workers >= 0, f"train.num_workers must be >= 0, got {self.num_workers}")
        check(self.eval_every >= 0, f"train.eval_every must be >= 0, got {self.eval_every}")
        check(self.sample_count >= 1, f"train.sample_count must be >= 1, got {self.sample_count}")
        check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")


__all__ = ["RUN_FIELDS", "TrainConfig"]
