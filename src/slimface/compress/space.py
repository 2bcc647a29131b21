"""The search space of a once-for-all student: one list of allowed widths per prunable width group,
and, on a supernet of ``student.separable: search``, one conv type per convertible conv.

A *config* is a plain ``dict[group, width]`` over the prunable groups (groups outside the space keep
their full width, which is what :func:`slimface.nn.super_layers.set_widths` does for missing keys).
Groups are kept **sorted by name**, so the compact string encoding (``"48_32_40"``) of a config does
not depend on module registration order and stays stable when a model definition is refactored
without renaming groups. The string is what logs, search caches and ``arch.json`` store.

Conv types are extra keys of the same dict, ``"conv:<module name>"`` with choices ``[0, 1]`` (0 the
separable conv, 1 the normal one: the cheaper choice first, as widths go up), after the width groups
in the key order (each part sorted by name), so the string of such a space is its widths, then its
types (``"48_32_40_0_1"``), and a space without type keys encodes exactly as before. Every operation
(sample, mutate, crossover, shrink, enumerate) treats a type key like a group of two choices.

MACs/params of a config are measured (on the supernet with the widths active), not modelled, and
cached per supernet, so search can test feasibility of thousands of candidates cheaply. MACs are
torchprofile's count, computed by :func:`~slimface.nn.profile.count_macs_fast` (the same integer as
``count_macs`` from one eager forward pass); ``reference=True`` runs torchprofile itself.
"""

from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from slimface.errors import ConfigError
from slimface.families.base import Family
from slimface.nn.modes import unwrap
from slimface.nn.profile import count_macs, count_macs_fast, count_params
from slimface.nn.super_layers import (
    NORMAL, SEPARABLE, conv_choices, conv_key, current_conv_choices, is_conv_key, set_conv_choices, set_widths,
    super_layers, width_groups,
)

Config = dict[str, int]


class ConfigSpace:
    """Allowed widths per group; groups in sorted-name order (see the module docstring)."""

    def __init__(self, choices: Mapping[str, Sequence[int]]) -> None:
        if not [g for g in choices if not is_conv_key(g)]:
            raise ConfigError("the student has no prunable width groups; check the family's StudentSpec.prunable")
        self.widths: list[str] = sorted(g for g in choices if not is_conv_key(g))
        self.convs: list[str] = sorted(g for g in choices if is_conv_key(g))
        self.groups: list[str] = self.widths + self.convs  # every key, in encoding order
        self.choices: dict[str, list[int]] = {}
        for g in self.groups:
            vals = sorted({int(v) for v in choices[g]})
            if is_conv_key(g) and (not vals or not set(vals) <= {SEPARABLE, NORMAL}):
                raise ValueError(f"conv type {g!r} needs choices among [{SEPARABLE}, {NORMAL}], got {list(choices[g])}")
            if not is_conv_key(g) and (not vals or vals[0] <= 0):
                raise ValueError(f"group {g!r} needs positive width choices, got {list(choices[g])}")
            self.choices[g] = vals

    @classmethod
    def from_supernet(cls, family: Family, supernet: nn.Module) -> "ConfigSpace":
        """The space a family's StudentSpec allows on this supernet's width groups, in steps of the
        supernet's ``channel_multiple`` when it has one; a ``prunable`` pattern that matches no group
        is a ConfigError (group names follow the module names)."""
        groups = width_groups(unwrap(supernet))
        spec = family.student_spec
        unmatched = spec.unmatched(groups)
        if unmatched:
            raise ConfigError(
                f"the {family.name} StudentSpec pattern {unmatched[0]!r} matches no width group of its supernet "
                f"(groups are named after modules, e.g. {', '.join(sorted(groups)[:4])}); fix StudentSpec.prunable"
            )
        types = {conv_key(name): [SEPARABLE, NORMAL] for name in conv_choices(unwrap(supernet))}
        return cls({**spec.choices(groups, getattr(unwrap(supernet), "channel_multiple", None)), **types})

    # ---------------------------------------------------------------- encoding
    def encode(self, cfg: Mapping[str, int]) -> str:
        """``{"a": 48, "b": 32}`` -> ``"48_32"`` (groups in sorted order)."""
        self.validate(cfg)
        return "_".join(str(int(cfg[g])) for g in self.groups)

    def decode(self, text: str) -> Config:
        """Inverse of :meth:`encode`; a malformed string is a one-line ConfigError."""
        parts = str(text).strip().split("_")
        if len(parts) != len(self.groups):
            types = f" and {len(self.convs)} conv types" if self.convs else ""
            raise ConfigError(
                f"config {text!r} has {len(parts)} values but this supernet has {len(self.widths)} "
                f"prunable groups ({', '.join(self.widths)}){types}; pass a config string from this model's search"
            )
        cfg: Config = {}
        for g, p in zip(self.groups, parts):
            what = "conv type" if is_conv_key(g) else "width"
            try:
                v = int(p)
            except ValueError:
                raise ConfigError(f"config {text!r}: {what} {p!r} for {g!r} is not an integer") from None
            if v not in self.choices[g]:
                raise ConfigError(
                    f"config {text!r}: {what} {v} is not allowed for {g!r} "
                    f"(choices {self.choices[g]})"
                )
            cfg[g] = v
        return cfg

    def validate(self, cfg: Mapping[str, int]) -> None:
        missing = [g for g in self.groups if g not in cfg]
        extra = sorted(set(cfg) - set(self.groups))
        if missing or extra:
            what = f"lacks group {missing[0]!r}" if missing else f"has unknown group {extra[0]!r}"
            raise ConfigError(f"config {dict(cfg)} {what}; a config must set exactly {self.groups}")
        for g in self.groups:
            if int(cfg[g]) not in self.choices[g]:
                raise ConfigError(f"config: width {cfg[g]} not allowed for group {g!r} (choices {self.choices[g]})")

    # ---------------------------------------------------------------- members
    def largest(self) -> Config:
        return {g: self.choices[g][-1] for g in self.groups}

    def smallest(self) -> Config:
        return {g: self.choices[g][0] for g in self.groups}

    def size(self) -> int:
        n = 1
        for g in self.groups:
            n *= len(self.choices[g])
        return n

    def _pick(self, g: str, gen: torch.Generator) -> int:
        i = int(torch.randint(len(self.choices[g]), (1,), generator=gen))
        return self.choices[g][i]

    def sample(self, gen: torch.Generator) -> Config:
        """Uniform choice per group (every rank draws the same with a shared generator)."""
        return {g: self._pick(g, gen) for g in self.groups}

    def mutate(self, cfg: Mapping[str, int], prob: float, gen: torch.Generator) -> Config:
        """Resample each group with probability ``prob`` (evolutionary search)."""
        out = dict(cfg)
        for g in self.groups:
            if float(torch.rand((), generator=gen)) < prob:
                out[g] = self._pick(g, gen)
        return out

    def crossover(self, a: Mapping[str, int], b: Mapping[str, int], gen: torch.Generator) -> Config:
        """Each group's width from ``a`` or ``b`` with equal chance."""
        return {g: (a[g] if float(torch.rand((), generator=gen)) < 0.5 else b[g]) for g in self.groups}

    def shrink(self, cfg: Mapping[str, int], cost: Callable[[Config], float], target: float,
               gen: torch.Generator) -> Config:
        """Step random groups down one choice at a time until ``cost(cfg) <= target`` (or every
        group is at its smallest): a random config moved just under a MACs target, so sampled
        candidates land near a budget instead of being rejected."""
        out = dict(cfg)
        while cost(out) > target:
            shrinkable = [g for g in self.groups if self.choices[g].index(out[g]) > 0]
            if not shrinkable:
                break
            for _ in range(max(1, len(shrinkable) // 8)):  # a few groups per cost evaluation
                g = shrinkable[int(torch.randint(len(shrinkable), (1,), generator=gen))]
                opts = self.choices[g]
                out[g] = opts[max(0, opts.index(out[g]) - 1)]
        return out

    def enumerate(self, limit: int = 100_000) -> Iterator[Config]:
        """Every config (for exhaustive search); refuses spaces larger than ``limit``."""
        if self.size() > limit:
            raise ValueError(f"space has {self.size()} configs, more than the enumeration limit {limit}")
        for combo in itertools.product(*(self.choices[g] for g in self.groups)):
            yield dict(zip(self.groups, combo))

    def to_dict(self) -> dict[str, list[int]]:
        return {g: list(self.choices[g]) for g in self.groups}

    def __repr__(self) -> str:
        types = f", {len(self.convs)} conv types" if self.convs else ""
        return f"ConfigSpace({len(self.widths)} groups{types}, {self.size()} configs)"


# -------------------------------------------------------------------- widths and cost
def current_widths(model: nn.Module) -> dict[str, int] | None:
    """The widths currently active on ``model`` (None: full network)."""
    for _, layer in super_layers(unwrap(model)):
        return dict(layer._widths) if layer._widths else None
    return None


def activate(model: nn.Module, cfg: Mapping[str, int] | None) -> None:
    """Make ``model`` the sub-network ``cfg``: its widths and (choice convs) its conv types."""
    inner = unwrap(model)
    set_widths(inner, dict(cfg) if cfg else None)
    set_conv_choices(inner, cfg)


@contextmanager
def active_config(model: nn.Module, cfg: Mapping[str, int] | None) -> Iterator[nn.Module]:
    """Run ``model`` as the sub-network ``cfg`` inside the block; the previous widths and conv types
    come back after."""
    inner = unwrap(model)
    previous = {**(current_widths(inner) or {}), **current_conv_choices(inner)}
    activate(inner, cfg)
    try:
        yield inner
    finally:
        activate(inner, previous or None)


def _key(cfg: Mapping[str, int] | None) -> str:
    return ",".join(f"{g}={int(v)}" for g, v in sorted((cfg or {}).items()))


_COST_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], int]]" = weakref.WeakKeyDictionary()


def _cost(net: nn.Module, cfg: Mapping[str, int] | None, kind: str) -> int:
    cache = _COST_CACHE.setdefault(net, {})
    key = (kind, _key(cfg))
    if key not in cache:
        with active_config(net, cfg):
            if kind == "macs":
                cache[key] = count_macs_fast(net, net.example_inputs(1))  # type: ignore[operator]
            elif kind == "macs_ref":
                cache[key] = count_macs(net, net.example_inputs(1))  # type: ignore[operator]
            else:
                cache[key] = count_params(net)
    return cache[key]


def macs_of(supernet: nn.Module, cfg: Mapping[str, int] | None, resolution: int | None = None,
            reference: bool = False) -> int:
    """MACs of sub-network ``cfg`` (batch 1) measured on ``supernet``; cached per supernet and config.

    ``resolution``: what the caller expects the supernet to be built for (checked). The count is
    torchprofile's (``count_macs``), computed by the fast eager counter ``count_macs_fast``;
    ``reference=True`` runs torchprofile's trace itself (slow, for checks)."""
    net = unwrap(supernet)
    if resolution is not None and getattr(net, "resolution", resolution) != resolution:
        raise ValueError(f"supernet is built for {net.resolution}px, not {resolution}px")
    return _cost(net, cfg, "macs_ref" if reference else "macs")


def params_of(supernet: nn.Module, cfg: Mapping[str, int] | None) -> int:
    """Parameters of sub-network ``cfg`` (the sliced weights), cached like :func:`macs_of`."""
    return _cost(unwrap(supernet), cfg, "params")


__all__ = ["Config", "ConfigSpace", "activate", "active_config", "current_widths", "macs_of", "params_of"]
