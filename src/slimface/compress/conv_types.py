"""Which convertible convs of a student are depthwise-separable (``student.separable``).

The family's student spec marks the convs it may split (built with ``separable=True``: its
:func:`~slimface.models.blocks.convertible_convs`); the run decides per conv:

* ``all`` -- every one (the spec; what every run before this setting built);
* ``none`` -- none: the student is the teacher's design, pruned in width only ("mobile teacher");
* a list of fnmatch patterns -- separable where a pattern matches the conv's module name
  (``encoder.s64.res.0.conv1``) or the width group the conv produces when its output is that one
  group (``*.mid``: every residual block's first conv). Convs that write a concatenated trunk match by
  module name only; a block that keeps its input's layout produces that group (TP-GAN's
  ``decoder.s16.skip.conv2`` produces ``encoder.s16``, so ``encoder.*`` picks it too). A
  ``!pattern`` takes its matches out again (``["*", "!encoder.s4.*"]``, or the removals alone: every
  conv but those), so a design that keeps a few convs normal is written as short as ``auto`` found
  it. A pattern that matches no convertible conv is a ConfigError (a typo would otherwise silently
  mean "normal");
* ``search`` -- none is fixed: every convertible conv is a :class:`~slimface.nn.super_layers.ConvChoice`
  of both types, a ``conv:<name>`` key of every config, trained by the supernet, priced and picked by
  the search and materialised by export (:func:`slimface.compress.extract.static_conv_types`);
* ``auto`` -- from the sensitivity table of this run (:mod:`slimface.compress.sensitivity`): the
  conversions are ranked by their metric drop per GMAC saved (``-delta / GMACs saved``, ties by
  name) and the top ``ceil(separable_keep x n)`` of the ``n`` convertible convs stay normal. Ranking
  per MAC, not by the drop alone, keeps a cheap layer normal only when it hurts much for what it
  saves, and a fixed share makes the size of the change predictable whatever the metric's scale.

The result is canonical (:func:`slimface.models.blocks.set_conv_types`): True for all, False for
none, else the sorted names, and it is what ``Generator.arch()`` records, so export, profiling and
ONNX rebuild exactly that mix.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from torch import nn

from slimface.errors import ConfigError
from slimface.families.registry import build_generator
from slimface.models.blocks import SEARCH, canonical_conv_types, convertible_convs, set_conv_types
from slimface.models.generator import Generator
from slimface.nn.super_layers import SeparableConv2d

SeparableSetting = Union[str, Sequence[str]]


def produced_group(conv: nn.Module) -> str | None:
    """The width group a (separable or normal) super conv produces when its whole output is that one
    group; None for a concatenated or fixed output layout."""
    layer = conv.pointwise if isinstance(conv, SeparableConv2d) else conv
    groups = {seg.group for seg in layer.out_chans.segments}  # type: ignore[union-attr]
    return groups.pop() if len(groups) == 1 else None


def matching_convs(model: nn.Module, patterns: Sequence[str], family: str = "") -> list[str]:
    """The convertible convs of ``model`` (built all-separable) that the patterns pick, in order: a
    pattern adds the convs it matches (module name, or the one width group it produces), a ``!pattern``
    removes them (a list of removals only starts from every conv). A pattern matching none is a
    one-line ConfigError."""
    modules = dict(model.named_modules())
    names = convertible_convs(model)
    keys = {n: [n] + [g for g in (produced_group(modules[n]),) if g] for n in names}
    chosen: set[str] = set(names) if all(p.startswith("!") for p in patterns) else set()
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        hits = {n for n, ks in keys.items() if any(fnmatch.fnmatchcase(k, glob) for k in ks)}
        if not hits:
            raise ConfigError(
                f"student.separable pattern {pattern!r} matches no convertible conv of the {family or 'student'} "
                f"model (module names like {', '.join(names[:3])}); fix the pattern")
        chosen = chosen - hits if negate else chosen | hits
    return [n for n in names if n in chosen]


def auto_normal(rows: Sequence[Mapping[str, Any]], convertible: Sequence[str], keep: float) -> list[str]:
    """The convs ``auto`` keeps normal: the ``ceil(keep x n)`` conversions of the sensitivity table
    with the largest metric drop per GMAC saved (a conv the table lacks is ranked last)."""
    cost: dict[str, float] = {}
    for r in rows:
        if r.get("change") == "separable":
            saved = float(r["macs_saved"])
            drop = -float(r["delta"])
            cost[str(r["name"])] = drop / (saved / 1e9) if saved > 0 else (math.inf if drop > 0 else -math.inf)
    n_keep = math.ceil(keep * len(convertible) - 1e-9)
    ranked = sorted(convertible, key=lambda n: (-cost.get(n, -math.inf), n))
    return ranked[:n_keep]


def read_table(path: Path, family: str) -> dict[str, Any]:
    """A sensitivity table (``sensitivity.json``); missing or unreadable is a one-line ConfigError."""
    try:
        table = json.loads(Path(path).read_text())
        table["rows"]  # noqa: B018 - the part auto reads
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"student.separable auto needs the {family} sensitivity table {path}; run "
                          f"`slimface sensitivity` or the sensitivity.{family} stage first") from None
    return table


def select_separable(model: nn.Module, setting: SeparableSetting, family: str = "",
                     table: Mapping[str, Any] | None = None, keep: float = 0.25) -> bool | list[str]:
    """The canonical conv-type value (True, False or sorted names) of ``setting`` on ``model``, a
    generator built all-separable; ``auto`` reads ``table`` (:func:`read_table`) with ``keep``."""
    if setting == "all":
        return True
    if setting == "none":
        return False
    if setting == SEARCH:
        raise ValueError("student.separable search fixes no conv type; build the supernet with build_supernet")
    convertible = convertible_convs(model)
    if setting == "auto":
        if table is None:
            raise ConfigError(f"student.separable auto needs the {family} sensitivity table; run the sensitivity stage")
        normal = set(auto_normal(table["rows"], convertible, keep))
        names = [n for n in convertible if n not in normal]
    elif isinstance(setting, str):
        raise ConfigError(f"student.separable {setting!r}: use all, none, auto, search or a list of fnmatch patterns")
    else:
        names = matching_convs(model, list(setting), family)
    return canonical_conv_types(names, convertible)


def build_supernet(family: str, resolution: int, channels: int, width_mult: float,
                   setting: SeparableSetting = "all", table: Mapping[str, Any] | None = None,
                   keep: float = 0.25, max_kernel: int | None = None,
                   channel_multiple: int | None = None) -> Generator:
    """The student supernet of ``family`` with the conv types ``setting`` picks (built all-separable
    once, then the convs left normal are swapped; ``all`` is exactly the family's student;
    ``search`` makes every convertible conv a choice of both types), its kernels capped at
    ``max_kernel`` (None: the family's) and its width choices in steps of ``channel_multiple``."""
    if setting in ("none", SEARCH):
        return build_generator(family, resolution, channels, width_mult, separable=SEARCH if setting == SEARCH else False,
                               max_kernel=max_kernel, channel_multiple=channel_multiple)
    net = build_generator(family, resolution, channels, width_mult, separable=True, channel_multiple=channel_multiple)
    chosen = select_separable(net, setting, family, table, keep)
    if chosen is not True:
        net.separable = set_conv_types(net, chosen or [])
    net.cap_kernels(max_kernel)
    return net


__all__ = ["SeparableSetting", "auto_normal", "build_supernet", "matching_convs", "read_table", "produced_group", "select_separable"]
