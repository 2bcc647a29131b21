"""Loss functions shared by the teachers' objectives and by distillation (one copy of each)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor



def gan_loss_d(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Non-saturating cGAN discriminator loss: -log D(real) - log(1 - D(fake))."""
    return (
        F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    ) * 0.5


def gan_loss_g(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: -log D(fake)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def wgan_loss_d(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    return fake_scores.mean() - real_scores.mean()


def wgan_loss_g(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, alpha: Tensor | None = None
) -> Tensor:
    """WGAN-GP: (||grad critic(x_hat)||_2 - 1)^2 on interpolates of real and fake.

    ``alpha`` (B,) are the per-row interpolation weights; pass them drawn for the global batch
    (``distributed.StepRandom``) when the result must not depend on the number of processes.
    """
    if alpha is None:
        alpha = torch.rand(real.size(0), device=real.device)
    a = alpha.to(device=real.device, dtype=real.dtype).view(-1, 1, 1, 1)
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def symmetry_loss(image: Tensor) -> Tensor:
    """L1 between a frontal face and its mirror (TP-GAN's symmetry loss)."""
    return (image - image.flip(-1)).abs().mean()


def total_variation(image: Tensor) -> Tensor:
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (
        image[..., :, 1:] - image[..., :, :-1]
    ).abs().mean()


def binomial_lowpass(image: Tensor) -> Tensor:
    """The image through a 3x3 binomial filter ([1, 2, 1] x [1, 2, 1] / 16, edges replicated): its
    response is exactly zero at the Nyquist frequency, so a loss read through it has no gradient
    towards period-2 patterns (the stripes a recognizer's gradient draws)."""
    c = image.shape[1]
    k1 = image.new_tensor([1.0, 2.0, 1.0])
    kernel = (k1[:, None] * k1[None, :] / 16).expand(c, 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def jittered(images: tuple[Tensor, ...], shifts: Tensor, flips: Tensor, pad: int) -> tuple[Tensor, ...]:
    """Each batch of ``images`` through the same per-sample view: an integer translation by
    ``shifts`` (``(b, 2)`` as (dx, dy), each in [-pad, pad]; edges replicated) and a horizontal flip
    where ``flips`` (``(b,)`` bool) is set. Sample ``i`` of every batch gets view ``i``."""
    size = images[0].shape[-2:]
    out = []
    for image in images:
        padded = F.pad(image, (pad, pad, pad, pad), mode="replicate") if pad else image
        rows = []
        for i in range(image.shape[0]):
            dx, dy = int(shifts[i, 0]), int(shifts[i, 1])
            view = padded[i, :, pad - dy: pad - dy + size[0], pad - dx: pad - dx + size[1]]
            rows.append(view.flip(-1) if bool(flips[i]) else view)
        out.append(torch.stack(rows))
    return tuple(out)


def identity_loss(embed: Callable[[Tensor], Tensor], fake: Tensor, real: Tensor, lowpass: bool = False) -> Tensor:
    """L1 between recognizer features of the output and of the ground truth (frozen recognizer);
    ``lowpass``: both images read through :func:`binomial_lowpass` first."""
    if lowpass:
        fake, real = binomial_lowpass(fake), binomial_lowpass(real)
    with torch.no_grad():
        target = embed(real)
    return (embed(fake) - target).abs().mean()


def resize_to(image: Tensor, size: int) -> Tensor:
    if image.shape[-1] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def multiscale_l1(outputs: dict[int, Tensor], target: Tensor, weights: dict[int, float]) -> Tensor:
    """Pixel L1 of each output scale against the ground truth resized to it."""
    total = target.new_zeros(())
    for size, out in outputs.items():
        total = total + weights.get(size, 1.0) * (out - resize_to(target, out.shape[-1])).abs().mean()
    return total
