"""Warm start of a student supernet from its teacher: channel sorting, factorisation, copying."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _nets import randomize_bn
from slimface.compress.space import ConfigSpace
from slimface.compress.warmstart import (
    channel_importance, factorize_separable, permute_channels, sort_channels, warm_start,
)
from slimface.families import get_family
from slimface.nn.super_layers import SeparableConv2d, set_widths

FAMILIES = ["tpgan", "crgan", "pim"]
KW = dict(resolution=64, channels=3, width_mult=0.125)


def _inputs(net: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x, lm = net.example_inputs(2)  # type: ignore[operator]
    return torch.rand(x.shape, generator=gen) * 2 - 1, lm


def _image(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index]


@pytest.mark.parametrize("name", FAMILIES)
def test_sorting_channels_keeps_the_teachers_function(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    family = get_family(name)
    teacher = family.build_generator(separable=False, sub=None, **KW).eval()
    randomize_bn(teacher)
    groups = ConfigSpace.from_supernet(family, family.build_generator(separable=True, sub=None, **KW)).groups
    x = _inputs(teacher, gen)
    before = copy.deepcopy(teacher.state_dict())
    with torch.no_grad():
        y0 = _image(teacher(*x))
        perms = sort_channels(teacher, groups)
        y1 = _image(teacher(*x))
    assert set(perms) == set(groups)
    moved = [g for g, p in perms.items() if not torch.equal(p, torch.arange(len(p)))]
    assert moved, "random weights should not already be in importance order"
    assert any(not torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-4)
    # after sorting, every group's scores are in descending order
    for g, s in channel_importance(teacher, groups).items():
        assert torch.all(s[:-1] >= s[1:] - 1e-5), g


def test_permuting_a_group_wrongly_would_change_the_output() -> None:
    """The invariance above is not vacuous: permuting one layer's output alone breaks the function."""
    gen = torch.Generator().manual_seed(1)
    teacher = get_family("tpgan").build_generator(separable=False, sub=None, **KW).eval()
    x = _inputs(teacher, gen)
    with torch.no_grad():
        y0 = _image(teacher(*x))
        conv = next(m for m in teacher.modules() if isinstance(m, nn.Conv2d) and m.out_channels > 1)
        conv.weight.copy_(conv.weight.flip(0))
        y1 = _image(teacher(*x))
    assert (y1 - y0).abs().max() > 1e-3


def test_factorisation_is_exact_for_separable_kernels_and_best_rank1_otherwise() -> None:
    gen = torch.Generator().manual_seed(2)
    dw = torch.randn(6, 1, 3, 3, generator=gen)
    pw = torch.randn(5, 6, 1, 1, generator=gen)
    w = pw[:, :, 0, 0, None, None] * dw[None, :, 0]  # W[o, i] = P[o, i] D[i]
    d2, p2, kept = factorize_separable(w)
    torch.testing.assert_close(p2[:, :, 0, 0, None, None] * d2[None, :, 0], w, atol=1e-5, rtol=1e-5)
    assert kept == pytest.approx(1.0)
    full = torch.randn(5, 6, 3, 3, generator=gen)
    d3, p3, kept3 = factorize_separable(full)
    approx = p3[:, :, 0, 0, None, None] * d3[None, :, 0]
    resid = (full - approx).pow(2).sum() / full.pow(2).sum()
    assert 0 < kept3 < 1
    assert float(resid) == pytest.approx(1 - kept3, abs=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_warm_start_reproduces_a_teacher_whose_kernels_are_separable(name: str) -> None:
    """If every teacher kernel that the student splits is exactly depthwise x pointwise, the
    warm-started supernet (channels sorted) computes the teacher's function."""
    gen = torch.Generator().manual_seed(3)
    family = get_family(name)
    donor = family.build_generator(separable=True, sub=None, **KW).eval()
    teacher = family.build_generator(separable=False, sub=None, **KW).eval()
    randomize_bn(teacher)
    modules = dict(teacher.named_modules())
    with torch.no_grad():
        for mname, m in donor.named_modules():
            if isinstance(m, SeparableConv2d):
                t = modules[mname]
                t.weight.copy_(m.pointwise.weight[:, :, 0, 0, None, None] * m.depthwise.weight[None, :, 0])
    groups = ConfigSpace.from_supernet(family, donor).groups
    supernet = family.build_generator(separable=True, sub=None, **KW).eval()
    report = warm_start(supernet, teacher, groups)
    assert report.factorized > 0 and report.copied > 0
    assert report.energy == pytest.approx(1.0, abs=1e-4)
    assert not report.kept, report.kept[:3]
    x = _inputs(teacher, gen)
    with torch.no_grad():
        torch.testing.assert_close(_image(supernet(*x)), _image(teacher(*x)), atol=1e-4, rtol=1e-3)


def test_warm_start_puts_the_strongest_channels_in_the_smallest_subnet() -> None:
    gen = torch.Generator().manual_seed(4)
    family = get_family("tpgan")
    teacher = family.build_generator(separable=False, sub=None, **KW).eval()
    supernet = family.build_generator(separable=True, sub=None, **KW).eval()
    space = ConfigSpace.from_supernet(family, supernet)
    group = space.groups[0]
    scores = channel_importance(teacher, [group])[group]
    warm_start(supernet, teacher, space.groups)
    sorted_teacher = copy.deepcopy(teacher)
    sort_channels(sorted_teacher, space.groups)
    top = channel_importance(sorted_teacher, [group])[group]
    torch.testing.assert_close(top, scores.sort(descending=True).values)
    # unsorted warm start keeps the teacher's order: the two supernets differ in that group
    plain = family.build_generator(separable=True, sub=None, **KW).eval()
    warm_start(plain, teacher, space.groups, sort=False)
    x = _inputs(teacher, gen)
    with torch.no_grad():
        set_widths(supernet, space.smallest())
        set_widths(plain, space.smallest())
        assert (_image(supernet(*x)) - _image(plain(*x))).abs().max() > 1e-4


def test_permute_channels_ignores_unknown_groups() -> None:
    teacher = get_family("crgan").build_generator(separable=False, sub=None, **KW).eval()
    state = copy.deepcopy(teacher.state_dict())
    permute_channels(teacher, {"no.such.group": torch.tensor([1, 0])})
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state[k]), k
