"""CR-GAN teacher: architecture, sub-network equivalence, counts, registry and its training task."""

from __future__ import annotations

import random
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from _nets import randomize_bn
from slimface.errors import ConfigError, DataError
from slimface.families import get_family
from slimface.families.crgan.model import (
    FRONTAL_VIEW,
    NUM_VIEWS,
    VIEW_YAWS,
    Z_DIM,
    CRGANCritic,
    CRGANGenerator,
    view_onehot,
    yaw_to_view,
)
from slimface.nn.profile import count_macs, count_params
from slimface.nn.super_layers import (
    SeparableConv2d,
    SuperConv2d,
    load_subnet_weights,
    set_widths,
    width_groups,
)
from slimface.families.crgan.student import STUDENT_SPEC as CRGAN_STUDENT_SPEC
from slimface.families.crgan.task import CRGANLossConfig
from slimface.train.losses import gradient_penalty


make_teacher_task = get_family("crgan").make_teacher_task


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    """Deterministic seeds; one thread, which is much faster for these tiny nets on a busy box."""
    torch.manual_seed(0)
    random.seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(separable: bool = False, channels: int = 3, sub: dict[str, int] | None = None,
           mult: float = 0.25) -> CRGANGenerator:
    return CRGANGenerator(64, channels, mult, separable, sub)


def test_yaw_to_view_covers_all_13_multipie_yaws() -> None:
    yaws = torch.tensor([float(y) for y in VIEW_YAWS])
    assert yaw_to_view(yaws).tolist() == list(range(13))
    assert NUM_VIEWS == 13 and VIEW_YAWS[FRONTAL_VIEW] == 0
    assert int(yaw_to_view(0.0)) == FRONTAL_VIEW
    # CAS-PEAL yaws round to the nearest Multi-PIE view; near-boundary jitter is tolerated
    assert yaw_to_view(torch.tensor([22.0, -67.0, 91.0])).tolist() == [7, 2, 12]
    with pytest.raises(DataError, match="yaw 120"):
        yaw_to_view(torch.tensor([0.0, 120.0]))
    assert Z_DIM + NUM_VIEWS == 128


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_train_outputs(channels: int) -> None:
    g = _small(channels=channels)
    x = torch.rand(2, channels, 64, 64) * 2 - 1
    out = g.forward_train(x)
    assert out["image"].shape == x.shape
    assert out["view_logits"].shape == (2, NUM_VIEWS)
    assert out["z"].shape == (2, Z_DIM)
    assert out["image"].abs().max() <= 1.0
    assert g(x, torch.zeros(2, 5, 2)).shape == x.shape
    big = CRGANGenerator(128, channels, 0.125)
    assert big(torch.zeros(1, channels, 128, 128)).shape == (1, channels, 128, 128)


def test_forward_uses_frontal_code_and_is_deterministic_in_eval() -> None:
    g = _small().eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        y1, y2 = g(x), g(x)
        _, z = g.encode(x)
        frontal = g.generate(view_onehot(torch.full((2,), FRONTAL_VIEW)), z)
        profile_view = g.generate(view_onehot(torch.zeros(2, dtype=torch.long)), z)
        via_forward = g(None, view=torch.full((2,), FRONTAL_VIEW), z=z)
        other = g.forward_train(x, view=torch.tensor([3, 3]))["image"]
    assert torch.equal(y1, y2)
    assert torch.allclose(y1, frontal, atol=1e-6)
    assert torch.allclose(y1, via_forward, atol=1e-6)
    assert not torch.allclose(y1, profile_view, atol=1e-4)
    assert not torch.allclose(y1, other, atol=1e-4)


def test_width_groups_follow_module_names_and_residual_coupling() -> None:
    g = _small()
    groups = width_groups(g)  # raises on inconsistent layouts
    assert set(groups) == {
        "encoder.stem", "generator.fc",
        *[f"encoder.down.s{r}{s}" for r in (32, 16, 8, 4) for s in ("", ".mid")],
        *[f"generator.up.s{r}{s}" for r in (8, 16, 32, 64) for s in ("", ".mid")],
    }
    names = dict(g.named_modules())
    for r in (32, 16, 8, 4):
        block = names[f"encoder.down.s{r}"]
        assert block.shortcut.out_chans == block.conv2.out_chans  # summed: one group
        assert block.shortcut.out_chans.groups() == {f"encoder.down.s{r}"}
        assert block.conv1.out_chans.groups() == {f"encoder.down.s{r}.mid"}
    up = names["generator.up.s16"]
    assert up.shortcut.in_chans.groups() == {"generator.up.s8"}  # shortcut takes the block input
    assert up.shortcut.out_chans == up.conv2.out_chans
    # full CR-GAN widths at 128
    full = width_groups(CRGANGenerator(128, 3, 1.0))
    assert full["encoder.down.s64"] == 64 and full["encoder.down.s4"] == 512
    assert full["generator.fc"] == 512 and full["generator.up.s128"] == 64


@pytest.mark.parametrize("separable", [False, True])
def test_supernet_matches_static_subnet(separable: bool) -> None:
    sup = _small(separable)
    randomize_bn(sup)
    choices = CRGAN_STUDENT_SPEC.choices(width_groups(sup))
    assert set(choices) == set(width_groups(sup))  # every group is prunable
    rng = random.Random(1)
    cfg = {g: rng.choice(c) for g, c in choices.items()}
    assert any(cfg[g] < full for g, full in width_groups(sup).items())
    set_widths(sup, cfg)
    static = _small(separable, sub=cfg)
    load_subnet_weights(sup, static)
    sup.eval()
    static.eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = sup(x), static(x)
        ta, tb = sup.forward_train(x), static.forward_train(x)
    assert (a - b).abs().max() < 1e-5
    assert (ta["z"] - tb["z"]).abs().max() < 1e-5
    assert count_params(sup) == count_params(static)
    assert count_macs(sup, sup.example_inputs()) == count_macs(static, static.example_inputs())
    assert static.arch()["sub"] == cfg


def test_separable_reduces_macs_and_keeps_upsampling_convs_dense() -> None:
    dense, sep = _small(False), _small(True)
    assert count_macs(sep, sep.example_inputs()) < 0.8 * count_macs(dense, dense.example_inputs())
    assert count_params(sep) < count_params(dense)
    up = dict(sep.named_modules())["generator.up.s16"]
    assert isinstance(up.conv1, SuperConv2d) and isinstance(up.shortcut, SuperConv2d)
    assert not up.conv1.depthwise and not up.shortcut.depthwise
    assert isinstance(up.conv2, SeparableConv2d)
    assert isinstance(dict(sep.named_modules())["encoder.down.s16"].conv1, SeparableConv2d)


def test_full_size_counts_match_official_crgan_and_student_floor() -> None:
    """Official encoder+generator ~26.6M params / 9.2 GMACs at 128 (reference.md section 3)."""
    g = CRGANGenerator(128, 3, 1.0)
    params, macs = count_params(g), count_macs(g, g.example_inputs())
    assert abs(params - 26.6e6) < 0.15 * 26.6e6
    # exactly the official model.py layer shapes (13 + 115 = 9 + 119 head/code sizes)
    assert params == 26_562_435
    assert abs(macs - 9.2e9) < 0.15 * 9.2e9
    student = CRGANGenerator(128, 3, 1.0, separable=True)
    mins = {k: v[0] for k, v in CRGAN_STUDENT_SPEC.choices(width_groups(student)).items()}
    set_widths(student, mins)
    assert count_macs(student, student.example_inputs()) * 10 <= macs


def test_critic_heads_and_gradient_penalty() -> None:
    d = CRGANCritic(64, 3, 0.25)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    views, score = d(x, heads=True)
    assert views.shape == (3, NUM_VIEWS) and score.shape == (3, 1)
    assert torch.equal(d(x), score)
    gp = gradient_penalty(d, x, torch.rand_like(x))
    gp.backward()
    assert torch.isfinite(gp) and gp > 0
    # the penalty reaches every trunk and critic-head weight (not the view head, which is not scored,
    # nor biases after the last nonlinearity, which do not change the input gradient)
    for name, p in d.named_parameters():
        if name.endswith("weight") and not name.startswith("view_head"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_family_registered_and_distill_layers_exist() -> None:
    fam = get_family("crgan")
    for res in (64, 128):
        g = fam.build_generator(resolution=res, channels=3, width_mult=0.125, separable=False, sub=None)
        names = dict(g.named_modules())
        for layer in fam.student_spec.distill:
            assert layer in names
            assert len(names[layer].shortcut.out_chans.segments) == 1
    d = fam.build_discriminator(resolution=64, channels=1, width_mult=0.125)
    assert d(torch.zeros(1, 1, 64, 64)).shape == (1, 1)


def test_loss_config_rejects_bad_values() -> None:
    g, d = _small(mult=0.125), CRGANCritic(64, 3, 0.125)
    with pytest.raises(ConfigError, match="unknown key"):
        make_teacher_task(g, d, loss={"recon": 1.0})
    with pytest.raises(ConfigError, match="n_critic"):
        make_teacher_task(g, d, loss={"n_critic": 0})
    with pytest.raises(ConfigError, match="recognizer"):
        make_teacher_task(g, d, loss={"identity": 1.0})
    assert make_teacher_task(g, d, loss={"betas": [0.5, 0.999]}).cfg.betas == (0.5, 0.999)
    assert CRGANLossConfig().reconstruction == 4.0


class _TinyRecognizer(torch.nn.Module):
    """A fixed random conv feature extractor standing in for a frozen face recognizer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 5, stride=4)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.conv(images.mean(1, keepdim=True)).flatten(1), dim=1)


def test_task_steps_reduce_reconstruction_l1() -> None:
    g, d = CRGANGenerator(64, 1, 0.125), CRGANCritic(64, 1, 0.125)
    rec = _TinyRecognizer()
    task = make_teacher_task(g, d, recognizer=rec, loss={"identity": 0.1})
    b = 4

    def smooth() -> torch.Tensor:
        return F.interpolate(torch.rand(b, 1, 4, 4) * 2 - 1, size=64, mode="bilinear", align_corners=False)

    batch = {"profile": smooth(), "frontal": smooth(), "yaw": torch.tensor([-90.0, 45.0, 0.0, 15.0]),
             "landmarks": torch.zeros(b, 5, 2), "subject": torch.arange(b)}
    rec_before = [p.clone() for p in rec.parameters()]
    history = [task.train_step(batch, step) for step in range(20)]
    assert all(all(torch.isfinite(torch.tensor(v)) for v in h.values()) for h in history)
    l1 = [h["recon_l1"] for h in history]
    assert min(l1[5:]) < 0.8 * l1[0]
    assert sum(l1[-5:]) / 5 < l1[0]
    assert "identity" in history[0] and "gp" in history[0]
    assert all(torch.equal(a, p) for a, p in zip(rec_before, rec.parameters()))  # recognizer frozen
    grid = task.sample(batch)
    assert grid.shape == (3 * b, 1, 64, 64) and g.training
    with pytest.raises(DataError, match="yaw"):
        task.train_step({k: v for k, v in batch.items() if k != "yaw"}, 0)


def test_warmup_schedule_validates_and_ramps_adversarial_terms() -> None:
    g, d = _small(mult=0.125), CRGANCritic(64, 3, 0.125)
    for key in ("warmup_steps", "ramp_steps"):
        with pytest.raises(ConfigError, match=key):
            make_teacher_task(g, d, loss={key: -1})
        with pytest.raises(ConfigError, match=key):
            make_teacher_task(g, d, loss={key: 2.5})
    cfg = make_teacher_task(g, d, loss={"warmup_steps": 3, "ramp_steps": 4}).cfg
    assert (cfg.warmup_steps, cfg.ramp_steps) == (3, 4)
    scales = [cfg.adversarial_scale(s) for s in range(9)]
    assert scales == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [CRGANLossConfig().adversarial_scale(s) for s in (0, 5)] == [1.0, 1.0]  # official: no warm-up
    assert CRGANLossConfig(warmup_steps=2).adversarial_scale(2) == 1.0  # no ramp: full weight at once


def test_warmup_steps_skip_the_critic_and_generation_path() -> None:
    g, d = CRGANGenerator(64, 1, 0.125), CRGANCritic(64, 1, 0.125)
    task = make_teacher_task(g, d, loss={"warmup_steps": 2, "ramp_steps": 2})
    b = 2
    batch = {"profile": torch.rand(b, 1, 64, 64) * 2 - 1, "frontal": torch.rand(b, 1, 64, 64) * 2 - 1,
             "yaw": torch.tensor([-45.0, 90.0])}
    d_before = [p.clone() for p in d.parameters()]
    g_before = [p.clone() for p in g.parameters()]
    warm = task.train_step(batch, 0)
    assert warm["adv_scale"] == 0.0 and "gp" not in warm and "g_adv" not in warm
    assert all(torch.equal(a, p) for a, p in zip(d_before, d.parameters()))  # critic untouched
    assert any(not torch.equal(a, p) for a, p in zip(g_before, g.parameters()))  # encoder/generator step
    ramp = task.train_step(batch, 2)
    assert ramp["adv_scale"] == 0.5 and "gp" in ramp and "g_adv" in ramp
    assert any(not torch.equal(a, p) for a, p in zip(d_before, d.parameters()))  # critic trains now
