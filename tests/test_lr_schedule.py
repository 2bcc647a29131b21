"""The teachers' lr decay (``teachers.<family>.lr_decay_steps``): every optimiser of every family's
teacher task ends at lr 0, a resumed run with more steps decays towards its new end, bad values fail
at config load."""

from __future__ import annotations

import pytest
import torch

from slimface.config import load_config
from slimface.errors import ConfigError
from slimface.families import get_family
from slimface.pipeline_config import PipelineConfig
from slimface.train.schedule import attach_linear_decay, linear_decay
from test_tpgan_pim import _batch


def test_linear_decay_is_constant_then_linear_to_zero() -> None:
    f = linear_decay(10, 4)
    assert [f(s) for s in (0, 5, 6, 8, 10, 12)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert linear_decay(10, 0)(10) == 1.0


@pytest.mark.parametrize("family", ["tpgan", "pim", "crgan"])
def test_every_teacher_optimiser_decays_to_zero(family: str) -> None:
    torch.manual_seed(0)
    fam = get_family(family)
    g = fam.build_generator(resolution=64, channels=3, width_mult=0.125, separable=False, sub=None)
    d = fam.build_discriminator(resolution=64, channels=3, width_mult=0.125)
    rec = None
    if family == "pim":
        from slimface.models.recognizer import build_recognizer

        rec = build_recognizer("lightcnn9", input_size=64, width_mult=0.125)
    task = fam.make_teacher_task(g, d, rec, num_subjects=3, lr=1e-3)
    attach_linear_decay(task, steps=4, decay_steps=2)
    assert set(task.schedulers) == set(task.optimizers)
    lrs = []
    for step in range(4):
        task.train_step(_batch(64, 2, seed=step), step)
        lrs.append({n: o.param_groups[0]["lr"] for n, o in task.optimizers.items()})
    assert all(v == pytest.approx(1e-3) for v in lrs[1].values())  # steps 0, 1: constant
    assert all(v == pytest.approx(5e-4) for v in lrs[2].values())
    assert all(v == 0.0 for v in lrs[3].values())


def test_no_decay_leaves_the_task_without_schedulers() -> None:
    class Task:
        schedulers: dict = {}
        optimizers = {"g": torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)}

    t = Task()
    attach_linear_decay(t, 10, 0)
    assert t.schedulers == {}


def test_a_resumed_run_with_more_steps_decays_towards_its_new_end() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(10, 4))
    for _ in range(8):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    opt2 = torch.optim.Adam([p], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, linear_decay(20, 4))  # train.steps raised to 20
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == 1.0  # step 9 of 20: before the new decay


def test_lr_decay_longer_than_training_fails_at_load(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("families: [tpgan]\nteachers:\n  tpgan: {train: {steps: 10}, lr_decay_steps: 11}\n")
    with pytest.raises(ConfigError, match=r"teachers.tpgan.lr_decay_steps must lie in \[0, train.steps = 10\]"):
        load_config(PipelineConfig, cfg)


def test_lr_decay_keys_the_teacher_only_when_on() -> None:
    from slimface import stage_keys as K

    def keys(decay: int) -> tuple[dict, dict]:
        c = PipelineConfig(families=["tpgan"])
        c.validate()
        c.teacher("tpgan").lr_decay_steps = decay
        return K.own_settings(c, "teacher.tpgan"), K.resume_settings(c, "teacher.tpgan")

    own0, res0 = keys(0)
    own5, res5 = keys(5)
    assert "lr_decay_steps" not in own0["teachers.tpgan"]  # the default leaves older runs' keys alone
    assert own5["teachers.tpgan"]["lr_decay_steps"] == 5
    assert res5 != res0  # another schedule trains from step 0
