"""Learning-rate schedules shared by the stages (pix2pix / GAN Compression's: constant, then linear to 0).

A schedule is a closure of the run's total steps, not a callable object, on purpose:
``LambdaLR.state_dict`` stores callable objects' attributes but not closures, so a run resumed with more
``train.steps`` decays towards its new end instead of restoring the old one from the checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def linear_decay(steps: int, decay_steps: int) -> Callable[[int], float]:
    """LR factor: 1 for ``steps - decay_steps`` steps, then linearly down to 0 at ``steps``."""
    start = steps - decay_steps

    def fn(step: int) -> float:
        if decay_steps <= 0 or step < start:
            return 1.0
        return max(0.0, (steps - step) / decay_steps)

    return fn


def attach_linear_decay(task: Any, steps: int, decay_steps: int) -> None:
    """Give every optimiser of ``task`` a :func:`linear_decay` scheduler (the task steps them once per
    ``train_step``); ``decay_steps`` 0 leaves the lr constant and the task without schedulers."""
    if decay_steps <= 0:
        return
    task.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(steps, decay_steps))
                       for name, opt in task.optimizers.items()}


__all__ = ["attach_linear_decay", "linear_decay"]
