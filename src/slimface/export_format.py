"""The export directory: a static student generator on disk, and how it is read back.

Written by the export stage (:func:`save_export`, after :func:`slimface.compress.extract.extract_subnet`
materialised the chosen sub-network), read by evaluation and the deploy runtimes (:func:`load_export`),
which need nothing from compression: ``arch.json`` names the family and the registry rebuilds it.
An export directory holds
* ``model.safetensors`` -- the static network's weights (only the kept channels);
* ``model.pt2`` -- a ``torch.export`` program (eval mode) that runs with plain torch, no slimface:
  ``torch.export.load("model.pt2").module()(x, landmarks)``; if a model cannot be captured by
  ``torch.export`` a traced TorchScript ``model.ts`` is written instead (``arch.json`` says which);
* ``arch.json`` -- ``Generator.arch()`` (rebuilds the network), the config string, MACs, params and
  the weights' SHA-256, written last: a directory whose arch.json exists is complete.
Every file is written atomically (:func:`slimface.fileio.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch


from slimface.errors import CheckpointError
from slimface.fileio import atomic_write
from slimface.families import generator_from_arch
from slimface.models.generator import Generator
from slimface.nn.modes import module_mode, unwrap
from slimface.nn.profile import count_macs, count_params

FORMAT = "slimface-export"
VERSION = 1


def config_string(generator: Generator) -> str:
    """The config string of a static student (its ``sub`` widths in sorted group order)."""
    return "_".join(str(int(generator.sub[g])) for g in sorted(generator.sub))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_program(generator: Generator, out_dir: Path) -> tuple[str, str]:
    """torch.export program with a dynamic batch dimension (fallback: traced TorchScript) of the
    eval-mode generator."""
    inputs = generator.example_inputs(2)
    try:
        batch = torch.export.Dim.AUTO
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(generator, inputs, dynamic_shapes=({0: batch}, {0: batch}))
        atomic_write(out_dir / "model.pt2", lambda f: torch.export.save(program, f))
        return "model.pt2", "torch.export"
    except Exception:  # noqa: BLE001 - models torch.export cannot capture fall back to tracing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(generator, inputs, check_trace=False)
        atomic_write(out_dir / "model.ts", lambda f: torch.jit.save(traced, f))
        return "model.ts", "torchscript"


def save_export(generator: Generator, out_dir: str | Path, config: str | None = None,
                macs: int | None = None, params: int | None = None, program: bool = True) -> Path:
    """Write weights, program (unless ``program=False``: capturing takes seconds) and arch.json into
    ``out_dir``; returns the arch.json path."""
    from safetensors.torch import save as safetensors_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = unwrap(generator)
    assert isinstance(gen, Generator)
    with module_mode(gen):
        macs = int(macs if macs is not None else count_macs(gen, gen.example_inputs(1)))
        params = int(params if params is not None else count_params(gen))
        state = {k: v.detach().cpu().contiguous().clone() for k, v in gen.state_dict().items()}
        atomic_write(out / "model.safetensors", safetensors_bytes(state))
        prog, kind = _write_program(gen, out) if program else (None, None)
    arch: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "arch": gen.arch(),
        "config": config if config is not None else config_string(gen),
        "macs": macs, "params": params,
        "weights": "model.safetensors", "weights_sha256": _sha256(out / "model.safetensors"),
        "program": prog, "program_kind": kind,
    }
    return atomic_write(out / "arch.json", json.dumps(arch, indent=2, sort_keys=True) + "\n")


def _export_dir(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.name in ("arch.json", "model.safetensors"):
        return path.parent
    raise CheckpointError(f"{path} is not an export; pass the export directory (with arch.json and model.safetensors)")


def load_export(path: str | Path, resolution: int | None = None, family: str | None = None) -> Generator:
    """Rebuild the exported generator (eval mode); mismatched files are a one-line CheckpointError.

    ``resolution``/``family``: what the caller expects; an export of something else is refused.
    """
    from safetensors import SafetensorError, safe_open

    d = _export_dir(Path(path))
    arch_path, weights = d / "arch.json", d / "model.safetensors"
    for p in (arch_path, weights):
        if not p.is_file():
            raise CheckpointError(f"{p} is missing; re-run export into {d}")
    try:
        meta = json.loads(arch_path.read_text())
        arch = meta["arch"]
        if meta.get("format") != FORMAT:
            raise KeyError("format")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{arch_path} is not a slimface export description; re-run export") from None
    desc = f"{arch.get('family')}@{arch.get('resolution')}px"
    if resolution is not None and arch.get("resolution") != resolution:
        raise CheckpointError(f"{d} holds a {desc} model but {resolution}px was asked; export at {resolution}px or change the resolution")
    if family is not None and arch.get("family") != family:
        raise CheckpointError(f"{d} holds a {desc} model but {family!r} was asked; pass an export of {family}")
    sha = meta.get("weights_sha256")
    if sha and _sha256(weights) != sha:
        raise CheckpointError(f"{weights} does not match {arch_path} (checksum differs); re-export into a clean directory")
    gen = generator_from_arch(arch)
    target = gen.state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(target):
                odd = sorted(keys ^ set(target))[0]
                raise CheckpointError(f"{weights} is not a {desc} export (tensor {odd!r} does not fit); use the matching arch.json")
            tensors = {k: f.get_tensor(k) for k in keys}
    except SafetensorError as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc}); re-export") from None
    for k, v in tensors.items():
        if v.shape != target[k].shape:
            raise CheckpointError(
                f"{weights} is not a {desc} export: {k} has shape {tuple(v.shape)}, expected "
                f"{tuple(target[k].shape)}; use the matching arch.json"
            )
    gen.load_state_dict(tensors, strict=True)
    return gen.eval()


__all__ = ["FORMAT", "VERSION", "save_export", "load_export", "config_string"]
