"""MACs/params counting checked on a small network whose counts are known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimface.nn.channels import ch
from slimface.nn.profile import count_macs, count_params, format_count, parse_count
from slimface.nn.super_layers import SuperConv2d, SuperConvTranspose2d, SuperLinear, set_widths


def _net() -> nn.Sequential:
    return nn.Sequential(
        SuperConv2d(ch(3), ch(16, "a"), 3, bias=False),           # 16*3*9 per pixel
        SuperConv2d(ch(16, "a"), ch(16, "a"), 3, depthwise=True, bias=False),  # 16*9
        SuperConvTranspose2d(ch(16, "a"), ch(8, "b"), 4, 2, 1, bias=False),    # per input px 16*8*16
        nn.Flatten(),
        SuperLinear(ch(8, "b").repeat_spatial(400), ch(10), bias=False),
    )


def test_macs_of_known_network() -> None:
    x = torch.randn(1, 3, 10, 10)
    expected = 100 * 16 * 27 + 100 * 16 * 9 + 100 * 16 * 8 * 16 + 8 * 400 * 10
    assert count_macs(_net(), (x,)) == expected


def test_macs_and_params_of_active_subnet() -> None:
    net = _net()
    set_widths(net, {"a": 8, "b": 4})
    x = torch.randn(1, 3, 10, 10)
    assert count_macs(net, (x,)) == 100 * 8 * 27 + 100 * 8 * 9 + 100 * 8 * 4 * 16 + 4 * 400 * 10
    assert count_params(net) == 8 * 27 + 8 * 9 + 8 * 4 * 16 + 4 * 400 * 10


def test_params_full() -> None:
    net = _net()
    assert count_params(net) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "text,value", [("2.5G", 2.5e9), ("300M", 3e8), ("12k", 1.2e4), ("1.5GMACs", 1.5e9), (7, 7.0)]
)
def test_parse_count(text: str | int, value: float) -> None:
    assert parse_count(text) == pytest.approx(value)


def test_parse_count_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_count("lots")


def test_format_count() -> None:
    assert format_count(1.5e9) == "1.50G" and format_count(2.3e6, "MACs") == "2.30MMACs"


def test_conv_macs_is_a_lower_bound_of_the_full_count() -> None:
    from slimface.nn.profile import count_conv_macs

    net = _net()
    x = torch.randn(1, 3, 10, 10)
    conv_only = 100 * 16 * 27 + 100 * 16 * 9 + 100 * 16 * 8 * 16 + 8 * 400 * 10
    assert count_conv_macs(net, (x,)) == conv_only == count_macs(net, (x,))
    with_bn = nn.Sequential(net[0], nn.BatchNorm2d(16), nn.ReLU())
    assert count_conv_macs(with_bn, (x,)) < count_macs(with_bn, (x,))
