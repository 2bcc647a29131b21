"""Distributed helpers, the rank-sharded sampler, and a real 2-process gloo run vs a single process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimface.errors import DataError
from slimface.nn.modes import unwrap
from slimface.train import distributed as D
from slimface.train.checkpoint import load_latest
from slimface.train.logging import read_scalars
from slimface.train.sampler import ResumableSampler

sys.path.insert(0, str(Path(__file__).parent))
import _train_toy as toy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_train_toy.py"


def test_single_process_helpers() -> None:
    info = D.init_distributed()  # no torchrun env: a no-op
    assert (info.rank, info.world_size) == (0, 1) and not D.is_dist()
    assert D.is_main() and D.world_size() == 1 and D.rank() == 0
    D.barrier()
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert D.broadcast_object([1, 2]) == [1, 2]
    assert D.any_rank(True) and not D.any_rank(False)
    assert D.mean_across_ranks({"x": 2.0}) == {"x": 2.0}
    net = nn.Linear(2, 2)
    assert D.wrap_ddp(net) is net and unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net


def test_shared_generator_depends_on_seed_and_step_only() -> None:
    a = torch.rand(4, generator=D.shared_generator(3, 10))
    torch.manual_seed(123)  # the global stream must not matter
    assert torch.equal(a, torch.rand(4, generator=D.shared_generator(3, 10)))
    assert not torch.equal(a, torch.rand(4, generator=D.shared_generator(3, 11)))
    assert not torch.equal(a, torch.rand(4, generator=D.shared_generator(4, 10)))


def test_sampler_shards_are_disjoint_slices_of_the_global_batch() -> None:
    single = ResumableSampler(30, 8, seed=5)
    ranks = [ResumableSampler(30, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    assert single.batches_per_epoch == 3  # last partial batch dropped
    seen = []
    for _ in range(7):  # crosses two epoch boundaries
        g = single.next_indices()
        parts = [s.next_indices() for s in ranks]
        assert len(parts[0]) == len(parts[1]) == 4 and parts[0] + parts[1] == g
        seen.append(g)
    epoch0 = [i for b in seen[:3] for i in b]
    assert len(set(epoch0)) == 24  # no repeats inside an epoch
    assert seen[3] != seen[0]  # a new permutation each epoch
    # resume mid-epoch from the saved position continues with exactly the next batch
    fresh = ResumableSampler(30, 8, seed=5)
    assert fresh.load_state_dict(single.state_dict())
    assert fresh.next_indices() == single.next_indices()
    # a position saved under 2 processes resumes in 1 (position counts global batches)
    one = ResumableSampler(30, 8, seed=5)
    one.load_state_dict(ranks[0].state_dict())
    assert one.next_indices() == ranks[0].next_indices() + ranks[1].next_indices()
    with pytest.raises(DataError, match="dataset has 3 samples"):
        ResumableSampler(3, 8, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    """Global batch 8 as 2 x 4 under DDP == batch 8 in one process; hooks on inner modules fire."""
    steps = 6
    args = ["--steps", str(steps), "--plain", "--hook", "--batch-size", "8", "--ckpt-every", "0",
            "--log-every", "2"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         str(SCRIPT), "--out", str(ddp_out), *args],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:  # the single-process reference runs here while the two ranks start up
        before = torch.get_num_threads()
        toy.main(["--out", str(single_out), *args])
    finally:
        torch.set_num_threads(before)
    ddp_stdout, ddp_stderr = ddp.communicate(timeout=120)
    assert ddp.returncode == 0, ddp_stderr[-3000:]

    a, _ = load_latest(ddp_out / "checkpoints")
    b, _ = load_latest(single_out / "checkpoints")
    assert a["step"] == b["step"] == steps and a["world_size"] == 2 and b["world_size"] == 1
    assert len(a["rng"]) == 2  # both ranks' RNG streams are checkpointed
    worst = 0.0
    for net in ("G", "D"):
        for k, v in b["nets"][net].items():
            worst = max(worst, (a["nets"][net][k] - v).abs().max().item())
    assert worst <= 1e-5, worst

    hooks = [json.loads((ddp_out / f"hook_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(h["net_types"] == ["DistributedDataParallel"] for h in hooks)  # task saw DDP nets
    assert hooks[1]["calls"] == steps  # one G forward per step, through DDP
    assert hooks[0]["calls"] == steps + 1  # plus the rank-0-only on_eval at the end
    # rank 0 alone logs: one scalars line per log step, losses averaged over both ranks
    train = [r for r in read_scalars(ddp_out / "scalars.jsonl") if "loss_G" in r]
    single_train = [r for r in read_scalars(single_out / "scalars.jsonl") if "loss_G" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r, s in zip(train, single_train):
        assert r["l1"] == pytest.approx(s["l1"], abs=1e-5)
    assert ddp_stdout.count("step 6/6  loss_G") == 1


@pytest.mark.parametrize("world,joins", [("2", True), ("1", False), (None, False)])
def test_pipeline_joins_the_launchers_group_before_any_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              world: str | None, joins: bool) -> None:
    """Under torchrun the group must exist before the data stage, or every rank thinks it is rank 0."""
    from slimface.config import from_dict
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    for var, value in (("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29555")):
        monkeypatch.setenv(var, value)
    calls: list[dict] = []
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: calls.append(kw))
    Pipeline(from_dict(PipelineConfig, {"out_dir": str(tmp_path), "device": "cpu"}), progress=False)
    assert len(calls) == (1 if joins else 0)
    if joins:  # the CPU group of the launcher's env, not a guessed one
        assert calls[0]["backend"] == "gloo" and calls[0]["init_method"] == "env://"


def test_pipeline_under_an_incomplete_launcher_env_says_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from slimface.config import from_dict
    from slimface.errors import ConfigError
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not set; launch with torchrun"):
        Pipeline(from_dict(PipelineConfig, {"out_dir": str(tmp_path), "device": "cpu"}), progress=False)
