"""The mobile teacher (issue 18 item 4): the Trainer's early stop, the validation rank-1 it stops on,
its stage keys, and the tiny pipeline with ``student.mobile_teacher: true``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from slimface import stage_keys as K
from slimface.compress.mobile import MobileTeacherTask, ValidationRank1
from slimface.config import load_config
from slimface.models.judge import JudgeNotForTraining
from slimface.pipeline_config import PipelineConfig
from slimface.train.config import TrainConfig
from slimface.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


# ----------------------------------------------------------------------------- early stop
class _Counting:
    """A task whose eval metric is the step: it converges once that reaches ``at``."""

    def __init__(self, at: int) -> None:
        self.net = nn.Linear(2, 1)
        self.nets = {"net": self.net}
        self.optimizers = {"net": torch.optim.SGD(self.net.parameters(), lr=0.01)}
        self.schedulers: dict[str, Any] = {}
        self.at = at
        self.steps_run = 0

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        self.steps_run += 1
        loss = self.net(batch).pow(2).mean()
        self.optimizers["net"].zero_grad()
        loss.backward()
        self.optimizers["net"].step()
        return {"loss": float(loss.detach())}

    def on_eval(self, step: int) -> dict[str, float]:
        return {"step_seen": float(step)}

    def converged(self, metrics: dict[str, float]) -> bool:
        return metrics.get("eval/step_seen", 0.0) >= self.at


def _trainer(task: _Counting, out: Path) -> Trainer:
    data = [torch.randn(2) for _ in range(32)]
    cfg = TrainConfig(steps=20, batch_size=4, log_every=5, ckpt_every=0, eval_every=3, sample_every=0,
                      out_dir=out, progress=False, channels_last=False)
    return Trainer(task, data, cfg)


def test_training_stops_at_the_first_converged_evaluation_and_stays_stopped(tmp_path: Path) -> None:
    task = _Counting(at=7)
    metrics = _trainer(task, tmp_path).fit()
    assert metrics["step"] == 9 and task.steps_run == 9  # evaluations at 3, 6, 9: 9 is the first >= 7
    again = _Counting(at=7)
    assert _trainer(again, tmp_path).fit()["step"] == 9 and again.steps_run == 0  # the checkpoint is converged


def test_a_task_that_never_converges_trains_to_steps(tmp_path: Path) -> None:
    task = _Counting(at=1000)
    assert _trainer(task, tmp_path).fit()["step"] == 20 and task.steps_run == 20


# ----------------------------------------------------------------------------- validation rank-1
class _PixelRecognizer(nn.Module):
    """Embeds an image as its flattened pixels: rank-1 is exact nearest-image retrieval."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class _Echo(nn.Module):
    """Outputs the batch's frontal it was handed through the 'profile' slot."""

    def forward(self, profile: torch.Tensor, landmarks: Any = None) -> torch.Tensor:
        return profile


def _gallery(n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1


def test_validation_rank1_counts_nearest_gallery_hits() -> None:
    gallery = _gallery()
    subjects = ["a", "b", "c", "d", "e"]
    # probes: the gallery images themselves (all hits) and then two of them swapped (two misses)
    images = torch.cat([gallery, gallery[[1, 0]]])
    truth = subjects + ["a", "b"]
    probes = [{"profile": images[:4]}, {"profile": images[4:]}]
    r = ValidationRank1(probes, truth, gallery, subjects, _PixelRecognizer())
    assert r(_Echo()) == pytest.approx(100.0 * 5 / 7)


def test_validation_rank1_refuses_a_judge_and_mismatched_lists() -> None:
    from slimface.models.judge import Judge, JudgeInfo

    judge = Judge(_PixelRecognizer(), JudgeInfo("judge", "pixels", "test", "all"))
    gallery = _gallery(2)
    with pytest.raises(JudgeNotForTraining):
        ValidationRank1([{"profile": gallery}], ["a", "b"], gallery, ["a", "b"], judge)
    with pytest.raises(ValueError, match="subjects"):
        ValidationRank1([{"profile": gallery}], ["a"], gallery, ["a", "b"], _PixelRecognizer())


def test_mobile_task_converges_within_the_gap() -> None:
    task = MobileTeacherTask.__new__(MobileTeacherTask)
    task.teacher_rank1, task.gap = 80.0, 1.0
    assert task.converged({"eval/rank1": 79.0}) and task.converged({"eval/rank1": 85.0})
    assert not task.converged({"eval/rank1": 78.9}) and not task.converged({})


# ----------------------------------------------------------------------------- keys
def test_mobile_settings_stay_out_of_keys_while_off() -> None:
    off = load_config(PipelineConfig, TINY)
    changed = load_config(PipelineConfig, TINY, {"student.mobile_steps": 77})
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan"):
        assert K.own_settings(off, stage) == K.own_settings(changed, stage), stage
    on = load_config(PipelineConfig, TINY, {"student.mobile_teacher": True})
    assert K.own_settings(on, "supernet.tpgan")["student"]["mobile_teacher"] is True
    mobile = K.own_settings(on, "mobile.tpgan")["student"]
    assert mobile["mobile_steps"] == 1000 and "sampling" not in mobile and "steps" not in mobile["train"]
    stages = ["data", "recognizer", "teacher.tpgan", "mobile.tpgan", "supernet.tpgan", "search.tpgan",
              "finetune.tpgan"]
    assert K.dependencies("supernet.tpgan", stages, on) == ["data", "recognizer", "teacher.tpgan", "mobile.tpgan"]
    assert "mobile.tpgan" in K.dependencies("finetune.tpgan", stages, on)


def test_bad_mobile_settings_fail_at_load_time() -> None:
    from slimface.errors import ConfigError

    for key, value in (("student.mobile_steps", 0), ("student.mobile_gap", -1), ("student.mobile_eval_every", 0)):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_config(PipelineConfig, TINY, {key: value})
    for separable in ("none", "search"):
        with pytest.raises(ConfigError, match="mobile_teacher"):
            load_config(PipelineConfig, TINY, {"student.mobile_teacher": True, "student.separable": separable})


# ----------------------------------------------------------------------------- the tiny pipeline
def test_tiny_pipeline_with_a_mobile_teacher(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    args = [sys.executable, "-m", "slimface.cli", "run", "--config", str(TINY), "--out", str(tmp_path / "run"),
            "--no-progress", "--set", f"data.root={tmp_path / 'data'}", "--set", "student.mobile_teacher=true",
            "--set", "student.mobile_steps=4", "--set", "student.mobile_eval_every=2",
            "--only", "data", "recognizer", "judge", "teacher", "mobile", "supernet", "search", "finetune", "export",
            "evaluate", "report"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.index("[mobile.tpgan] running") < out.index("[supernet.tpgan] running")
    assert "mobile teacher: validation rank-1" in out and "starts from the tpgan mobile teacher" in out
    marker = json.loads((tmp_path / "run" / "stages" / "mobile.tpgan.json").read_text())
    outputs = marker["outputs"]
    assert 0 <= outputs["rank1"] <= 100 and 0 <= outputs["teacher_rank1"] <= 100
    assert 2 <= outputs["steps"] <= 4
    assert outputs["converged"] == (outputs["rank1"] >= outputs["teacher_rank1"] - 1.0)
    assert (tmp_path / "run" / "tpgan" / "mobile" / "generator.safetensors").is_file()
    # the evaluation separates the conversion loss (mobile vs teacher) from the pruning loss
    models = json.loads((tmp_path / "run" / "evaluate" / "results.json").read_text())["models"]
    assert "vs_teacher" in models["tpgan mobile teacher"]
    student = models["tpgan compressed"]
    for key, base in (("vs_teacher", "tpgan teacher"), ("vs_mobile", "tpgan mobile teacher")):
        for scorer, by_group in student[key].items():
            expected = student["rank1_by"][scorer]["avg"] - models[base]["rank1_by"][scorer]["avg"]
            assert abs(by_group["avg"]["diff"] - expected) < 1e-6, (key, scorer)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "Student minus mobile teacher" in report and "| tpgan mobile teacher |" in report
