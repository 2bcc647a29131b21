"""Which int8 quantization options (if any) make an exported student faster than ONNX Runtime fp32?

    OMP_NUM_THREADS=1 python benchmarks/int8_options.py runs/quick/tpgan/export/model.onnx \\
        [--images data_cache/synth/n337_r64_i5_s0] [--threads 1] [--warmup 10] [--runs 60] [--repeats 3]

Variants (all static, calibrated on the same inputs, pre-processed like ``quantize_int8``): the
project defaults (QDQ, per-channel), per-tensor weights, QOperator format, convs under 100k / 1M
MACs excluded (with the elementwise ops that then only see fp32 inputs), depthwise convs excluded
(timed with ORT's ``WeightBiasQuantization`` transformer disabled, which otherwise re-quantizes
them), and the default int8 model at graph optimisation levels EXTENDED / BASIC. Prints the op
types ORT runs in int8, the output change vs fp32 (max / mean abs) and the latencies, every model
alternated run by run in one process (``benchmark_callables``). Findings: slimface/deploy/quantize.py.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import tempfile
from pathlib import Path

import numpy as np


def _feeds(model_path: Path, images: Path | None, n: int) -> list[dict[str, np.ndarray]]:
    import onnx

    names = [i.name for i in onnx.load(str(model_path)).graph.input]
    if images is not None:
        from PIL import Image

        rows = [r for r in csv.DictReader(open(images / "manifest.csv")) if r["yaw"] != "0"]
        rows = rows[:: max(1, len(rows) // n)][:n]
        feeds = []
        for r in rows:
            im = np.asarray(Image.open(images / r["file"]).convert("RGB"), dtype=np.float32) / 127.5 - 1
            lm = np.array([[float(r[k + "x"]), float(r[k + "y"])] for k in ("le", "re", "n", "ml", "mr")], np.float32)
            feeds.append({"image": im.transpose(2, 0, 1)[None].copy(), "landmarks": lm[None]})
    else:
        from slimface.data.records import canonical_landmarks

        import onnxruntime as ort

        shape = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        res = int(shape[-1])
        rng = np.random.default_rng(0)
        lm = canonical_landmarks(res).astype(np.float32)[None]
        feeds = [{"image": rng.uniform(-1, 1, (1, int(shape[1]), res, res)).astype(np.float32), "landmarks": lm}
                 for _ in range(n)]
    return [{k: f[k] for k in names} for f in feeds]


def _conv_macs(model) -> dict[str, int]:  # noqa: ANN001
    import onnx

    m = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[1] in inits and n.output[0] in shapes:
            out[n.name] = int(np.prod(shapes[n.output[0]])) * int(np.prod(inits[n.input[1]][1:]))
    return out


def main() -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from slimface.deploy.quantize import DEFAULT_OP_TYPES, _fused_op_counts, _Reader
    from slimface.evaluate.bench import RUNTIME_BLOCK, benchmark_callables

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--images", type=Path, help="a synthetic dataset dir (manifest.csv); default random inputs")
    ap.add_argument("--calibration", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    feeds = _feeds(args.model, args.images, args.calibration)
    names = list(feeds[0])
    tmp = Path(tempfile.mkdtemp(prefix="int8-options-"))
    pre = tmp / "pre.onnx"
    for skip in (False, True):
        try:
            with contextlib.chdir(tmp):
                quant_pre_process(str(args.model.resolve()), str(pre), skip_symbolic_shape=skip)
            break
        except Exception:  # noqa: BLE001
            continue
    model = onnx.load(str(pre))
    macs = _conv_macs(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    elementwise = {"LeakyRelu", "Relu", "Add", "Mul", "Concat", "AveragePool", "Resize", "MaxPool", "Clip", "Sigmoid"}

    def with_followers(excluded: set[str]) -> list[str]:
        ex = set(excluded)
        for n in model.graph.node:  # topological order
            srcs = [producer[i] for i in n.input if i in producer]
            if n.op_type in elementwise and srcs and all(s.name in ex for s in srcs):
                ex.add(n.name)
        return sorted(ex)

    depthwise = {n.name for n in model.graph.node if n.op_type == "Conv"
                 and next((a.i for a in n.attribute if a.name == "group"), 1) > 1}

    def quant(name: str, fmt=QuantFormat.QDQ, per_channel: bool = True, exclude=()) -> str:  # noqa: ANN001
        path = tmp / f"{name}.onnx"
        quantize_static(str(pre), str(path), _Reader(feeds, names), quant_format=fmt,
                        op_types_to_quantize=list(DEFAULT_OP_TYPES), per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                        extra_options={"CalibTensorRangeSymmetric": False})
        return str(path)

    def session(path: str, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, disabled=()):  # noqa: ANN001, ANN202
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.graph_optimization_level = level
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))

    base = quant("default")
    variants = {
        "int8 default (QDQ, per-channel)": (base, {}),
        "int8 per-tensor": (quant("per_tensor", per_channel=False), {}),
        "int8 QOperator": (quant("qop", fmt=QuantFormat.QOperator), {}),
        "int8 convs <100k MACs fp32": (quant("ex100k", exclude=with_followers({k for k, v in macs.items() if v < 1e5})), {}),
        "int8 convs <1M MACs fp32": (quant("ex1m", exclude=with_followers({k for k, v in macs.items() if v < 1e6})), {}),
        "int8 depthwise fp32 (no WBQ)": (quant("exdw", exclude=sorted(depthwise)),
                                         {"disabled": ["WeightBiasQuantization"]}),
        "int8 default, level EXTENDED": (base, {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}),
        "int8 default, level BASIC": (base, {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}),
    }
    sessions = {"ORT fp32": session(str(args.model)),
                "ORT fp32, level EXTENDED": session(str(args.model), ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)}
    print(f"{len(macs)} convs, {sum(macs.values()) / 1e6:.1f}M conv MACs, {len(depthwise)} depthwise")
    for label, (path, kw) in variants.items():
        sessions[label] = session(path, **kw)
        mx, sm, n = 0.0, 0.0, 0
        for f in feeds:
            d = np.abs(sessions["ORT fp32"].run(None, f)[0].astype(np.float64) - sessions[label].run(None, f)[0])
            mx, sm, n = max(mx, float(d.max())), sm + float(d.sum()), n + d.size
        int8_ops, fp32_ops = _fused_op_counts(Path(path), kw.get("disabled", ()))  # as the timed session
        print(f"{label:34s} diff vs fp32 max {mx:.3f} mean {sm / n:.4f}  int8 {sum(int8_ops.values())} ops "
              f"(QLinearConv {int8_ops.get('QLinearConv', 0)}), fp32 compute {fp32_ops}")
    f0 = feeds[0]
    for rep in range(args.repeats):
        r = benchmark_callables({k: (lambda s=s: s.run(None, f0)) for k, s in sessions.items()},
                                warmup=args.warmup, runs=args.runs, threads=args.threads, block=RUNTIME_BLOCK)
        print(f"repeat {rep}: " + "; ".join(f"{k} {v['latency_ms']:.2f} ms (median {v['latency_median_ms']:.2f})"
                                           for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
