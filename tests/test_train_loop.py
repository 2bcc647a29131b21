"""The Trainer: training, logs, samples, resume (in-process and after SIGKILL/SIGTERM of a real process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from slimface.config import from_dict
from slimface.errors import CheckpointError, ConfigError, DataError
from slimface.fileio import safe_load
from slimface.train.checkpoint import list_checkpoints, load_latest
from slimface.train.logging import read_scalars
from slimface.train.loop import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
import _train_toy as toy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_train_toy.py"
LINE_RE = re.compile(r"^step (\d+)/(\d+)  loss_G \S+  loss_D \S+  l1 \S+  [\d.e+]+ it/s$")


def _final_state(out: Path) -> dict:
    state, _ = load_latest(out / "checkpoints")
    return state


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for net in ("G", "D"):
        assert a["nets"][net].keys() == b["nets"][net].keys()
        for k in a["nets"][net]:
            assert torch.equal(a["nets"][net][k], b["nets"][net][k]), f"{net}.{k} differs"
    for opt in ("G", "D"):
        sa, sb = a["optimizers"][opt]["state"], b["optimizers"][opt]["state"]
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k]))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--out", str(out), "--steps", "40", "--ckpt-every", "5", *extra]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"process ended early: {proc.communicate()}"
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a loaded 2-core box: intra-op threads only add contention (the script does the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Uninterrupted 40-step run, in-process with the script's settings (saves one interpreter start)."""
    out = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        toy.main(["--out", str(out), "--steps", "40", "--ckpt-every", "5"])
    finally:
        torch.set_num_threads(before)
    return _final_state(out)


# --------------------------------------------------------------------------- in-process
def test_toy_trains_logs_and_writes_samples(tmp_path: Path, capsys) -> None:
    cfg = toy.make_config(tmp_path, steps=30, sample_every=10, ckpt_every=10)
    metrics = Trainer(toy.ToyTask(), toy.ToyData(), cfg).fit()
    recs = read_scalars(tmp_path / "scalars.jsonl")
    train = [r for r in recs if "loss_G" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert all({"loss_D", "l1", "lr/G", "lr/D", "it_s", "time"} <= r.keys() for r in train)
    assert train[-1]["l1"] < train[0]["l1"] - 0.01  # it learns
    assert train[-1]["lr/G"] == pytest.approx(3e-3 * 0.8**3)  # scheduler stepped and logged
    assert metrics["step"] == 30 and metrics["l1"] == train[-1]["l1"] and "eval/l1" in metrics
    assert [r["eval/l1"] for r in recs if "eval/l1" in r] == [metrics["eval/l1"]]
    for step in (10, 20, 30):
        img = Image.open(tmp_path / "samples" / f"step_{step:06d}.png")
        assert img.mode == "L" and img.size == (8 * 10 + 2 * 9, 3 * 10 + 2) or img.size[0] > 8
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ") and "loss_G" in l]
    assert len(lines) == 6 and all(LINE_RE.match(l) for l in lines), lines
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"ckpt_0000{s}.pt{x}" for s in (10, 20, 30) for x in ("", ".sha256")]


def test_resume_mid_epoch_is_bit_identical_and_sampling_does_not_perturb(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(ref, steps=15, ckpt_every=0)).fit()
    run = tmp_path / "run"
    # 24 samples / batch 4 = 6 batches per epoch: stopping at 7 is mid-epoch 1
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(run, steps=7, ckpt_every=0)).fit()
    mid = _final_state(run)
    assert mid["step"] == 7 and (mid["sampler"]["epoch"], mid["sampler"]["index"]) == (1, 1)
    tr = Trainer(
        toy.ToyTask(seed=5),  # different init: everything must come from the checkpoint
        toy.ToyData(),
        toy.make_config(run, steps=15, ckpt_every=0, sample_every=3),  # sampling must not disturb RNG
    )
    tr.fit()
    assert tr.resumed_from is not None and tr.resumed_from.name == "ckpt_000007.pt"
    _assert_same_weights(_final_state(run), _final_state(ref))
    steps = [r["step"] for r in read_scalars(run / "scalars.jsonl") if "loss_G" in r]
    assert steps == [5, 7, 10, 15]
    # rerunning a finished run does nothing and reports the saved metrics
    again = Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(run, steps=15)).fit()
    assert again["step"] == 15 and again["l1"] == read_scalars(run / "scalars.jsonl")[-2]["l1"]


def test_dataloader_workers_keep_the_sampler_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(toy.ToyTask(stochastic=False), toy.ToyData(aug=False), toy.make_config(a, steps=8)).fit()
    Trainer(
        toy.ToyTask(stochastic=False), toy.ToyData(aug=False),
        toy.make_config(b, steps=8, num_workers=2),
    ).fit()
    _assert_same_weights(_final_state(a), _final_state(b))


def test_config_and_input_errors(tmp_path: Path) -> None:
    cfg = from_dict(TrainConfig, {"steps": 3, "out_dir": str(tmp_path), "batch_size": 2})
    assert isinstance(cfg.out_dir, Path)
    with pytest.raises(ConfigError, match="train.steps must be at least 1"):
        from_dict(TrainConfig, {"steps": 0})
    with pytest.raises(ConfigError, match="unknown key 'stpes'"):
        from_dict(TrainConfig, {"stpes": 3})
    with pytest.raises(DataError, match="dataset has 24 samples, fewer than one batch of 32"):
        Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, batch_size=32)).fit()
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, steps=2)).fit()
    with pytest.raises(CheckpointError, match="already holds checkpoints .* resume is off"):
        Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, steps=4, resume=False)).fit()


# --------------------------------------------------------------------------- real processes
def test_sigkill_then_rerun_is_bit_identical(tmp_path: Path, reference: dict) -> None:
    out = tmp_path / "run"
    cmd = _cmd(out, "--sleep", "0.05")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "ckpt_000010.pt.sha256", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(s for s, _ in list_checkpoints(out / "checkpoints"))
    assert 10 <= killed_at < 40
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    m = re.search(r"resumed from \S+ckpt_(\d+)\.pt at step (\d+)", res.stdout)
    assert m and int(m.group(2)) == killed_at
    _assert_same_weights(_final_state(out), reference)
    steps = [r["step"] for r in read_scalars(out / "scalars.jsonl") if "loss_G" in r]
    assert steps == list(range(5, 41, 5))  # no duplicates from the killed run
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_sigterm_saves_current_step_and_exits_143(tmp_path: Path, reference: dict, capsys) -> None:
    out = tmp_path / "run"
    cmd = _cmd(out, "--sleep", "0.05")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "ckpt_000005.pt.sha256", proc)
    time.sleep(0.12)  # land between periodic checkpoints
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    m = re.search(r"stopped by SIGTERM at step (\d+); checkpoint (\S+)", stdout)
    assert m, stdout
    step = int(m.group(1))
    assert 5 < step < 40
    assert Path(m.group(2)).name == f"ckpt_{step:06d}.pt"
    assert safe_load(m.group(2))["step"] == step
    # rerun in-process (same script entry point) to save an interpreter start; SIGKILL test uses a process
    capsys.readouterr()
    toy.main(cmd[2:])
    assert f"resumed from {m.group(2)} at step {step}" in capsys.readouterr().out
    _assert_same_weights(_final_state(out), reference)


class _LegacyTask(toy.ToyTask):
    """Extra state spelled state_dict/load_state_dict (the older DESIGN.md wording)."""

    extra_state = None
    load_extra_state = None

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.gen.set_state(d["gen"])


def test_extra_state_is_saved_and_restored(tmp_path: Path) -> None:
    first = _LegacyTask()
    Trainer(first, toy.ToyData(), toy.make_config(tmp_path, steps=3)).fit()
    saved = _final_state(tmp_path)["extra"]["gen"]
    assert torch.equal(saved, first.gen.get_state())
    second = _LegacyTask(seed=7)
    assert not torch.equal(second.gen.get_state(), saved)
    Trainer(second, toy.ToyData(), toy.make_config(tmp_path, steps=3)).fit()  # nothing left to train
    assert torch.equal(second.gen.get_state(), saved)


class _LayoutTask(toy.ToyTask):
    """Records the memory layout of its nets, a frozen net and the batch inside each step."""

    def __init__(self) -> None:
        super().__init__(stochastic=False)
        self.frozen_nets = {"critic": toy.ToyD().requires_grad_(False)}
        self.seen: list[tuple[bool, bool, bool]] = []

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        nhwc = torch.channels_last
        w = self.nets["G"].body[0].weight
        frozen_w = self.frozen_nets["critic"].body[0].weight
        self.seen.append((w.is_contiguous(memory_format=nhwc) and not w.is_contiguous(),
                          frozen_w.is_contiguous(memory_format=nhwc) and not frozen_w.is_contiguous(),
                          batch["profile"].is_contiguous(memory_format=nhwc)
                          and not batch["profile"].is_contiguous()))
        return super().train_step(batch, step)

    def on_eval(self, step: int) -> dict[str, float]:
        return {}


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_trains_nhwc_and_hands_back_nchw(tmp_path: Path, channels_last: bool) -> None:
    task = _LayoutTask()
    data = toy.ToyData(aug=False)
    # 8x8 images with one channel are ambiguous in layout; 2 channels make NHWC strides visible
    data.x, data.y = data.x.repeat(1, 2, 1, 1), data.y.repeat(1, 2, 1, 1)
    g = task.nets["G"].body
    g[0], g[3] = torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Conv2d(8, 2, 3, padding=1)
    task.nets["D"].body[0] = torch.nn.Conv2d(2, 8, 3, stride=2, padding=1)
    task.frozen_nets["critic"].body[0] = torch.nn.Conv2d(2, 8, 3, stride=2, padding=1).requires_grad_(False)
    task.optimizers = {k: torch.optim.Adam(n.parameters(), lr=1e-3) for k, n in task.nets.items()}
    task.schedulers = {"G": torch.optim.lr_scheduler.StepLR(task.optimizers["G"], 10)}
    before = {k: v.clone() for k, v in task.nets["G"].state_dict().items()}
    Trainer(task, data, toy.make_config(tmp_path, steps=3, channels_last=channels_last)).fit()
    assert task.seen == [(channels_last,) * 3] * 3
    after = task.nets["G"].state_dict()
    assert all(v.is_contiguous() for v in after.values())  # NCHW again for export/eval/saving
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the optimiser still updated them
