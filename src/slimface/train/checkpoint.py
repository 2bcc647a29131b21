"""Atomic, checksummed checkpoints that load with ``torch.load(weights_only=True)`` only.

Why each piece exists:

* **Atomic**: a checkpoint is written to a hidden temp file in the same directory, flushed and
  fsynced, then ``os.replace``-d onto its final name, so a crash (SIGKILL, power loss) leaves either the
  old set of checkpoints or the old set plus one complete new file -- never a half-written
  ``ckpt_*.pt``. Stale temp files from a killed writer are removed by the next save.
* **Checksummed**: ``ckpt_000100.pt`` gets a sidecar ``ckpt_000100.pt.sha256`` (written after the
  checkpoint itself). A mismatching checksum or a file that fails to load (truncated, bit-rot) is
  reported in one log line and :func:`load_latest` falls back to the previous checkpoint. A checkpoint
  without a sidecar (killed between the two writes) is still accepted if it loads: torch's zip format
  carries its own CRCs.
* **Safe to load**: :func:`slimface.fileio.safe_load` uses ``weights_only=True`` exclusively, so a file that would need
  arbitrary unpickling (and could therefore run code) is refused with :class:`CheckpointError`. States
  therefore hold only tensors and plain Python types (see :func:`capture_rng`).
* **Bounded**: only the newest ``keep_last`` checkpoints are kept.

Plain weights (a stage's output networks) are safetensors files: :func:`save_weights` writes one
atomically on rank 0, :func:`load_weights` refuses a file of another architecture in one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimface.errors import CheckpointError
from slimface.fileio import atomic_write, remove_stale_temps, safe_load, write_error
from slimface.nn.modes import unwrap
from slimface.train import distributed as D

log = logging.getLogger("slimface.train")

CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
SUFFIX_SHA = ".sha256"


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint taken after ``step`` completed steps."""
    return f"ckpt_{step:06d}.pt"


def list_checkpoints(path_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_*.pt`` in ``path_dir``, oldest first."""
    path_dir = Path(path_dir)
    if not path_dir.is_dir():
        return []
    found = []
    for p in path_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks so big checkpoints do not need to fit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path) -> bool | None:
    """True/False if the sidecar checksum matches/does not; None if there is no sidecar."""
    side = Path(str(path) + SUFFIX_SHA)
    if not side.is_file():
        return None
    try:
        expected = side.read_text().split()[0].strip().lower()
    except (OSError, IndexError):
        return False
    return file_sha256(path) == expected


def _fsync_dir(path_dir: Path) -> None:
    """Make a rename durable (best effort: not every platform/filesystem allows opening a dir)."""
    try:
        fd = os.open(path_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Atomically write ``state`` as ``path_dir/ckpt_{step:06d}.pt`` (+ ``.sha256``); keep the last K.

    Raises CheckpointError (one line) if the disk is full or unwritable; the temp file is removed and
    earlier checkpoints are left untouched.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    path_dir = Path(path_dir)
    try:
        path_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path_dir / checkpoint_name(step), exc) from exc
    remove_stale_temps(path_dir)
    target = path_dir / checkpoint_name(step)
    atomic_write(target, lambda f: torch.save(state, f))
    digest = file_sha256(target)
    sidecar = Path(str(target) + SUFFIX_SHA)
    atomic_write(sidecar, lambda f: f.write(f"{digest}  {target.name}\n".encode()))
    _fsync_dir(path_dir)
    for _, old in list_checkpoints(path_dir)[:-keep_last]:
        for p in (old, Path(str(old) + SUFFIX_SHA)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
    return target


def load_checked(path: str | Path) -> dict[str, Any]:
    """:func:`~slimface.fileio.safe_load` after verifying the sidecar checksum (if there is one)."""
    ok = verify_checksum(path)
    if ok is False:
        raise CheckpointError(f"checkpoint {path} does not match its .sha256 checksum; delete it")
    return safe_load(path)


def load_latest(path_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """Newest loadable checkpoint in ``path_dir`` as ``(state, path)``; None if there is none.

    A newest checkpoint that is corrupt (checksum mismatch, truncated) is reported in one log line and
    the previous one is tried. If checkpoints exist but none loads, raise CheckpointError rather than
    silently starting over.
    """
    ckpts = list_checkpoints(path_dir)
    if not ckpts:
        return None
    for _, path in reversed(ckpts):
        try:
            return load_checked(path), path
        except CheckpointError as exc:
            log.warning("skipping unusable checkpoint: %s; trying the previous one", exc)
    raise CheckpointError(
        f"no usable checkpoint in {path_dir}: all {len(ckpts)} are corrupt; delete them or use "
        "another --out"
    )


def check_fingerprint(state: dict[str, Any], expected: str, path: str | Path) -> None:
    """Refuse a checkpoint written for another architecture/resolution."""
    got = state.get("fingerprint")
    if got != expected:
        raise CheckpointError(
            f"checkpoint {path} was written for {got}, this run is {expected}; "
            "use another --out or delete it"
        )


def set_aside(path_dir: str | Path, key: str) -> Path:
    """Move a checkpoint folder made under another stage key to ``<name>.stale-<key>`` beside it
    (``-2``, ``-3``... if taken): nothing is deleted, and resume no longer sees it."""
    path_dir = Path(path_dir)
    safe = re.sub(r"[^\w.-]", "_", key)[:40] or "unkeyed"
    dest = path_dir.with_name(f"{path_dir.name}.stale-{safe}")
    n = 1
    while dest.exists():
        n += 1
        dest = path_dir.with_name(f"{path_dir.name}.stale-{safe}-{n}")
    try:
        os.replace(path_dir, dest)
    except OSError as exc:
        raise write_error(dest, exc) from exc
    _fsync_dir(path_dir.parent)
    return dest


# --------------------------------------------------------------------------- RNG state
def capture_rng() -> dict[str, Any]:
    """All global RNG states as tensors/plain types (so they survive ``weights_only`` loading)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (sampling, evaluation) without disturbing the training RNG streams."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)


# ----------------------------------------------------------------------------- plain weights
def save_weights(module: nn.Module, path: Path) -> Path:
    """state_dict as safetensors, written atomically (temp file + rename); rank 0 only under DDP."""
    from safetensors.torch import save as safetensors_bytes

    if not D.is_main():
        return path
    module = unwrap(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    # a failed write (disk full) removes the temp file and is a one-line CheckpointError
    atomic_write(path, lambda f: f.write(safetensors_bytes(state)))
    return path


def load_weights(module: nn.Module, path: Path, what: str) -> nn.Module:
    """Load safetensors weights; a file of another architecture is a one-line CheckpointError."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{what} weights {path} do not exist; run the stage that writes them")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any decode failure means a broken file
        raise CheckpointError(f"{what} weights {path} are not a readable safetensors file ({exc})") from exc
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{what} weights {path} lack {key!r}: they belong to another architecture")
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"{what} weights {path}: {key!r} has shape {tuple(state[key].shape)}, this model needs "
                f"{tuple(value.shape)} (another architecture, width or resolution)"
            )
    module.load_state_dict({k: state[k] for k in own})
    return module


__all__ = [
    "save_weights",
    "load_weights",
    "checkpoint_name",
    "list_checkpoints",
    "file_sha256",
    "verify_checksum",
    "save_checkpoint",
    "load_checked",
    "load_latest",
    "check_fingerprint",
    "set_aside",
    "capture_rng",
    "restore_rng",
    "preserve_rng",
]
