"""Export a generator to ONNX (and TorchScript) with the metadata the runtime needs.

Exporter choice (for the pinned torch 2.13.0): ``torch.onnx.export`` now defaults to
``dynamo=True``, the torch.export-based exporter, which needs the ``onnxscript`` package (not a
slimface dependency). The TorchScript-based exporter is still available with ``dynamo=False`` (it
emits a DeprecationWarning) and exports conv / deconv / BatchNorm / ``grid_sample`` (ONNX GridSample,
opset >= 16) / concat generators with landmark inputs exactly (to float rounding; the deploy tests
compare every family's export with PyTorch) and with a dynamic batch axis. ``exporter="auto"``
therefore uses the TorchScript exporter when it exists and falls back to dynamo only if it has been
removed.

Graph interface: inputs ``image`` (B,C,H,W float32 in [-1,1]) and ``landmarks`` (B,5,2 float32
pixel coords), output ``frontal``. A generator that ignores its landmarks (CR-GAN) gets an ONNX
graph without the ``landmarks`` input; the runtime feeds only the inputs a graph declares.
``metadata_props`` hold ``slimface.resolution``, ``slimface.channels`` and ``slimface.format``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimface.fileio import atomic_write

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "export_onnx",
    "export_torchscript",
    "set_onnx_metadata",
]

INPUT_NAMES = ("image", "landmarks")
OUTPUT_NAME = "frontal"
META_PREFIX = "slimface."
TORCHSCRIPT_META_FILE = "slimface.json"


def _model_meta(example_inputs: tuple, extra: dict[str, Any] | None) -> dict[str, str]:
    image = example_inputs[0]
    meta = {
        "format": "frontalizer",
        "channels": str(int(image.shape[1])),
        "resolution": str(int(image.shape[-1])),
        "height": str(int(image.shape[-2])),
        "width": str(int(image.shape[-1])),
        "value_range": "[-1,1]",
    }
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def set_onnx_metadata(model_proto: Any, meta: dict[str, str]) -> None:
    """Put ``slimface.<key>`` entries into an ``onnx.ModelProto``'s metadata_props (replacing old)."""
    keep = [p for p in model_proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model_proto.metadata_props.add(key=META_PREFIX + k, value=v)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def export_onnx(
    model: nn.Module,
    example_inputs: tuple,
    path: str | Path,
    opset: int = 17,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model(image, landmarks)`` to ONNX at ``path`` (written atomically); returns the path.

    ``example_inputs`` = ``(image, landmarks)`` (or ``(image,)``), used for tracing and to record the
    resolution/channels in the metadata. ``exporter``: ``"auto"`` | ``"torchscript"`` | ``"dynamo"``
    (see module docstring). The model is put in eval mode (BatchNorm uses running stats, noise off).
    """
    import onnx

    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be auto|torchscript|dynamo, got {exporter!r}")
    path = Path(path)
    model = model.eval()
    dev = _device_of(model)
    inputs = tuple(t.to(dev) for t in example_inputs)
    names = list(INPUT_NAMES[: len(inputs)])
    use_dynamo = exporter == "dynamo"
    if exporter == "auto":
        import inspect

        use_dynamo = "dynamo" not in inspect.signature(torch.onnx.export).parameters
    if use_dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise RuntimeError("the dynamo ONNX exporter needs the 'onnxscript' package") from e
        dyn = None
        if dynamic_batch:
            batch = torch.export.Dim("batch")
            dyn = tuple({0: batch} for _ in inputs)
        prog = torch.onnx.export(
            model, inputs, None, input_names=names, output_names=[OUTPUT_NAME], opset_version=opset,
            dynamo=True, dynamic_shapes=dyn, external_data=False,
        )
        proto = prog.model_proto
    else:
        buf = io.BytesIO()
        dynamic_axes = {n: {0: "batch"} for n in names + [OUTPUT_NAME]} if dynamic_batch else None
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # static crop offsets become strided Slice ops that cannot be constant-folded: harmless
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                model, inputs, buf, input_names=names, output_names=[OUTPUT_NAME],
                opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load_from_string(buf.getvalue())
    set_onnx_metadata(proto, _model_meta(inputs, metadata))
    atomic_write(path, proto.SerializeToString())
    return path


def export_torchscript(
    model: nn.Module, example_inputs: tuple, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Trace ``model`` to a TorchScript ``.pt`` (atomic) with the metadata as the extra file
    ``slimface.json``; the runtime reads resolution/channels from it."""
    path = Path(path)
    model = model.eval()
    dev = _device_of(model)
    inputs = tuple(t.to(dev) for t in example_inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, inputs, check_trace=False)
        buf = io.BytesIO()
        meta = _model_meta(inputs, metadata)
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_META_FILE: json.dumps(meta)})
    atomic_write(path, buf.getvalue())
    return path
