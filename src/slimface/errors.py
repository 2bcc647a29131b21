"""User-facing errors: one line that says what is wrong and what to do.

Anything raised as :class:`SlimfaceError` is printed by the CLI as ``error: <message>``
and exits with code 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations


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
