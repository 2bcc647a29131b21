"""The reports of the ``slimface profile`` command (``slimface bench``'s is
:func:`slimface.evaluate.arch_bench.bench_report`, which the bench stage shares)."""

from __future__ import annotations

from typing import Any

from slimface.evaluate.arch_bench import build_pair
from slimface.nn.profile import count_macs, count_params


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


__all__ = ["profile_report"]
