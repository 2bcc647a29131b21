"""Frontalizing photos: landmarks CSV, alignment, dlib fallback messages, per-file failures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from slimface.data.landmarks import dlib5_to_ours
from slimface.deploy.frontalize import (
    CANONICAL_LANDMARKS_128,
    CANONICAL_MOUTH_CENTRE_128,
    align_face,
    frontalize_files,
    read_landmarks_csv,
    run_frontalize,
    similarity_transform,
)
from slimface.deploy.onnx_export import export_onnx
from slimface.deploy.runtime import from_module
from slimface.errors import DataError

RES = 32


class Gen(nn.Module):
    """Small conv generator that also reads the landmarks (shifts output by their mean)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(channels, 8, 3, 1, 1)
        self.b = nn.Conv2d(8, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        bias = (landmarks.mean(dim=(1, 2)) / 1000.0).reshape(-1, 1, 1, 1)
        return torch.tanh(self.b(torch.relu(self.a(x))) + bias)


def _photo_landmarks(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """Canonical 128 landmarks moved by a known similarity -> where they sit in the photo."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (scale * rot @ CANONICAL_LANDMARKS_128.T).T + np.array(shift)


def _coord_photo(path: Path, w: int = 400, h: int = 360) -> None:
    """RGB photo whose pixel colour encodes its coordinates (R = x/2, G = y/2)."""
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    img = np.stack([xs // 2, ys // 2, np.full_like(xs, 100)], -1).astype(np.uint8)
    Image.fromarray(img).save(path)


def _write_csv(path: Path, rows: dict[str, np.ndarray]) -> None:
    lines = ["file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry"]
    for name, lm in rows.items():
        lines.append(name + "," + ",".join(f"{v:.4f}" for v in lm.reshape(-1)))
    path.write_text("\n".join(lines) + "\n")


def test_similarity_transform_recovers_known_map() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 12.0]])
    dst = _photo_landmarks(0, 1, (0, 0))[:3]  # arbitrary target
    m = similarity_transform(src, dst)
    back = similarity_transform((m[:, :2] @ src.T).T + m[:, 2], src)
    assert np.allclose((back[:, :2] @ ((m[:, :2] @ src.T).T + m[:, 2]).T).T + back[:, 2], src, atol=1e-9)
    with pytest.raises(DataError):
        similarity_transform(np.zeros((3, 2)), dst)


def test_align_maps_landmarks_to_canonical(tmp_path: Path) -> None:
    p = tmp_path / "p.png"
    _coord_photo(p)
    lm = _photo_landmarks(12.0, 2.2, (60.0, 40.0))
    crop, aligned = align_face(Image.open(p).convert("RGB"), lm, 128)
    assert crop.size == (128, 128)
    assert np.allclose(aligned, CANONICAL_LANDMARKS_128, atol=1e-6)
    # pixel at the canonical nose comes from the photo's nose position (colour encodes coords)
    r, g, _ = crop.getpixel((64, 65))
    assert abs(r - lm[2, 0] / 2) <= 1.5 and abs(g - lm[2, 1] / 2) <= 1.5


def test_dlib_point_conversion() -> None:
    # dlib order: one eye's 2 corners, the other eye's 2 corners, nose base (subnasale)
    pts = np.array([[94.0, 41.0], [78.0, 41.0], [36.0, 41.0], [52.0, 41.0], [64.4, 75.3]])
    lm = dlib5_to_ours(pts)
    assert np.allclose(lm[0], [44, 41]) and np.allclose(lm[1], [86, 41])  # eye centres, sorted by x
    assert np.linalg.norm(lm[2] - [64, 65]) < 2.0
    assert np.linalg.norm((lm[3] + lm[4]) / 2 - CANONICAL_MOUTH_CENTRE_128) < 2.0
    assert np.allclose(lm[4] - lm[3], [30.0, 0.0])


def test_landmarks_file_end_to_end(tmp_path: Path) -> None:
    model = Gen()
    x = torch.zeros(1, 3, RES, RES)
    onnx_path = export_onnx(model, (x, torch.zeros(1, 5, 2)), tmp_path / "g.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "sub").mkdir()
    names = ["a.png", "b.jpg", "sub/a.png"]
    rows = {}
    for i, n in enumerate(names):
        _coord_photo(photos / n)
        rows[n if "/" not in n else str(photos / n)] = _photo_landmarks(5.0 * i, 2.0, (70.0, 50.0))
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    norow = photos / "norow.png"
    _coord_photo(norow)
    csv_path = tmp_path / "lm.csv"
    _write_csv(csv_path, rows)

    order = [photos / "a.png", broken, photos / "b.jpg", norow, photos / "sub" / "a.png"]
    lines: list[str] = []
    out = tmp_path / "out"
    code = run_frontalize(order, onnx_path, out, csv_path, report=lines.append)
    assert code == 0
    assert lines[-1] == "frontalized 3 of 5 photo(s); 2 failed"
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 2 and all("\n" not in ln for ln in errors)
    assert "broken.png" in errors[0] and "not a readable image" in errors[0]
    assert "norow.png" in errors[1] and "landmarks file" in errors[1]
    for stem in ("a", "b", "a_2"):  # same stem from two folders does not overwrite
        fr = Image.open(out / f"{stem}_frontal.png")
        sbs = Image.open(out / f"{stem}_side_by_side.png")
        assert fr.size == (RES, RES) and sbs.size == (2 * RES, RES) and fr.mode == "RGB"
    # the frontal image is the model's output on the aligned crop
    results = frontalize_files([photos / "a.png"], onnx_path, tmp_path / "out2", csv_path)
    r = results[0]
    assert r.ok and np.allclose(r.aligned_landmarks, CANONICAL_LANDMARKS_128 * RES / 128, atol=1e-5)
    crop = np.asarray(Image.open(r.side_by_side_path))[:, :RES]
    xin = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        ref = model(xin, torch.from_numpy(r.aligned_landmarks[None].astype(np.float32)))[0]
    got = np.asarray(Image.open(r.frontal_path)).astype(np.float32) / 127.5 - 1
    assert np.abs(got - ref.permute(1, 2, 0).numpy()).max() <= 2.0 / 255 + 1e-6


def test_dlib_no_face_and_broken(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(gray)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    lines: list[str] = []
    f = from_module(Gen(), resolution=RES, channels=3)
    results = frontalize_files([gray, broken, tmp_path / "missing.png"], f, tmp_path / "o", report=lines.append)
    assert [r.ok for r in results] == [False, False, False]
    assert "no face found" in results[0].message and "--landmarks" in results[0].message
    assert "not a readable image" in results[1].message
    assert "file not found" in results[2].message
    assert len(lines) == 3 and all("\n" not in ln for ln in lines)
    assert run_frontalize([gray], f, tmp_path / "o", report=lambda s: None) == 1  # nothing succeeded


def test_gray_model_and_bad_csv(tmp_path: Path) -> None:
    p = tmp_path / "p.png"
    _coord_photo(p)
    csv_path = tmp_path / "lm.csv"
    _write_csv(csv_path, {"p.png": _photo_landmarks(0.0, 2.0, (60.0, 40.0))})
    f = from_module(Gen(channels=1), resolution=RES, channels=1)
    (r,) = frontalize_files([p], f, tmp_path / "o", csv_path)
    assert r.ok and Image.open(r.frontal_path).mode == "L"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,lex,ley\np.png,1,2\n")
    with pytest.raises(DataError, match="missing column"):
        read_landmarks_csv(bad)
    bad.write_text("file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry\np.png,1,2,3,4,5,6,7,8,9,oops\n")
    with pytest.raises(DataError, match=":2: landmark values"):
        frontalize_files([p], f, tmp_path / "o", bad)
