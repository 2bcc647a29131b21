"""The one registry of model families: the config validates against it, every stage builds from it.

The built-in families (``tpgan``, ``pim``, ``crgan``) are imported here; another family registers
itself with :func:`register_family` before a run config that names it is loaded (docs/DESIGN.md,
"Adding a teacher"). Family packages never import this module, so the registry depends on them and
not the other way round. Like the family packages' ``__init__``, it imports no torch: loading a run
config (which validates against it) stays fast, and models are imported when one is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from slimface.errors import ConfigError
from slimface.families import crgan, pim, tpgan
from slimface.families.base import Family

if TYPE_CHECKING:
    from slimface.models.generator import Generator

_FAMILIES: dict[str, Family] = {f.name: f for f in (tpgan.FAMILY, pim.FAMILY, crgan.FAMILY)}


def register_family(family: Family) -> Family:
    """Add (or replace) ``family`` under ``family.name``; returns it."""
    if not isinstance(family, Family):
        raise TypeError(f"{family!r} does not implement slimface.families.Family (see docs/DESIGN.md)")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_names() -> list[str]:
    """Every registered family, sorted."""
    return sorted(_FAMILIES)


def build_generator(name: str, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                    separable: bool | str | Sequence[str] = False, sub: Mapping[str, int] | None = None,
                    max_kernel: int | None = None, channel_multiple: int | None = None) -> "Generator":
    """Build a generator; ``separable``/``sub`` give the student supernet / a static sub-network.

    ``separable``: True splits every convertible conv (the family's student), False none (the
    teacher), a list of module names splits exactly those: the family builds its student and
    :func:`slimface.models.blocks.set_conv_types` turns the others back into normal convs, so no
    family needs to know about conv-type mixes. ``"search"`` makes every convertible conv a choice
    of both types (:func:`slimface.models.blocks.make_conv_choices`: the supernet of
    ``student.separable: search``). ``max_kernel`` caps every larger odd conv kernel
    (:func:`slimface.models.blocks.cap_kernels`: ``student.max_kernel``); ``channel_multiple`` is a
    supernet's width step (``student.channel_multiple``), which its design space reads."""
    if resolution not in (64, 128):
        raise ConfigError(f"resolution must be 64 or 128, got {resolution}")
    search = separable == "search"
    mixed = not isinstance(separable, bool) and not search
    gen = get_family(name).build_generator(
        resolution=resolution, channels=channels, width_mult=width_mult, separable=bool(separable) or mixed, sub=sub
    )
    if search:
        from slimface.models.blocks import make_conv_choices

        gen.separable = make_conv_choices(gen)  # type: ignore[assignment]
    elif mixed:
        from slimface.models.blocks import set_conv_types

        gen.separable = set_conv_types(gen, list(separable))  # type: ignore[arg-type]
    gen.cap_kernels(max_kernel)
    gen.channel_multiple = channel_multiple
    return gen


def generator_from_arch(arch: Mapping[str, Any]) -> "Generator":
    return build_generator(arch["family"], arch["resolution"], arch["channels"], arch["width_mult"],
                           arch["separable"], arch.get("sub"), arch.get("max_kernel"))


__all__ = ["register_family", "get_family", "family_names", "build_generator", "generator_from_arch"]
