"""Atomic file writes and safe reads: every file slimface produces appears whole or not at all, and
no file it reads can run code.

A temp file next to the target is written, fsynced and renamed onto the target, so an interrupted
or failed write (SIGKILL, a full disk) never leaves a half-written checkpoint, weights file, stage
marker or report, and never damages the previous version. A failed write removes its temp file and
becomes a one-line error. :func:`safe_load` is the project's one ``torch.load`` (``weights_only``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO, Any, Callable

from slimface.errors import CheckpointError

#: temp files start with this, so stale ones (from a killed writer) can be found and removed
TMP_PREFIX = ".tmp-"

Writer = Callable[[IO[bytes]], Any]


def write_error(target: Path, exc: BaseException) -> CheckpointError:
    """One-line error for a failed write (a full disk gets its own hint)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or "No space left" in text:
        return CheckpointError(
            f"could not write {target}: no space left on device; free disk space or use "
            "another --out (files written earlier are intact)"
        )
    reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
    return CheckpointError(
        f"could not write {target}: {reason}; check the output directory (files written earlier are intact)"
    )


def atomic_write(target: str | Path, data: bytes | str | Writer) -> Path:
    """Write ``data`` (bytes, text, or a ``write(fileobj)`` callback) to ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_PREFIX}{target.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        # RuntimeError: torch's zip writer wraps I/O failures ("file write failed").
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
            raise
        raise write_error(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def safe_load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint/exported model with ``weights_only=True``; anything else is CheckpointError.

    The one ``torch.load`` of the project (training checkpoints, official LightCNN files...; ``what``
    names the file in messages). A file that needs arbitrary unpickling (custom classes,
    ``__reduce__`` tricks, a plain pickle stream) is refused without executing it; a truncated or
    corrupt file is reported as unreadable.
    """
    import pickle
    import re

    import torch  # here, not at the top: this module is imported by configs that load before torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words every refusal "Weights only load failed": tell code from damage by what it hit
        text = str(exc)
        found = re.search(r"\bGLOBAL ([\w.]+)", text)
        if found or _is_plain_pickle(path):
            needs = f" (it needs {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{what} {path} contains arbitrary Python objects and was not loaded: slimface refuses to "
                f"unpickle code{needs}; re-save it with torch.save(state_dict) from a trusted environment"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = detail.group(1).strip()[:120] if detail else _first_line(exc)
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch checkpoint: corrupt or truncated ({reason}); delete it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch checkpoint: corrupt or truncated ({_first_line(exc)}); "
            "delete it"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{what} {path} holds a {type(obj).__name__}, not a state dict; "
            "pass a slimface checkpoint"
        )
    return obj


def _is_plain_pickle(path: Path) -> bool:
    """A bare pickle stream (``pickle.dump``), not torch.save's zip: only code-free data is allowed."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else type(exc).__name__) or type(exc).__name__


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temp files left by a writer that was killed mid-write."""
    for p in Path(folder).glob(f"{TMP_PREFIX}*"):
        try:
            p.unlink()
        except OSError:
            pass


def key_sidecar(path: str | Path) -> Path:
    """``<path>.key``: names the key a cache file belongs to."""
    path = Path(path)
    return path.with_name(path.name + ".key")


def set_aside_unless_keyed(path: str | Path, key: str) -> Path | None:
    """If ``path`` exists and its sidecar names another key (or none), move it to
    ``<name>.stale-<oldkey>`` (nothing is deleted) and return where it went; else None. The sidecar
    itself is written by :func:`write_key` when the file is (re)written under ``key``."""
    path = Path(path)
    side = key_sidecar(path)
    old = side.read_text().strip() if side.is_file() else ""
    if not path.exists() or old == key:
        return None
    moved = path.with_name(f"{path.name}.stale-{old or 'unkeyed'}")
    n = 1
    while moved.exists():
        n += 1
        moved = path.with_name(f"{path.name}.stale-{old or 'unkeyed'}-{n}")
    os.replace(path, moved)
    return moved


def write_key(path: str | Path, key: str) -> None:
    """Record that ``path`` belongs to ``key`` (its sidecar), unless it already says so."""
    side = key_sidecar(path)
    if not (side.is_file() and side.read_text().strip() == key):
        atomic_write(side, key + "\n")
