"""A tiny channel algebra that lets one model definition serve as teacher, supernet and sub-network.

A tensor's channel dimension is described as a sequence of *segments*; each segment has a full width
and, optionally, the name of the *width group* it belongs to. Concatenating tensors concatenates
their descriptions (``a + b``). A super layer knows the description of its input, so when a
sub-network activates fewer channels in some groups it can pick exactly the matching input slices
of its weight -- also after concatenations, where "the first c channels" of the whole tensor would
be wrong. Groups are named after the modules that produce them (e.g. ``"decoder.s16"``), so specs,
configs and logs refer to layers by name, never by index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


@dataclass(frozen=True)
class Segment:
    """``width`` channels whose active count is set by group ``group`` (None: fixed).

    ``unit`` > 1 describes a flattened conv output: each channel spans ``unit`` = H*W features.
    """

    width: int
    group: str | None = None
    unit: int = 1

    @property
    def size(self) -> int:
        return self.width * self.unit

    def active(self, widths: Mapping[str, int] | None) -> int:
        """Active number of features (channels x unit)."""
        if widths is None or self.group is None:
            return self.size
        c = int(widths.get(self.group, self.width))
        if not 0 < c <= self.width:
            raise ValueError(f"group {self.group!r}: width {c} outside 1..{self.width}")
        return c * self.unit


@dataclass(frozen=True)
class Chans:
    """The channel layout of a tensor: an ordered tuple of segments."""

    segments: tuple[Segment, ...]

    @property
    def total(self) -> int:
        return sum(s.size for s in self.segments)

    def __add__(self, other: "Chans") -> "Chans":
        return Chans(self.segments + other.segments)

    def groups(self) -> set[str]:
        return {s.group for s in self.segments if s.group is not None}

    def active_total(self, widths: Mapping[str, int] | None) -> int:
        return sum(s.active(widths) for s in self.segments)

    def active_index(self, widths: Mapping[str, int] | None) -> slice | torch.Tensor:
        """Indices of the active channels in the full tensor: a slice when contiguous."""
        parts: list[tuple[int, int]] = []
        offset = 0
        for seg in self.segments:
            parts.append((offset, offset + seg.active(widths)))
            offset += seg.size
        merged: list[tuple[int, int]] = []
        for start, stop in parts:
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], stop)
            else:
                merged.append((start, stop))
        if len(merged) == 1:
            return slice(merged[0][0], merged[0][1])
        return torch.cat([torch.arange(a, b) for a, b in merged])

    def resized(self, widths: Mapping[str, int]) -> "Chans":
        """The layout of the static sub-network with these widths (groups kept)."""
        return Chans(tuple(Segment(s.active(widths) // s.unit, s.group, s.unit) for s in self.segments))

    def repeat_spatial(self, hw: int) -> "Chans":
        """Layout after ``flatten(1)`` of a (C, H, W) tensor with ``hw`` = H*W positions."""
        return Chans(tuple(Segment(s.width, s.group, s.unit * hw) for s in self.segments))

    def __repr__(self) -> str:
        inner = " + ".join(
            f"{s.group or 'fixed'}:{s.width}" + (f"x{s.unit}" if s.unit > 1 else "") for s in self.segments
        )
        return f"Chans({inner})"


def ch(width: int, group: str | None = None) -> Chans:
    """A single-segment layout; ``group=None`` means the width never changes."""
    if width <= 0:
        raise ValueError(f"channel width must be positive, got {width}")
    return Chans((Segment(int(width), group),))


def cat(*layouts: Chans) -> Chans:
    """Layout of ``torch.cat([...], dim=1)`` of tensors with these layouts."""
    out = Chans(())
    for layout in layouts:
        out = out + layout
    return out


def scale(width: int, mult: float, minimum: int = 8, multiple: int = 8) -> int:
    """Scale a channel width by ``mult``, rounded to a multiple (for width-multiplier presets)."""
    if mult == 1.0:
        return width
    return max(minimum, int(round(width * mult / multiple)) * multiple)


def all_groups(layouts: Iterable[Chans]) -> set[str]:
    out: set[str] = set()
    for layout in layouts:
        out |= layout.groups()
    return out
