"""Fair, portable latency figures: one interleaved run, ratios, p50/p90, threads and CPU name."""

from __future__ import annotations

import pytest

from slimface.evaluate.arch_bench import bench_report
from slimface.evaluate.bench import RUNTIME_LABELS, TEACHER_LABELS, _stats, runtime_ratios
from test_compress_space import TOY_FAMILY


def test_stats_have_p50_p90() -> None:
    s = _stats([i / 1000.0 for i in range(1, 11)])  # 1..10 ms
    assert s["latency_p50_ms"] == pytest.approx(5.5) and s["latency_p90_ms"] == pytest.approx(9.1)


def test_ratios_come_from_one_run() -> None:
    timed = {RUNTIME_LABELS[0]: {"latency_p50_ms": 10.0}, RUNTIME_LABELS[1]: {"latency_p50_ms": 4.0},
             TEACHER_LABELS[0]: {"latency_p50_ms": 80.0}, TEACHER_LABELS[1]: {"latency_p50_ms": 20.0}}
    r = runtime_ratios(timed)
    assert r["student vs teacher, both PyTorch fp32"] == 8.0
    assert r["student vs teacher, both ONNX Runtime fp32"] == 5.0
    assert r["student ONNX Runtime fp32 vs teacher PyTorch fp32"] == 20.0
    assert "student ONNX Runtime int8 vs teacher ONNX Runtime fp32" not in r  # not timed: no ratio


def test_bench_json_times_the_teacher_under_onnx_runtime_too() -> None:
    rep = bench_report(TOY_FAMILY.name, 64, 1.0, "smallest", warmup=2, runs=10, threads=1, runtimes=True,
                       n_calibration=2)
    assert rep["machine"]["cpu"] and rep["threads"] == 1 and "onnxruntime" in rep["versions"]
    rts = rep["runtimes"]
    for label in RUNTIME_LABELS + TEACHER_LABELS:
        assert rts[label]["latency_p50_ms"] > 0 and rts[label]["latency_p90_ms"] >= rts[label]["latency_p50_ms"]
        assert rts[label]["runs"] == 10
    assert set(rts["ratios"]) >= {"student vs teacher, both PyTorch fp32", "student vs teacher, both ONNX Runtime fp32",
                                  "student ONNX Runtime int8 vs teacher ONNX Runtime fp32"}
    t, s = rep["teacher"], rep["student"]
    assert t["latency_p50_ms"] > 0 and s["latency_p90_ms"] > 0
