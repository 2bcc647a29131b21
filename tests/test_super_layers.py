"""Super layers: every sliced layer equals a freshly built narrow layer holding the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimface.models.blocks import ResBlock, Widths, res_stack
from slimface.nn.channels import cat, ch, scale
from slimface.nn.super_layers import (
    SeparableConv2d,
    SuperBatchNorm2d,
    SuperConv2d,
    SuperConvTranspose2d,
    SuperLinear,
    load_subnet_weights,
    set_widths,
    width_groups,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_active_index_is_slice_when_contiguous_and_gather_after_concat() -> None:
    layout = cat(ch(16, "a"), ch(8, "b"))
    assert layout.active_index({"a": 16, "b": 4}) == slice(0, 20)
    idx = layout.active_index({"a": 8, "b": 4})
    assert idx.tolist() == list(range(8)) + list(range(16, 20))


def test_conv_slices_after_concatenation() -> None:
    layer = SuperConv2d(cat(ch(16, "a"), ch(8, "b")), ch(12, "o"), 3)
    set_widths(layer, {"a": 8, "b": 4, "o": 8})
    x = torch.randn(2, 12, 7, 7)
    ref = nn.Conv2d(12, 8, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(torch.cat([layer.weight[:8, :8], layer.weight[:8, 16:20]], 1))
        ref.bias.copy_(layer.bias[:8])
    assert torch.allclose(layer(x), ref(x), atol=1e-6)


def test_depthwise_conv_slices() -> None:
    layer = SuperConv2d(ch(16, "a"), ch(16, "a"), 3, depthwise=True, bias=False)
    set_widths(layer, {"a": 8})
    x = torch.randn(1, 8, 5, 5)
    ref = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    with torch.no_grad():
        ref.weight.copy_(layer.weight[:8])
    assert torch.allclose(layer(x), ref(x), atol=1e-6)


def test_conv_transpose_slices() -> None:
    layer = SuperConvTranspose2d(ch(16, "a"), ch(12, "b"), 4, stride=2, padding=1)
    set_widths(layer, {"a": 8, "b": 4})
    x = torch.randn(2, 8, 5, 5)
    ref = nn.ConvTranspose2d(8, 4, 4, 2, 1)
    with torch.no_grad():
        ref.weight.copy_(layer.weight[:8, :4])
        ref.bias.copy_(layer.bias[:4])
    assert torch.allclose(layer(x), ref(x), atol=1e-6)


def test_linear_slices_flattened_conv_layout() -> None:
    layer = SuperLinear(ch(8, "a").repeat_spatial(4), ch(6, "o"))
    set_widths(layer, {"a": 4, "o": 3})
    x = torch.randn(2, 4, 2, 2)
    ref = nn.Linear(16, 3)
    with torch.no_grad():
        ref.weight.copy_(layer.weight[:3, :16])
        ref.bias.copy_(layer.bias[:3])
    assert torch.allclose(layer(x.flatten(1)), ref(x.flatten(1)), atol=1e-6)


def test_batchnorm_train_updates_shared_running_stats_slice() -> None:
    layer = SuperBatchNorm2d(ch(16, "a"))
    set_widths(layer, {"a": 8})
    x = torch.randn(4, 8, 3, 3) * 3 + 2
    ref = nn.BatchNorm2d(8)
    layer.train(), ref.train()
    assert torch.allclose(layer(x), ref(x), atol=1e-5)
    assert torch.allclose(layer.running_mean[:8], ref.running_mean, atol=1e-6)
    assert torch.equal(layer.running_mean[8:], torch.zeros(8))
    layer.eval(), ref.eval()
    assert torch.allclose(layer(x), ref(x), atol=1e-5)


def test_full_width_is_exactly_the_plain_layer() -> None:
    layer = SuperConv2d(ch(8, "a"), ch(8, "b"), 3)
    x = torch.randn(1, 8, 4, 4)
    before = layer(x)
    set_widths(layer, {"a": 8, "b": 8})
    assert torch.equal(layer(x), before)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_separable_resblock_subnet_extraction_matches_supernet() -> None:
    w = Widths(1.0)
    trunk = w("trunk", 16)
    sup = nn.Sequential(SuperConv2d(ch(3), trunk, 3), res_stack(w, trunk, "res", 2, 16, separable=True))
    cfg = {"trunk": 8, "res.0.mid": 8, "res.1.mid": 16}
    set_widths(sup, cfg)
    sup.eval()
    w2 = Widths(1.0, sub=cfg)
    t2 = w2("trunk", 16)
    static = nn.Sequential(SuperConv2d(ch(3), t2, 3), res_stack(w2, t2, "res", 2, 16, separable=True))
    load_subnet_weights(sup, static)
    static.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(sup(x), static(x), atol=1e-5)
    assert static[0].weight.shape == (8, 3, 3, 3)


def test_width_groups_and_bad_widths() -> None:
    w = Widths(1.0)
    block = ResBlock(w("t", 16), w("m", 32))
    assert width_groups(block) == {"t": 16, "m": 32}
    with pytest.raises(KeyError, match="unknown width group"):
        set_widths(block, {"nope": 8})
    with pytest.raises(ValueError, match="outside"):
        set_widths(block, {"m": 64})


def test_separable_conv_structure() -> None:
    layer = SeparableConv2d(ch(8), ch(16), 3)
    assert layer.depthwise.groups == 8 and layer.pointwise.kernel_size == (1, 1)


def test_width_multiplier_rounds_to_multiples_of_8() -> None:
    assert scale(64, 0.25) == 16 and scale(64, 0.1) == 8 and scale(512, 1.0) == 512
    assert Widths(0.5)("g", 64).total == 32
    assert Widths(0.5, sub={"g": 8})("g", 64).total == 8


def test_batchnorm_on_pruned_concatenation_updates_the_gathered_statistics() -> None:
    layer = SuperBatchNorm2d(cat(ch(8, "a"), ch(4, "b")))
    set_widths(layer, {"a": 4, "b": 4})
    x = torch.randn(6, 8, 3, 3) * 2 + 1
    ref = nn.BatchNorm2d(8)
    layer.train(), ref.train()
    assert torch.allclose(layer(x), ref(x), atol=1e-5)
    idx = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    assert torch.allclose(layer.running_mean[idx], ref.running_mean, atol=1e-6)
    assert torch.equal(layer.running_mean[4:8], torch.zeros(4))


def test_module_mode_switches_and_restores_even_on_error() -> None:
    from slimface.nn.modes import module_mode

    net = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    net.train()
    with module_mode(net) as inner:
        assert inner is net and not net.training and not net[0].training
    assert net.training and net[0].training
    net.eval()
    with pytest.raises(RuntimeError), module_mode(net, training=True):
        assert net[0].training
        raise RuntimeError("boom")
    assert not net.training and not net[0].training
