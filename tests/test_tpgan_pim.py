"""TP-GAN / PIM generators, patch helpers, discriminators and teacher tasks."""

from __future__ import annotations

import random

import pytest
import torch

from _nets import randomize_bn
from slimface.errors import ConfigError
from slimface.models.discriminators import DomainDiscriminator, PatchDiscriminator
from slimface.models.patches import canonical_crops, crop_patches, paste, paste_max, patch_boxes
from slimface.families import get_family
from slimface.families.pim.model import PIMGenerator
from slimface.families.pim.task import PIMTask
from slimface.families.tpgan.model import TPGANGenerator
from slimface.families.tpgan.task import TPGANTask
from slimface.nn.profile import count_macs, count_params
from slimface.nn.super_layers import load_subnet_weights, set_widths, width_groups


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core box, 2 spinning threads run these small convs ~30x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _batch(res: int = 64, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    from slimface.data.records import canonical_landmarks

    lm = torch.tensor(canonical_landmarks(res)).expand(b, 5, 2).clone()
    lm = lm + torch.randn(b, 5, 2, generator=g)  # profile landmarks off the canonical spots
    return {
        "profile": torch.rand(b, 3, res, res, generator=g) * 2 - 1,
        "frontal": torch.rand(b, 3, res, res, generator=g) * 2 - 1,
        "landmarks": lm,
        "subject": torch.arange(b) % 3,
        "yaw": torch.full((b,), 45.0),
    }


# ------------------------------------------------------------------------------------------ patches
def test_crop_equals_slice_and_paste_places_patch() -> None:
    img = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64)
    centres = torch.tensor([[30.0, 20.0], [12.0, 40.0]])  # (x, y)
    crop = crop_patches(img, centres, (10, 8))
    assert torch.allclose(crop[0], img[0, :, 15:25, 26:34])
    assert torch.allclose(crop[1], img[1, :, 35:45, 8:16])
    # sub-pixel centre on a horizontal ramp: values shift by exactly the offset
    ramp = torch.arange(64, dtype=torch.float32).view(1, 1, 1, 64).expand(1, 1, 64, 64)
    half = crop_patches(ramp, torch.tensor([[30.5, 20.0]]), (4, 4))
    assert torch.allclose(half[0, 0, 0], torch.tensor([28.5, 29.5, 30.5, 31.5]))
    # differentiable w.r.t. the image
    x = img.clone().requires_grad_(True)
    crop_patches(x, centres, (10, 8)).sum().backward()
    assert x.grad is not None and float(x.grad.sum()) == 2 * 10 * 8

    boxes = patch_boxes(128)
    le = boxes["left_eye"]
    assert (le.height, le.width, le.top, le.left) == (40, 40, 21, 24)  # centre (row 41, col 44)
    assert (boxes["mouth"].top, boxes["mouth"].left) == (89 - 16, 65 - 24)
    patch = torch.rand(1, 3, 40, 40) + 1
    canvas = paste(patch, le, 128)
    assert canvas.shape == (1, 3, 128, 128)
    assert torch.equal(canvas[..., 21:61, 24:64], patch)
    assert float(canvas.sum()) == pytest.approx(float(patch.sum()))
    # canonical crops of the pasted canvas give the patch back; max-merge keeps every part
    parts = {n: torch.full((1, 1, b.height, b.width), 1.0 + i) for i, (n, b) in enumerate(boxes.items())}
    merged = paste_max(parts, boxes, 128)
    back = canonical_crops(merged, boxes)
    assert torch.equal(back["nose"], torch.maximum(back["nose"], parts["nose"]))
    assert float(back["mouth"].min()) == 4.0


# --------------------------------------------------------------------------------------- generators
@pytest.mark.parametrize("res", [64, 128])
def test_output_shapes(res: int) -> None:
    torch.manual_seed(0)
    g = TPGANGenerator(res, 3, 0.125).eval()
    b = _batch(res, 1)
    with torch.no_grad():
        out = g(b["profile"], b["landmarks"], outputs="train")
    s = res // 128
    assert out["image"].shape == (1, 3, res, res)
    assert {k: tuple(v.shape) for k, v in out["images"].items()} == {
        res: (1, 3, res, res), res // 2: (1, 3, res // 2, res // 2), res // 4: (1, 3, res // 4, res // 4)}
    assert out["local_images"].shape == (1, 3, res, res)
    assert out["feature"].shape == (1, 256)
    f = res / 128
    expect = {"left_eye": (40, 40), "right_eye": (40, 40), "nose": (32, 40), "mouth": (32, 48)}
    for n, (h, w) in expect.items():
        assert out["patches"][n].shape == (1, 3, int(h * f), int(w * f)), (n, s)
    assert float(out["image"].abs().max()) <= 1.0
    # grayscale generalises: C = 1 in and out
    g1 = TPGANGenerator(res, 1, 0.125).eval()
    with torch.no_grad():
        assert g1(b["profile"][:, :1], b["landmarks"]).shape == (1, 1, res, res)


def test_flip_input_used_and_eval_deterministic() -> None:
    torch.manual_seed(0)
    g = TPGANGenerator(64, 3, 0.125).eval()
    b = _batch(64, 2)
    seen: list[torch.Tensor] = []
    h = g.encoder.s128.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        y1 = g(b["profile"], b["landmarks"])
        y2 = g(b["profile"], b["landmarks"])
    h.remove()
    x = b["profile"]
    assert torch.equal(seen[0], torch.cat([x, x.flip(-1)], 1))
    assert torch.equal(y1, y2)  # eval: z = 0, BN running stats
    # landmarks matter (local pathways see landmark-centred crops)
    with torch.no_grad():
        y3 = g(b["profile"], b["landmarks"] + 3.0)
    assert not torch.allclose(y1, y3)


def test_width_groups_named_after_modules() -> None:
    g = TPGANGenerator(64, 3, 0.25)
    groups = width_groups(g)
    for name in ("encoder.s8", "encoder.s8.res.0.mid", "encoder.s8.res.3.mid", "decoder.s16",
                 "decoder.s16.res.1.mid", "decoder.s8.res.2.mid", "local.left_eye.l1", "local.nose.u2.up",
                 "local.feature", "decoder.noise.s8", "decoder.noise.s128", "decoder.s128.conv1"):
        assert name in groups, name
    modules = dict(g.named_modules())
    for group in groups:
        if group == "local.feature" or ".noise." in group:
            continue
        path = group[: -len(".mid")] if group.endswith(".mid") else group
        # the group's module (or its stage) exists under the same dotted path
        while path not in modules:
            path = path.rsplit(".", 1)[0]
        assert path.count(".") >= 1, group
    pim_groups = width_groups(PIMGenerator(64, 3, 0.25))
    assert "decoder.noise.s32" not in pim_groups and "decoder.s16.res.1.mid" not in pim_groups
    assert "decoder.noise.s8" in pim_groups


def _random_cfg(g: torch.nn.Module, family: str, seed: int) -> dict[str, int]:
    spec = get_family(family).student_spec
    rng = random.Random(seed)
    return {k: rng.choice(v) for k, v in spec.choices(width_groups(g)).items()}


@pytest.mark.parametrize("separable", [False, True])
def test_supernet_equals_static_subnet(separable: bool) -> None:
    torch.manual_seed(0)
    sup = TPGANGenerator(64, 3, 0.25, separable=separable)
    randomize_bn(sup)
    sup.eval()
    b = _batch(64, 2)
    groups = width_groups(sup)
    cfg = _random_cfg(sup, "tpgan", seed=1)
    # prune groups that feed concatenations (encoder skips, noise maps, deconv outputs, local feature)
    cfg.update({"encoder.s32": 8, "encoder.s128": 8, "decoder.noise.s64": 8, "decoder.s16": 16,
                "local.feature": 8, "decoder.s8.res.0.mid": 24})
    assert all(cfg[k] <= groups[k] for k in cfg)
    set_widths(sup, cfg)
    static = TPGANGenerator(64, 3, 0.25, separable=separable, sub=cfg).eval()
    load_subnet_weights(sup, static)
    assert width_groups(static) == {k: cfg.get(k, v) for k, v in groups.items()}
    with torch.no_grad():
        a = sup(b["profile"], b["landmarks"])
        s = static(b["profile"], b["landmarks"])
    assert (a - s).abs().max() < 1e-5
    assert count_params(sup) == count_params(static)
    # training mode with a pruned concat trunk: BN statistics of the active slices update in place
    sup.train()
    bn = sup.decoder.s32.res[0].bn2  # trunk = decoder.s32 ‖ encoder.s32 ‖ input ‖ noise
    before = bn.running_mean.clone()
    sup(b["profile"], b["landmarks"]).mean().backward()
    changed = (bn.running_mean != before).nonzero().flatten()
    idx = bn.out_chans.active_index(cfg)
    active = torch.arange(bn.num_features)[idx]
    assert set(changed.tolist()) <= set(active.tolist()) and len(changed) > 0
    set_widths(sup, None)


def test_separable_reduces_macs_and_pim_is_lighter() -> None:
    g = TPGANGenerator(64, 3, 0.25)
    gs = TPGANGenerator(64, 3, 0.25, separable=True)
    p = PIMGenerator(64, 3, 0.25)
    m, ms, mp = (count_macs(x, x.example_inputs()) for x in (g, gs, p))
    assert ms < 0.5 * m
    assert mp < m
    # PIM's lighter decoder, compared at the same up-sampling kernel (its own is 4x4, TP-GAN's 3x3)
    import dataclasses

    from slimface.families.pim.model import PIM_ARCH
    from slimface.families.tpgan.model import TPGAN_ARCH

    g4 = TPGANGenerator(64, 3, 0.25, arch=dataclasses.replace(TPGAN_ARCH, up_kernel=PIM_ARCH.up_kernel))
    assert count_params(p) < count_params(g4) and mp < count_macs(g4, g4.example_inputs())


def test_distill_layers_are_single_segment_tensors() -> None:
    g = TPGANGenerator(64, 3, 0.25).eval()
    cfg = _random_cfg(g, "tpgan", seed=3)
    set_widths(g, cfg)
    modules = dict(g.named_modules())
    seen: dict[str, torch.Tensor] = {}
    spec = get_family("tpgan").student_spec
    hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o)) for n in spec.distill]
    b = _batch(64, 1)
    with torch.no_grad():
        g(b["profile"], b["landmarks"])
    for h in hooks:
        h.remove()
    groups = width_groups(g)
    expected = {"encoder.s8": "encoder.s8", "decoder.s16.up": "decoder.s16", "decoder.s32.up": "decoder.s32",
                "decoder.s64.up": "decoder.s64", "decoder.s128.up": "decoder.s128",
                "decoder.s128.conv1": "decoder.s128.conv1"}
    assert set(spec.distill) == set(expected)
    for n, group in expected.items():
        assert isinstance(seen[n], torch.Tensor)
        assert seen[n].shape[1] == cfg.get(group, groups[group]), n


def test_full_size_params_match_official() -> None:
    g = TPGANGenerator(128, 3, 1.0)
    parts = {"encoder": count_params(g.encoder), "decoder": count_params(g.decoder),
             "local": sum(count_params(m) for m in g.local.values())}
    total = count_params(g)
    assert total == sum(parts.values())
    assert abs(total / 157.4e6 - 1) < 0.15
    assert abs(parts["encoder"] / 39.4e6 - 1) < 0.15
    assert abs(parts["decoder"] / 49.2e6 - 1) < 0.15
    assert abs(parts["local"] / 68.8e6 - 1) < 0.15
    assert count_params(PIMGenerator(128, 3, 1.0)) < total


def _min_cfg(g: torch.nn.Module, family: str) -> dict[str, int]:
    return {k: v[0] for k, v in get_family(family).student_spec.choices(width_groups(g)).items()}


@pytest.mark.parametrize("family,ratio", [("tpgan", 25.0), ("pim", 15.0)])
def test_full_size_macs_and_smallest_student(family: str, ratio: float) -> None:
    fam = get_family(family)
    teacher = fam.build_generator(resolution=128, channels=3, width_mult=1.0, separable=False, sub=None)
    macs = count_macs(teacher, teacher.example_inputs())
    if family == "tpgan":
        assert abs(macs / 92.9e9 - 1) < 0.15
    cfg = _min_cfg(teacher, family)
    student = fam.build_generator(resolution=128, channels=3, width_mult=1.0, separable=True, sub=cfg)
    assert macs / count_macs(student, student.example_inputs()) >= ratio


# ------------------------------------------------------------------------------------ discriminators
@pytest.mark.parametrize("res", [64, 128])
def test_discriminator_shapes(res: int) -> None:
    x = torch.rand(2, 3, res, res) * 2 - 1
    d = PatchDiscriminator(res, 3, 0.125)
    assert d(x, x).shape == (2, 1, 4, 4)
    assert d.net.h0[0].in_channels == 6
    with pytest.raises(ValueError):
        d(x)
    assert DomainDiscriminator(res, 3, 0.125)(x).shape == (2, 1, 4, 4)
    assert PatchDiscriminator(res, 1, 0.125, conditional=False)(x[:, :1]).shape == (2, 1, 4, 4)


# -------------------------------------------------------------------------------------------- tasks
def test_tpgan_task_reduces_pixel_loss() -> None:
    torch.manual_seed(0)
    fam = get_family("tpgan")
    g = fam.build_generator(resolution=64, channels=3, width_mult=0.125, separable=False, sub=None)
    d = fam.build_discriminator(resolution=64, channels=3, width_mult=0.125)
    task = fam.make_teacher_task(g, d, None, num_subjects=3, lr=1e-3)
    assert isinstance(task, TPGANTask)
    b = _batch(64, 2)
    first = task.train_step(b, 0)
    for step in range(1, 15):
        last = task.train_step(b, step)
    assert all(v == v for v in last.values())
    assert last["g_pixel"] < 0.8 * first["g_pixel"]
    assert last["g_local"] < first["g_local"]
    assert task.sample(b).shape == (6, 3, 64, 64)
    with pytest.raises(ConfigError):
        fam.make_teacher_task(g, d, None, num_subjects=3, loss={"pixle": 1.0})
    with pytest.raises(ConfigError):
        fam.make_teacher_task(g, d, None, num_subjects=0)


def test_pim_task_trains_all_nets() -> None:
    torch.manual_seed(0)
    from slimface.models.recognizer import build_recognizer

    fam = get_family("pim")
    g = fam.build_generator(resolution=64, channels=3, width_mult=0.125, separable=False, sub=None)
    d = fam.build_discriminator(resolution=64, channels=3, width_mult=0.125)
    rec = build_recognizer("lightcnn9", input_size=64, width_mult=0.125)
    task = fam.make_teacher_task(g, d, rec, num_subjects=3, lr=1e-3)
    assert isinstance(task, PIMTask)
    assert set(task.nets) == {"generator", "discriminator", "id_head", "recognizer", "rec_head", "domain_d"}
    snap = {k: [p.detach().clone() for p in n.parameters()] for k, n in task.nets.items()}
    b = _batch(64, 2)
    logs = [task.train_step(b, s) for s in range(3)]
    for k in ("g_ip", "g_rec_cls", "g_domain", "domain_d", "rec", "g_pixel"):
        assert all(torch.isfinite(torch.tensor(l[k])) for l in logs), k
    for k, net in task.nets.items():
        moved = any(not torch.equal(a, p) for a, p in zip(snap[k], net.parameters()))
        assert moved, k


def test_up_kernel_sets_every_stride2_transposed_conv_and_keeps_sizes() -> None:
    """TPGANArch.up_kernel: 3 is the official graph (what every shipped weight has); 4 overlaps
    evenly (no even/odd-row checkerboard) and still exactly doubles each size."""
    import dataclasses

    import torch

    from slimface.families.tpgan.model import TPGAN_ARCH, TPGANGenerator
    from slimface.models.blocks import up2_padding
    from slimface.nn.super_layers import SuperConvTranspose2d

    assert TPGAN_ARCH.up_kernel == 3
    assert [up2_padding(k) for k in (3, 4)] == [(1, 1), (1, 0)]
    for k in (3, 4):
        g = TPGANGenerator(64, 3, 0.0625, arch=dataclasses.replace(TPGAN_ARCH, up_kernel=k)).eval()
        kernels = {m.kernel_size[0] for m in g.modules() if isinstance(m, SuperConvTranspose2d) and m.stride[0] == 2}
        assert kernels == {k}
        with torch.no_grad():
            assert g(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
