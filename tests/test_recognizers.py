"""Identity judges: LightCNN variants, safe official-format checkpoint loading, dlib, training task."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slimface.errors import CheckpointError, ConfigError
from slimface.models.lightcnn import MFM, LightCNN, load_lightcnn_checkpoint, read_state_dict
from slimface.models.recognizer import LightCNNRecognizer, build_recognizer
from slimface.models.recognizer_base import to_gray01
from slimface.train.recognizer_task import RecognizerTask


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torchprofile import profile_macs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return profile_macs(model, x)


# ---------------------------------------------------------------------------------------------
# LightCNN architecture


def test_mfm_conv_is_max_of_the_two_halves() -> None:
    torch.manual_seed(0)
    m = MFM(3, 4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    raw = m.filter(x)
    assert raw.shape[1] == 8
    out = m(x)
    assert out.shape == (2, 4, 8, 8)
    assert torch.equal(out, torch.maximum(raw[:, :4], raw[:, 4:]))
    # Not a plain ReLU/identity: each half wins somewhere.
    assert (raw[:, :4] > raw[:, 4:]).any() and (raw[:, :4] < raw[:, 4:]).any()


def test_mfm_linear_with_hand_set_weights() -> None:
    m = MFM(2, 2, linear=True)
    with torch.no_grad():
        m.filter.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, 2]]))
        m.filter.bias.zero_()
    out = m(torch.tensor([[3.0, -1.0]]))
    # halves: (3, -1) and (-3, -2) -> max = (3, -1)
    assert torch.equal(out, torch.tensor([[3.0, -1.0]]))
    out = m(torch.tensor([[-3.0, 1.0]]))
    assert torch.equal(out, torch.tensor([[3.0, 2.0]]))


@pytest.mark.parametrize(
    "variant,params_m,gmacs",
    [("lightcnn9", 5.48, 0.98), ("lightcnn29", 12.57, 3.62), ("lightcnn29v2", 10.48, 3.62)],
)
def test_official_sizes_at_128(variant: str, params_m: float, gmacs: float) -> None:
    model = LightCNN(variant, num_classes=0).eval()
    assert round(model.backbone_parameters() / 1e6, 2) == params_m
    assert round(_macs(model, torch.zeros(1, 1, 128, 128)) / 1e9, 2) == gmacs
    with_head = LightCNN(variant, num_classes=1000)
    assert with_head.backbone_parameters() == model.backbone_parameters()


@pytest.mark.parametrize("variant", ["lightcnn9", "lightcnn29", "lightcnn29v2"])
def test_small_variants_shapes(variant: str) -> None:
    model = LightCNN(variant, num_classes=7, input_size=64, width_mult=0.25)
    logits, feat = model(torch.rand(3, 1, 64, 64))
    assert logits is not None and logits.shape == (3, 7) and feat.shape == (3, 256)
    full = LightCNN(variant, num_classes=7)
    assert model.backbone_parameters() < full.backbone_parameters() / 10
    # Feature is taken before dropout: the same in train and eval mode.
    model.train()
    x = torch.rand(2, 1, 64, 64)
    assert torch.equal(model(x)[1], model.eval()(x)[1])
    with pytest.raises(ValueError, match="64, 64"):
        model(torch.rand(1, 1, 128, 128))


def test_bad_architecture_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of 16"):
        LightCNN("lightcnn9", input_size=100)
    with pytest.raises(ConfigError, match="unknown"):
        LightCNN("lightcnn30")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown"):
        build_recognizer("facenet")
    with pytest.raises(ConfigError, match="channels"):
        build_recognizer("lightcnn9", channels=2)


def test_official_key_names() -> None:
    v2 = LightCNN("lightcnn29v2", num_classes=10).state_dict()
    assert {"conv1.filter.weight", "group1.conv_a.filter.weight", "block4.3.conv2.filter.bias", "fc.weight",
            "fc.bias", "fc2.weight"} <= set(v2)
    assert "fc2.bias" not in v2
    v9 = LightCNN("lightcnn9", num_classes=10).state_dict()
    assert {"features.0.filter.weight", "features.7.conv.filter.weight", "fc1.filter.weight", "fc2.bias"} <= set(v9)
    v29 = LightCNN("lightcnn29", num_classes=10).state_dict()
    assert "fc.filter.weight" in v29 and v29["fc.filter.weight"].shape == (512, 8192)


# ---------------------------------------------------------------------------------------------
# Official-format checkpoints


def _save_official(model: LightCNN, path: Path) -> None:
    torch.save({"epoch": 30, "arch": "LightCNN", "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               path)


@pytest.fixture(scope="module")
def v2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[LightCNN, Path]:
    torch.manual_seed(1)
    model = LightCNN("lightcnn29v2", num_classes=50).eval()
    path = tmp_path_factory.mktemp("ckpt") / "LightCNN_29Layers_V2_checkpoint.pth.tar"
    _save_official(model, path)
    return model, path


def test_official_v2_checkpoint_loads_strictly(v2_checkpoint: tuple[LightCNN, Path]) -> None:
    model, path = v2_checkpoint
    loaded = load_lightcnn_checkpoint(path, "lightcnn29v2").eval()
    assert loaded.num_classes == 50
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        (l0, f0), (l1, f1) = model(x), loaded(x)
    assert torch.equal(f0, f1) and torch.equal(l0, l1)
    # Through the recognizer interface: RGB in [-1, 1] at another size is handled.
    rec = build_recognizer("lightcnn29v2", checkpoint=path).eval()
    img = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        emb = rec.embed(img)
        ref = F.normalize(model.feature(to_gray01(img)), dim=1)
    assert torch.allclose(emb, ref, atol=1e-6)


def test_classifier_of_another_size_is_skipped(v2_checkpoint: tuple[LightCNN, Path]) -> None:
    model, path = v2_checkpoint
    torch.manual_seed(5)
    loaded = load_lightcnn_checkpoint(path, "lightcnn29v2", num_classes=7)
    assert loaded.fc2 is not None and loaded.fc2.weight.shape == (7, 256)
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    no_head = load_lightcnn_checkpoint(path, "lightcnn29v2", num_classes=0)
    assert no_head.fc2 is None and torch.equal(no_head.conv1.filter.weight, model.conv1.filter.weight)


def test_checkpoint_of_another_variant_is_refused(tmp_path: Path, v2_checkpoint: tuple[LightCNN, Path]) -> None:
    _, v2_path = v2_checkpoint
    with pytest.raises(CheckpointError, match="'fc.filter.weight' is missing"):
        load_lightcnn_checkpoint(v2_path, "lightcnn29")
    with pytest.raises(CheckpointError, match="'features.0.filter.weight' is missing"):
        load_lightcnn_checkpoint(v2_path, "lightcnn9")
    small = tmp_path / "small.pth"
    _save_official(LightCNN("lightcnn29v2", num_classes=3, width_mult=0.5), small)
    with pytest.raises(CheckpointError, match=r"'conv1.filter.weight' has shape \(48, 1, 5, 5\)"):
        load_lightcnn_checkpoint(small, "lightcnn29v2")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"module.conv1.filter.weight": torch.zeros(1)}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle code.*torch.save\\(state_dict\\)"):
        load_lightcnn_checkpoint(path, "lightcnn29v2")
    assert not marker.exists()


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(garbage)
    empty = tmp_path / "meta.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="no LightCNN state dict"):
        read_state_dict(empty)


# ---------------------------------------------------------------------------------------------
# Recognizer interface


def test_lightcnn_recognizer_embed_is_normalised_and_differentiable() -> None:
    torch.manual_seed(0)
    rec = LightCNNRecognizer("lightcnn9", input_size=32, width_mult=0.25, num_classes=5)
    img = (torch.rand(4, 3, 48, 48) * 2 - 1).requires_grad_(True)
    emb = rec.embed(img)
    assert emb.shape == (4, 256) and rec.embedding_dim == 256
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    emb.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    # Gray input equals the RGB input whose channels all carry that gray.
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(rec.embed(gray), rec.embed(gray.repeat(1, 3, 1, 1)), atol=1e-5)


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny convs gain nothing from intra-op threads, and on a busy 2-core box the spinning costs 5x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_recognizer_task_learns_separable_problem(one_thread: None) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_cls = 4
    # Four stripe orientations plus noise: separable, but only through spatial structure.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    protos = 0.8 * torch.stack([torch.sin(3 * xx), torch.sin(3 * yy), torch.sin(3 * (xx + yy)), -torch.sin(3 * xx)])
    labels = torch.arange(n_cls).repeat(8)
    noise = 0.3 * torch.randn(len(labels), 3, 32, 32, generator=g)
    images = (protos[labels][:, None] + noise).clamp(-1, 1)
    model = LightCNNRecognizer("lightcnn9", input_size=32, width_mult=0.25, num_classes=n_cls)
    task = RecognizerTask(model, lr=1e-3, optimizer="adam", total_steps=80)
    assert set(task.nets) == {"recognizer"} and set(task.optimizers) == {"recognizer"}
    lr_of = lambda: task.optimizers["recognizer"].param_groups[0]["lr"]  # noqa: E731
    losses, accs = [], []
    for step in range(40):
        idx = torch.randperm(len(labels), generator=g)[:16]
        out = task.train_step({"image": images[idx], "label": labels[idx]}, step)
        losses.append(out["loss"])
        accs.append(out["acc"])
    assert lr_of() == pytest.approx(1e-3)  # constant for the first half of total_steps
    assert np.mean(losses[:5]) > 1.2  # ~ln 4 at the start
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    with torch.no_grad():
        pred = model(images)[0].argmax(1)
    assert (pred == labels).float().mean() >= 0.9
    assert task.sample({"image": images[:2]}).shape == (2, 1, 32, 32)
    task.train_step({"image": images[:4], "label": labels[:4]}, 40)
    assert lr_of() == pytest.approx(1e-3 * (1 - 1 / 40))  # then linear decay


def test_recognizer_task_needs_a_classifier() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        RecognizerTask(LightCNNRecognizer("lightcnn9", input_size=32, width_mult=0.25, num_classes=0))


# ---------------------------------------------------------------------------------------------
# dlib


def _drawn_face(eye: int = 10, shift: int = 0, skin: tuple[int, int, int] = (224, 180, 150)) -> torch.Tensor:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (128, 128), (90, 90, 110))
    d = ImageDraw.Draw(im)
    d.ellipse((24 + shift, 14, 104 + shift, 120), fill=skin)
    for cx in (44, 86):
        d.ellipse((cx - eye // 2 + shift, 41 - eye // 3, cx + eye // 2 + shift, 41 + eye // 3), fill=(40, 30, 30))
    d.polygon([(64 + shift, 50), (58 + shift, 70), (70 + shift, 70)], fill=(200, 150, 120))
    d.line((50 + shift, 89, 80 + shift, 89), fill=(150, 50, 50), width=4)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1


@pytest.mark.parametrize("detect", [True, False])
def test_dlib_descriptors(detect: bool) -> None:
    pytest.importorskip("dlib")
    # Generic LightCNN shape settings are accepted and have no effect on dlib's fixed model.
    rec = build_recognizer("dlib", detect=detect, input_size=64, num_classes=10, channels=1)
    a, b = _drawn_face(), _drawn_face(eye=16, shift=4, skin=(200, 160, 120))
    emb = rec.embed(torch.stack([a, a, b]))
    assert emb.shape == (3, 128)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[1])
    assert (emb[0] - emb[2]).norm() > 0.05
    assert len(rec.last_detected) == 3
    if not detect:
        assert not any(rec.last_detected)
    # Deterministic across calls, and gray input is accepted.
    assert torch.equal(rec.embed(a[None]), emb[:1])
    assert rec.embed(a.mean(0, keepdim=True)[None]).shape == (1, 128)
