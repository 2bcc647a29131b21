"""Fold eval-mode batch norms into the conv that feeds them, for inference.

Why: at batch 1 a small student is dominated by per-op overhead, not MACs; a separable student has
roughly one batch norm per conv, and ONNX Runtime already folds them, so unfolded eager PyTorch would
be timed on a different graph (measurements: docs/experiments/2026-11-21-deployment-runtimes.md).
Folding gives eager PyTorch, TorchScript and the benchmarks the same graph, and the outputs stay the
same up to float rounding.

Which pairs fold is found by running the model once, not from module order (a block may register a
batch norm next to a conv that does not feed it): a batch norm folds into a conv when its input *is*
that conv's output tensor and nothing else reads that tensor, each module runs once per forward,
and neither layer is sliced to a sub-network. The folded model is checked against the original on
the example inputs.
"""

from __future__ import annotations

import copy

from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from slimface.nn.super_layers import SuperMixin

__all__ = ["fold_batchnorm", "inference_copy"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


class _CountUses(TorchFunctionMode):
    """Counts, per tensor, how many torch calls read it (tensors are kept alive so ids stay unique)."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}
        self.keep: list[Tensor] = []
        self.depth = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        outer = self.depth == 0  # F.batch_norm re-dispatches torch.batch_norm: count the outer call
        self.depth += 1
        try:
            result = func(*args, **kwargs)
        finally:
            self.depth -= 1
        # metadata queries (x.dim(), x.shape, x.size()) return no tensor and do not read the values
        if outer and isinstance(result, (Tensor, tuple, list)) and not isinstance(result, torch.Size):
            seen: set[int] = set()
            for a in (*args, *kwargs.values()):
                for t in (a if isinstance(a, (list, tuple)) else (a,)):
                    if isinstance(t, Tensor) and id(t) not in seen:
                        seen.add(id(t))
                        self.uses[id(t)] = self.uses.get(id(t), 0) + 1
                        self.keep.append(t)
        return result


def _unsliced(m: nn.Module) -> bool:
    return not isinstance(m, SuperMixin) or (m._in_idx is None and m._out_idx is None)


def _foldable_pairs(model: nn.Module, example_inputs: tuple) -> list[tuple[str, str]]:
    names = {m: n for n, m in model.named_modules()}
    conv_out: dict[int, nn.Module] = {}
    bn_in: list[tuple[nn.Module, Tensor]] = []
    calls: dict[nn.Module, int] = {}
    keep: list[Tensor] = []

    def after_conv(m: nn.Module, _inp: tuple, out: Tensor) -> None:
        calls[m] = calls.get(m, 0) + 1
        conv_out[id(out)] = m
        keep.append(out)

    def before_bn(m: nn.Module, inp: tuple) -> None:
        calls[m] = calls.get(m, 0) + 1
        bn_in.append((m, inp[0]))

    hooks = []
    for m in model.modules():
        if isinstance(m, _CONVS) and _unsliced(m):
            hooks.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d) and _unsliced(m) and m.track_running_stats:
            hooks.append(m.register_forward_pre_hook(before_bn))
    counter = _CountUses()
    try:
        with torch.inference_mode(), counter:
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    pairs = []
    for bn, x in bn_in:
        conv = conv_out.get(id(x))
        if conv is None or calls.get(conv) != 1 or calls.get(bn) != 1 or counter.uses.get(id(x)) != 1:
            continue
        if isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1:
            continue
        pairs.append((names[conv], names[bn]))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):  # weight: in x out x k x k
        w.mul_(scale.view(1, -1, 1, 1))
    else:  # weight: out x in/groups x k x k
        w.mul_(scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)


def _set_child(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_inputs: tuple, atol: float = 1e-4) -> int:
    """Fold every eval-mode batch norm that directly follows a conv into it (in place).

    The model must be in eval mode. Returns how many batch norms were folded. Raises RuntimeError
    (and leaves the model as it was) if the folded model's outputs differ from the original's by more
    than ``atol`` relative to the output's largest magnitude on ``example_inputs``.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (batch statistics cannot be folded)")
    pairs = _foldable_pairs(model, example_inputs)
    if not pairs:
        return 0
    with torch.inference_mode():
        ref = model(*example_inputs)
    backup = {name: (model.get_submodule(c), model.get_submodule(name)) for c, name in pairs}
    saved = {c: (model.get_submodule(c).weight.clone(), model.get_submodule(c).bias) for c, _ in pairs}
    for conv_name, bn_name in pairs:
        _fold(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_child(model, bn_name, nn.Identity())
    with torch.inference_mode():
        out = model(*example_inputs)
    err = float((out - ref).abs().max())
    if err > atol * max(1.0, float(ref.abs().max())):
        for conv_name, bn_name in pairs:  # restore: the model is left untouched on failure
            conv = model.get_submodule(conv_name)
            conv.weight.copy_(saved[conv_name][0])
            conv.bias = saved[conv_name][1]
            _set_child(model, bn_name, backup[bn_name][1])
        raise RuntimeError(f"folding {len(pairs)} batch norms changed the outputs by {err:.2e}; left unfolded")
    return len(pairs)


def inference_copy(model: nn.Module, example_inputs: tuple, fold_bn: bool = True) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` as it is deployed: batch norms folded into their convs (as ONNX
    Runtime does to its graph), so eager PyTorch is not timed on per-op overhead a deployment removes.
    The caller's model is left untouched (put in eval mode). Returns the copy (the model itself when
    it has no batch norm or ``fold_bn`` is False) and how many batch norms were folded."""
    if not fold_bn or not any(isinstance(x, nn.BatchNorm2d) for x in model.modules()):
        return model.eval(), 0  # nothing to fold: time the model itself
    m = copy.deepcopy(model).eval()
    return m, fold_batchnorm(m, example_inputs)
