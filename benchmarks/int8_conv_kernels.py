"""Which conv shapes does ONNX Runtime's CPU provider run faster in int8 than in fp32, on this CPU?

    python benchmarks/int8_conv_kernels.py [--threads 1] [--runs 60] [--out int8_conv_kernels.json]

Each case is a chain of four identical convs + LeakyReLU (the students' building block) at batch 1,
exported as a plain ONNX graph, quantized like ``slimface.deploy.quantize`` does (static QDQ, per-channel
int8 weights, uint8 activations, min-max calibration), and timed against its fp32 graph, the two
sessions alternated run by run. Why it matters: a depthwise-separable student is mostly depthwise
KxK convs and small 1x1 convs, the shapes where int8 gains least; see ``deploy/quantize.py``.
Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

#: (label, channels, spatial size, kernel, depthwise)
CASES: tuple[tuple[str, int, int, int, bool], ...] = (
    ("dense 3x3, 64 ch @ 32x32", 64, 32, 3, False),
    ("dense 3x3, 256 ch @ 16x16", 256, 16, 3, False),
    ("dense 3x3, 16 ch @ 64x64", 16, 64, 3, False),
    ("pointwise 1x1, 64 ch @ 32x32", 64, 32, 1, False),
    ("pointwise 1x1, 16 ch @ 64x64", 16, 64, 1, False),
    ("depthwise 5x5, 64 ch @ 32x32", 64, 32, 5, True),
    ("depthwise 7x7, 16 ch @ 64x64", 16, 64, 7, True),
)


def _chain(path: Path, channels: int, size: int, kernel: int, depthwise: bool, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    groups = channels if depthwise else 1
    nodes, inits, x = [], [], "x"
    for i in range(4):
        w = (rng.standard_normal((channels, channels // groups, kernel, kernel)) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[kernel // 2] * 4, group=groups),
                  helper.make_node("LeakyRelu", [f"c{i}"], [f"y{i}"], alpha=0.2)]
        x = f"y{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def measure(threads: int = 1, runs: int = 60, warmup: int = 10) -> list[dict[str, object]]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from slimface.deploy.quantize import _Reader

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, c, s, k, dw in CASES:
            fp, q = Path(tmp) / "fp.onnx", Path(tmp) / "q.onnx"
            _chain(fp, c, s, k, dw)
            rng = np.random.default_rng(1)
            feeds = [{"x": rng.standard_normal((1, c, s, s)).astype(np.float32)} for _ in range(8)]
            quantize_static(str(fp), str(q), _Reader(feeds, ["x"]), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
            sessions = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (fp, q)]
            times: list[list[float]] = [[], []]
            for r in range(warmup + runs):
                for i, sess in enumerate(sessions):
                    t0 = time.perf_counter()
                    sess.run(None, feeds[0])
                    if r >= warmup:
                        times[i].append(time.perf_counter() - t0)
            f32, i8 = (float(np.median(t)) * 1e3 for t in times)
            rows.append({"case": label, "fp32_ms": f32, "int8_ms": i8, "int8_speedup": f32 / i8})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("int8_conv_kernels.json"))
    args = ap.parse_args()
    rows = measure(args.threads, args.runs, args.warmup)
    print(f"ONNX Runtime CPU, batch 1, {args.threads} thread(s), median of {args.runs} runs, 4 convs + LeakyReLU\n")
    print("| case | fp32 ms | int8 ms | int8 speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | {r['int8_speedup']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "runs": args.runs, "cases": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
