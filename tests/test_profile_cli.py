"""`slimface profile` / `slimface bench`: counts and timings of teachers and student architectures."""

from __future__ import annotations

import json

import pytest

from slimface.cli import main
from slimface.compress.profile_cli import bench_report, profile_report, scale_config_to_full, student_space
from slimface.errors import ConfigError
from slimface.nn.super_layers import width_groups


@pytest.mark.parametrize("model", ["tpgan", "crgan", "pim"])
def test_profile_smallest_student_is_much_cheaper(model: str) -> None:
    r = profile_report(model, resolution=64, width_mult=0.25, student="smallest")
    assert isinstance(r["teacher"]["macs"], int) and isinstance(r["student"]["params"], int)
    assert r["student"]["macs"] < r["teacher"]["macs"] / 5
    largest = profile_report(model, resolution=64, width_mult=0.25, student="largest")
    assert r["student"]["macs"] < largest["student"]["macs"]


def test_profile_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "crgan", "--resolution", "64", "--width-mult", "0.125", "--student", "smallest",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["teacher"]["macs"] > out["student"]["macs"] > 0
    assert out["mac_reduction"] == pytest.approx(out["teacher"]["macs"] / out["student"]["macs"])


def test_profile_rejects_a_config_of_the_wrong_length(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "crgan", "--resolution", "64", "--student", "8_8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "8_8" in err and len(err.splitlines()) == 1


def test_scale_config_to_full_keeps_width_fractions() -> None:
    small_net, small_space = student_space("crgan", 64, 3, 0.25)
    cfg = small_space.largest()
    code = scale_config_to_full("crgan", small_space.encode(cfg), 64, 3, 0.25)
    full_net, full_space = student_space("crgan", 128, 3, 1.0)
    full_cfg = full_space.decode(code)
    full_widths = width_groups(full_net)
    shared = set(cfg) & set(full_cfg)
    assert shared and all(full_cfg[g] == full_widths[g] for g in shared)
    smallest = full_space.decode(scale_config_to_full("crgan", small_space.encode(small_space.smallest()), 64, 3,
                                                      0.25))
    assert sum(smallest.values()) < sum(full_cfg.values())


def test_bench_report_protocol_fields() -> None:
    r = bench_report("crgan", resolution=64, width_mult=0.125, student="smallest", warmup=1, runs=3, threads=1)
    for key in ("teacher", "student"):
        assert r[key]["latency_ms"] > 0 and r[key]["peak_memory_mb"] > 0 and r[key]["runs"] == 3
    assert r["speedup"] == pytest.approx(r["teacher"]["latency_ms"] / r["student"]["latency_ms"])
    assert r["teacher_counts"]["macs"] > r["student_counts"]["macs"]


def test_bench_refuses_a_gpu_that_is_not_there() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no GPU"):
        bench_report("crgan", resolution=64, width_mult=0.125, device="cuda", warmup=1, runs=1)
