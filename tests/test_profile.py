"""MACs/params counting checked on a small network whose counts are known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimface.nn.channels import ch
from slimface.nn.counts import format_count, parse_count
from slimface.nn.profile import count_macs, count_params
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



@pytest.mark.parametrize("family", ["tpgan", "crgan", "pim"])
def test_conv_macs_model_equals_the_hooked_count_for_any_widths(family: str) -> None:
    """The formula (one probe forward, then no forward per config) gives count_conv_macs exactly."""
    from slimface.compress.space import ConfigSpace
    from slimface.families import build_generator, get_family
    from slimface.nn.profile import ConvMacsModel, count_conv_macs
    from slimface.nn.super_layers import set_widths

    net = build_generator(family, 64, 3, 0.125, separable=True).eval()
    space = ConfigSpace.from_supernet(get_family(family), net)
    gen = torch.Generator().manual_seed(0)
    cfgs = [None, space.smallest(), space.largest(), *(space.sample(gen) for _ in range(4))]
    set_widths(net, space.smallest())  # built from a narrow state: the formula must not depend on it
    model = ConvMacsModel(net, net.example_inputs(1))
    counts = set()
    for cfg in cfgs:
        set_widths(net, cfg)
        expected = count_conv_macs(net, net.example_inputs(1))
        set_widths(net, None)
        assert model(cfg) == expected, cfg
        counts.add(expected)
    assert len(counts) >= 3


# ----------------------------------------------------------------------------- count_macs_fast
from slimface.nn.profile import count_macs_fast  # noqa: E402


def test_fast_macs_of_known_network() -> None:
    """conv + BN + transposed conv + linear, counted by hand."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),      # 100 px * 8 * 27
        nn.BatchNorm2d(8),                              # affine: one MAC per output element (800)
        nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False),  # per input px 8 * 4 * 16
        nn.Flatten(),
        nn.Linear(4 * 20 * 20, 10),                     # 1600 * 10
    )
    x = torch.randn(1, 3, 10, 10)
    expected = 100 * 8 * 27 + 800 + 100 * 8 * 4 * 16 + 1600 * 10
    assert count_macs_fast(net, (x,), fallback=False) == expected == count_macs(net, (x,))
    assert net.training  # the mode comes back


def test_fast_macs_of_super_layers_and_active_subnet() -> None:
    net = _net()
    x = torch.randn(1, 3, 10, 10)
    assert count_macs_fast(net, (x,), fallback=False) == count_macs(net, (x,))
    set_widths(net, {"a": 8, "b": 4})
    assert count_macs_fast(net, (x,), fallback=False) == 100 * 8 * 27 + 100 * 8 * 9 + 100 * 8 * 4 * 16 + 4 * 400 * 10


class _Zoo(nn.Module):
    """Ops whose torchprofile count has a quirk: norms (affine or not), pools, bilinear upsampling,
    grid sampling, a stride-1 transposed conv, matmul/bmm/addmm, arithmetic on sizes (traced as
    1-MAC muls), in-place ops on views and a dead branch (not in the trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.bn, self.bn_plain = nn.BatchNorm2d(8), nn.BatchNorm2d(8, affine=False)
        self.inorm, self.gn, self.ln = nn.InstanceNorm2d(8, affine=True), nn.GroupNorm(2, 8), nn.LayerNorm([8, 16, 16])
        self.dc, self.dc1 = nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.ConvTranspose2d(4, 4, 3, 1, 1)
        self.fc, self.dead = nn.Linear(4 * 16 * 16, 10), nn.Linear(4 * 16 * 16, 100)
        self.head = nn.Linear(6, 5, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch.nn.functional as F

        h = F.leaky_relu(self.bn(self.c(x)), 0.2)
        h = self.inorm(h) + self.gn(h) + self.ln(h) + self.bn_plain(h)
        h = F.interpolate(F.avg_pool2d(h * 0.5, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
        h = h * torch.sigmoid(h.mean(dim=(2, 3), keepdim=True))
        h = F.interpolate(F.adaptive_avg_pool2d(h, 4), size=(8, 8), mode="nearest")
        d = self.dc1(self.dc(h))
        d[:, :2].mul_(2.0)
        b, c, hh, ww = d.shape
        flat = d.reshape(b, c * hh * ww)
        self.dead(flat)
        grid = torch.zeros(1, 5, 5, 2)
        g = F.grid_sample(d, grid, mode="bilinear", align_corners=False) + F.grid_sample(d, grid, mode="nearest", align_corners=False)
        t = self.head(torch.ones(2, 3, 4) @ torch.ones(2, 4, 6))
        u = torch.bmm(torch.ones(2, 3, 4), torch.ones(2, 4, 5)) + 0
        v = torch.addmm(torch.zeros(2, 2), torch.ones(2, 3), torch.ones(3, 2))
        return self.fc(flat), g, t, u, v, d.view(-1)[: d.numel() // 2 * 1]


def test_fast_macs_match_torchprofile_quirks() -> None:
    x = torch.randn(1, 3, 16, 16)
    assert count_macs_fast(_Zoo(), (x,), fallback=False) == count_macs(_Zoo(), (x,))


def test_fast_macs_fall_back_to_torchprofile_on_unmatched_ops() -> None:
    class Einsum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,bchw->b", x, x)

    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(Exception):
        count_macs_fast(Einsum(), (x,), fallback=False)
    assert count_macs_fast(Einsum(), (x,)) == count_macs(Einsum(), (x,))


@pytest.mark.parametrize("family", ["tpgan", "crgan", "pim"])
def test_fast_macs_equal_torchprofile_on_family_supernets(family: str) -> None:
    """Exact equality on the students the search counts (64px, width 0.25): largest, smallest and
    two seeded random sub-networks, and the teacher-shaped (dense) generator (each reference count
    traces the network: the slowest test of the file)."""
    from slimface.compress.space import ConfigSpace, active_config
    from slimface.families import build_generator, get_family

    net = build_generator(family, 64, 3, 0.25, separable=True).eval()
    space = ConfigSpace.from_supernet(get_family(family), net)
    gen = torch.Generator().manual_seed(1234)
    cfgs = [space.largest(), space.smallest()] + [space.sample(gen) for _ in range(2)]
    inputs = net.example_inputs(1)
    for cfg in cfgs:
        with active_config(net, cfg):
            assert count_macs_fast(net, inputs, fallback=False) == count_macs(net, inputs), space.encode(cfg)
    teacher = build_generator(family, 64, 3, 0.25, separable=False)
    inputs = teacher.example_inputs(1)
    assert count_macs_fast(teacher, inputs, fallback=False) == count_macs(teacher, inputs)
