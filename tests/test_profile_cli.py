"""`slimface profile` / `slimface bench`: counts and timings of teachers and student architectures."""

from __future__ import annotations

import json

import pytest

from slimface.cli import main
from slimface.cli_reports import profile_report
from slimface.compress.extract import scale_config_to_full, student_space
from slimface.evaluate.arch_bench import bench_report
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


def test_bench_report_batch_repeats_the_input_and_counts_macs_per_image() -> None:
    one = bench_report("crgan", resolution=64, width_mult=0.125, student="smallest", warmup=0, runs=1, threads=1)
    four = bench_report("crgan", resolution=64, width_mult=0.125, student="smallest", warmup=0, runs=1, threads=1,
                        batch=4)
    assert (one["batch"], four["batch"]) == (1, 4)
    assert four["teacher_counts"] == one["teacher_counts"] and four["student_counts"] == one["student_counts"]
    for key in ("teacher", "student"):  # four images' activations live at once
        assert four[key]["activation_peak_mb"] > 2 * one[key]["activation_peak_mb"]


def test_bench_cli_refuses_a_batch_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "crgan", "--resolution", "64", "--width-mult", "0.125", "--batch", "0"]) == 2
    assert "--batch 0" in capsys.readouterr().err


def test_bench_refuses_a_gpu_that_is_not_there() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no GPU"):
        bench_report("crgan", resolution=64, width_mult=0.125, device="cuda", warmup=1, runs=1)


RUNTIME_LABELS = ("PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8")


def _check_runtimes(rts: dict, runs: int) -> None:
    for label in RUNTIME_LABELS:
        r = rts[label]
        assert r["latency_ms"] > 0 and r["latency_median_ms"] > 0 and r["runs"] == runs and r["threads"] == 1
        base = rts["PyTorch fp32"]
        assert r["speedup_vs_pytorch"] == pytest.approx(base["latency_ms"] / r["latency_ms"])
    assert rts["PyTorch fp32"]["speedup_vs_pytorch"] == pytest.approx(1.0)
    assert isinstance(rts["int8_vs_ort_fp32"], float)
    assert rts["int8_vs_ort_fp32"] == pytest.approx(rts["ONNX Runtime fp32"]["latency_ms"]
                                                    / rts["ONNX Runtime int8"]["latency_ms"])
    # ORT fp32 reproduces PyTorch; int8 stays close to both (tanh outputs in [-1, 1])
    assert rts["onnx_max_abs_diff"] < 1e-4
    assert rts["int8_mean_abs_diff_vs_pytorch"] < 0.05 and rts["int8_max_abs_diff_vs_pytorch"] < 0.5
    assert 0 < rts["int8"]["mean_abs_diff"] < 0.05
    assert rts["int8"]["int8_ops"].get("QLinearConv", 0) > 0  # really quantized
    assert rts["calibration"]["samples"] == rts["int8"]["n_calibration"] > 0


def test_bench_report_runtimes_keys_and_agreement() -> None:
    r = bench_report("crgan", resolution=64, width_mult=0.125, student="smallest", warmup=1, runs=3,
                     threads=1, runtimes=True, n_calibration=4)
    _check_runtimes(r["runtimes"], runs=3)
    assert r["runtimes"]["calibration"]["samples"] == 4 and r["model"] == "crgan"
    assert r["student_counts"]["macs"] > 0


def test_student_runtimes_report_landmark_model_given_calibration() -> None:
    """A landmark-driven generator (grid_sample patches): ORT fp32/int8 against PyTorch."""
    import torch

    from slimface.deploy.calibration import random_calibration
    from slimface.evaluate.arch_bench import student_runtimes_report
    from test_deploy import RES, _inputs, _model

    model = _model()
    x, lm = _inputs()
    cal = [{"image": xi.numpy()[None], "landmarks": li.numpy()[None]} for xi, li in zip(*_inputs(b=6, seed=5))]
    r = student_runtimes_report(model, (x, lm), warmup=1, runs=2, threads=1, calibration=cal)
    _check_runtimes(r, runs=2)
    assert r["calibration"] == {"samples": 6, "source": "given"}
    rnd = random_calibration((torch.zeros(1, 3, RES, RES), lm), n=3, jitter_px=1.0)
    assert len(rnd) == 3 and rnd[0]["image"].shape == (1, 3, RES, RES)
    assert -1.0 <= rnd[0]["image"].min() and rnd[0]["image"].max() <= 1.0
    assert 0 < abs(rnd[0]["landmarks"] - lm.numpy()).max() <= 1.0


def test_bench_cli_runtimes_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "crgan", "--resolution", "64", "--width-mult", "0.125", "--student", "smallest",
                 "--warmup", "1", "--runs", "2", "--threads", "1", "--runtimes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["speedup"] > 0 and "teacher" in out  # the existing report is still there
    _check_runtimes(out["runtimes"], runs=2)
    assert main(["bench", "crgan", "--resolution", "64", "--width-mult", "0.125", "--warmup", "1", "--runs", "2",
                 "--threads", "1", "--json"]) == 0
    assert "runtimes" not in json.loads(capsys.readouterr().out)


def test_bench_runtimes_on_a_missing_gpu_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "crgan", "--resolution", "64", "--runtimes", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no GPU" in err and len(err.splitlines()) == 1


def test_ort_providers_prefer_tensorrt_then_cuda_and_refuse_a_cpu_only_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    from slimface.deploy.runtime import ort_providers

    assert ort_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert ort_providers("cuda") == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_providers("cuda:1") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        ort_providers("cuda")
