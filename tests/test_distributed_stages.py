"""DDP equivalence of the GAN stages: 2 gloo processes on CPU == 1 process with the same global batch.

* synchronised :class:`SuperBatchNorm2d` (full, sliced and gathered active channels) against plain
  BN on the full batch: output, input/weight/bias gradients, running statistics;
* a few Trainer steps of TP-GAN teacher training, of once-for-all supernet training (tiny TP-GAN
  teacher + separable supernet) and of CR-GAN teacher training, run with world size 1 and 2: every
  parameter and buffer of every trained net must agree.

Workers are started with ``torch.multiprocessing.spawn`` (one thread each) on a free local port.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import Dataset

from slimface.nn.channels import cat, ch
from slimface.nn.super_layers import SuperBatchNorm2d, set_widths
from slimface.train import distributed as D

RES = 64
GLOBAL_BATCH = 4
STEPS = 3
TOL = 1e-4


# ----------------------------------------------------------------------------------------- plumbing
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join_group(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    D.init_distributed(backend="gloo", timeout_s=120)


def _leave_group() -> None:
    D.cleanup()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)


def _spawn(fn: Callable[..., None], *args: Any) -> mp.ProcessContext:
    return mp.spawn(fn, args=(2, _free_port(), *args), nprocs=2, join=False)  # type: ignore[return-value]


def _wait(ctx: mp.ProcessContext, timeout_s: float) -> None:
    """Join both workers (re-raising a worker's exception); kill them if they hang."""
    import time

    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish in {timeout_s:.0f} s")


def _single_thread(fn: Callable[[], Any]) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------- synchronised BN
BN_CASES: list[tuple[str, Any, dict[str, int] | None, float | None]] = [
    ("full", ch(6, "a"), None, 0.1),
    ("sliced", ch(16, "a"), {"a": 8}, 0.1),
    ("gathered", cat(ch(8, "a"), ch(4, "b")), {"a": 4, "b": 4}, None),  # cumulative momentum too
]


def _bn_worker(rank: int, world: int, port: int, out: str) -> None:
    _join_group(rank, world, port)
    try:
        results: dict[str, float] = {}
        for name, layout, widths, momentum in BN_CASES:
            torch.manual_seed(0)  # identical layer, data and loss weights on both ranks
            layer = SuperBatchNorm2d(layout, momentum=momentum)
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
            set_widths(layer, widths)
            ref = copy.deepcopy(layer)  # plain (unsynchronised) BN, fed the whole global batch
            layer.sync_stats = True
            layer.train(), ref.train()
            active = layer.active_out()
            worst = {"out": 0.0, "grad_x": 0.0, "grad_w": 0.0, "running": 0.0, "eval": 0.0}
            for it in range(2):  # two updates of the running statistics
                x = torch.randn(8, active, 3, 5) * 2.5 + 1.5
                w = torch.randn(8, active, 3, 5)
                b = 8 // world
                x_local = x[rank * b:(rank + 1) * b].clone().requires_grad_(True)
                x_full = x.clone().requires_grad_(True)
                layer.zero_grad(), ref.zero_grad()
                y_local = layer(x_local)
                (y_local * w[rank * b:(rank + 1) * b]).sum().backward()
                y_full = ref(x_full)
                (y_full * w).sum().backward()
                worst["out"] = max(worst["out"], (y_local - y_full[rank * b:(rank + 1) * b]).abs().max().item())
                worst["grad_x"] = max(worst["grad_x"], (x_local.grad - x_full.grad[rank * b:(rank + 1) * b]).abs().max().item())
                for p, q in ((layer.weight, ref.weight), (layer.bias, ref.bias)):
                    g = p.grad.clone()
                    torch.distributed.all_reduce(g)  # the global loss is the sum of the ranks' losses
                    worst["grad_w"] = max(worst["grad_w"], (g - q.grad).abs().max().item())
                for buf in ("running_mean", "running_var", "num_batches_tracked"):
                    diff = (getattr(layer, buf).double() - getattr(ref, buf).double()).abs().max().item()
                    worst["running"] = max(worst["running"], diff)
            assert not torch.equal(layer.running_var, torch.ones_like(layer.running_var))  # updated
            layer.eval(), ref.eval()
            x = torch.randn(2, active, 3, 5)
            worst["eval"] = (layer(x) - ref(x)).abs().max().item()  # eval: running stats, no collective
            results.update({f"{name}/{k}": v for k, v in worst.items()})
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        _leave_group()


def test_synced_batchnorm_matches_plain_batchnorm_on_the_global_batch(tmp_path: Path) -> None:
    out = tmp_path / "bn.json"
    _wait(_spawn(_bn_worker, str(out)), 120)
    results = json.loads(out.read_text())
    assert len(results) == 5 * len(BN_CASES)
    bad = {k: v for k, v in results.items() if v > 1e-5}
    assert not bad, bad


def test_sync_flag_is_inert_in_a_single_process() -> None:
    layer = SuperBatchNorm2d(ch(8, "a"))
    ref = copy.deepcopy(layer)
    layer.sync_stats = True
    x = torch.randn(4, 8, 3, 3)
    assert torch.equal(layer(x), ref(x))
    nets = {"n": nn.Sequential(nn.Conv2d(8, 8, 1), layer)}
    with D.sync_stats(nets, False):
        assert layer.sync_stats is False
    assert layer.sync_stats is True


def test_step_random_is_a_slice_of_the_global_draw() -> None:
    r = D.StepRandom(seed=3, step=7, local_batch=4)
    assert r.global_batch == 4  # one process: local == global
    a = r.randn(5)
    b = D.StepRandom(3, 7, 4).randn(5)
    assert torch.equal(a, b) and a.shape == (4, 5)
    assert not torch.equal(a, D.StepRandom(3, 8, 4).randn(5))
    assert not torch.equal(a, D.StepRandom(3, 7, 4, stream="other").randn(5))
    assert D.StepRandom(0, 0, 6).randint(13).shape == (6,)
    with pytest.raises(ValueError):
        D.shard_rows(torch.zeros(5, 2), 2)


# ------------------------------------------------------------------------------- stage training
class _Pairs(Dataset):
    """Random (profile, frontal) pairs with canonical landmarks: enough to exercise every loss."""

    def __init__(self, n: int = 8, res: int = RES, seed: int = 0) -> None:
        from slimface.data.records import canonical_landmarks

        g = torch.Generator().manual_seed(seed)
        self.profile = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        self.frontal = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        self.landmarks = torch.as_tensor(canonical_landmarks(res))
        self.yaw = [(-45.0, -30.0, 30.0, 45.0, -15.0, 15.0, 60.0, -60.0)[i % 8] for i in range(n)]

    def __len__(self) -> int:
        return self.profile.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"profile": self.profile[i], "frontal": self.frontal[i], "landmarks": self.landmarks.clone(),
                "yaw": torch.tensor(self.yaw[i]), "subject": torch.tensor(i % 4, dtype=torch.long)}


def _tpgan_task() -> Any:
    from slimface.families import get_family

    fam = get_family("tpgan")
    torch.manual_seed(11)
    gen = fam.build_generator(resolution=RES, channels=3, width_mult=0.0625)
    disc = fam.build_discriminator(resolution=RES, channels=3, width_mult=0.0625)
    return fam.make_teacher_task(gen, disc, None, num_subjects=4, seed=5)


def _student_task(name: str = "tpgan", finetune: bool = False) -> Any:
    """The supernet stage's task of family ``name`` (a sampled sub-network per step) or, with
    ``finetune``, the fine-tune stage's (one fixed sub-network, as a search would have chosen)."""
    from slimface.compress.config import OFAConfig
    from slimface.compress.ofa import OFATask
    from slimface.compress.space import ConfigSpace
    from slimface.families import get_family
    from slimface.train.config import TrainConfig

    family = get_family(name)
    torch.manual_seed(12)
    kw = dict(resolution=RES, channels=3, width_mult=0.125, sub=None)
    teacher = family.build_generator(separable=False, **kw).eval()
    student = family.build_generator(separable=True, **kw)
    teacher_d = family.build_discriminator(resolution=RES, channels=3, width_mult=0.125)
    fixed = None
    if finetune:
        space = ConfigSpace.from_supernet(family, student)
        fixed = space.sample(torch.Generator().manual_seed(4))
    return OFATask(family, student, teacher, teacher_d, OFAConfig(train=TrainConfig(steps=STEPS), decay_steps=1),
                   seed=6, fixed_config=fixed)


def _ofa_task() -> Any:
    return _student_task("tpgan")


def _crgan_task() -> Any:
    from slimface.families.crgan.model import CRGANCritic, CRGANGenerator
    from slimface.families.crgan.task import CRGANTask

    torch.manual_seed(13)
    return CRGANTask(CRGANGenerator(RES, 3, 0.0625), CRGANCritic(RES, 3, 0.0625), seed=7)


STAGES: dict[str, Callable[[], Any]] = {"tpgan": _tpgan_task, "ofa": _ofa_task, "crgan": _crgan_task}
GAN_STAGES = list(STAGES)  # TP-GAN teacher, TP-GAN supernet, CR-GAN teacher
# per stage: the OFA objective weighs L1 by 100, so its gradients are ~100x larger
SGD_LR = {"tpgan": 2e-3, "ofa": 2e-4, "crgan": 2e-3}
#: every family's supernet and fine-tune stage (the OFA task; the Trainer decides DDP's unused-parameter
#: handling from the task: CR-GAN's generator and critic have view heads the student objective skips)
FAMILY_STAGES = [f"{kind}_{fam}" for fam in ("tpgan", "pim", "crgan") for kind in ("supernet", "finetune")]
for _stage in FAMILY_STAGES:
    _kind, _fam = _stage.split("_")
    STAGES[_stage] = lambda f=_fam, k=_kind: _student_task(f, finetune=k == "finetune")
    SGD_LR[_stage] = 2e-4


def _with_sgd(task: Any, lr: float) -> Any:
    """Swap the task's Adam optimisers for SGD (momentum 0.5) over the same parameters.

    Why: Adam's first steps are sign-like (update ~ lr * sign(g)), so an element whose gradient is
    ~0 -- analytically zero for a conv bias right before a BatchNorm, or merely crossing zero --
    takes a full +-lr step in a direction decided by float rounding, and differs by up to 2 * lr
    between *any* two runs that sum in another order (seen: ~6e-4..8e-4 after 3 steps). With SGD
    a parameter difference is lr times a gradient difference, so the comparison measures what DDP
    must preserve (gradients, BN statistics, noise) instead of Adam's amplified rounding.

    The learning rates are small on purpose: these tiny GANs (BN over few values) are so
    ill-conditioned that in ONE process a 1e-7 relative perturbation of the initial weights grows to
    ~1e-3 after 3 steps at lr 0.05 (TP-GAN) or 3.4e-4 at lr 2e-3 (OFA). At the rates below that
    single-process floor is ~8e-6 (TP-GAN) / ~5e-6 (OFA), well under the 1e-4 tolerance, while the
    generator's parameters still move by more than 10x the tolerance (asserted; every other net
    moves too, the discriminators less).
    """
    for name, opt in list(task.optimizers.items()):
        params = [p for group in opt.param_groups for p in group["params"]]
        task.optimizers[name] = torch.optim.SGD(params, lr=lr, momentum=0.5)
    task.schedulers = {}  # they drive the replaced optimisers; a constant lr is fine here
    return task


def _train(stage: str, out_dir: Path) -> dict[str, dict[str, Tensor]]:
    """Run the Trainer for STEPS steps; return every net's final state (from the checkpoint)."""
    from slimface.train.checkpoint import load_latest
    from slimface.train.loop import Trainer, TrainConfig

    task = _with_sgd(STAGES[stage](), SGD_LR[stage])
    cfg = TrainConfig(steps=STEPS, batch_size=GLOBAL_BATCH, log_every=1, ckpt_every=0, sample_every=0,
                      seed=3, deterministic=True, out_dir=out_dir, progress=False)
    Trainer(task, _Pairs(), cfg).fit()
    D.barrier()
    state, _ = load_latest(out_dir / "checkpoints")
    assert state["world_size"] == D.world_size() and state["step"] == STEPS
    return state["nets"]


def _stage_worker(rank: int, world: int, port: int, root: str, stages: list[str]) -> None:
    _join_group(rank, world, port)
    try:
        for stage in stages:
            nets = _train(stage, Path(root) / f"{stage}_ddp")
            if rank == 1:  # the ranks agree with each other (rank 0's copy is the checkpoint)
                torch.save(nets, Path(root) / f"{stage}_rank1.pt")
    finally:
        _leave_group()


def _max_diffs(a: dict[str, dict[str, Tensor]], b: dict[str, dict[str, Tensor]],
               exact_counters: bool = True) -> dict[str, float]:
    """Largest |a - b| per net over every float parameter and buffer; integer buffers (BN batch
    counters) must match exactly when ``exact_counters``."""
    out: dict[str, float] = {}
    assert a.keys() == b.keys()
    for net in a:
        assert a[net].keys() == b[net].keys(), net
        worst = 0.0
        for k, v in a[net].items():
            w = b[net][k]
            if v.is_floating_point():
                worst = max(worst, (v - w).abs().max().item() if v.numel() else 0.0)
            elif exact_counters:
                assert torch.equal(v, w), (net, k)
        out[net] = worst
    return out


def _ddp_against_single(tmp_path: Path, stage: str, single: dict[str, dict[str, Tensor]]
                        ) -> tuple[dict[str, dict[str, Tensor]], dict[str, float]]:
    """Rank 0's checkpoint of the DDP run of ``stage``: 2 ranks, STEPS steps, rank 1 in lockstep with
    it; returns its nets and max |DDP - single| per net."""
    from slimface.train.checkpoint import load_latest

    ddp, _ = load_latest(tmp_path / f"{stage}_ddp" / "checkpoints")
    assert ddp["world_size"] == 2 and ddp["step"] == STEPS, stage
    rank1 = torch.load(tmp_path / f"{stage}_rank1.pt", weights_only=True)
    assert max(_max_diffs(ddp["nets"], rank1).values()) <= 1e-6, stage  # ranks in lockstep
    return ddp["nets"], _max_diffs(ddp["nets"], single)


def _moved_from_init(stage: str, nets: dict[str, dict[str, Tensor]]) -> dict[str, float]:
    """Largest parameter change per net between a fresh task of ``stage`` and trained ``nets``."""
    fresh = STAGES[stage]().nets
    init = {n: {k: v.detach() for k, v in net.named_parameters()} for n, net in fresh.items()}
    trained = {n: {k: v for k, v in nets[n].items() if k in init[n]} for n in init}
    return _max_diffs(trained, init, exact_counters=False)


def test_two_processes_match_one_process_for_gan_stages(tmp_path: Path) -> None:
    """TP-GAN teacher, OFA supernet and CR-GAN teacher: DDP 2 x 2 samples == 1 x 4 samples.

    Tolerance 1e-4 on every parameter/buffer after 3 Adam steps (lr 2e-4): the runs differ only by
    float summation order (per-rank partial sums, gradient all-reduce). For contrast, the initial
    weights move by up to ~6e-4 in these steps, so a real mismatch (a rank-local BN statistic or noise
    draw) shows up well above it.
    """
    stages = GAN_STAGES
    ctx = _spawn(_stage_worker, str(tmp_path), stages)
    single = {s: _single_thread(lambda s=s: _train(s, tmp_path / f"{s}_single")) for s in stages}
    _wait(ctx, 300)
    report = {}
    for stage in stages:
        _, report[stage] = _ddp_against_single(tmp_path, stage, single[stage])
        # the run trained: parameters (not just BN buffers) moved well beyond the tolerance
        moved = _moved_from_init(stage, single[stage])
        print(stage, "parameters moved from init:", json.dumps(moved))
        main = "student" if stage == "ofa" else "generator"
        assert moved[main] > 10 * TOL and all(v > 1e-6 for v in moved.values()), (stage, moved)
    print("max |DDP - single| per net:", json.dumps(report))
    bad = {s: d for s, d in report.items() if max(d.values()) > TOL}
    assert not bad, report


def test_every_family_trains_its_supernet_and_finetune_stages_under_two_processes(tmp_path: Path) -> None:
    """Every family's supernet and fine-tune stage under DDP with 2 gloo processes, unused parameters
    handled by the Trainer (nothing set by hand): the ranks stay in lockstep, every net trains, and
    2 x 2 samples == 1 x 4 -- CR-GAN's too, whose student keeps its critic's WGAN-GP loss: the gradient
    penalty's interpolation weights come from the step's global draw (StepRandom), not a process's RNG.
    """
    ctx = _spawn(_stage_worker, str(tmp_path), FAMILY_STAGES)
    single = {s: _single_thread(lambda s=s: _train(s, tmp_path / f"{s}_single")) for s in FAMILY_STAGES}
    _wait(ctx, 600)
    report = {}
    for stage in FAMILY_STAGES:
        ddp_nets, report[stage] = _ddp_against_single(tmp_path, stage, single[stage])
        moved = _moved_from_init(stage, ddp_nets)
        assert moved["student"] > 10 * TOL and all(v > 0 for v in moved.values()), (stage, moved)
    print("max |DDP - single| per net:", json.dumps(report))
    bad = {s: d for s, d in report.items() if max(d.values()) > TOL}
    assert not bad, report
