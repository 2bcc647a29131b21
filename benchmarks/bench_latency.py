"""Teacher vs student latency / memory (the paper's Table 4 protocol) as a Markdown table + JSON.

Usage:
    PYTHONPATH=src python benchmarks/bench_latency.py \
        --teacher slimface.families:build_generator --student mypkg.students:build \
        --teacher-kwargs '{"name": "tpgan", "resolution": 128}' --resolution 128 --threads 2 --out bench.json [--onnx]

``MODULE:FACTORY`` is an import string; the factory is called with the ``--*-kwargs`` JSON and must
return an ``nn.Module`` with ``forward(image, landmarks)``. ``--spec FILE.json`` gives the same
options as a JSON object (keys as the long options with ``_``); explicit CLI options win.
From Python, call ``main(argv, teacher=module, student=module)`` with already built models.
``--onnx`` also exports both to ONNX and times ONNX Runtime fp32 and int8 (static QDQ, calibrated on
random inputs: fine for speed, not for judging int8 image quality) in the same interleaved run.
``demo_generator`` below is a small conv generator for smoke runs
(``--teacher bench_latency:demo_generator --teacher-kwargs '{"width": 64}'``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimface.evaluate.bench import RUNTIME_BLOCK, benchmark_callables, benchmark_teacher_student

CANONICAL_LANDMARKS_128 = [[44.0, 41.0], [86.0, 41.0], [64.0, 65.0], [50.0, 89.0], [80.0, 89.0]]


class DemoGenerator(nn.Module):
    """Encoder-decoder with a landmark-patch branch (grid_sample), TP-GAN-like in miniature."""

    def __init__(self, channels: int = 3, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2))
            for _ in range(blocks)
        )
        self.dec = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.local = nn.Conv2d(channels, w, 3, 1, 1)
        self.out = nn.Conv2d(2 * w, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        f = self.enc(x)
        for blk in self.blocks:
            f = f + blk(f)
        f = self.dec(f)
        half = h / 8.0
        lin = torch.linspace(-1.0, 1.0, max(4, h // 4), dtype=x.dtype, device=x.device) * half
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        loc = torch.zeros_like(f)
        for k in range(landmarks.shape[1]):
            cx = landmarks[:, k, 0].reshape(-1, 1, 1)
            cy = landmarks[:, k, 1].reshape(-1, 1, 1)
            grid = torch.stack([(gx + cx) / (w - 1) * 2 - 1, (gy + cy) / (h - 1) * 2 - 1], -1)
            patch = self.local(F.grid_sample(x, grid, align_corners=True))
            u = (torch.arange(w, dtype=x.dtype, device=x.device).reshape(1, 1, w) - cx) / half
            v = (torch.arange(h, dtype=x.dtype, device=x.device).reshape(1, h, 1) - cy) / half
            back = F.grid_sample(patch, torch.stack([u.expand(-1, h, w), v.expand(-1, h, w)], -1), align_corners=True)
            loc = torch.maximum(loc, back)
        return torch.tanh(self.out(torch.cat([f, loc], 1)))


def demo_generator(channels: int = 3, width: int = 32, blocks: int = 2) -> nn.Module:
    """Factory for :class:`DemoGenerator` (deterministic init)."""
    torch.manual_seed(0)
    return DemoGenerator(channels, width, blocks)


def load_factory(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build a model from ``MODULE:FACTORY`` with ``kwargs``."""
    if ":" not in spec:
        raise SystemExit(f"error: {spec!r} is not MODULE:FACTORY (e.g. slimface.families:build_generator)")
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SystemExit(f"error: cannot import {mod_name!r} ({e}); check PYTHONPATH") from None
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise SystemExit(f"error: {mod_name!r} has no {fn_name!r}")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise SystemExit(f"error: {spec} returned {type(model).__name__}, not an nn.Module")
    return model


def example_inputs(resolution: int, channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-1 image in [-1, 1] and the canonical landmarks at ``resolution``."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, channels, resolution, resolution, generator=g) * 2 - 1
    lm = torch.tensor(CANONICAL_LANDMARKS_128, dtype=torch.float32)[None] * (resolution / 128.0)
    return img, lm


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", type=Path, help="JSON file with any of the options below")
    p.add_argument("--teacher", help="MODULE:FACTORY")
    p.add_argument("--student", help="MODULE:FACTORY")
    p.add_argument("--teacher-kwargs", type=json.loads, default=None)
    p.add_argument("--student-kwargs", type=json.loads, default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--onnx", action="store_true", default=None, help="also time ONNX Runtime fp32/int8")
    p.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    return p


DEFAULTS: dict[str, Any] = {
    "teacher": None, "student": None, "teacher_kwargs": {}, "student_kwargs": {}, "resolution": 128,
    "channels": 3, "warmup": 100, "runs": 100, "threads": None, "device": "cpu", "seed": 0,
    "onnx": False, "out": None,
}


def _options(argv: list[str] | None) -> dict[str, Any]:
    args = vars(_parser().parse_args(argv))
    opts = dict(DEFAULTS)
    spec = args.pop("spec")
    if spec is not None:
        data = json.loads(Path(spec).read_text())
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise SystemExit(f"error: {spec}: unknown key(s) {unknown}; allowed {sorted(DEFAULTS)}")
        opts.update(data)
    opts.update({k: v for k, v in args.items() if v is not None})
    return opts


def _ort_rows(
    teacher: nn.Module, student: nn.Module, inputs: tuple, opts: dict[str, Any], tmp: Path
) -> dict[str, dict[str, Any]]:
    """Export both models, quantize them, and time torch/ORT fp32/ORT int8 interleaved."""
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.quantize import quantize_int8
    from slimface.deploy.runtime import load_frontalizer

    g = torch.Generator().manual_seed(opts["seed"] + 1)
    cal = [
        {"image": torch.rand(inputs[0].shape, generator=g) * 2 - 1, "landmarks": inputs[1] + torch.randn(inputs[1].shape, generator=g)}
        for _ in range(8)
    ]
    img, lm = inputs[0].numpy(), inputs[1].numpy()
    fns: dict[str, Any] = {}
    for name, model in (("teacher", teacher), ("student", student)):
        model = model.cpu().eval()
        fp = export_onnx(model, inputs, tmp / f"{name}.onnx")
        quantize_int8(fp, tmp / f"{name}_int8.onnx", cal)
        f32 = load_frontalizer(fp, threads=opts["threads"])
        i8 = load_frontalizer(tmp / f"{name}_int8.onnx", threads=opts["threads"])
        fns[f"{name} (torch fp32)"] = lambda m=model: m(*inputs)
        fns[f"{name} (ORT fp32)"] = lambda f=f32: f(img, lm)
        fns[f"{name} (ORT int8)"] = lambda f=i8: f(img, lm)
    return benchmark_callables(fns, warmup=opts["warmup"], runs=opts["runs"], threads=opts["threads"],
                               block=RUNTIME_BLOCK)


def markdown_table(result: dict[str, Any]) -> str:
    """Render the result dict as the Markdown table printed by :func:`main`."""
    t, s = result["teacher"], result["student"]
    lines = [
        f"device {result['device']}, threads {result['threads']}, batch 1, "
        f"{result['warmup']} warm-up + {result['runs']} timed runs (interleaved)",
        "",
        "| model | params | latency mean (ms) | latency median (ms) | peak memory (MB) | speedup | memory reduction |",
        "|---|---|---|---|---|---|---|",
    ]
    mem_t = f"{t['peak_memory_mb']:.1f}" if "peak_memory_mb" in t else "-"
    mem_s = f"{s['peak_memory_mb']:.1f}" if "peak_memory_mb" in s else "-"
    red = f"{result['memory_reduction']:.2f}x" if "memory_reduction" in result else "-"
    lines.append(f"| teacher | {t['params'] / 1e6:.2f}M | {t['latency_ms']:.2f} | {t['latency_median_ms']:.2f} | {mem_t} | 1.00x | 1.00x |")
    lines.append(f"| student | {s['params'] / 1e6:.2f}M | {s['latency_ms']:.2f} | {s['latency_median_ms']:.2f} | {mem_s} | {result['speedup']:.2f}x | {red} |")
    ort = result.get("onnxruntime")
    if ort:
        base = ort["teacher (torch fp32)"]["latency_ms"]
        lines += ["", "| runtime | latency mean (ms) | latency median (ms) | speedup vs teacher torch |", "|---|---|---|---|"]
        for name, r in ort.items():
            lines.append(f"| {name} | {r['latency_ms']:.2f} | {r['latency_median_ms']:.2f} | {base / r['latency_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, teacher: nn.Module | None = None, student: nn.Module | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (also printed as a table and written to --out)."""
    opts = _options(argv)
    if teacher is None:
        if not opts["teacher"]:
            raise SystemExit("error: give --teacher MODULE:FACTORY (or pass teacher= from Python)")
        teacher = load_factory(opts["teacher"], opts["teacher_kwargs"])
    if student is None:
        if not opts["student"]:
            raise SystemExit("error: give --student MODULE:FACTORY (or pass student= from Python)")
        student = load_factory(opts["student"], opts["student_kwargs"])
    torch.manual_seed(opts["seed"])
    inputs = example_inputs(opts["resolution"], opts["channels"], opts["seed"])
    result = benchmark_teacher_student(
        teacher, student, inputs, warmup=opts["warmup"], runs=opts["runs"], threads=opts["threads"], device=opts["device"]
    )
    result["resolution"] = opts["resolution"]
    result["channels"] = opts["channels"]
    if opts["onnx"]:
        with tempfile.TemporaryDirectory() as tmp:
            result["onnxruntime"] = _ort_rows(teacher, student, inputs, opts, Path(tmp))
    print(markdown_table(result))
    if opts["out"] is not None:
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
        print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
