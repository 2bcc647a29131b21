"""Params and MACs of a (sub-)network, counted by torchprofile.

torchprofile traces the model and counts multiply-accumulates per aten op from the traced shapes,
so a supernet with active widths is counted as the sub-network it runs, and the count needs no
per-layer bookkeeping of ours. Params of an active sub-network are the sizes of the sliced weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from slimface.nn.super_layers import SuperMixin, super_layers


def _node_macs(node: Any, macs: int) -> int:
    """torchprofile counts a transposed conv as ``out_numel * c_in * k^2``, i.e. as the dense conv
    that would produce its output, which is stride^2 too many; a transposed conv really does
    ``in_numel * c_out * k^2`` multiply-accumulates (each input pixel scatters one kernel)."""
    if node.operator != "aten::_convolution":
        return macs
    out_shape, in_shape, w_shape = node.outputs[0].shape, node.inputs[0].shape, node.inputs[1].shape
    transposed = out_shape[-1] > in_shape[-1]
    if not transposed:
        return macs
    k = 1
    for d in w_shape[2:]:
        k *= d
    numel = 1
    for d in in_shape:
        numel *= d
    return numel * w_shape[1] * k


def count_macs(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    """Multiply-accumulates of one forward pass (batch as given; use batch 1).

    Counted by torchprofile (convs, linears, norms and the element-wise ops it knows), with its
    transposed-conv count corrected (see :func:`_node_macs`).
    """
    from torchprofile import profile_macs

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                per_node = profile_macs(model, inputs, reduction=None)
        return int(sum(_node_macs(node, int(m)) for node, m in per_node.items()))
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Parameters the model runs with: for super layers only the active slices count."""
    total = 0
    counted: set[int] = set()
    for _, layer in super_layers(model):
        assert isinstance(layer, nn.Module)
        for name, p in layer.named_parameters(recurse=False):
            counted.add(id(p))
        sliced = layer.sliced_state() if isinstance(layer, SuperMixin) else {}
        for name, _ in layer.named_parameters(recurse=False):
            total += sliced[name].numel()
    for p in model.parameters():
        if id(p) not in counted:
            total += p.numel()
    return total


def format_count(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (G/M/K), for tables and logs."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def parse_count(text: str | int | float) -> float:
    """'2.5G' / '300M' / '12k' / 1e9 -> a number; raises ValueError on anything else."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().upper()
    if s.endswith("MACS"):
        s = s[:-4].strip()
    mult = {"G": 1e9, "M": 1e6, "K": 1e3}
    if s and s[-1] in mult:
        return float(s[:-1]) * mult[s[-1]]
    return float(s)


def count_conv_macs(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    """Multiply-accumulates of the convs, transposed convs and linears alone, from forward hooks.

    About a hundred times cheaper than :func:`count_macs` (no tracing) and never larger than it
    (torchprofile counts the same layers plus norms and element-wise ops), so it is a safe lower
    bound for screening candidates against a budget; reported numbers come from count_macs.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        nonlocal total
        x = args[0]
        if isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += x.numel() * out.shape[1] * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            depthwise = getattr(module, "depthwise", False) or module.groups > 1
            total += out.numel() * (1 if depthwise else x.shape[1]) * k
        elif isinstance(module, nn.Linear):
            total += out.numel() * x.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)
