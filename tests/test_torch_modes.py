"""PyTorch deployment modes (slimface.deploy.torch_modes): each runs the model it was given, as deployed.

- eager and channels_last give the folded copy's outputs on a real (tiny) generator and leave the
  caller's model as it was; a mode name that does not exist and a missing C++ compiler are one-line
  ConfigErrors;
- compiled (torch.compile) gives the same outputs on a small conv net (skipped without a compiler);
- the bench carries the mode into its report.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimface.deploy import torch_modes
from slimface.errors import ConfigError
from slimface.families import build_generator


def _generator() -> nn.Module:
    torch.manual_seed(0)
    g = build_generator("tpgan", 64, 3, 0.0625, separable=True)
    with torch.no_grad():  # batch norms that do something, so folding is exercised
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return g.eval()


@pytest.mark.parametrize("mode", ["eager", "channels_last"])
def test_a_mode_runs_the_folded_copy_and_leaves_the_model_alone(mode: str) -> None:
    g = _generator()
    inputs = g.example_inputs()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.inference_mode():
        ref = g(*inputs)
    p = torch_modes.prepare(g, inputs, mode)
    with torch.inference_mode():
        out = p(*inputs)
    assert p.mode == mode and p.info["folded_batchnorms"] > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert all(x.is_contiguous() for x in g.parameters())  # the caller's weights stay NCHW
    if mode == "channels_last":
        assert p.info["max_abs_diff_vs_eager"] < 1e-4


def test_unknown_mode_and_missing_compiler_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _generator()
    with pytest.raises(ConfigError, match="torch mode 'fast'.*eager, channels_last, compiled"):
        torch_modes.prepare(g, g.example_inputs(), "fast")
    monkeypatch.setattr(torch_modes.shutil, "which", lambda _: None)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler.*channels_last") as e:
        torch_modes.prepare(g, g.example_inputs(), "compiled")
    assert "\n" not in str(e.value)


class _Small(nn.Module):
    """Conv + BN + activation, a depthwise-separable pair and a residual add: what a student is made of."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.bn(self.conv(x)), 0.2)
        return torch.tanh(self.pw(torch.relu(self.dw(h))) + x)


@pytest.mark.skipif(not torch_modes.compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_mode_gives_the_eager_outputs() -> None:
    torch.manual_seed(0)
    net = _Small().eval()
    x = torch.randn(1, 3, 16, 16)
    p = torch_modes.prepare(net, (x,), "compiled")
    y = torch.randn(1, 3, 16, 16)  # another input than the one it was checked on
    with torch.inference_mode():
        torch.testing.assert_close(p(y), net(y), rtol=1e-4, atol=1e-5)
    assert p.info["prepare_s"] > 0 and p.info["max_abs_diff_vs_eager"] < 1e-4


def test_the_bench_times_both_models_in_the_mode_it_was_given() -> None:
    from slimface.evaluate.arch_bench import bench_report

    r = bench_report("tpgan", 64, 0.0625, student="smallest", warmup=1, runs=2, threads=1,
                     torch_mode="channels_last")
    assert r["torch_mode"] == "channels_last"
    for side in ("teacher", "student"):
        assert r[side]["torch_mode"] == "channels_last" and r[side]["max_abs_diff_vs_eager"] < 1e-4
        assert r[side]["latency_p50_ms"] > 0
    with pytest.raises(ConfigError, match="torch mode"):
        bench_report("tpgan", 64, 0.0625, torch_mode="nchw")
