"""BatchNorm of a supernet's sub-networks: statistics recalibrated for one sub-network, and kept intact.

All sub-networks share one set of running statistics, which are right for none of them in particular,
so any sub-network is evaluated (search, OFA's evaluation) or exported after :func:`recalibrate_bn`
(fresh cumulative statistics from a few training batches), inside :func:`preserve_bn` when the
supernet's own buffers must stay untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from slimface.compress.space import active_config
from slimface.nn.modes import module_mode, unwrap

Batch = Mapping[str, Tensor]


def default_forward(model: nn.Module, batch: Batch) -> Tensor:
    return model(batch["profile"], batch.get("landmarks"))


def _bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def preserve_bn(model: nn.Module) -> Iterator[None]:
    """Restore every BN's running statistics and momentum on exit (evaluate without side effects)."""
    saved = [
        (bn, {k: v.clone() for k, v in bn.named_buffers(recurse=False) if v is not None}, bn.momentum)
        for bn in _bns(model)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, buffers, momentum in saved:
                for k, v in buffers.items():
                    getattr(bn, k).copy_(v)
                bn.momentum = momentum


def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], cfg: Mapping[str, int] | None = None,
                   forward: Callable[[nn.Module, Batch], Any] = default_forward) -> int:
    """Reset BN running stats and re-estimate them for sub-network ``cfg`` (None: whatever widths are
    active now); the new statistics stay in the model (e.g. right before export).

    Cumulative averaging (momentum None) over ``batches``, forward in train mode under no_grad;
    the model's training flag, widths and BN momenta are restored. Returns the number of batches used.
    """
    if cfg is not None:
        with active_config(model, cfg) as inner_net:
            return recalibrate_bn(inner_net, batches, None, forward)
    inner = unwrap(model)
    bns = _bns(inner)
    momenta = [bn.momentum for bn in bns]
    n = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        with module_mode(inner, training=True), torch.no_grad():
            for batch in batches:
                forward(inner, batch)
                n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
    if n == 0:
        raise ValueError("recalibrate_bn needs at least one batch")
    return n


__all__ = ["Batch", "default_forward", "preserve_bn", "recalibrate_bn"]
