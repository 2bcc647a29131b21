"""``student.identity_lowpass``: the identity term read through a binomial low-pass has no gradient
towards period-2 patterns (the stripes a recognizer's gradient draws) and keeps smooth content."""

from __future__ import annotations

import torch
from torch import nn

from slimface.compress.config import DistillConfig
from slimface.compress.distill import DistillLoss
from slimface.train.losses import binomial_lowpass, identity_loss


def test_lowpass_removes_the_nyquist_stripes_and_keeps_constants() -> None:
    rows = torch.arange(16).remainder(2).float().mul(2).sub(1)  # +1/-1 alternating rows
    stripes = rows.view(1, 1, 16, 1).expand(2, 3, 16, 16)
    assert binomial_lowpass(stripes)[..., 1:-1, :].abs().max() < 1e-6
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(binomial_lowpass(flat), flat)
    smooth = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    assert (binomial_lowpass(smooth) - smooth)[..., 1:-1].abs().max() < 1e-6  # linear ramps pass


def test_the_identity_gradient_has_no_stripe_component_through_the_lowpass() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten())
    fake = torch.randn(2, 3, 16, 16, requires_grad=True)
    real = torch.randn(2, 3, 16, 16)

    def nyquist_share(lowpass: bool) -> float:
        """Share of the gradient's energy at the vertical Nyquist frequency (period-2 rows)."""
        fake.grad = None
        identity_loss(net, fake, real, lowpass).backward()
        spectrum = torch.fft.fft(fake.grad, dim=-2).abs().pow(2)
        return float(spectrum[..., 8, :].sum() / spectrum.sum())

    without, through = nyquist_share(False), nyquist_share(True)
    assert through < 0.05 * without


def test_the_distill_loss_reads_the_setting() -> None:
    class Rec(nn.Module):
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    rows = torch.arange(8).remainder(2).float().mul(2).sub(1).view(1, 1, 8, 1).expand(1, 3, 8, 8)
    target = torch.zeros(1, 3, 8, 8)
    for lowpass, expect_zero in ((True, True), (False, False)):
        loss = DistillLoss(DistillConfig(identity_weight=1.0, identity_lowpass=lowpass, gan_weight=0,
                                         distill_weight=0), recognizer=Rec())
        _, parts = loss.generator_loss(nn.Identity(), target, rows * 0.5, target, None, None)
        interior_only = parts["id"] < 0.1  # the replicated edge rows keep a little
        assert interior_only == expect_zero
