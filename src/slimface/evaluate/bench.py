"""Latency and memory measurement of generators (the paper's Table 4 protocol).

Protocol (reference.md §2, Table 4): batch 1, ``warmup`` untimed runs, then ``runs`` timed runs; the
reported latency is the mean of the timed runs. Everything compared is measured *in one process*,
with the candidates **interleaved run by run** (run ``i`` calls every model once, the starting model
rotating with ``i``), so that CPU frequency changes, other load on the machine and cache effects hit
every candidate alike and the speed-up ratio stays fair.

Models are timed as deployed: eval-mode copies with batch norms folded into their convs
(:func:`inference_copy`), which is what ONNX Runtime does to its graph too; ``fold_bn=False`` times
them as given. ``torch_mode`` picks how PyTorch runs them (:mod:`slimface.deploy.torch_modes`: eager
NCHW, channels-last memory, or channels-last + ``torch.compile``), the same mode for every model.

Timing: ``time.perf_counter`` around each call under ``torch.inference_mode()``; on CUDA the
device is synchronised before and after each call and the latency comes from CUDA events.

Memory (``peak_memory_mb``), one definition on both devices: the bytes of the model's parameters
and buffers plus the peak of the bytes newly allocated by PyTorch during one forward pass
(activations, workspaces and the output), measured on a separate, untimed forward.

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus what was
  allocated before the call (inputs, other models), plus the model's own weight bytes.
- CPU: there is no allocator high-water mark, so one forward is run under
  ``torch.profiler.profile(profile_memory=True)``; every allocation/free the PyTorch CPU allocator
  reports is an event with a signed byte count, and the peak of their running sum (in time order)
  is the activation peak. This counts every tensor PyTorch allocates (including im2col buffers and
  the output); it does not see memory that third-party kernels (e.g. oneDNN scratchpads) obtain
  outside the PyTorch allocator, so it is a lower bound of the true footprint, but exact and
  repeatable, unlike process RSS (which the allocator's caching and the OS's lazy freeing blur).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from slimface.deploy.torch_modes import prepare
from slimface.nn.fold import inference_copy

__all__ = [
    "RUNTIME_LABELS",
    "TEACHER_LABELS",
    "runtime_ratios",
    "benchmark_runtimes",
    "benchmark_pair",
    "benchmark_teacher_student",
    "benchmark_callables",
    "device_call",
    "inference_copy",
    "peak_memory_bytes",
    "param_bytes",
    "count_params",
]

_MB = 1024.0 * 1024.0


def count_params(model: nn.Module) -> int:
    """Number of parameters (what the paper's tables call params)."""
    return sum(p.numel() for p in model.parameters())


def param_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (the weights part of the footprint)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    """Temporarily set torch's intra-op thread count; yields the count in effect."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (kineto prints 'profiler_start/stop' lines there that no env var turns off)."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_activation_peak(fn: Callable[[], Any]) -> int:
    """Peak of live bytes allocated by the PyTorch CPU allocator while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = []
    for ev in prof.profiler.kineto_results.events():  # raw events: allocations are not merged into ops
        if ev.name() != "[memory]":
            continue
        if ev.device_type() != torch.autograd.DeviceType.CPU:
            continue
        events.append((ev.start_ns(), ev.nbytes()))
    events.sort(key=lambda e: e[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _cuda_activation_peak(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated on ``device`` during ``fn`` beyond what was live before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return max(0, peak - before)


def peak_memory_bytes(model: nn.Module, example_inputs: tuple, device: str | torch.device = "cpu") -> dict[str, int]:
    """Weights + peak activation bytes of one forward (see the module docstring for the method).

    Returns ``{"param_bytes", "activation_peak_bytes", "peak_bytes"}``. One warm-up forward runs
    first so lazy one-time allocations (kernel caches, packed weights) are not counted as
    activations.
    """
    dev = torch.device(device)
    model = model.to(dev).eval()
    inputs = _to_device(tuple(example_inputs), dev)
    with torch.inference_mode():
        model(*inputs)

        def call() -> Any:
            return model(*inputs)

        if dev.type == "cuda":
            act = _cuda_activation_peak(call, dev)
        else:
            act = _cpu_activation_peak(call)
    weights = param_bytes(model)
    return {"param_bytes": weights, "activation_peak_bytes": act, "peak_bytes": weights + act}


def _quantile(sorted_ms: list[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list (numpy's default method)."""
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (pos - lo) * (sorted_ms[hi] - sorted_ms[lo])


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = [t * 1000.0 for t in times_s]
    srt = sorted(ms)
    return {
        "latency_ms": statistics.fmean(ms),
        "latency_median_ms": statistics.median(ms),
        "latency_p50_ms": _quantile(srt, 0.5),
        "latency_p90_ms": _quantile(srt, 0.9),
        "latency_std_ms": statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        "latency_min_ms": min(ms),
    }


def _interleaved(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int,
    runs: int,
    timer: Callable[[Callable[[], Any]], float],
    block: int = 1,
) -> dict[str, list[float]]:
    """Warm up then time every callable ``runs`` times, rotating the call order each run.

    ``block`` > 1 rotates between blocks of ``block`` timed calls of one callable instead, each block
    after one untimed call: ONNX Runtime's worker threads spin on for a while after a run and slow
    whatever runs next (a PyTorch call right after an ORT one took 3x longer at 2 threads here).
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if not fns:
        raise ValueError("nothing to benchmark")
    names = list(fns)
    n = len(names)
    for i in range(warmup):
        for k in range(n):
            fns[names[(i + k) % n]]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(-(-runs // block)):
        for k in range(n):
            name = names[(i + k) % n]
            if block > 1:
                fns[name]()  # settles the previous callable's threads
            for _ in range(min(block, runs - i * block)):
                times[name].append(timer(fns[name]))
    return times


def _cpu_timer(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _make_cuda_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def timer(fn: Callable[[], Any]) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0

    return timer


def benchmark_callables(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int = 100,
    runs: int = 100,
    threads: int | None = None,
    device: str = "cpu",
    block: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time zero-argument callables with the interleaved protocol (e.g. ONNX Runtime sessions).

    Use it to compare PyTorch fp32, ORT fp32 and ORT int8 in one process: wrap each as
    ``lambda: sess.run(None, feeds)``, with ``block`` > 1 (see :func:`_interleaved`). ``threads`` is
    only recorded here (ORT threads are fixed when the session is created); torch's thread count is
    set for the duration when given.
    """
    dev = torch.device(device)
    timer = _make_cuda_timer(dev) if dev.type == "cuda" else _cpu_timer
    with _num_threads(threads) as nthreads, torch.inference_mode():
        times = _interleaved(fns, warmup, runs, timer, block)
    out: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        out[name] = {
            **_stats(ts),
            "runs": len(ts),
            "warmup": warmup,
            "threads": threads if threads is not None else nthreads,
            "device": str(dev),
            "times_ms": [t * 1000.0 for t in ts],
        }
    return out


RUNTIME_LABELS = ("PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8")
#: the teacher under the same runtimes, timed in the same interleaved run as the student's
TEACHER_LABELS = ("teacher PyTorch fp32", "teacher ONNX Runtime fp32")
RUNTIME_BLOCK = 10  # runtimes are timed in blocks of 10 calls (see _interleaved)


def device_call(model: nn.Module, inputs: tuple, device: str = "cpu") -> Callable[[], Any]:
    """``model(*inputs)`` as a zero-argument call on ``device`` (model and inputs moved there once;
    None inputs kept), ending with a device synchronisation on a GPU so a wall clock times it whole."""
    dev = torch.device(device)
    model = model.to(dev)
    on_dev = tuple(None if t is None else t.to(dev) for t in inputs)

    def call() -> Any:
        y = model(*on_dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return y

    return call


def benchmark_runtimes(
    student: nn.Module,
    example_inputs: tuple,
    onnx: Mapping[str, Callable[..., Any]],
    warmup: int = 100,
    runs: int = 100,
    threads: int | None = None,
    fold_bn: bool = True,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """The student under PyTorch fp32 (label ``RUNTIME_LABELS[0]``; batch norms folded, see
    :func:`inference_copy`) and under each loaded ONNX
    frontalizer of ``onnx`` (label -> ``runtime(image, landmarks)``, e.g. from
    :func:`slimface.deploy.runtime.load_frontalizer`), timed interleaved with
    :func:`benchmark_callables`; every entry also gets ``speedup_vs_pytorch`` (mean and
    ``_median``). On a GPU ``device`` the PyTorch student runs there and each of its calls ends with a
    device synchronisation; the ONNX callables take host arrays and return host arrays, as a deployed
    session does, so one wall clock times them all."""
    import numpy as np

    x = example_inputs[0].cpu()
    lm = example_inputs[1].cpu() if len(example_inputs) > 1 else None
    xn = np.ascontiguousarray(x.numpy())
    lmn = None if lm is None else np.ascontiguousarray(lm.numpy())
    inputs = (x, lm)
    student, folded = inference_copy(student, tuple(t.cpu() for t in example_inputs), fold_bn)
    fns: dict[str, Callable[[], Any]] = {RUNTIME_LABELS[0]: device_call(student, inputs, device)}
    for label, runtime in onnx.items():
        fns[label] = lambda r=runtime: r(xn, lmn)
    timed = benchmark_callables(fns, warmup=warmup, runs=runs, threads=threads, block=RUNTIME_BLOCK)
    base = timed[RUNTIME_LABELS[0]]
    for entry in timed.values():
        entry["speedup_vs_pytorch"] = base["latency_ms"] / entry["latency_ms"]
        entry["speedup_vs_pytorch_median"] = base["latency_median_ms"] / entry["latency_median_ms"]
        entry["device"] = str(torch.device(device))
    base["folded_batchnorms"] = folded
    return timed


def runtime_ratios(timed: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Teacher-vs-student speed-ups from one interleaved run (:func:`benchmark_runtimes` with the
    teacher's callables under :data:`TEACHER_LABELS`), each the ratio of the two medians (p50): the
    same runtime on both sides, and the mixed "student in ORT vs teacher in PyTorch" one."""
    def p50(label: str) -> float | None:
        entry = timed.get(label)
        if entry is None:
            return None
        return float(entry["latency_p50_ms"] if "latency_p50_ms" in entry else entry["latency_median_ms"])

    pairs = {
        "student vs teacher, both PyTorch fp32": (TEACHER_LABELS[0], RUNTIME_LABELS[0]),
        "student vs teacher, both ONNX Runtime fp32": (TEACHER_LABELS[1], RUNTIME_LABELS[1]),
        "student ONNX Runtime int8 vs teacher ONNX Runtime fp32": (TEACHER_LABELS[1], RUNTIME_LABELS[2]),
        "student ONNX Runtime fp32 vs teacher PyTorch fp32": (TEACHER_LABELS[0], RUNTIME_LABELS[1]),
        "student ONNX Runtime int8 vs student ONNX Runtime fp32": (RUNTIME_LABELS[1], RUNTIME_LABELS[2]),
    }
    out: dict[str, float] = {}
    for name, (slow, fast) in pairs.items():
        a, b = p50(slow), p50(fast)
        if a is not None and b is not None and b > 0:
            out[name] = a / b
    return out


def benchmark_pair(
    models: Mapping[str, nn.Module],
    example_inputs: tuple,
    warmup: int = 100,
    runs: int = 100,
    threads: int | None = None,
    device: str = "cpu",
    measure_memory: bool = True,
    fold_bn: bool = True,
    torch_mode: str = "eager",
) -> dict[str, dict[str, Any]]:
    """Latency (interleaved, see module docstring) and peak memory of each model on the same inputs.

    Each model is timed as deployed: an eval-mode copy with its batch norms folded into the convs
    (:func:`inference_copy`; ``fold_bn=False`` times the model as given), run in ``torch_mode``
    (:mod:`slimface.deploy.torch_modes`: eager, channels_last or compiled; memory is measured on the
    eager copy). The models passed in are not changed.

    ``example_inputs`` are the positional arguments of ``forward`` (e.g. ``(image, landmarks)`` at
    batch 1). Models are put in eval mode and moved to ``device``. Returns, per model name:
    ``latency_ms`` (mean), ``latency_median_ms``, ``latency_std_ms``, ``latency_min_ms``, ``runs``,
    ``warmup``, ``threads``, ``device``, ``params`` (of the model as given), ``folded_batchnorms``,
    ``torch_mode``, ``times_ms`` and, with ``measure_memory``,
    ``peak_memory_mb``, ``param_memory_mb``, ``activation_peak_mb``.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    inputs = _to_device(tuple(example_inputs), dev)
    with _num_threads(threads) as nthreads:
        prepared = {name: prepare(m.to(dev), inputs, torch_mode, fold_bn) for name, m in models.items()}
        fns = {name: (lambda p=p: p(*inputs)) for name, p in prepared.items()}
        result = benchmark_callables(fns, warmup=warmup, runs=runs, threads=None, device=device)
        for name, p in prepared.items():
            result[name]["threads"] = nthreads
            result[name]["params"] = count_params(models[name])
            result[name]["torch_mode"] = torch_mode
            result[name].update(p.info)
            if measure_memory:
                mem = peak_memory_bytes(p.module, inputs, dev)
                result[name]["peak_memory_mb"] = mem["peak_bytes"] / _MB
                result[name]["param_memory_mb"] = mem["param_bytes"] / _MB
                result[name]["activation_peak_mb"] = mem["activation_peak_bytes"] / _MB
    return result


def benchmark_teacher_student(
    teacher: nn.Module,
    student: nn.Module,
    example_inputs: tuple,
    warmup: int = 100,
    runs: int = 100,
    threads: int | None = None,
    device: str = "cpu",
    measure_memory: bool = True,
    fold_bn: bool = True,
    torch_mode: str = "eager",
) -> dict[str, Any]:
    """Table 4 for one teacher/student pair: both measured interleaved (in ``torch_mode``, see
    :func:`benchmark_pair`), plus the two ratios.

    ``speedup`` = teacher mean latency / student mean latency; ``memory_reduction`` = teacher peak
    memory / student peak memory (absent when ``measure_memory`` is False).
    """
    res = benchmark_pair(
        {"teacher": teacher, "student": student},
        example_inputs,
        warmup=warmup,
        runs=runs,
        threads=threads,
        device=device,
        measure_memory=measure_memory,
        fold_bn=fold_bn,
        torch_mode=torch_mode,
    )
    out: dict[str, Any] = {
        "teacher": res["teacher"],
        "student": res["student"],
        "speedup": res["teacher"]["latency_ms"] / res["student"]["latency_ms"],
        "threads": res["teacher"]["threads"],
        "device": res["teacher"]["device"],
        "torch_mode": torch_mode,
        "warmup": warmup,
        "runs": runs,
        "batch": int(example_inputs[0].shape[0]) if isinstance(example_inputs[0], torch.Tensor) else None,
    }
    if measure_memory:
        out["memory_reduction"] = res["teacher"]["peak_memory_mb"] / res["student"]["peak_memory_mb"]
    return out
