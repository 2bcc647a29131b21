"""User-facing errors: one line that says what is wrong and what to do.

Anything raised as :class:`SlimfaceError` is printed by the CLI as ``error: <message>``
and exits with code 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class SlimfaceError(Exception):
    """A problem with the user's input (data, config, checkpoint, budget...)."""

    exit_code = 2


class DataError(SlimfaceError):
    """A dataset, image or landmark file that cannot be used."""


class ConfigError(SlimfaceError):
    """A config value or key that is not valid."""


class CheckpointError(SlimfaceError):
    """A checkpoint or exported model that cannot be loaded."""


class Int8RefusedError(CheckpointError):
    """An int8 model whose outputs moved too far from fp32 on this CPU (e.g. saturating u8s8 convs)."""


def run_or_exit(fn: Callable[[], T]) -> T:
    """``fn()`` for a script outside the CLI (``benchmarks/``): a SlimfaceError becomes the CLI's one
    line, ``error: <message>``, as the exit message (exit status 1), never a traceback."""
    try:
        return fn()
    except SlimfaceError as e:
        sys.exit(f"error: {e}")
