"""Building blocks shared by every generator and discriminator (teachers and students alike).

All convolutions are super layers, so the same block serves a teacher (full widths), a once-for-all
student (``set_widths``) and an exported sub-network (built with the chosen widths). ``separable=True``
swaps the block's k x k convs for depthwise-separable ones: the paper's cheap design for layers that
are insensitive to it (residual blocks); up-sampling stays normal convs. Which of those *convertible*
convs a student really splits is a per-conv choice (:func:`set_conv_types`, ``student.separable``),
fixed before training or searched (:func:`make_conv_choices`, ``student.separable: search``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Mapping

from torch import Tensor, nn

from slimface.config import check_kernel_cap
from slimface.nn.channels import Chans, ch, scale
from slimface.nn.super_layers import (
    ConvChoice, SeparableConv2d, SuperBatchNorm2d, SuperConv2d, SuperConvTranspose2d, conv_choices,
)

Act = Literal["lrelu", "relu", "none"]
#: the conv-type value (``Generator.separable``, ``student.separable``) of a supernet whose convertible
#: convs are searched (:func:`make_conv_choices`)
SEARCH = "search"


def activation(kind: Act) -> nn.Module:
    if kind == "lrelu":
        return nn.LeakyReLU(0.2)
    if kind == "relu":
        return nn.ReLU()
    return nn.Identity()


class Widths:
    """Channel widths for one model instance.

    ``Widths(mult)(group, full)`` gives the layout of a layer whose official width is ``full``: scaled
    by the preset's width multiplier, or overridden by a sub-network config ``sub`` (group -> width)
    when building the static student that export materialises. ``fixed`` layouts (image channels,
    identity features) ignore both.
    """

    def __init__(self, mult: float = 1.0, sub: Mapping[str, int] | None = None) -> None:
        if not 0 < mult <= 4:
            raise ValueError(f"width multiplier must be in (0, 4], got {mult}")
        self.mult = mult
        self.sub = dict(sub or {})

    def __call__(self, group: str, full: int) -> Chans:
        width = self.sub.get(group, scale(full, self.mult))
        return ch(width, group)

    @staticmethod
    def fixed(width: int) -> Chans:
        return ch(width)


def conv(
    in_c: Chans, out_c: Chans, k: int, stride: int = 1, separable: bool = False, bias: bool = True
) -> nn.Module:
    """A k x k conv, depthwise-separable when asked (1 x 1 convs are never split)."""
    if separable and k > 1:
        return SeparableConv2d(in_c, out_c, k, stride, bias=bias)
    return SuperConv2d(in_c, out_c, k, stride, bias=bias)


class ConvBlock(nn.Sequential):
    """conv -> (batch norm) -> activation."""

    def __init__(
        self, in_c: Chans, out_c: Chans, k: int = 3, stride: int = 1, norm: bool = True,
        act: Act = "lrelu", separable: bool = False,
    ) -> None:
        layers: list[nn.Module] = [conv(in_c, out_c, k, stride, separable, bias=not norm)]
        if norm:
            layers.append(SuperBatchNorm2d(out_c))
        layers.append(activation(act))
        super().__init__(*layers)


def up2_padding(k: int) -> tuple[int, int]:
    """(padding, output_padding) of a stride-2 transposed conv with kernel ``k`` that exactly doubles
    the size."""
    return ((k - 2) // 2, 0) if k % 2 == 0 else (k // 2, 1)


class UpBlock(nn.Sequential):
    """Transposed conv (x2) -> batch norm -> activation; kept as normal convs (sensitive layers)."""

    def __init__(self, in_c: Chans, out_c: Chans, k: int = 4, act: Act = "lrelu") -> None:
        pad, out_pad = up2_padding(k)
        super().__init__(
            SuperConvTranspose2d(in_c, out_c, k, stride=2, padding=pad, output_padding=out_pad, bias=False),
            SuperBatchNorm2d(out_c),
            activation(act),
        )


class ResBlock(nn.Module):
    """conv-BN-act-conv-BN + input, then act (TP-GAN's residual block).

    The trunk layout is kept (residual addition couples input and output widths); only the inner
    width ``mid`` is free, which is what makes the block prunable.
    """

    def __init__(
        self, trunk: Chans, mid: Chans, k: int = 3, act: Act = "lrelu", separable: bool = False,
        post_act: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv(trunk, mid, k, separable=separable, bias=False)
        self.bn1 = SuperBatchNorm2d(mid)
        self.act1 = activation(act)
        self.conv2 = conv(mid, trunk, k, separable=separable, bias=False)
        self.bn2 = SuperBatchNorm2d(trunk)
        self.act2 = activation(act) if post_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(x + y)


def convertible_convs(model: nn.Module) -> list[str]:
    """Module names of ``model``'s depthwise-separable convs and choice convs (:class:`ConvChoice`,
    whose own branches are not listed), in module order. On a generator built with
    ``separable=True`` these are the family's *convertible* convs: the design space of
    :func:`set_conv_types` and :func:`make_conv_choices`."""
    choices = tuple(f"{n}." for n in conv_choices(model))
    return [name for name, m in model.named_modules()
            if isinstance(m, ConvChoice) or (isinstance(m, SeparableConv2d) and not name.startswith(choices))]


def normal_conv(sep: SeparableConv2d) -> SuperConv2d:
    """The normal k x k conv that ``sep`` stands for: same layouts, kernel, stride, padding and bias,
    i.e. exactly the module (and state-dict keys) a teacher has at that name."""
    dw, pw = sep.depthwise, sep.pointwise
    out = SuperConv2d(dw.in_chans, pw.out_chans, dw.kernel_size[0], dw.stride[0], bias=pw.bias is not None)
    out.padding = dw.padding  # TP-GAN's even-kernel blocks pad by hand and zero it
    return out.to(device=dw.weight.device, dtype=dw.weight.dtype)


def set_conv_types(model: nn.Module, separable: Iterable[str]) -> bool | list[str]:
    """Keep depthwise-separable only the convertible convs named in ``separable``; every other one
    becomes the normal conv it stands for. ``model`` is built with ``separable=True`` (all of them
    split). Returns the canonical conv-type value a generator records in ``arch()``: True (all
    split, nothing changed), False (none) or the sorted names."""
    names = set(separable)
    convertible = convertible_convs(model)
    unknown = sorted(names - set(convertible))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a convertible conv of this model "
                         f"(e.g. {', '.join(convertible[:3])})")
    for name in convertible:
        if name not in names:
            _swap(model, name, normal_conv)
    return canonical_conv_types(names, convertible)


def canonical_conv_types(separable: Iterable[str], convertible: Iterable[str]) -> bool | list[str]:
    """The conv-type value a generator records in ``arch()`` when the convs ``separable`` (a subset of
    ``convertible``) are split: True (all), False (none) or their sorted names."""
    names, every = set(separable), set(convertible)
    if names == every:
        return True
    return sorted(names) if names else False


def _swap(model: nn.Module, name: str, make: Callable[[SeparableConv2d], nn.Module]) -> None:
    """Replace the separable conv at module ``name`` by ``make(it)``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, make(parent.get_submodule(child)))  # type: ignore[arg-type]


def make_conv_choices(model: nn.Module) -> str:
    """Make every convertible conv of ``model`` (built with ``separable=True``) a searchable
    :class:`ConvChoice` of the normal conv it stands for (:func:`normal_conv`) and itself; returns
    ``"search"``, the conv-type value such a supernet records."""
    for name in convertible_convs(model):
        _swap(model, name, lambda sep: ConvChoice(normal_conv(sep), sep))
    return SEARCH


def cap_kernels(model: nn.Module, max_kernel: int) -> list[str]:
    """Shrink every odd k x k conv of ``model`` (normal or depthwise, not transposed) with k >
    ``max_kernel`` to ``max_kernel`` x ``max_kernel``, keeping the centre of its weights and the
    output size ("same" padding, any stride). The large kernels of the teachers' full-resolution
    layers (TP-GAN's 7x7 and 5x5) set most of a narrow student's MACs; a student design with small
    kernels frees that budget for width. Returns the names of the convs it shrank."""
    check_kernel_cap(max_kernel, "max_kernel")
    shrunk = []
    for name, m in model.named_modules():
        if not isinstance(m, SuperConv2d):
            continue
        k = m.kernel_size[0]
        if k <= max_kernel or k % 2 == 0 or m.kernel_size[1] != k or m.padding != (k // 2, k // 2) \
                or m.dilation != (1, 1):
            continue
        lo = (k - max_kernel) // 2
        m.weight = nn.Parameter(m.weight.detach()[:, :, lo:lo + max_kernel, lo:lo + max_kernel].clone())
        m.kernel_size = (max_kernel, max_kernel)
        m.padding = (max_kernel // 2, max_kernel // 2)
        shrunk.append(name)
    return shrunk


def res_stack(
    w: Widths, trunk: Chans, prefix: str, n: int, mid_full: int, k: int = 3, act: Act = "lrelu",
    separable: bool = False,
) -> nn.Sequential:
    """``n`` residual blocks on ``trunk``; block i's inner width (official ``mid_full``) is the
    prunable group ``{prefix}.{i}.mid``."""
    return nn.Sequential(
        *[ResBlock(trunk, w(f"{prefix}.{i}.mid", mid_full), k, act, separable) for i in range(n)]
    )


__all__ = [
    "Act", "activation", "Widths", "conv", "ConvBlock", "up2_padding", "UpBlock", "ResBlock", "res_stack", "ch",
    "canonical_conv_types", "cap_kernels", "convertible_convs", "normal_conv", "set_conv_types", "make_conv_choices", "SEARCH",
]
