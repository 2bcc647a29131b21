"""int8 post-training static quantization of an exported ONNX generator (ONNX Runtime).

Why static QDQ: activations get fixed scales from calibration, so ORT fuses
``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``. Weights: signed int8, per output
channel (the first/last convs of generators have very uneven channel ranges); activations: uint8
(ORT's U8S8 path on x86). Calibration data: an iterable of input dicts (``image``, ``landmarks``),
e.g. training profiles + their landmarks (:func:`calibration_from_batches` converts PairDataset
batches).

The weight range is chosen for the CPU it runs on (:func:`slimface.deploy.int8_guard.choose_settings`:
7-bit weights on x86 without VNNI, where 8-bit u8s8 convs saturate), and the quantized model is
checked against fp32 on the calibration inputs; one that moved too far is refused
(:class:`~slimface.errors.Int8RefusedError`) and not written. The model carries its check inputs,
fp32 outputs, settings and CPU in its metadata, so loading it on another CPU re-checks it.

``ConvTranspose`` has no int8 kernel on ORT's CPU provider, so quantizing it only adds Dequantize
work around an fp32 deconv; it is left out of ``op_types`` by default. ``GridSample``, ``Tanh`` and
other elementwise ops stay fp32 as well. Whether int8 is faster than fp32 depends on the layer
shapes and the CPU (measurements: docs/experiments/2026-12-int8-kernels.md); ``nodes_to_exclude``
keeps chosen nodes fp32 (see :mod:`slimface.deploy.latency_table` for choosing them).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimface.deploy.int8_guard import (
    MIN_COSINE,
    MIN_PSNR_DB,
    Int8Settings,
    attach_check,
    choose_settings,
    clear_refusal,
    verify_session,
    write_refusal,
)
from slimface.deploy.onnx_export import set_onnx_metadata
from slimface.errors import CheckpointError, DataError, Int8RefusedError
from slimface.fileio import atomic_write

__all__ = [
    "QuantReport",
    "quantize_int8",
    "calibration_from_batches",
    "DEFAULT_OP_TYPES",
    "session_kwargs",
]

# Ops whose int8 versions ORT's CPU provider actually runs (QLinearConv, QLinearAdd, ...).
DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "Relu", "LeakyRelu", "Clip",
    "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Sigmoid",
)


@dataclass
class QuantReport:
    """What quantization did and how far int8 moved the outputs (on the calibration inputs)."""

    path: Path
    n_calibration: int
    max_abs_diff: float
    mean_abs_diff: float
    preprocessed: bool
    int8_ops: dict[str, int] = field(default_factory=dict)   # op types that run in int8 (after ORT fusion)
    fp32_ops: dict[str, int] = field(default_factory=dict)   # compute ops left in fp32
    psnr_db: float = float("inf")                            # int8 vs fp32, data range 1
    settings: dict[str, Any] = field(default_factory=dict)   # Int8Settings chosen for the CPU
    fp32_nodes: list[str] = field(default_factory=list)      # nodes kept fp32 on purpose (nodes_to_exclude)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "n_calibration": self.n_calibration,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "psnr_db": self.psnr_db,
            "preprocessed": self.preprocessed,
            "int8_ops": self.int8_ops,
            "fp32_ops": self.fp32_ops,
            "settings": self.settings,
            "fp32_nodes": self.fp32_nodes,
        }


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def calibration_from_batches(
    batches: Iterable[Mapping[str, Any]],
    image_key: str = "profile",
    landmarks_key: str = "landmarks",
    limit: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Turn training batches (``PairDataset`` dicts) into ONNX feeds ``{"image", "landmarks"}``.

    Batches are split into single samples (batch 1, the deployed shape) up to ``limit`` samples.
    """
    out: list[dict[str, np.ndarray]] = []
    for batch in batches:
        img = _np(batch[image_key])
        lm = _np(batch[landmarks_key]) if landmarks_key in batch else None
        if img.ndim == 3:
            img = img[None]
            lm = None if lm is None else lm[None]
        for i in range(img.shape[0]):
            feed = {"image": np.ascontiguousarray(img[i : i + 1])}
            if lm is not None:
                feed["landmarks"] = np.ascontiguousarray(lm[i : i + 1])
            out.append(feed)
            if limit is not None and len(out) >= limit:
                return out
    return out


class _Reader:
    """A CalibrationDataReader over a list of feeds, restricted to the graph's inputs."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]) -> None:
        self._feeds = [{n: np.asarray(f[n], dtype=np.float32) for n in input_names} for f in feeds]
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _fused_op_counts(path: Path, disabled_optimizers: Sequence[str] = ()) -> tuple[dict[str, int], dict[str, int]]:
    """Op types after ORT's graph optimisation (less ``disabled_optimizers``): which run as int8 kernels,
    which compute ops stay fp32."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(opt)
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=list(disabled_optimizers))
        counts = collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    int8 = {k: v for k, v in counts.items() if k.startswith("QLinear") or k in ("QGemm", "MatMulInteger", "ConvInteger")}
    fp32_compute = ("Conv", "ConvTranspose", "Gemm", "MatMul", "GridSample", "FusedConv")
    fp32 = {k: v for k, v in counts.items() if k in fp32_compute}
    return dict(sorted(int8.items())), dict(sorted(fp32.items()))


#: ORT (>= 1.21) graph transformer that re-quantizes the weights of an fp32 Conv fed by a
#: DequantizeLinear; disabled on sessions of models that keep chosen nodes fp32 on purpose.
KEEP_FP32_DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)
FP32_NODES_KEY = "int8_fp32_nodes"  # metadata: JSON list of node names kept fp32
OPS_KEY = "int8_ops"  # metadata: JSON {"int8": op counts, "fp32": compute ops left fp32, "psnr_db"} after ORT fusion


def session_kwargs(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Extra ``InferenceSession`` arguments an int8 model needs (from its ``custom_metadata_map``)."""
    if metadata.get(f"slimface.{FP32_NODES_KEY}"):
        return {"disabled_optimizers": list(KEEP_FP32_DISABLED_OPTIMIZERS)}
    return {}


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[Mapping[str, Any]],
    per_channel: bool = True,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    max_samples: int = 256,
    preprocess: bool = True,
    calibrate_method: str = "minmax",
    settings: Int8Settings | None = None,
    nodes_to_exclude: Sequence[str] = (),
    guard: bool = True,
    min_psnr: float = MIN_PSNR_DB,
    recognizer: Any = None,
) -> QuantReport:
    """Quantize ``fp32_path`` to int8 (static, QDQ) into ``out_path`` (atomic); report the error.

    ``calibration``: feeds ``{"image": (B,C,H,W), "landmarks": (B,5,2)}`` (numpy or tensors); at most
    ``max_samples`` are used. ``op_types=None`` quantizes every op type ORT can (incl. ConvTranspose).
    ``calibrate_method``: ``minmax`` | ``entropy`` | ``percentile``. ``settings``: weight type/range
    (default :func:`~slimface.deploy.int8_guard.choose_settings` for this CPU). ``nodes_to_exclude``:
    node names of the fp32 graph kept fp32 (also at session creation, see :func:`session_kwargs`).
    With ``guard``, int8 outputs below ``min_psnr`` dB against fp32 on the calibration inputs (or, with
    a ``recognizer``, an embedding cosine below ``int8_guard.MIN_COSINE``) raise
    :class:`~slimface.errors.Int8RefusedError` and nothing is written (a stale ``out_path`` is removed).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    settings = settings or choose_settings()
    try:
        fp32_proto = onnx.load(str(fp32_path))
    except Exception:
        raise CheckpointError(f"{fp32_path}: not a readable ONNX model; export it with slimface first") from None
    graph_inputs = {i.name for i in fp32_proto.graph.input} - {i.name for i in fp32_proto.graph.initializer}
    input_names = [i.name for i in fp32_proto.graph.input if i.name in graph_inputs]
    known_nodes = {n.name for n in fp32_proto.graph.node}
    unknown = [n for n in nodes_to_exclude if n not in known_nodes]
    if unknown:
        raise DataError(f"nodes_to_exclude names {unknown[0]!r}, which is not a node of {fp32_path}")

    feeds: list[dict[str, np.ndarray]] = []
    for item in calibration:
        missing = [n for n in input_names if n not in item]
        if missing:
            raise DataError(f"calibration sample lacks input(s) {missing}; give dicts with keys {input_names}")
        feeds.append({n: _np(item[n]) for n in input_names})
        if len(feeds) >= max_samples:
            break
    if not feeds:
        raise DataError("no calibration samples; give at least one (ideally 32+) training input")

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}, got {calibrate_method!r}")

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s_fp = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
    fp32_out = [s_fp.run(None, f)[0] for f in feeds]
    extra_session = {"disabled_optimizers": list(KEEP_FP32_DISABLED_OPTIMIZERS)} if nodes_to_exclude else {}

    with tempfile.TemporaryDirectory() as tmp:
        src = fp32_path
        preprocessed = False
        if preprocess:
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                pre = Path(tmp) / "pre.onnx"
                # Symbolic shape inference gives up on the landmark-crop subgraphs of TP-GAN/PIM
                # ("Incomplete symbolic shape inference"); ONNX shape inference + ORT's basic graph
                # optimisation (BatchNorm folding, constant folding) still work there, so retry without it.
                for skip_symbolic in (False, True):
                    try:
                        # its symbolic shape inference writes scratch files into the current directory
                        with contextlib.chdir(tmp):
                            quant_pre_process(str(Path(fp32_path).resolve()), str(pre),
                                              skip_symbolic_shape=skip_symbolic)
                        src, preprocessed = pre, True
                        break
                    except Exception:  # noqa: BLE001 - try the lighter pre-processing next
                        continue
                # ORT's basic optimisation keeps Conv node names; should it ever rename one that is to
                # stay fp32, quantize the raw graph so that the exclusion still holds
                if preprocessed and nodes_to_exclude:
                    kept = {n.name for n in onnx.load(str(pre)).graph.node}
                    if not set(nodes_to_exclude) <= kept:
                        src, preprocessed = fp32_path, False
            except Exception:  # pre-processing is an optimisation only; quantize the raw graph instead
                src, preprocessed = fp32_path, False
        q_tmp = Path(tmp) / "int8.onnx"
        # onnxruntime logs "please consider pre-processing" through the root logger even after
        # quant_pre_process ran (it only checks a graph flag); keep a user's console readable
        hint = _DropPreprocessHint()
        logging.getLogger().addFilter(hint)
        try:
            quantize_static(
                str(src),
                str(q_tmp),
                _Reader(feeds, input_names),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types) if op_types is not None else None,
                per_channel=per_channel,
                reduce_range=settings.reduce_range,
                activation_type=getattr(QuantType, settings.activation_type),
                weight_type=getattr(QuantType, settings.weight_type),
                nodes_to_exclude=list(nodes_to_exclude),
                calibrate_method=methods[calibrate_method],
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        finally:
            logging.getLogger().removeFilter(hint)
        s_q = ort.InferenceSession(str(q_tmp), so, providers=["CPUExecutionProvider"], **extra_session)
        out_name = s_q.get_outputs()[0].name
        q_inputs = {i.name for i in s_q.get_inputs()}
        stacked = {n: np.concatenate([f[n] for f in feeds]) for n in input_names if n in q_inputs}
        reference = np.concatenate(fp32_out)
        try:
            stats = verify_session(lambda f: s_q.run([out_name], f)[0], stacked, reference, str(out_path),
                                   settings.as_dict(), recognizer=recognizer,
                                   min_psnr=min_psnr if guard else -float("inf"),
                                   min_cosine=MIN_COSINE if guard else -float("inf"))
        except Int8RefusedError as e:
            out_path.unlink(missing_ok=True)  # never leave an older int8 model that looks current
            write_refusal(out_path, str(e))
            raise
        int8_ops, fp32_ops = _fused_op_counts(q_tmp, extra_session.get("disabled_optimizers", ()))
        q_proto = onnx.load(str(q_tmp))
        meta = {p.key[len("slimface."):]: p.value for p in fp32_proto.metadata_props if p.key.startswith("slimface.")}
        meta[OPS_KEY] = json.dumps({"int8": int8_ops, "fp32": fp32_ops, "psnr_db": round(stats["psnr_db"], 2)})
        meta["quantization"] = "int8-static-qdq" + ("-per-channel" if per_channel else "")
        meta["calibration_samples"] = str(len(feeds))
        attach_check(meta, feeds, fp32_out, settings)
        if nodes_to_exclude:
            meta[FP32_NODES_KEY] = json.dumps(list(nodes_to_exclude))
        set_onnx_metadata(q_proto, meta)
        atomic_write(out_path, q_proto.SerializeToString())
        clear_refusal(out_path)

    return QuantReport(out_path, len(feeds), stats["max_abs_diff"], stats["mean_abs_diff"], preprocessed,
                       int8_ops, fp32_ops, stats["psnr_db"], settings.as_dict(), list(nodes_to_exclude))
