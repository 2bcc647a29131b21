"""ONNX / TorchScript export, int8 quantization and the common runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimface.deploy.onnx_export import export_onnx, export_torchscript
from slimface.deploy.runtime import check_onnx
from slimface.deploy.quantize import calibration_from_batches, quantize_int8
from slimface.deploy.runtime import (
    OnnxFrontalizer,
    TorchFrontalizer,
    from_module,
    load_frontalizer,
    register_format,
)
from slimface.errors import CheckpointError, DataError

RES = 32


class TinyGenerator(nn.Module):
    """Encoder-decoder (conv/BN/deconv/concat) + patches cropped at the landmarks with grid_sample."""

    def __init__(self, channels: int = 3, width: int = 8, patch: int = 8) -> None:
        super().__init__()
        self.patch = patch
        w = width
        self.enc = nn.Sequential(
            nn.Conv2d(channels, w, 3, 1, 1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        )
        self.dec = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.local = nn.Conv2d(channels, w, 3, 1, 1)
        self.out = nn.Conv2d(2 * w, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        f = self.dec(self.enc(x))
        half = self.patch / 2
        lin = torch.linspace(-1.0, 1.0, self.patch) * half
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        loc = torch.zeros_like(f)
        for k in range(5):
            cx = landmarks[:, k, 0].reshape(-1, 1, 1)
            cy = landmarks[:, k, 1].reshape(-1, 1, 1)
            grid = torch.stack([(gx + cx) / (w - 1) * 2 - 1, (gy + cy) / (h - 1) * 2 - 1], -1)
            feat = self.local(F.grid_sample(x, grid, align_corners=True))
            u = ((torch.arange(w, dtype=x.dtype).reshape(1, 1, w) - cx) / half).expand(-1, h, w)
            v = ((torch.arange(h, dtype=x.dtype).reshape(1, h, 1) - cy) / half).expand(-1, h, w)
            loc = torch.maximum(loc, F.grid_sample(feat, torch.stack([u, v], -1), align_corners=True))
        return torch.tanh(self.out(torch.cat([f, loc], 1)))


class NoLandmarks(nn.Module):
    """CR-GAN-like: ignores its landmarks (ONNX graph then has only the image input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def _model(channels: int = 3) -> TinyGenerator:
    torch.manual_seed(0)
    m = TinyGenerator(channels)
    for mod in m.modules():  # non-trivial BN statistics, so folding is exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _inputs(b: int = 1, channels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, channels, RES, RES, generator=g) * 2 - 1
    base = torch.tensor([[11.0, 10.0], [21.5, 10.0], [16.0, 16.0], [12.5, 22.0], [20.0, 22.0]])
    lm = base[None].repeat(b, 1, 1) + torch.randn(b, 5, 2, generator=g)
    return x, lm


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(_model(), _inputs(), tmp_path_factory.mktemp("onnx") / "gen.onnx")


def test_export_check_and_metadata(onnx_path: Path) -> None:
    m = _model()
    assert check_onnx(m, onnx_path, _inputs()) < 1e-4
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["slimface.resolution"] == str(RES) and meta["slimface.channels"] == "3"
    assert [i.name for i in proto.graph.input] == ["image", "landmarks"]
    assert "GridSample" in {n.op_type for n in proto.graph.node}
    assert not list(onnx_path.parent.glob(".*tmp"))  # atomic write left no temp file


def test_runtime_onnx_dynamic_batch(onnx_path: Path) -> None:
    f = load_frontalizer(onnx_path)
    assert isinstance(f, OnnxFrontalizer) and f.resolution == RES and f.channels == 3
    x, lm = _inputs(b=3, seed=1)
    with torch.inference_mode():
        ref = _model()(x, lm).numpy()
    out = f(x.numpy(), lm.numpy())  # numpy in
    assert out.shape == (3, 3, RES, RES)
    assert np.abs(out - ref).max() < 1e-4
    assert np.abs(f(x, lm) - ref).max() < 1e-4  # tensors in


def test_runtime_input_errors(onnx_path: Path) -> None:
    f = load_frontalizer(onnx_path)
    x, lm = _inputs()
    with pytest.raises(DataError, match="channels"):
        f(x[:, :1], lm)
    with pytest.raises(DataError, match="16x16"):
        f(x[:, :, :16, :16], lm)
    with pytest.raises(DataError, match="landmarks"):
        f(x, None)


def test_no_landmark_model_onnx(tmp_path: Path) -> None:
    m = NoLandmarks().eval()
    x, lm = _inputs(channels=1)
    p = export_onnx(m, (x, lm), tmp_path / "gray.onnx")
    f = load_frontalizer(p)
    assert f.channels == 1
    assert np.abs(f(x, None) - m(x).detach().numpy()).max() < 1e-5


def test_torchscript_roundtrip(tmp_path: Path) -> None:
    m = _model()
    x, lm = _inputs()
    p = export_torchscript(m, (x, lm), tmp_path / "gen.pt")
    f = load_frontalizer(p)
    assert f.kind == "torchscript" and f.resolution == RES and f.channels == 3
    with torch.inference_mode():
        ref = m(x, lm).numpy()
    assert np.abs(f(x, lm) - ref).max() < 1e-5


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\x01")
    with pytest.raises(CheckpointError, match="bad.onnx") as e:
        load_frontalizer(bad)
    assert "\n" not in str(e.value)
    badpt = tmp_path / "bad.pt"
    badpt.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_frontalizer(badpt)
    sd = tmp_path / "weights.pt"
    torch.save(_model().state_dict(), sd)  # a plain state_dict is not an export
    with pytest.raises(CheckpointError, match="exported"):
        load_frontalizer(sd)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_frontalizer(tmp_path / "nope.onnx")
    odd = tmp_path / "model.xyz"
    odd.write_text("hello")
    with pytest.raises(CheckpointError, match="unknown model format"):
        load_frontalizer(odd)


def test_registered_format(tmp_path: Path) -> None:
    d = tmp_path / "student.slimface"
    d.mkdir()
    (d / "arch.json").write_text("{}")

    def loader(path: Path) -> nn.Module:
        m = _model()
        m.resolution, m.channels = RES, 3  # type: ignore[assignment]
        return m

    register_format(".slimface", loader)
    f = load_frontalizer(d)
    assert isinstance(f, TorchFrontalizer) and f.resolution == RES and f.source == d
    x, lm = _inputs()
    with torch.inference_mode():
        assert np.abs(f(x, lm) - _model()(x, lm).numpy()).max() < 1e-6
    assert from_module(_model(), resolution=RES).resolution == RES


def test_int8_quantization(onnx_path: Path, tmp_path: Path) -> None:
    batches = []
    for s in range(4):  # PairDataset-like batches of 4 -> 16 single samples
        x, lm = _inputs(b=4, seed=10 + s)
        batches.append({"profile": x, "landmarks": lm, "frontal": x})
    cal = calibration_from_batches(batches)
    assert len(cal) == 16 and cal[0]["image"].shape == (1, 3, RES, RES)
    rep = quantize_int8(onnx_path, tmp_path / "gen_int8.onnx", cal)
    assert rep.n_calibration == 16
    assert rep.int8_ops.get("QLinearConv", 0) >= 3  # the convs really run in int8
    assert "ConvTranspose" in rep.fp32_ops  # no int8 deconv kernel on ORT CPU (left fp32 on purpose)
    assert 0.0 < rep.mean_abs_diff < 0.02 and rep.max_abs_diff < 0.2
    f = load_frontalizer(rep.path)
    assert f.resolution == RES and f.metadata["slimface.quantization"].startswith("int8")
    x, lm = _inputs(seed=99)  # unseen input
    with torch.inference_mode():
        ref = _model()(x, lm).numpy()
    assert np.abs(f(x, lm) - ref).mean() < 0.03
    with pytest.raises(DataError, match="calibration"):
        quantize_int8(onnx_path, tmp_path / "x.onnx", [])
    with pytest.raises(DataError, match="landmarks"):
        quantize_int8(onnx_path, tmp_path / "x.onnx", [{"image": x.numpy()}])
