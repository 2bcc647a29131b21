"""Static sub-networks from configs: the supernet's slices as a plain generator, and a config found at
a small preset mapped onto the full-size design space."""

from __future__ import annotations

import statistics
from typing import Mapping, Sequence

from torch import nn

from slimface.compress.space import ConfigSpace, active_config
from slimface.families import Family, build_generator, get_family
from slimface.models.generator import Generator
from slimface.nn.modes import unwrap
from slimface.models.blocks import SEARCH, canonical_conv_types, convertible_convs
from slimface.nn.super_layers import load_subnet_weights, separable_names, width_groups, width_part


def static_conv_types(supernet: nn.Module, cfg: Mapping[str, int]) -> bool | list[str]:
    """The conv types of sub-network ``cfg`` as a static generator records them: the supernet's own
    (all, none or the names of its separable convs), or on a supernet of searched conv types
    (``separable == "search"``) the convs whose ``conv:`` key in ``cfg`` is separable (canonical:
    True for all, False for none, else the sorted names)."""
    inner = unwrap(supernet)
    separable = getattr(inner, "separable", True)
    if separable != SEARCH:
        return separable
    convertible = convertible_convs(inner)
    return canonical_conv_types(separable_names(cfg, convertible), convertible)


def extract_subnet(family: Family | str, supernet: nn.Module, cfg: Mapping[str, int], resolution: int,
                   channels: int = 3, width_mult: float = 1.0) -> Generator:
    """The static student with sub-network ``cfg``'s widths and conv types
    (:func:`static_conv_types`), weights copied from the supernet slices of the chosen convs (BN
    running statistics included: recalibrate the supernet for ``cfg`` first if needed)."""
    name = family if isinstance(family, str) else family.name
    inner = unwrap(supernet)
    static = build_generator(name, resolution, channels, width_mult, separable=static_conv_types(inner, cfg),
                             sub=width_part(cfg), max_kernel=getattr(inner, "max_kernel", None))
    with active_config(inner, cfg):
        load_subnet_weights(inner, static)
    return static.eval()


def student_space(model: str, resolution: int, channels: int, width_mult: float,
                  separable: bool | str | Sequence[str] = True,
                  channel_multiple: int | None = None) -> tuple[Generator, ConfigSpace]:
    """The family's supernet at this size (conv types ``separable``: all by default, ``"search"``
    for searched types) and its student design space (from its declarative spec, in width steps of
    ``channel_multiple`` channels when given)."""
    supernet = build_generator(model, resolution, channels, width_mult, separable=separable,
                               channel_multiple=channel_multiple)
    return supernet, ConfigSpace.from_supernet(get_family(model), supernet)


class SizeMap:
    """Configs of a student design at one size mapped onto the same design at another size.

    Each width group keeps its *fraction* of its full width (rounded to the nearest allowed choice of
    the target), so the mapped student has the same shape; groups that exist only in the target take
    the median fraction of the others. Conv-type keys pass through where the target has the conv (a
    missing one means separable). Built once from the two supernets, it maps many configs cheaply:
    the latency-priced search calls it for every candidate.
    """

    def __init__(self, source: nn.Module, target: nn.Module, target_space: ConfigSpace) -> None:
        self.source_full = width_groups(unwrap(source))
        self.target_full = width_groups(unwrap(target))
        self.choices = target_space.choices
        self.target_groups = list(target_space.groups)

    def __call__(self, cfg: Mapping[str, int]) -> dict[str, int]:
        fractions = {g: c / self.source_full[g] for g, c in width_part(cfg).items() if g in self.source_full}
        default = statistics.median(fractions.values()) if fractions else 0.0
        out: dict[str, int] = {}
        for group in self.target_groups:
            choices = self.choices[group]
            if group in self.target_full:
                target = fractions.get(group, default) * self.target_full[group]
                out[group] = min(choices, key=lambda c: (abs(c - target), c))
            elif group in cfg:  # a conv-type key the target has too
                out[group] = int(cfg[group])
        return out


def scale_config_to_full(model: str, code: str, resolution: int, channels: int, width_mult: float,
                         size: tuple[int, float] = (128, 1.0), channel_multiple: int | None = None) -> str:
    """Map a config found at a small preset (in width steps of ``channel_multiple``, the run's
    ``student.channel_multiple``) onto the full-size (128, width 1.0) design space, or onto the
    design at another ``size`` (resolution, width multiplier) (:class:`SizeMap`). Conv types (a
    config of ``student.separable: search``) are left out: the mapped student takes the run's
    export's ``separable``."""
    small_net, small_space = student_space(model, resolution, channels, width_mult, channel_multiple=channel_multiple)
    if len(str(code).split("_")) != len(small_space.groups):  # widths then conv types: the widths count
        small_net, small_space = student_space(model, resolution, channels, width_mult, SEARCH, channel_multiple)
    cfg = width_part(small_space.decode(code))
    full_net, full_space = student_space(model, int(size[0]), channels, float(size[1]))
    return full_space.encode(SizeMap(small_net, full_net, full_space)(cfg))


__all__ = ["SizeMap", "extract_subnet", "scale_config_to_full", "static_conv_types", "student_space"]
