"""How the identity term reads its images. ``student.identity_lowpass``: through a binomial low-pass
it has no gradient towards period-2 patterns (the stripes a recognizer's gradient draws) and keeps
smooth content. ``student.identity_jitter``: output and target through one random shift and flip per
sample, the same for both."""

from __future__ import annotations

import torch
from torch import nn

from slimface.compress.config import DistillConfig
from slimface.compress.distill import DistillLoss
from slimface.train.distributed import StepRandom
from slimface.train.losses import binomial_lowpass, identity_loss, jittered


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


def test_jittered_shifts_and_flips_every_batch_alike() -> None:
    img = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    other = -img
    shifts = torch.tensor([[1, 0], [0, -2]])
    flips = torch.tensor([False, True])
    a, b = jittered((img, other), shifts, flips, pad=2)
    assert torch.equal(b, -a)  # the same view of both batches
    # sample 0 moved right by one pixel, its left column replicated
    assert torch.equal(a[0, :, :, 1:], img[0, :, :, :-1]) and torch.equal(a[0, :, :, 0], img[0, :, :, 0])
    # sample 1 moved up by two rows (bottom rows replicated), then mirrored
    assert torch.equal(a[1].flip(-1)[:, :4], img[1, :, 2:]) and torch.equal(a[1].flip(-1)[:, 5], img[1, :, 5])
    still, = jittered((img,), torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), pad=0)
    assert torch.equal(still, img)


def test_identity_jitter_changes_what_the_term_reads_and_not_an_aligned_match() -> None:
    """A recognizer that reads one pixel position: without views, an output that matches the target
    there alone scores zero; with views it is read at other positions and pays. An output equal to
    the target pays nothing under any view; the same draws give the same loss."""

    class OnePixel(nn.Module):
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 4, 4]

    torch.manual_seed(0)
    target = torch.rand(8, 3, 9, 9)
    fake = torch.zeros_like(target)
    fake[:, :, 4, 4] = target[:, :, 4, 4]

    def loss(jitter: int, out: torch.Tensor) -> float:
        d = DistillLoss(DistillConfig(identity_weight=1.0, identity_jitter=jitter, gan_weight=0, distill_weight=0),
                        recognizer=OnePixel())
        return d.generator_loss(nn.Identity(), target, out, target, None, None,
                                rnd=StepRandom(0, 3, 8, stream="identity-views"))[1]["id"]

    assert loss(0, fake) == 0.0 < loss(2, fake)
    assert loss(2, target) == 0.0
    assert loss(2, fake) == loss(2, fake)
