"""Temporarily switch a module between train and eval mode.

Profilers, exporters, BN recalibration and sample grids all need a module in one mode for a moment
and must hand it back as they found it (a training network left in eval mode silently stops
updating its BatchNorm statistics), also when the work inside fails.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


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


__all__ = ["module_mode"]
