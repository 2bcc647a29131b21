"""Distillation objective: reconstruction + conditional GAN + intermediate-feature matching.

Features are tapped by module NAME (the family's ``StudentSpec.distill``): teacher and student share
one model definition, so ``"decoder.s16"`` names the same layer in both. A student layer's channel
count changes with the sampled sub-network, so each mapping (student -> teacher channels, a 1x1 conv
as in the reference implementation) is a :class:`SuperConv2d` whose *input layout* is the student
module's output layout; ``set_widths`` makes it use exactly the weight columns of the active
channels, also when that layout is a concatenation of several groups.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from slimface.compress.config import DistillConfig, GanMode
from slimface.errors import ConfigError
from slimface.nn.channels import Chans, ch
from slimface.nn.super_layers import SuperConv2d, SuperMixin, super_layers
from slimface.train import losses as L
from slimface.train.distributed import StepRandom
from slimface.nn.modes import unwrap


# -------------------------------------------------------------------- taps
def resolve_module(model: nn.Module, name: str, what: str = "generator") -> nn.Module:
    """The submodule called ``name`` of the (unwrapped) model; a bad name is a one-line ConfigError."""
    inner = unwrap(model)
    try:
        return inner.get_submodule(name)
    except AttributeError:
        tops = ", ".join(n for n, _ in inner.named_children())
        raise ConfigError(
            f"distill layer {name!r} is not a module of the {what} (top-level modules: {tops}); "
            f"fix StudentSpec.distill"
        ) from None


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, Tensor):
                return v
    raise TypeError(f"cannot tap a module output of type {type(out).__name__}")


class FeatureTaps:
    """Forward hooks on named modules that keep their latest outputs.

    Hooks sit on the inner module, so they keep firing when the Trainer wraps the model in DDP.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], what: str = "generator") -> None:
        self.names = list(names)
        self.outputs: dict[str, Tensor] = {}
        self._handles = []
        for name in self.names:
            module = resolve_module(model, name, what)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            self.outputs[name] = _first_tensor(out)

        return fn

    def clear(self) -> None:
        self.outputs = {}

    def collect(self) -> dict[str, Tensor]:
        """The outputs of the last forward, in ``names`` order; every tap must have fired."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(f"distill layer {missing[0]!r} did not run in the last forward pass")
        out = {n: self.outputs[n] for n in self.names}
        self.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def output_layout(model: nn.Module, name: str) -> Chans:
    """Channel layout of module ``name``'s output: its last super layer's ``out_chans``.

    True for the project's blocks (conv/BN last, residual additions keep the trunk layout); a module
    that ends in a concatenation must be tapped at a submodule instead.
    """
    module = resolve_module(model, name)
    layers = [layer for _, layer in super_layers(module)]
    if not layers:
        raise ConfigError(f"distill layer {name!r} contains no conv/BN layer; tap a block with convolutions")
    return layers[-1].out_chans


# -------------------------------------------------------------------- mappers
def _key(name: str) -> str:
    return name.replace(".", "__")


class Mapper(nn.Module):
    """One learnable 1x1 conv per tapped layer, student channels -> teacher channels.

    ``forward`` is the only entry point (so DDP sees the computation when the Trainer wraps it).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.convs = nn.ModuleDict()
        for name in self.names:
            s_layout = output_layout(student, name)
            t_total = output_layout(teacher, name).total
            conv = SuperConv2d(s_layout, ch(t_total), 1, bias=True)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)
            self.convs[_key(name)] = conv

    def conv(self, name: str) -> SuperConv2d:
        return self.convs[_key(name)]  # type: ignore[return-value]

    def set_widths(self, widths: Mapping[str, int] | None) -> None:
        """Slice every mapping's input to the student's active channels."""
        for conv in self.convs.values():
            assert isinstance(conv, SuperMixin)
            conv.set_widths(widths)

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: self.conv(n)(feats[n]) for n in self.names}


def distill_loss(mapped: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """Sum over layers of the MSE between mapped student features and teacher features."""
    total: Tensor | None = None
    for name, s in mapped.items():
        t = teacher[name]
        if s.shape != t.shape:
            raise RuntimeError(f"distill layer {name!r}: mapped student {tuple(s.shape)} != teacher {tuple(t.shape)}")
        term = F.mse_loss(s, t)
        total = term if total is None else total + term
    if total is None:
        raise RuntimeError("no distillation layers")
    return total


# -------------------------------------------------------------------- discriminator plumbing
def disc_logits(out: Any) -> Tensor:
    """A discriminator's realness scores: the tensor itself, the first of a tuple (critic heads with
    auxiliary outputs), or the ``"score"``/``"logits"``/``"critic"`` entry of a dict."""
    if isinstance(out, dict):
        for k in ("score", "logits", "critic", "adv"):
            if k in out:
                return out[k]
    return _first_tensor(out)


def is_conditional(disc: nn.Module, image_channels: int) -> bool:
    """Whether D judges (profile, frontal) pairs: its boolean ``conditional`` attribute, else whether
    its first conv takes 2x the image channels. A conditional D is called ``disc(profile, image)``."""
    inner = unwrap(disc)
    flag = getattr(inner, "conditional", None)
    if isinstance(flag, bool):
        return flag
    for m in inner.modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == 2 * image_channels:
                return True
            if m.in_channels == image_channels:
                return False
            break
    raise ConfigError(
        f"cannot tell whether the discriminator is conditional: its first conv does not take "
        f"{image_channels} or {2 * image_channels} channels; set a boolean `conditional` attribute on it"
    )


def _loss_embed(recognizer: Any) -> Any:
    """What the identity term compares: ``loss_embed`` of a slimface recognizer (an ensemble's
    members side by side), ``embed`` of any other module that has one."""
    return getattr(recognizer, "loss_embed", None) or recognizer.embed


class DistillLoss:
    """The full student objective of reference.md §1, parts returned for logging."""

    def __init__(self, config: DistillConfig | None = None, conditional: bool = True,
                 recognizer: nn.Module | None = None, family_gan_mode: GanMode = "bce") -> None:
        """``family_gan_mode``: the loss the teacher's discriminator was trained with
        (``Family.gan_mode``), used unless ``config.gan_mode`` says otherwise."""
        self.cfg = config or DistillConfig()
        self.cfg.validate()
        self.gan_mode: GanMode = self.cfg.gan_mode or family_gan_mode
        self.conditional = conditional
        self.recognizer = recognizer
        if self.cfg.identity_weight > 0 and recognizer is None:
            raise ConfigError("distill.identity_weight > 0 needs a recognizer; pass --recognizer or set identity_weight: 0")

    def score(self, disc: nn.Module, profile: Tensor, image: Tensor) -> Tensor:
        """D's realness scores for ``image``: ``disc(profile, image)`` for a conditional D (the
        project's convention; it concatenates the pair itself), ``disc(image)`` otherwise."""
        out = disc(profile, image) if self.conditional else disc(image)
        return disc_logits(out)

    def generator_loss(
        self, disc: nn.Module, profile: Tensor, fake: Tensor, target: Tensor,
        mapped: Mapping[str, Tensor] | None, teacher_feats: Mapping[str, Tensor] | None,
        teacher_out: Tensor | None = None, rnd: StepRandom | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """L = λ_gan·L_G + λ_recon·||y - G(x)||_1 + λ_out·||G'(x) - G(x)||_1 + λ_distill·Σ MSE + λ_id·L_id.
        ``rnd``: draws the identity term's views (``identity_jitter``; a fresh stream if None)."""
        c = self.cfg
        parts: dict[str, Tensor] = {}
        parts["recon"] = (fake - target).abs().mean()
        if c.teacher_weight > 0 and teacher_out is not None:
            parts["teacher"] = (fake - teacher_out).abs().mean()
        if c.gan_weight > 0:
            logits = self.score(disc, profile, fake)
            parts["gan_g"] = L.gan_loss_g(logits) if self.gan_mode == "bce" else L.wgan_loss_g(logits)
        if c.distill_weight > 0 and mapped:
            assert teacher_feats is not None
            parts["distill"] = distill_loss(mapped, teacher_feats)
        if c.identity_weight > 0:
            assert self.recognizer is not None
            ref = target if c.identity_target == "truth" else teacher_out
            if ref is None:
                raise ConfigError("student.identity_target: teacher needs the teacher's output; this stage has no teacher")
            if c.identity_jitter:
                rnd = rnd or StepRandom(0, 0, fake.shape[0], fake.device, stream="identity-views")
                shifts = rnd.randint(2 * c.identity_jitter + 1, 2) - c.identity_jitter
                fake, ref = L.jittered((fake, ref), shifts, rnd.randint(2) > 0, c.identity_jitter)
            parts["id"] = L.identity_loss(_loss_embed(self.recognizer), fake, ref, c.identity_lowpass)  # type: ignore[operator]
        weights = {"recon": c.recon_weight, "teacher": c.teacher_weight, "gan_g": c.gan_weight,
                   "distill": c.distill_weight, "id": c.identity_weight}
        total = sum(weights[k] * v for k, v in parts.items())
        assert isinstance(total, Tensor)
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def discriminator_loss(self, disc: nn.Module, profile: Tensor, real: Tensor, fake: Tensor,
                           alpha: Callable[[], Tensor] | None = None) -> Tensor:
        """cGAN D loss on real pairs (x, y) vs generated pairs (x, G(x)); ``fake`` must be detached.
        ``alpha``: draws the gradient penalty's per-row interpolation weights (wgan-gp only), e.g.
        ``StepRandom.rand``, so a DDP run interpolates what one process would."""
        real_s = self.score(disc, profile, real)
        fake_s = self.score(disc, profile, fake)
        if self.gan_mode == "bce":
            return L.gan_loss_d(real_s, fake_s)
        gp = L.gradient_penalty(lambda z: self.score(disc, profile, z), real, fake,
                                alpha() if alpha is not None else None)
        return L.wgan_loss_d(real_s, fake_s) + self.cfg.gp_weight * gp


__all__ = [
    "DistillLoss", "FeatureTaps", "Mapper", "distill_loss", "disc_logits", "is_conditional",
    "output_layout", "resolve_module",
]
