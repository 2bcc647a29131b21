"""Batch-norm folding for inference: which pairs fold, that outputs stay put, that benchmarks copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _nets import randomize_bn
from slimface.evaluate.bench import benchmark_pair
from slimface.families import build_generator
from slimface.nn.fold import fold_batchnorm


def _bns(m: nn.Module) -> int:
    return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())


class Tricky(nn.Module):
    """``shortcut`` is registered right before ``bn_in`` but does not feed it; ``conv_skip``'s output
    is read by its batch norm *and* by the residual addition; ``deconv`` -> ``bn_up`` is a real pair."""

    def __init__(self) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_skip = nn.Conv2d(4, 4, 1)
        self.bn_skip = nn.BatchNorm2d(4)
        self.deconv = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1, bias=False)
        self.bn_up = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x)
        y = torch.relu(self.bn(self.conv(self.bn_in(x))))
        z = self.conv_skip(y)
        y = self.bn_skip(z) + z
        return self.bn_up(self.deconv(y + s))


def test_folds_only_true_single_use_pairs() -> None:
    torch.manual_seed(0)
    net = Tricky()
    randomize_bn(net)
    net.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        ref = net(x)
    assert fold_batchnorm(net, (x,)) == 2  # conv -> bn and deconv -> bn_up
    assert isinstance(net.bn, nn.Identity) and isinstance(net.bn_up, nn.Identity)
    assert isinstance(net.bn_in, nn.BatchNorm2d) and isinstance(net.bn_skip, nn.BatchNorm2d)
    assert net.conv.bias is not None and net.deconv.bias is not None
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-5)


def test_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(Tricky().train(), (torch.randn(1, 4, 8, 8),))


@pytest.mark.parametrize("family", ["tpgan", "crgan", "pim"])
def test_generators_keep_their_outputs(family: str) -> None:
    """Teacher and separable student of every family: most batch norms fold, outputs unchanged."""
    torch.manual_seed(0)
    for separable in (False, True):
        g = build_generator(family, 64, 3, 0.125, separable=separable)
        randomize_bn(g)
        g.eval()
        inputs = g.example_inputs()
        with torch.no_grad():
            ref = g(*inputs)
        before = _bns(g)
        folded = fold_batchnorm(g, inputs)
        assert folded > 0 and _bns(g) == before - folded
        with torch.no_grad():
            assert (g(*inputs) - ref).abs().max() < 1e-4


def test_benchmark_times_folded_copies_and_leaves_models_alone() -> None:
    torch.manual_seed(0)
    g = build_generator("tpgan", 64, 3, 0.125, separable=True)
    randomize_bn(g)
    g.eval()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    n_bn = _bns(g)
    res = benchmark_pair({"s": g}, g.example_inputs(), warmup=0, runs=1, measure_memory=False)
    assert res["s"]["folded_batchnorms"] > 0
    assert _bns(g) == n_bn and all(torch.equal(state[k], v) for k, v in g.state_dict().items())
    plain = benchmark_pair({"s": g}, g.example_inputs(), warmup=0, runs=1, measure_memory=False, fold_bn=False)
    assert plain["s"]["folded_batchnorms"] == 0
