"""Count and time architectures without training: teachers and their compressed students.

Latency and counts depend only on the architecture, so full-size (128x128, official widths)
students can be measured here with random weights -- the paper's Table 3/4 setting.
"""

from __future__ import annotations

from typing import Any

import torch

from slimface.errors import ConfigError
from slimface.models.registry import Generator, build_generator, get_family
from slimface.nn.profile import count_macs, count_params
from slimface.nn.super_layers import width_groups


def student_space(model: str, resolution: int, channels: int, width_mult: float):  # noqa: ANN201
    """The family's student design space at this size (built from its declarative spec)."""
    from slimface.compress.space import ConfigSpace

    supernet = build_generator(model, resolution, channels, width_mult, separable=True)
    choices = get_family(model).student_spec.choices(width_groups(supernet))
    return supernet, ConfigSpace(choices)


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
               student: str | None) -> tuple[Generator, Generator | None, str | None]:
    check_arch_args(model, resolution, width_mult)
    teacher = build_generator(model, resolution, channels, width_mult, separable=False)
    if not student:
        return teacher, None, None
    _, space = student_space(model, resolution, channels, width_mult)
    cfg = resolve_student(space, student)
    static = build_generator(model, resolution, channels, width_mult, separable=True, sub=cfg)
    return teacher, static, space.encode(cfg)


def profile_report(model: str, resolution: int = 128, width_mult: float = 1.0,
                   student: str | None = None, channels: int = 3) -> dict[str, Any]:
    """``{"teacher": {params, macs}, "student": {params, macs, config}, reductions}``."""
    teacher, stud, code = build_pair(model, resolution, channels, width_mult, student)
    report: dict[str, Any] = {"model": model, "resolution": resolution, "width_mult": width_mult}
    report["teacher"] = {"params": count_params(teacher), "macs": count_macs(teacher, teacher.example_inputs())}
    if stud is not None:
        report["student"] = {"params": count_params(stud), "macs": count_macs(stud, stud.example_inputs()),
                             "config": code}
        report["mac_reduction"] = report["teacher"]["macs"] / report["student"]["macs"]
        report["param_reduction"] = report["teacher"]["params"] / report["student"]["params"]
    return report


def bench_report(model: str, resolution: int = 128, width_mult: float = 1.0, student: str | None = "smallest",
                 warmup: int = 100, runs: int = 100, threads: int | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Latency/peak memory of teacher vs student at batch 1 (random weights; eval mode)."""
    from slimface.evaluate.bench import benchmark_teacher_student

    teacher, stud, code = build_pair(model, resolution, 3, width_mult, student or "smallest")
    assert stud is not None
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no GPU is available here; use --device cpu")
    teacher.eval(), stud.eval()
    inputs = teacher.example_inputs()
    report = benchmark_teacher_student(teacher, stud, inputs, warmup=warmup, runs=runs, threads=threads,
                                       device=device)
    report.update({"model": model, "resolution": resolution, "width_mult": width_mult, "student_config": code})
    for key, net in (("teacher_counts", teacher), ("student_counts", stud)):
        report[key] = {"params": count_params(net), "macs": count_macs(net, inputs)}
    return report


def scale_config_to_full(model: str, code: str, resolution: int, channels: int, width_mult: float) -> str:
    """Map a config found at a small preset onto the full-size (128, width 1.0) design space.

    Each group keeps its *fraction* of the full width (rounded to the nearest allowed choice), so
    the full-size student has the same shape as the one searched on this CPU; groups that exist only
    at full size take the median fraction of the others.
    """
    import statistics

    small_net, small_space = student_space(model, resolution, channels, width_mult)
    small_full = width_groups(small_net)
    cfg = small_space.decode(code)
    full_net, full_space = student_space(model, 128, 3, 1.0)
    fractions = {g: c / small_full[g] for g, c in cfg.items() if g in small_full}
    default = statistics.median(fractions.values()) if fractions else 0.0
    full_widths = width_groups(full_net)
    out: dict[str, int] = {}
    for group, choices in full_space.choices.items():
        target = fractions.get(group, default) * full_widths[group]
        out[group] = min(choices, key=lambda c: (abs(c - target), c))
    return full_space.encode(out)
