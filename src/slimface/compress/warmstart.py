"""Start a student supernet from its trained teacher instead of from random weights.

Teacher and supernet are one model definition (the supernet is built with ``separable=True``), so
their modules pair up by name. A module the two share with the same tensor shapes is copied; a
k x k conv that the student splits into depthwise + pointwise gets the best such factorisation of
the teacher's kernel: per input channel i, the (out x k*k) slice ``W[:, i]`` is replaced by its
rank-1 SVD ``u s v^T``, i.e. pointwise column ``u sqrt(s)`` times depthwise kernel ``v sqrt(s)``
(the separable conv computes exactly ``W'[o, i] = P[o, i] D[i]``, so no other choice is closer in
Frobenius norm).

A sub-network keeps the *first* c channels of each width group, so before copying, each prunable
group's channels are reordered by importance (:func:`sort_channels`), as once-for-all's
progressive shrinking does: the smallest sub-networks then start with the teacher's strongest
channels instead of an arbitrary subset. The reordering permutes the same group consistently in
every layer's input and output (from the layers' channel layouts), so the teacher computes exactly
the same function after it; a test checks that for every family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from slimface.nn.channels import Chans
from slimface.nn.super_layers import (
    SeparableConv2d, SuperBatchNorm2d, SuperConv2d, SuperConvTranspose2d, SuperLinear, SuperMixin, own_tensors,
    super_layers,
)


@dataclass
class WarmStartReport:
    """What :func:`warm_start` did: tensors copied, convs factorised, student tensors left as built."""

    copied: int = 0
    factorized: int = 0
    kept: list[str] = field(default_factory=list)
    energy: float = 1.0  # share of the factorised kernels' squared norm the rank-1 parts keep

    def summary(self) -> str:
        text = (f"copied {self.copied} tensors, factorised {self.factorized} convs "
                f"(rank-1 keeps {self.energy:.0%} of their energy)")
        if self.kept:
            text += f"; {len(self.kept)} tensors kept their initial values (e.g. {self.kept[0]})"
        return text


# -------------------------------------------------------------------- channel order
def _dims(layer: SuperMixin) -> tuple[int, int | None]:
    """(output dim, input dim or None) of a super layer's weight."""
    if isinstance(layer, SuperConvTranspose2d):
        return 1, 0
    if isinstance(layer, SuperConv2d) and layer.depthwise:
        return 0, None
    if isinstance(layer, (SuperConv2d, SuperLinear)):
        return 0, 1
    if isinstance(layer, SuperBatchNorm2d):
        return 0, None
    raise TypeError(f"no channel dims known for {type(layer).__name__}")


def _layout_index(layout: Chans, perms: Mapping[str, Tensor]) -> Tensor | None:
    """Full-tensor index that applies ``perms`` to the segments of their groups (None: identity)."""
    parts: list[Tensor] = []
    offset, touched = 0, False
    for seg in layout.segments:
        perm = perms.get(seg.group) if seg.group is not None else None
        if perm is None:
            idx = torch.arange(seg.size)
        else:
            touched = True
            idx = (perm[:, None] * seg.unit + torch.arange(seg.unit)[None, :]).reshape(-1)
        parts.append(idx + offset)
        offset += seg.size
    return torch.cat(parts) if touched else None


def channel_importance(model: nn.Module, groups: Iterable[str]) -> dict[str, Tensor]:
    """Per group, a score per channel: the L1 norm of the weights that produce it, summed over the
    group's producing convs/linears (each layer normalised to mean 1, so wide layers do not drown
    narrow ones). BN and depthwise layers only carry channels through and are not counted."""
    wanted = set(groups)
    scores: dict[str, Tensor] = {}
    for _, layer in super_layers(model):
        if isinstance(layer, SuperBatchNorm2d) or (isinstance(layer, SuperConv2d) and layer.depthwise):
            continue
        out_dim, _ = _dims(layer)
        w = layer.weight.detach().abs()  # type: ignore[attr-defined]
        per_out = w.transpose(0, out_dim).reshape(w.shape[out_dim], -1).sum(1)
        per_out = per_out / per_out.mean().clamp_min(1e-12)
        offset = 0
        for seg in layer.out_chans.segments:
            if seg.group in wanted:
                s = per_out[offset:offset + seg.size].reshape(seg.width, seg.unit).sum(1)
                scores[seg.group] = scores.get(seg.group, torch.zeros(seg.width)) + s.cpu()
            offset += seg.size
    return scores


@torch.no_grad()
def permute_channels(model: nn.Module, perms: Mapping[str, Tensor]) -> None:
    """Reorder each group's channels by ``perms[group]`` (new position j holds old channel perm[j])
    in every super layer, in place; the model's function does not change."""
    for _, layer in super_layers(model):
        out_dim, in_dim = _dims(layer)
        out_idx = _layout_index(layer.out_chans, perms)
        in_idx = _layout_index(layer.in_chans, perms) if in_dim is not None else None
        for name, t in own_tensors(layer).items():
            if t.dim() == 0:
                continue  # num_batches_tracked
            new = t
            if out_idx is not None:
                new = new.index_select(out_dim if name == "weight" else 0, out_idx.to(t.device))
            if in_idx is not None and name == "weight":
                new = new.index_select(in_dim, in_idx.to(t.device))  # type: ignore[arg-type]
            if new is not t:
                t.copy_(new)


def sort_channels(model: nn.Module, groups: Iterable[str]) -> dict[str, Tensor]:
    """Put each group's most important channels first (see :func:`channel_importance`); returns the
    permutations applied."""
    perms = {g: torch.argsort(s, descending=True, stable=True) for g, s in channel_importance(model, groups).items()}
    permute_channels(model, perms)
    return perms


# -------------------------------------------------------------------- factorisation
def factorize_separable(weight: Tensor) -> tuple[Tensor, Tensor, float]:
    """Rank-1 per input channel: a (O, I, k, k) kernel -> depthwise (I, 1, k, k), pointwise (O, I, 1, 1)
    and the share of the kernel's squared norm they keep."""
    o, i, kh, kw = weight.shape
    m = weight.detach().permute(1, 0, 2, 3).reshape(i, o, kh * kw).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:, 0].sqrt()
    pw = (u[:, :, 0] * root[:, None]).t()  # (O, I)
    dw = vh[:, 0, :] * root[:, None]  # (I, k*k)
    kept = float((s[:, 0] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))
    return dw.reshape(i, 1, kh, kw).to(weight.dtype), pw.reshape(o, i, 1, 1).to(weight.dtype), kept


# -------------------------------------------------------------------- warm start
@torch.no_grad()
def warm_start(supernet: nn.Module, teacher: nn.Module, groups: Iterable[str] = (),
               sort: bool = True) -> WarmStartReport:
    """Fill ``supernet`` from ``teacher`` (see the module docstring); the teacher is not modified.

    ``groups``: the prunable width groups to sort by importance first (``sort=False`` keeps the
    teacher's order)."""
    source = teacher
    if sort:  # reorder a copy: the caller's teacher keeps its channel order
        source = copy.deepcopy(teacher)
        sort_channels(source, groups)
    src = dict(source.named_modules())
    report = WarmStartReport()
    done: set[str] = set()
    kept_energy: list[tuple[float, float]] = []
    for name, module in supernet.named_modules():
        t = src.get(name)
        if isinstance(module, SeparableConv2d):
            if isinstance(t, nn.Conv2d) and t.groups == 1 and t.weight.shape[0] == module.pointwise.weight.shape[0] \
                    and t.weight.shape[1] == module.depthwise.weight.shape[0] \
                    and t.weight.shape[2:] == module.depthwise.weight.shape[2:]:
                dw, pw, share = factorize_separable(t.weight)
                module.depthwise.weight.copy_(dw)
                module.pointwise.weight.copy_(pw)
                if module.pointwise.bias is not None and t.bias is not None:
                    module.pointwise.bias.copy_(t.bias)
                elif module.pointwise.bias is not None:
                    module.pointwise.bias.zero_()
                report.factorized += 1
                kept_energy.append((share, float(t.weight.pow(2).sum())))
                done.update(f"{name}.{sub}.{k}" for sub in ("depthwise", "pointwise")
                            for k in own_tensors(getattr(module, sub)))
            continue
        if t is None:
            continue
        theirs = own_tensors(t)
        for key, mine in own_tensors(module).items():
            full = f"{name}.{key}" if name else key
            if full in done:
                continue
            other = theirs.get(key)
            if other is not None and other.shape == mine.shape:
                mine.copy_(other)
                report.copied += 1
                done.add(full)
    for key in supernet.state_dict():
        if key not in done:
            report.kept.append(key)
    if kept_energy:
        total = sum(w for _, w in kept_energy)
        report.energy = sum(s * w for s, w in kept_energy) / max(total, 1e-30)
    return report


__all__ = [
    "WarmStartReport", "channel_importance", "factorize_separable", "permute_channels", "sort_channels",
    "warm_start",
]
