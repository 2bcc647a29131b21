"""Distillation taps/mappers, the OFA supernet task, BN recalibration and fine-tuning (toy family;
real families at 64 px / width 0.125 when their modules exist)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimface.compress.config import DistillConfig, OFAConfig
from slimface.compress.distill import DistillLoss, FeatureTaps, Mapper, is_conditional, output_layout
from slimface.compress.bn import preserve_bn, recalibrate_bn
from slimface.compress.ofa import OFATask
from slimface.train.schedule import linear_decay
from slimface.compress.space import ConfigSpace, active_config
from slimface.config import from_dict
from slimface.errors import CheckpointError, ConfigError
from slimface.nn.super_layers import set_widths
from slimface.train.config import TrainConfig
from test_compress_space import (TOY_FAMILY, ToyDisc, _build_gen, single_thread, toy_batch, toy_space,  # noqa: F401
                                 toy_supernet)


def _teacher(res: int = 32) -> nn.Module:
    torch.manual_seed(1)
    return _build_gen(res, separable=False).eval()


def _ofa(steps: int, decay_steps: int | None = None, **kw) -> OFAConfig:
    return OFAConfig(train=TrainConfig(steps=steps), decay_steps=decay_steps, **kw)


def _task(cfg: OFAConfig | None = None, **kw) -> OFATask:
    torch.manual_seed(2)
    teacher_d = ToyDisc()
    return OFATask(TOY_FAMILY, toy_supernet(), _teacher(), teacher_d, cfg or _ofa(10, 5), **kw)


def test_taps_and_mapper_shapes_follow_config() -> None:
    student, teacher = toy_supernet(), _teacher()
    names = TOY_FAMILY.student_spec.distill
    mapper = Mapper(student, teacher, names)
    assert mapper.conv("res").in_channels == 32 and mapper.conv("res").out_channels == 32
    taps_s, taps_t = FeatureTaps(student, names), FeatureTaps(teacher, names)
    x = toy_batch()["profile"]
    with torch.no_grad():
        teacher(x)
    t = taps_t.collect()
    space = toy_space(student)
    cfg = dict(space.smallest(), enc2=16, fuse=8)
    with active_config(student, cfg):
        mapper.set_widths(cfg)
        student(x)
        s = taps_s.collect()
        assert s["res"].shape[1] == 16 and s["fuse"].shape[1] == 8
        m = mapper(s)
    for n in names:
        assert m[n].shape == t[n].shape
    taps_s.remove()
    student(x)
    assert taps_s.outputs == {}


def test_mapper_slices_its_input_weights() -> None:
    student, teacher = toy_supernet(), _teacher()
    mapper = Mapper(student, teacher, ["res"])
    conv = mapper.conv("res")
    feat = torch.randn(2, 16, 8, 8)
    mapper.set_widths({"enc2": 16})
    out = mapper({"res": feat})["res"]
    ref = torch.nn.functional.conv2d(feat, conv.weight[:, :16], conv.bias)
    assert torch.allclose(out, ref, atol=1e-6)
    # a concatenated layout (dec1 ‖ enc1) gathers non-contiguous columns
    layout = output_layout(student, "up")
    assert [s.group for s in layout.segments] == ["dec1"]
    fuse_in = student.fuse[0].depthwise.in_chans
    assert [s.group for s in fuse_in.segments] == ["dec1", "enc1"]


def test_bad_distill_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="nope"):
        FeatureTaps(toy_supernet(), ["nope"])
    with pytest.raises(ConfigError):
        from_dict(DistillConfig, {"recon_weight": -1.0})
    with pytest.raises(ConfigError):
        DistillLoss(DistillConfig(identity_weight=1.0), recognizer=None)


def test_conditional_detection() -> None:
    assert is_conditional(ToyDisc(3), 3)
    assert not is_conditional(nn.Sequential(nn.Conv2d(3, 4, 3)), 3)


def test_ofa_task_steps_train_everything_and_d_starts_as_teacher() -> None:
    torch.manual_seed(2)
    teacher_d = ToyDisc()
    task = OFATask(TOY_FAMILY, toy_supernet(), _teacher(), teacher_d, _ofa(10, 5, sampling="sandwich"))
    d = task.nets["disc"]
    assert d is not teacher_d
    for (k, a), b in zip(d.state_dict().items(), teacher_d.state_dict().values()):
        assert torch.equal(a, b), k
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    before = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in task.nets.items()}
    batch = toy_batch()
    out = task.train_step(batch, 0)
    for key in ("loss_g", "recon", "gan_g", "distill", "loss_d", "width_frac"):
        assert key in out and torch.isfinite(torch.tensor(out[key])), key
    assert all(isinstance(v, float) for v in out.values())
    for n, net in task.nets.items():
        changed = any(not torch.equal(v, before[n][k]) for k, v in net.state_dict().items())
        assert changed, n
    for k, v in task.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert all(not p.requires_grad for p in task.teacher.parameters())
    assert task.space.decode(task.last_config)
    # the supernet is left at full width after a step
    x = batch["profile"][:1]
    assert task.nets["student"](x).shape == x.shape
    # configs are a function of (seed, step): same on every rank / after resume
    assert task.configs_for_step(5) == task.configs_for_step(5)
    assert task.configs_for_step(0)[0] == task.space.largest()


def test_uniform_sampling_varies_and_lr_decays() -> None:
    task = _task(_ofa(4, 2))
    cfgs = [task.space.encode(task.configs_for_step(s)[0]) for s in range(10)]
    assert len(set(cfgs)) > 5
    lrs = []
    for step in range(4):
        lrs.append(task.optimizers["student"].param_groups[0]["lr"])
        task.train_step(toy_batch(seed=step), step)
    assert lrs[:3] == [pytest.approx(2e-4)] * 3 and lrs[3] == pytest.approx(1e-4)
    assert task.optimizers["disc"].param_groups[0]["lr"] == pytest.approx(0.0)
    assert linear_decay(10, 0)(9) == 1.0
    assert linear_decay(10, 4)(8) == pytest.approx(0.5)


def test_recalibrate_bn_changes_stats_and_preserve_restores() -> None:
    net = toy_supernet()
    bn = net.enc1[1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    batches = [toy_batch(seed=s) for s in range(3)]
    with preserve_bn(net):
        n = recalibrate_bn(net, batches)
        assert n == 3
        assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert int(bn.num_batches_tracked) == 3
        assert bn.momentum is not None  # restored
        recal = bn.running_mean.clone()
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not net.training or net.training  # flag restored (no exception)
    # cumulative average == stats of the three batches' stem outputs (momentum None)
    with torch.no_grad():
        means = [net.enc1[0](b["profile"]).mean(dim=(0, 2, 3)) for b in batches]
    assert torch.allclose(recal, torch.stack(means).mean(0), atol=1e-5)
    # narrow sub-network: only the active slice is recalibrated
    space = toy_space(net)
    with active_config(net, space.smallest()), preserve_bn(net):
        recalibrate_bn(net, batches)
        bn2 = net.res[0].bn1
        assert torch.count_nonzero(bn2.running_mean[8:]) == 0 and torch.count_nonzero(bn2.running_mean[:8]) > 0


def test_evaluate_extremes_and_sample() -> None:
    val = [toy_batch(seed=10), toy_batch(seed=11)]
    task = _task(val_batches=val)
    net = task.nets["student"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    metrics = task.on_eval(0)
    assert set(metrics) == {"largest", "smallest"} and metrics["largest"] != metrics["smallest"]
    assert all(m < 0 for m in metrics.values())  # negative L1 without a recognizer
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN buffers untouched by evaluation
    img = task.sample(val[0])
    assert img.shape == (5 * 4, 3, 32, 32)


def test_extra_state_refuses_other_space() -> None:
    task = _task()
    state = task.extra_state()
    task.load_extra_state(state)
    other = ConfigSpace({"enc2": [8, 32]})
    with pytest.raises(CheckpointError):
        task.load_extra_state({"space": str(other.to_dict())})


def test_finetune_uses_fixed_config() -> None:
    space = toy_space()
    cfg = dict(space.smallest(), enc2=24)
    torch.manual_seed(2)
    task = OFATask(TOY_FAMILY, toy_supernet(), _teacher(), ToyDisc(), _ofa(2, 0), fixed_config=space.encode(cfg),
                   val_batches=[toy_batch(seed=4)])
    assert all(task.configs_for_step(s) == [cfg] for s in range(5))
    net = task.nets["student"]
    w = net.enc2[0].pointwise.weight
    before = w.detach().clone()
    task.train_step(toy_batch(), 0)
    # only the kept output rows of enc2's pointwise conv moved
    assert not torch.equal(w[:24], before[:24]) and torch.equal(w[24:], before[24:])
    assert set(task.on_eval(1)) == {"chosen"}
    with pytest.raises(ConfigError):
        OFATask(TOY_FAMILY, toy_supernet(), _teacher(), ToyDisc(), _ofa(2, 0), fixed_config="1_2_3")


# ---------------------------------------------------------------------- real families
def _real(name: str):
    """(family, teacher, student supernet) at 64 px, width 0.125."""
    from slimface.families import get_family

    family = get_family(name)
    torch.manual_seed(0)
    kw = dict(resolution=64, channels=3, width_mult=0.125, sub=None)
    teacher = family.build_generator(separable=False, **kw).eval()
    student = family.build_generator(separable=True, **kw)
    return family, teacher, student


@pytest.mark.parametrize("name", ["tpgan", "pim", "crgan"])
def test_real_family_mapping_shapes(name: str) -> None:
    family, teacher, student = _real(name)
    names = family.student_spec.distill
    mapper = Mapper(student, teacher, names)
    taps_s, taps_t = FeatureTaps(student, names), FeatureTaps(teacher, names)
    x, lm = student.example_inputs(2)
    space = ConfigSpace.from_supernet(family, student)
    assert space.size() > 1
    with torch.no_grad():
        teacher(x, lm)
        t = taps_t.collect()
        for cfg in (space.largest(), space.smallest()):
            with active_config(student, cfg):
                mapper.set_widths(cfg)
                student(x, lm)
                m = mapper(taps_s.collect())
            for n in names:
                assert m[n].shape == t[n].shape, (name, n)
    set_widths(student, None)


@pytest.mark.parametrize("name", ["tpgan", "pim", "crgan"])
def test_real_family_ofa_step(name: str) -> None:
    family, teacher, student = _real(name)
    torch.manual_seed(1)
    teacher_d = family.build_discriminator(resolution=64, channels=3, width_mult=0.125)
    cfg = _ofa(4, 0)  # the family's own gan_mode
    batch = toy_batch(2, 64)
    x, lm = student.example_inputs(2)
    batch["landmarks"] = lm
    task = OFATask(family, student, teacher, teacher_d, cfg, val_batches=[batch])
    assert task.loss.conditional == (name != "crgan")
    assert task.loss.gan_mode == ("wgan-gp" if name == "crgan" else "bce")
    out = task.train_step(batch, 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out
    metrics = task.on_eval(1)
    assert set(metrics) == {"largest", "smallest"}


def test_the_student_section_is_the_task_config_as_the_pipeline_passes_it() -> None:
    """The ``student:`` section (an OFAConfig) goes to the task as is: its weights drive the loss, its
    train section the optimisers and the lr decay (second half of the steps unless set), and the
    gan_mode is the family's unless the section names one."""
    cfg = from_dict(OFAConfig, {"recon_weight": 10.0, "distill_weight": 2.0, "sampling": "sandwich",
                                "train": {"lr": 1e-3, "steps": 8}})
    space = toy_space()
    fixed = dict(space.smallest(), enc2=16)
    torch.manual_seed(2)
    task = OFATask(TOY_FAMILY, toy_supernet(), _teacher(), ToyDisc(), cfg, space=space, seed=3, fixed_config=fixed)
    assert task.optimizers["student"].param_groups[0]["lr"] == 1e-3 and cfg.decay == 4 and task.seed == 3
    assert task.loss.cfg.recon_weight == 10.0 and task.loss.gan_mode == TOY_FAMILY.gan_mode == "bce"
    assert task.configs_for_step(0) == [fixed] and "cfg=" in task.fingerprint
    plain = OFATask(TOY_FAMILY, toy_supernet(), _teacher(), ToyDisc(), cfg)
    assert len(plain.configs_for_step(0)) == 3
    wgan = OFATask(TOY_FAMILY, toy_supernet(), _teacher(), ToyDisc(), from_dict(OFAConfig, {"gan_mode": "wgan-gp"}))
    assert wgan.loss.gan_mode == "wgan-gp"
    with pytest.raises(ConfigError, match="decay_steps"):
        from_dict(OFAConfig, {"decay_steps": 9, "train": {"steps": 8}})


def test_recalibrate_bn_for_a_config_keeps_its_stats() -> None:
    net = toy_supernet()
    cfg = toy_space(net).smallest()
    recalibrate_bn(net, [toy_batch(seed=1)], cfg)
    bn = net.res[0].bn1
    assert torch.count_nonzero(bn.running_mean[:8]) > 0 and torch.count_nonzero(bn.running_mean[8:]) == 0
    from slimface.compress.space import current_widths

    assert current_widths(net) is None  # widths restored


def test_output_distillation_term_matches_l1_to_the_teacher_image() -> None:
    torch.manual_seed(0)
    fake, target, t_out = (torch.rand(2, 3, 8, 8) for _ in range(3))
    loss = DistillLoss(DistillConfig(recon_weight=1.0, teacher_weight=10.0, gan_weight=0.0, distill_weight=0.0),
                       conditional=True, recognizer=None)
    total, parts = loss.generator_loss(None, fake, fake, target, None, None, t_out)
    assert parts["teacher"] == pytest.approx(float((fake - t_out).abs().mean()))
    assert float(total) == pytest.approx(parts["recon"] + 10.0 * parts["teacher"], rel=1e-6)
    _, without = loss.generator_loss(None, fake, fake, target, None, None)
    assert "teacher" not in without


def test_the_identity_term_matches_the_truth_or_the_teachers_output() -> None:
    """student.identity_target: the recognizer features of the ground truth (default) or of the
    teacher's image; the teacher target without a teacher image is a one-line ConfigError."""
    torch.manual_seed(0)
    fake, target, t_out = (torch.rand(2, 3, 8, 8) for _ in range(3))

    class Recognizer(nn.Module):
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    def id_term(target_kind: str, teacher_out: torch.Tensor | None) -> float:
        cfg = DistillConfig(recon_weight=0.0, gan_weight=0.0, distill_weight=0.0, identity_weight=1.0,
                            identity_target=target_kind)
        cfg.validate()
        loss = DistillLoss(cfg, conditional=True, recognizer=Recognizer())
        return loss.generator_loss(None, fake, fake, target, None, None, teacher_out)[1]["id"]

    emb = Recognizer().embed
    assert id_term("truth", t_out) == pytest.approx(float((emb(fake) - emb(target)).abs().mean()))
    assert id_term("teacher", t_out) == pytest.approx(float((emb(fake) - emb(t_out)).abs().mean()))
    with pytest.raises(ConfigError, match="identity_target: teacher needs the teacher's output"):
        id_term("teacher", None)
    with pytest.raises(ConfigError, match="student.identity_target 'frontal'"):
        DistillConfig(identity_target="frontal").validate()  # type: ignore[arg-type]


def test_budget_sampling_trains_sub_networks_under_a_mac_target() -> None:
    """sampling='budget': every step's sub-network fits the budget (conv MACs), the targets vary,
    and a budget below the smallest sub-network is a one-line ConfigError."""
    from slimface.errors import ConfigError
    from slimface.nn.profile import ConvMacsModel

    family, teacher, student = _real("tpgan")
    disc = family.build_discriminator(resolution=64, channels=3, width_mult=0.125)
    space = ConfigSpace.from_supernet(family, student)
    macs = ConvMacsModel(student, student.example_inputs(1))
    lo, hi = macs(space.smallest()), macs(space.largest())
    budget = lo + 0.3 * (hi - lo)
    task = OFATask(family, student, teacher, disc, OFAConfig(sampling="budget", budget_low=0.9), budget_macs=budget)
    picked = [task.configs_for_step(step)[0] for step in range(12)]
    costs = [macs(c) for c in picked]
    assert all(c <= budget for c in costs)
    assert min(costs) >= 0.9 * budget - 0.1 * (hi - lo)  # shrunk just under a target, not to the bottom
    assert len({space.encode(c) for c in picked}) >= 3
    assert picked == [task.configs_for_step(step)[0] for step in range(12)]  # a function of (seed, step)
    uniform = OFATask(family, student, teacher, disc)
    assert sum(macs(uniform.configs_for_step(s)[0]) for s in range(12)) > sum(costs)
    with pytest.raises(ConfigError, match="below the smallest sub-network"):
        OFATask(family, student, teacher, disc, OFAConfig(sampling="budget"), budget_macs=lo / 2)


def test_without_a_gan_term_the_discriminator_is_left_as_it_was() -> None:
    """gan_weight 0: nothing reads D, so the step does not train it (and logs no loss_d)."""
    for weight, moves in ((0.0, False), (1.0, True)):
        task = _task(_ofa(10, 5, gan_weight=weight))
        before = [p.detach().clone() for p in task.nets["disc"].parameters()]
        out = task.train_step(toy_batch(), 0)
        same = all(torch.equal(a, b) for a, b in zip(before, task.nets["disc"].parameters()))
        assert same != moves and ("loss_d" in out) == moves
