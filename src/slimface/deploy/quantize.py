"""int8 post-training static quantization of an exported ONNX generator (ONNX Runtime).

Why static QDQ: activations get fixed scales from calibration, so ORT fuses
``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` (int8 GEMMs; with AVX512-VNNI
these are several times faster than fp32 convs). Weights: signed int8, per output channel (the
first/last convs of generators have very uneven channel ranges); activations: uint8 (ORT's fast
U8S8 path on x86). Calibration data: an iterable of input dicts (``image``, ``landmarks``), e.g.
training profiles + their landmarks (:func:`calibration_from_batches` converts PairDataset batches).

What stays fp32 on ORT's CPU provider (measured with ORT 1.31): ``ConvTranspose`` has no int8
kernel, so quantizing it only adds Dequantize work around an fp32 deconv; it is therefore left out
of ``op_types`` by default. ``GridSample``, ``Tanh`` and other elementwise ops stay fp32 as well.

Is int8 faster? Not for slimface's students on ORT 1.31's CPU provider, and no quantization option
tried changes that (measured on a 2-core AVX512-VNNI Xeon shared with training jobs, 1 thread,
batch 1, runtimes alternated in one process, 3 repeats; ``benchmarks/int8_options.py`` reruns it):

- Run size (the quick preset's trained TP-GAN student, 64x64, width 0.25, 72M MACs, 292 convs):
  ORT fp32 13-16 ms, int8 (these defaults) 21-24 ms; per-tensor weights 21-24 ms, QOperator format
  21-23 ms, ORT graph level EXTENDED 22-25 ms / BASIC 30-32 ms (fp32 at EXTENDED: 21 ms -- the
  default ALL level's NCHWc layout is what makes fp32 fast). Excluding convs from quantization
  (``nodes_to_exclude``: the 250 convs under 100k MACs, the 297 under 1M, the 140 depthwise ones,
  each with or without the elementwise ops that then only see fp32 inputs) gave 19-24 ms. Mean abs
  output change vs fp32 stayed 0.019-0.024 in every variant (max 0.19-0.28) on 24 synthetic profiles.
- Why: ORT's profiler shows int8 ``QLinearConv`` *slower* than the fp32 NCHWc convs it replaces:
  17.3 ms for the 292 int8 convs vs 8.6 ms fp32; depthwise 5x5/7x7 convs are 2-7x slower in int8
  (e.g. 52 channels 5x5 at 64x64: 1.7 ms vs 0.3 ms). The channel counts are too small for the
  VNNI GEMMs to pay for themselves, and every QLinear op is a separate kernel (fp32 fuses
  Conv+LeakyRelu).
- Full size (128x128, width 1.0, smallest students, random weights): the same picture, int8 is
  ~0.6x the speed of ORT fp32 (TP-GAN: depthwise convs 33.9 ms int8 vs 17.2 ms fp32 per forward,
  the other convs 14.9 vs 12.5 ms); keeping the depthwise convs fp32 still leaves int8 ~1.2x slower.
- Caveat for ``nodes_to_exclude`` on convs: ORT >= 1.21 runs the ``WeightBiasQuantization``
  graph transformer, which quantizes the float weights of any Conv that reads a per-tensor
  ``DequantizeLinear`` output -- so an excluded conv between two quantized ops becomes a
  ``QLinearConv`` again at session creation (the exclusion above only took effect with
  ``disabled_optimizers=["WeightBiasQuantization"]`` on the session, or where the neighbours were
  excluded too).

On an AVX512-VNNI AMD EPYC (ORT 1.32, 1 thread, beside two training jobs, alternated runs) the
kernels themselves tell the story (``benchmarks/int8_conv_kernels.py``, four convs + LeakyReLU):
int8 is 2.8x faster than fp32 for a dense 3x3 conv of 64 channels at 32x32 and 5.4x for 256
channels at 16x16, but 1.3x for 16 channels at 64x64, 1.5x for a 1x1 conv of 64 channels, 0.73x
for a 1x1 of 16 channels, and 0.62x / 0.30x for 5x5 / 7x7 depthwise convs. A depthwise-separable
student at the quick preset's widths is made of the last four, so the whole run-size student
(TP-GAN, 61M MACs, random weights) runs at 0.68x of ORT fp32 in int8 (14.8 vs 10.0 ms) and 0.78x
(12.9 ms) with its 140 depthwise convs kept fp32 (``nodes_to_exclude`` + WeightBiasQuantization
disabled: 152 QLinearConv left, checked on the optimised graph).

The int8 export is therefore kept for its size (about half the fp32 file) and for runtimes with
faster int8 kernels, not as the fast CPU path; ONNX Runtime fp32 is.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimface.deploy.onnx_export import set_onnx_metadata
from slimface.fileio import atomic_write
from slimface.errors import CheckpointError, DataError

__all__ = [
    "QuantReport",
    "quantize_int8",
    "calibration_from_batches",
    "DEFAULT_OP_TYPES",
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "n_calibration": self.n_calibration,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "preprocessed": self.preprocessed,
            "int8_ops": self.int8_ops,
            "fp32_ops": self.fp32_ops,
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


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[Mapping[str, Any]],
    per_channel: bool = True,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    max_samples: int = 256,
    preprocess: bool = True,
    calibrate_method: str = "minmax",
) -> QuantReport:
    """Quantize ``fp32_path`` to int8 (static, QDQ) into ``out_path`` (atomic); report the error.

    ``calibration``: feeds ``{"image": (B,C,H,W), "landmarks": (B,5,2)}`` (numpy or tensors); at most
    ``max_samples`` are used. ``op_types=None`` quantizes every op type ORT can (incl. ConvTranspose).
    ``calibrate_method``: ``minmax`` | ``entropy`` | ``percentile``. The report's diffs compare the
    int8 and fp32 models' outputs on the same calibration inputs.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    try:
        fp32_proto = onnx.load(str(fp32_path))
    except Exception:
        raise CheckpointError(f"{fp32_path}: not a readable ONNX model; export it with slimface first") from None
    graph_inputs = {i.name for i in fp32_proto.graph.input} - {i.name for i in fp32_proto.graph.initializer}
    input_names = [i.name for i in fp32_proto.graph.input if i.name in graph_inputs]

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
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate_method],
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        finally:
            logging.getLogger().removeFilter(hint)
        q_proto = onnx.load(str(q_tmp))
        meta = {p.key[len("slimface."):]: p.value for p in fp32_proto.metadata_props if p.key.startswith("slimface.")}
        meta["quantization"] = "int8-static-qdq" + ("-per-channel" if per_channel else "")
        meta["calibration_samples"] = str(len(feeds))
        set_onnx_metadata(q_proto, meta)
        atomic_write(out_path, q_proto.SerializeToString())

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s_fp = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
    s_q = ort.InferenceSession(str(out_path), so, providers=["CPUExecutionProvider"])
    max_d, sum_d, n = 0.0, 0.0, 0
    for f in feeds:
        a = s_fp.run(None, f)[0]
        b = s_q.run(None, f)[0]
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        max_d = max(max_d, float(d.max()))
        sum_d += float(d.sum())
        n += d.size
    int8_ops, fp32_ops = _fused_op_counts(out_path)
    return QuantReport(out_path, len(feeds), max_d, sum_d / max(n, 1), preprocessed, int8_ops, fp32_ops)

