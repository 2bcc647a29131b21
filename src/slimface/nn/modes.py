"""A module's mode and wrapping: train/eval for a moment, frozen for good, and the net inside a wrapper.

Profilers, exporters, BN recalibration and sample grids all need a module in one mode for a moment
and must hand it back as they found it (a training network left in eval mode silently stops
updating its BatchNorm statistics), also when the work inside fails (:func:`module_mode`). Teachers
and the loss recognizer inside an objective are frozen for good (:func:`freeze`). Attributes of a net
that the Trainer wrapped in DistributedDataParallel are reached through :func:`unwrap`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel


@contextmanager
def module_mode(module: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Run the block with ``module`` in train (``True``) or eval (``False``, default) mode; its own
    training flag comes back on exit."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no grads: for teachers and the loss recognizer inside a training objective.

    A judge (:class:`slimface.models.judge.Judge`) is refused: its ``parameters()`` raises
    ``JudgeNotForTraining``, before anything is changed."""
    params = list(module.parameters())
    module.eval()
    for p in params:
        p.requires_grad_(False)
    return module


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DDP/DataParallel wrapper (or ``net`` itself)."""
    while isinstance(net, (DistributedDataParallel, nn.DataParallel)):
        net = net.module
    return net


__all__ = ["module_mode", "freeze", "unwrap"]
