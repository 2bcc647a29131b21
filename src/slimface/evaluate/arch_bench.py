"""Time architectures without training: teachers and their compressed students.

Latency and counts depend only on the architecture, so full-size (128x128, official widths)
students can be measured here with random weights -- the paper's Table 3/4 setting. The bench stage
(full-size comparison) and ``slimface bench`` use :func:`bench_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from slimface.compress.extract import student_space
from slimface.deploy.calibration import random_calibration
from slimface.config import check_kernel_cap
from slimface.errors import ConfigError, Int8RefusedError
from slimface.evaluate.bench import RUNTIME_LABELS
from slimface.families import build_generator, get_family
from slimface.models.blocks import convertible_convs
from slimface.models.generator import Generator
from slimface.nn.profile import count_macs, count_params


def check_arch_args(model: str, resolution: int, width_mult: float) -> None:
    """Reject sizes no generator can be built at, as one-line ConfigErrors (before any building)."""
    get_family(model)  # unknown model -> ConfigError naming the choices
    if resolution not in (64, 128):
        raise ConfigError(f"--resolution {resolution}: must be 64 or 128")
    if not 0 < width_mult <= 4:
        raise ConfigError(f"--width-mult {width_mult:g}: must be in (0, 4], e.g. 1.0 (official widths) or 0.25")


def resolve_student(space: Any, student: str) -> dict[str, int]:
    """'smallest' / 'largest' / a config string -> a config; a string of the wrong length is named
    briefly (the full group list of a supernet runs to hundreds of names)."""
    if student == "smallest":
        return space.smallest()
    if student == "largest":
        return space.largest()
    parts = str(student).strip().split("_")
    if len(parts) != len(space.groups):
        raise ConfigError(
            f"--student {student!r} has {len(parts)} width(s) but this model has {len(space.groups)} prunable "
            "groups; pass 'smallest', 'largest' or a config string from this model's search "
            "(same --resolution and --width-mult)"
        )
    try:
        return space.decode(student)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"--student {student!r} is not a config of this model: {exc}") from exc


def build_pair(model: str, resolution: int, channels: int, width_mult: float,
               student: str | None, separable: bool | Sequence[str] = True, max_kernel: int | None = None,
               ) -> tuple[Generator, Generator | None, str | None]:
    """Teacher and static student (config ``student``, conv types ``separable``: a run's
    ``Generator.separable``, all separable by default; kernel cap ``max_kernel``: a run's
    ``Generator.max_kernel``)."""
    check_arch_args(model, resolution, width_mult)
    check_kernel_cap(max_kernel, "--max-kernel")
    teacher = build_generator(model, resolution, channels, width_mult, separable=False)
    if not student:
        return teacher, None, None
    supernet, space = student_space(model, resolution, channels, width_mult)
    cfg = resolve_student(space, student)
    if not isinstance(separable, bool):  # names from another size of the model: the ones this size has
        have = set(convertible_convs(supernet))
        separable = [n for n in separable if n in have]
    static = build_generator(model, resolution, channels, width_mult, separable=separable, sub=cfg,
                             max_kernel=max_kernel)
    return teacher, static, space.encode(cfg)


def batched(example_inputs: tuple, batch: int) -> tuple:
    """``example_inputs`` (batch 1) repeated to ``batch`` rows: the same image ``batch`` times."""
    if batch < 1:
        raise ConfigError(f"--batch {batch}: use a batch size >= 1")
    return tuple(t.repeat(batch, *([1] * (t.dim() - 1))) for t in example_inputs)


def read_run_json(run: Path, *parts: str) -> dict[str, Any]:
    """A JSON file a finished run wrote (``run/parts...``); a missing one is a one-line ConfigError
    that says to finish the run."""
    import json

    path = run.joinpath(*parts)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run}: {path} is missing; finish the run (slimface run --out {run}) first") from None


def run_student(run: Path, model: str, size: tuple[int, float] = (128, 1.0)) -> tuple[str, dict[str, Any]]:
    """A finished run's searched student mapped to ``size`` (default full size): its config string and
    its exported design (``separable``, ``max_kernel``), as :func:`build_pair` takes them; a run
    without a search result or export is a one-line ConfigError."""
    from slimface.compress.extract import scale_config_to_full

    result = read_run_json(run, model, "search", "result.json")
    arch = read_run_json(run, model, "export", "arch.json")["arch"]
    code = scale_config_to_full(model, result["config"], arch["resolution"], arch["channels"], arch["width_mult"],
                                size, result.get("channel_multiple"))
    return code, {"separable": arch.get("separable", True), "max_kernel": arch.get("max_kernel")}


def bench_report(model: str, resolution: int = 128, width_mult: float = 1.0, student: str | None = "smallest",
                 warmup: int = 100, runs: int = 100, threads: int | None = None,
                 device: str = "cpu", runtimes: bool = False, n_calibration: int = 8,
                 fold_bn: bool = True, separable: bool | Sequence[str] = True,
                 torch_mode: str = "eager", max_kernel: int | None = None,
                 int8_fp32_modules: Sequence[str] = (), batch: int = 1) -> dict[str, Any]:
    """Latency/peak memory of teacher vs student at ``batch`` (1: the paper's Table 4; 16: a served
    batch, where a GPU fills up) on random weights (eval mode; batch norms
    folded into their convs unless ``fold_bn`` is False; both run in ``torch_mode``, see
    :mod:`slimface.deploy.torch_modes`).

    ``runtimes``: also compare the *student* under PyTorch fp32 / ONNX Runtime fp32 / ONNX Runtime
    int8 and the teacher under PyTorch fp32 / ONNX Runtime fp32, all in one interleaved run (see
    :func:`student_runtimes_report`), stored under ``report["runtimes"]`` with the teacher/student
    ``ratios`` of that run; ``int8_fp32_modules``: the student's modules (names or patterns) kept fp32
    in int8, as its run's export chose them). Every entry has p50/p90 latencies; ``machine`` (CPU name and int8
    features), ``versions`` and ``threads`` say where they were measured.
    """
    from slimface.deploy.torch_modes import check_mode
    from slimface.evaluate.bench import benchmark_teacher_student

    check_mode(torch_mode)
    teacher, stud, code = build_pair(model, resolution, 3, width_mult, student or "smallest", separable, max_kernel)
    assert stud is not None
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no GPU is available here; use --device cpu")
    teacher.eval(), stud.eval()
    one = teacher.example_inputs()
    inputs = batched(one, batch)
    report = benchmark_teacher_student(teacher, stud, inputs, warmup=warmup, runs=runs, threads=threads,
                                       device=device, fold_bn=fold_bn, torch_mode=torch_mode)
    report.update({"model": model, "resolution": resolution, "width_mult": width_mult, "student_config": code})
    for key, net in (("teacher_counts", teacher), ("student_counts", stud)):
        report[key] = {"params": count_params(net), "macs": count_macs(net, one)}  # per image
    if runtimes:  # the student under each runtime, the teacher under PyTorch and ONNX Runtime, one run
        report["runtimes"] = student_runtimes_report(stud, inputs, warmup=warmup, runs=runs, threads=threads,
                                                     n_calibration=n_calibration, fold_bn=fold_bn, teacher=teacher,
                                                     int8_fp32_modules=int8_fp32_modules, device=device)
    from slimface.deploy.latency_table import library_versions, machine_info

    report["machine"], report["versions"] = machine_info(), library_versions()
    report["threads"] = report.get("threads") or torch.get_num_threads()
    return report


def student_runtimes_report(student: torch.nn.Module, example_inputs: tuple, warmup: int = 100, runs: int = 100,
                            threads: int | None = None, calibration: list[dict[str, Any]] | None = None,
                            n_calibration: int = 8, quantize_kwargs: dict[str, Any] | None = None,
                            fold_bn: bool = True, teacher: torch.nn.Module | None = None,
                            int8_fp32_modules: Sequence[str] = (), device: str = "cpu") -> dict[str, Any]:
    """One student under PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8, timed in one process.

    The student is exported with :func:`~slimface.deploy.onnx_export.export_onnx` into a temporary
    directory (checked against PyTorch with ``check_onnx``), quantized with
    :func:`~slimface.deploy.quantize.quantize_int8` on ``calibration`` (default:
    :func:`random_calibration` of ``n_calibration`` batch-1 feeds), and the three runtimes are timed
    with :func:`~slimface.evaluate.bench.benchmark_runtimes` (interleaved run by run, same warmup /
    runs / threads; ORT sessions get ``threads`` intra-op threads).

    Returns ``{label: {latency_ms, latency_median_ms, ..., speedup_vs_pytorch}}`` for the labels of
    :data:`RUNTIME_LABELS`, plus ``int8_vs_ort_fp32`` (ORT fp32 mean latency / ORT int8 mean latency:
    above 1 means int8 is faster), ``int8_vs_ort_fp32_median``, ``onnx_max_abs_diff`` (ORT fp32 vs
    PyTorch on ``example_inputs``), ``int8_max_abs_diff_vs_pytorch`` / ``int8_mean_abs_diff_vs_pytorch``
    (ORT int8 vs PyTorch on ``example_inputs``), ``int8`` (the quantization report: output diffs vs ORT fp32 on the calibration inputs,
    op types run in int8 / left in fp32) and ``calibration`` (how many feeds, where from).
    ``int8_fp32_modules``: module names or fnmatch patterns of ``student`` that int8 keeps fp32
    (:func:`~slimface.deploy.latency_table.fp32_nodes`).
    On a GPU ``device``: PyTorch runs there and ONNX Runtime fp32 on its GPU providers
    (:func:`~slimface.deploy.runtime.ort_providers`: TensorRT, CUDA); int8 is a CPU deployment here
    (its kernels and guard are the CPU's), so it is left out and ``int8_refused`` says so.
    With ``teacher``, the teacher is exported too and timed under PyTorch fp32 and ONNX Runtime fp32 in
    the same interleaved run (labels :data:`TEACHER_LABELS`), and ``ratios`` holds the teacher/student
    speed-ups of that run (:func:`~slimface.evaluate.bench.runtime_ratios`).
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.quantize import quantize_int8
    from slimface.deploy.runtime import check_onnx, load_frontalizer
    from slimface.evaluate.bench import TEACHER_LABELS, benchmark_runtimes, device_call, runtime_ratios
    from slimface.nn.fold import inference_copy

    student = student.eval().cpu()
    inputs = tuple(t.cpu() for t in example_inputs)
    source = "given" if calibration is not None else "random images in [-1,1], canonical landmarks +-1 px"
    calib = calibration if calibration is not None else random_calibration(inputs, n_calibration)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slimface-runtimes-") as tmp:
        fp32_path = export_onnx(student, inputs, Path(tmp) / "student.onnx")
        out["onnx_max_abs_diff"] = check_onnx(student, fp32_path, inputs)
        onnx = {RUNTIME_LABELS[1]: load_frontalizer(fp32_path, device, threads=threads)}
        qkw = dict(quantize_kwargs or {})
        if int8_fp32_modules:
            from slimface.deploy.latency_table import fp32_nodes

            qkw["nodes_to_exclude"] = fp32_nodes(fp32_path, student, int8_fp32_modules)
        try:
            if device != "cpu":
                raise Int8RefusedError(f"ONNX Runtime int8 is timed on the CPU only; bench it without --device {device}")
            rep = quantize_int8(fp32_path, Path(tmp) / "student.int8.onnx", calib, **qkw)
        except Int8RefusedError as e:  # int8 refused on this CPU: time the other runtimes, say why
            info = {"refused": str(e)}
            out["int8_refused"] = str(e)
        else:
            info = rep.as_dict()
            info.pop("path", None)
            onnx[RUNTIME_LABELS[2]] = load_frontalizer(rep.path, threads=threads)
            x, lm = inputs[0], (inputs[1] if len(inputs) > 1 else None)
            with torch.inference_mode():
                ref = student(x, lm).float().numpy().astype(np.float64)
            int8_out = onnx[RUNTIME_LABELS[2]](x.numpy(), None if lm is None else lm.numpy())
            d = np.abs(np.asarray(int8_out, dtype=np.float64) - ref)
            out["int8_max_abs_diff_vs_pytorch"] = float(d.max())
            out["int8_mean_abs_diff_vs_pytorch"] = float(d.mean())
        if teacher is not None:  # the teacher in the same run, under PyTorch and under ONNX Runtime
            teacher = teacher.eval().cpu()
            t_path = export_onnx(teacher, inputs, Path(tmp) / "teacher.onnx")
            t_copy, _ = inference_copy(teacher, inputs, fold_bn)
            t_call = device_call(t_copy, inputs, device)
            onnx[TEACHER_LABELS[0]] = lambda _xn, _lmn: t_call()  # PyTorch: its inputs already placed
            onnx[TEACHER_LABELS[1]] = load_frontalizer(t_path, device, threads=threads)
        timed = benchmark_runtimes(student, inputs, onnx, warmup=warmup, runs=runs, threads=threads,
                                   fold_bn=fold_bn, device=device)
        del onnx  # release the sessions before the temporary files go
    out.update({label: timed[label] for label in RUNTIME_LABELS + TEACHER_LABELS if label in timed})
    out["ratios"] = runtime_ratios(timed)
    if RUNTIME_LABELS[2] in timed:
        fp, q = timed[RUNTIME_LABELS[1]], timed[RUNTIME_LABELS[2]]
        out["int8_vs_ort_fp32"] = fp["latency_ms"] / q["latency_ms"]
        out["int8_vs_ort_fp32_median"] = fp["latency_median_ms"] / q["latency_median_ms"]
    out["int8"] = info
    out["calibration"] = {"samples": len(calib), "source": source}
    out["threads"], out["warmup"], out["runs"] = timed[RUNTIME_LABELS[0]]["threads"], warmup, runs
    return out
