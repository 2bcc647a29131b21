"""Latency/memory protocol of slimface.evaluate.bench and the bench_latency script."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from slimface.evaluate.bench import (
    benchmark_callables,
    benchmark_pair,
    benchmark_teacher_student,
    param_bytes,
    peak_memory_bytes,
)

ROOT = Path(__file__).resolve().parents[1]


class Logged(nn.Module):
    """Records each call's name in a shared log; optionally sleeps a known time."""

    def __init__(self, name: str, log: list[str], sleep_s: float = 0.0, width: int = 1) -> None:
        super().__init__()
        self.name, self.log, self.sleep_s = name, log, sleep_s
        self.w = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x * self.w[0]


class KnownMemory(nn.Module):
    """Activation peak is exactly 3 x input bytes: a=x*s (1), b=tanh(a) (2), del a (1), cat -> 2 more (3)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1000))  # 4000 bytes of weights
        self.register_buffer("shift", torch.zeros(250))  # 1000 bytes of buffers

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        a = x * self.scale[0]
        b = a.tanh()
        del a
        return torch.cat([b, b], 1)


def _inputs(res: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, 3, res, res), torch.zeros(1, 5, 2)


def test_warmup_runs_and_alternation() -> None:
    log: list[str] = []
    models = {"a": Logged("a", log), "b": Logged("b", log), "c": Logged("c", log)}
    res = benchmark_pair(models, _inputs(), warmup=4, runs=6, measure_memory=False)
    assert len(log) == 3 * (4 + 6)
    assert log.count("a") == log.count("b") == log.count("c") == 10
    timed = log[3 * 4 :]
    chunks = [timed[i : i + 3] for i in range(0, len(timed), 3)]
    assert all(sorted(c) == ["a", "b", "c"] for c in chunks)  # every run calls each model once
    assert [c[0] for c in chunks] == ["a", "b", "c", "a", "b", "c"]  # the starting model rotates
    for r in res.values():
        assert r["runs"] == 6 and r["warmup"] == 4 and len(r["times_ms"]) == 6
        assert r["device"] == "cpu" and r["threads"] == torch.get_num_threads()


def test_sleep_model_measures_its_sleep() -> None:
    log: list[str] = []
    res = benchmark_pair({"s": Logged("s", log, sleep_s=0.03)}, _inputs(), warmup=1, runs=5, measure_memory=False)
    r = res["s"]
    assert 29.9 <= r["latency_median_ms"] <= 60.0
    assert r["latency_ms"] >= 29.9 and r["latency_std_ms"] >= 0.0


def test_teacher_student_speedup_and_memory() -> None:
    log: list[str] = []
    teacher = Logged("t", log, sleep_s=0.024, width=250_000)  # ~1 MB of weights
    student = Logged("s", log, sleep_s=0.004, width=1)
    out = benchmark_teacher_student(teacher, student, _inputs(), warmup=2, runs=5)
    assert out["speedup"] > 2.0  # true ratio ~6x; loose for a loaded machine
    assert out["memory_reduction"] > 1.0
    assert out["teacher"]["params"] == 250_000 and out["student"]["params"] == 1
    assert set(out) >= {"teacher", "student", "speedup", "memory_reduction", "threads", "device"}


def test_threads_recorded_and_restored() -> None:
    before = torch.get_num_threads()
    res = benchmark_pair({"m": Logged("m", [])}, _inputs(), warmup=0, runs=2, threads=1, measure_memory=False)
    assert res["m"]["threads"] == 1
    assert torch.get_num_threads() == before


def test_known_cpu_memory_peak() -> None:
    x, lm = _inputs(64)  # 3*64*64*4 = 49152 bytes
    mem = peak_memory_bytes(KnownMemory(), (x, lm))
    s = x.numel() * 4
    assert mem["param_bytes"] == 5000
    assert mem["activation_peak_bytes"] == 3 * s
    assert mem["peak_bytes"] == 3 * s + 5000
    res = benchmark_pair({"k": KnownMemory()}, (x, lm), warmup=0, runs=1)
    assert res["k"]["peak_memory_mb"] == pytest.approx((3 * s + 5000) / 2**20)


def test_conv_memory_at_least_its_activations() -> None:
    """A conv stack's activation peak covers two live feature maps (conv out + relu out)."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    x, lm = _inputs(32)
    mem = peak_memory_bytes(Wrap(), (x, lm))
    fmap = 16 * 32 * 32 * 4
    assert mem["activation_peak_bytes"] >= 2 * fmap
    assert mem["param_bytes"] == param_bytes(net)


def test_benchmark_callables() -> None:
    calls = {"f": 0, "g": 0}

    def f() -> None:
        calls["f"] += 1
        time.sleep(0.01)

    def g() -> None:
        calls["g"] += 1

    res = benchmark_callables({"f": f, "g": g}, warmup=2, runs=4, threads=3)
    assert calls == {"f": 6, "g": 6}
    assert res["f"]["latency_ms"] > res["g"]["latency_ms"]
    assert res["f"]["threads"] == 3
    with pytest.raises(ValueError):
        benchmark_callables({"f": f}, runs=0)


def test_blocks_time_each_callable_in_runs_after_one_settling_call() -> None:
    log: list[str] = []
    timed: list[str] = []
    fns = {n: (lambda n=n: log.append(n)) for n in "abc"}

    def timer(fn) -> float:  # noqa: ANN001
        fn()
        timed.append(log[-1])
        return 0.001

    from slimface.evaluate.bench import _interleaved

    times = _interleaved(fns, warmup=1, runs=5, timer=timer, block=2)
    assert {n: len(t) for n, t in times.items()} == {"a": 5, "b": 5, "c": 5}
    after_warmup = log[3:]
    # rounds of (settle + 2 timed) per callable, the first callable rotating; the last round has 1 left
    assert "".join(after_warmup) == "aaabbbccc" + "bbbcccaaa" + "ccaabb"
    assert "".join(timed) == "aabbcc" + "bbccaa" + "cab"
    with pytest.raises(ValueError, match="block"):
        _interleaved(fns, warmup=0, runs=1, timer=timer, block=0)


def _load_script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "benchmarks" / "bench_latency.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_latency"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_latency_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load_script()
    out = tmp_path / "bench.json"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"warmup": 1, "runs": 2, "resolution": 32, "student_kwargs": {"width": 4}}))
    res = script.main([
        "--spec", str(spec),
        "--teacher", "bench_latency:demo_generator", "--teacher-kwargs", '{"width": 16}',
        "--student", "bench_latency:demo_generator", "--threads", "1", "--out", str(out),
    ])
    text = capsys.readouterr().out
    assert "| teacher |" in text and "| student |" in text and "speedup" in text
    data = json.loads(out.read_text())
    assert data["teacher"]["runs"] == 2 and data["teacher"]["warmup"] == 1
    assert data["teacher"]["params"] > data["student"]["params"]
    assert data["resolution"] == 32 and res["memory_reduction"] > 1.0
    # models passed from Python
    t = script.demo_generator(width=8)
    s = script.demo_generator(width=4)
    res2 = script.main(["--warmup", "0", "--runs", "1", "--resolution", "32"], teacher=t, student=s)
    assert res2["student"]["runs"] == 1
    with pytest.raises(SystemExit):
        script.main(["--teacher", "no_such_module_xyz:f", "--student", "x:y"])


def _fake_bench_entry(with_full_runtimes: bool) -> dict:
    def lat(ms: float) -> dict:
        return {"latency_ms": ms, "latency_median_ms": ms, "peak_memory_mb": 1.0, "params": 10, "macs": 100}

    run = {"teacher": lat(20.0), "student": lat(10.0), "speedup": 2.0, "memory_reduction": 1.0, "threads": 1}
    entry = {"run_size": run,
             "runtimes": {"PyTorch fp32": lat(10.0), "ONNX Runtime fp32": lat(5.0), "ONNX Runtime int8": lat(4.0)}}
    full = {"teacher": lat(2000.0), "student": lat(80.0), "speedup": 25.0, "memory_reduction": 30.0, "threads": 1,
            "teacher_counts": {"params": 1000, "macs": 10000}, "student_counts": {"params": 10, "macs": 100},
            "student_config": "8_8"}
    if with_full_runtimes:
        full["runtimes"] = {
            "PyTorch fp32": {"latency_ms": 80.0, "latency_median_ms": 79.0, "speedup_vs_pytorch": 1.0},
            "ONNX Runtime fp32": {"latency_ms": 40.0, "latency_median_ms": 39.0, "speedup_vs_pytorch": 2.0},
            "ONNX Runtime int8": {"latency_ms": 20.0, "latency_median_ms": 19.0, "speedup_vs_pytorch": 4.0},
            "int8_vs_ort_fp32": 2.0,
        }
    entry["full_size"] = full
    return entry


@pytest.mark.parametrize("with_full_runtimes", [True, False])
def test_report_deployment_table_full_size_rows(tmp_path: Path, with_full_runtimes: bool) -> None:
    from types import SimpleNamespace

    from slimface.evaluate.report import write_report

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench.json").write_text(json.dumps({"tpgan": _fake_bench_entry(with_full_runtimes)}))
    from slimface import stage_keys
    from slimface.evaluate.config import BenchConfig
    from slimface.evaluate.context import RunContext

    def provenance():  # noqa: ANN202
        prov = stage_keys.provenance(tmp_path, ["tpgan"])
        return (prov, *stage_keys.provenance_lines(prov))

    unused = SimpleNamespace  # what the report never reads
    ctx = RunContext(name="t", out=tmp_path, seed=0, device=torch.device("cpu"), families=["tpgan"], stages=[],
                     data_kind="synth", resolution=64, channels=3, teacher_widths={"tpgan": 0.25}, eval_batch_size=8,
                     eval_probes_per_group=0, dlib_probes_per_group=0, bench=BenchConfig(), recognizer_info={},
                     data=unused, pair_dataset=unused, batches=unused, teacher=unused, recognizer=unused,
                     judges=unused, provenance=provenance)
    md = write_report(ctx).read_text()
    table = md.split("## Deployment runtimes")[1].split("\n## ")[0]
    rows = [l for l in table.splitlines() if l.startswith("| tpgan")]
    full_rows = [l for l in rows if "128² ×1.0 (official widths, random weights)" in l]
    assert len(rows) == 3 + len(full_rows)
    assert all("64² ×0.25" in l for l in rows if l not in full_rows)
    res = json.loads((tmp_path / "report" / "results.json").read_text())["families"]["tpgan"]
    if with_full_runtimes:
        assert len(full_rows) == 3
        assert "| ONNX Runtime int8 | 20.00 | 4.00× | — | — |" in full_rows[2]
        assert res["full_size_runtimes"]["int8_vs_ort_fp32"] == 2.0
        assert res["full_size_runtimes"]["ONNX Runtime fp32"]["latency_ms"] == 40.0
    else:
        assert not full_rows and "full_size_runtimes" not in res
