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
    summarize,
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
    assert code == 1  # not every photo was written
    assert lines[-1] == ("frontalized 3 of 5 photo(s) (landmarks: 3 csv); 2 failed: 1 no row in the landmarks "
                         "file, 1 not a readable image")
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
    crop = np.asarray(Image.open(r.aligned_path))
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


# ----------------------------------------------------------------------------- detectors, profiles, formats

from slimface.cli import main as cli_main  # noqa: E402
from slimface.data import face_detect  # noqa: E402
from slimface.data.face_detect import DEFAULT_CHAIN, Detection, build_chain, detect_first, fit_landmarks  # noqa: E402
from slimface.data.landmark_files import read_5pt  # noqa: E402
from slimface.data.pose import apply_similarity, complete_profile, estimate_yaw, pose_template  # noqa: E402
from slimface.errors import ConfigError  # noqa: E402


def _fake68(lm5: np.ndarray) -> np.ndarray:
    p = np.tile(np.asarray(lm5, dtype=np.float64).mean(0), (68, 1))
    p[36:42], p[42:48], p[30], p[48], p[54] = lm5[0], lm5[1], lm5[2], lm5[3], lm5[4]
    return p


class _Det:
    """A fake detector that records its calls and returns ``boxes``."""

    def __init__(self, name: str, boxes: list[tuple[float, float, float, float]], calls: list[str]) -> None:
        self.name, self.boxes, self.calls = name, boxes, calls

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        self.calls.append(self.name)
        return [Detection(b, 1.0, self.name, "frontal") for b in self.boxes]


def test_detector_fallback_order() -> None:
    assert DEFAULT_CHAIN == ("hog", "cnn")
    assert [d.name for d in build_chain(["cnn", "hog"])] == ["cnn", "hog"]  # the order given is kept
    with pytest.raises(ConfigError, match="detector 'mtcnn' is unknown"):
        build_chain(["hog", "mtcnn"])
    calls: list[str] = []
    chain = [_Det("a", [], calls), _Det("b", [(0, 0, 10, 10), (5, 5, 45, 45)], calls), _Det("c", [(0, 0, 9, 9)], calls)]
    rgb = np.zeros((50, 50, 3), np.uint8)
    det, n, tried = detect_first(rgb, chain)
    assert calls == ["a", "b"] and tried == ["a", "b"]  # c is never asked once b found a face
    assert det is not None and det.detector == "b" and det.box == (5, 5, 45, 45) and n == 2  # the largest
    calls.clear()
    fit = face_detect.find_face(rgb, chain, predictor=lambda img, box: _fake68(pose_template(0.0) / 4),
                                facing_probe=lambda img, box: None)
    assert fit is not None and fit.method == "b" and fit.faces == 2 and fit.tried == ["a", "b"]
    assert np.allclose(fit.landmarks, pose_template(0.0) / 4) and fit.yaw == 0.0
    calls.clear()
    assert face_detect.find_face(rgb, chain[:1], predictor=lambda i, b: _fake68(pose_template(0.0))) is None


def _moved(points: np.ndarray, angle: float = 8.0, scale: float = 2.5, shift: tuple[float, float] = (40, 30)) -> np.ndarray:
    a = math.radians(angle)
    m = np.array([[math.cos(a), -math.sin(a), shift[0]], [math.sin(a), math.cos(a), shift[1]]])
    m[:, :2] *= scale
    return apply_similarity(m, points)


def test_profile_landmarks_place_the_hidden_eye_like_training() -> None:
    true = _moved(pose_template(75.0))  # a face at +75 deg (nose to the image right) in a photo
    junk = true.copy()
    junk[0], junk[1] = true[1], true[0] - [30, 5]  # the 68-point model's eyes on a profile: swapped, one off
    junk[2] = true[2] - [25, 0]  # and the nose inside the cheek
    p68 = _fake68(junk)
    lm, yaw, profile = fit_landmarks(p68, "right", strong=True)
    assert profile and yaw == 75.0
    # rebuilt from the eye and mouth corner on the facing side: the template itself, moved
    want = complete_profile(max(junk[:2], key=lambda e: e[0]), max(junk[3:], key=lambda c: c[0]), 75.0)
    assert np.allclose(lm, want)
    # mirrored photo: the face looks left, yaw -75, the visible eye is index 1
    mir = junk * [-1, 1] + [200, 0]
    mir = mir[[1, 0, 2, 4, 3]]
    lm_m, yaw_m, _ = fit_landmarks(_fake68(mir), "left", strong=True)
    assert yaw_m == -75.0 and np.allclose(lm_m[1], max(mir[:2], key=lambda e: -e[0]))
    # unknown side: the 68-point mapping as is; a HOG-turned face at 30 deg keeps its points
    lm_u, _, prof_u = fit_landmarks(p68, None, strong=True)
    assert not prof_u and np.allclose(lm_u, junk)
    t30 = _moved(pose_template(30.0))
    lm30, yaw30, prof30 = fit_landmarks(_fake68(t30), "right", strong=False)
    assert not prof30 and yaw30 == 30.0 and np.allclose(lm30, t30)
    assert estimate_yaw(_moved(pose_template(-45.0))) == -45.0


def test_align_profile_to_its_template(tmp_path: Path) -> None:
    p = tmp_path / "p.png"
    _coord_photo(p)
    lm = _moved(pose_template(-80.0), angle=-5, scale=2.0, shift=(120, 60))
    crop, aligned = align_face(Image.open(p).convert("RGB"), lm, 64)
    assert np.allclose(aligned, pose_template(-80.0, 64), atol=1e-6)
    # the hidden eye fed to the model is the template's, even if the source put it elsewhere
    lm2 = _moved(pose_template(-90.0), angle=-5, scale=2.0, shift=(120, 60))
    lm2[0] += [15.0, -10.0]  # at -90 deg the subject's right eye (index 0) is hidden (weight cos 90 = 0)
    _, aligned2 = align_face(Image.open(p).convert("RGB"), lm2, 64, yaw=-90.0)
    assert np.allclose(aligned2, pose_template(-90.0, 64), atol=1e-6)


def test_5pt_sidecar_csv_precedence_and_drawing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("a.png", "b.png", "c.png"):
        _coord_photo(photos / n)
    lm = _photo_landmarks(3.0, 2.0, (70.0, 50.0))
    (photos / "a.5pt").write_text("\n".join(f"{x:.3f} {y:.3f}" for x, y in lm) + "\n")
    (photos / "b.png.5pt").write_text("\n".join(f"{x:.3f},{y:.3f}" for x, y in lm + 4) + "\n")
    (photos / "c.5pt").write_text("1 2\n3 4\n")
    assert np.allclose(read_5pt(photos / "a.5pt"), lm, atol=1e-3)
    monkeypatch.setattr(face_detect, "build_chain", lambda names=None: pytest.fail("detection was not needed"))
    f = from_module(Gen(), resolution=64, channels=3)
    lines: list[str] = []
    rs = frontalize_files([photos / "a.png", photos / "b.png", photos / "c.png"], f, tmp_path / "o", report=lines.append)
    (photos / "d.5pt").write_text("5 5\n5 5\n5 5\n5 5\n5 5\n")  # coincident points: this photo fails, not the batch
    _coord_photo(photos / "d.png")
    (r_d,) = frontalize_files([photos / "d.png"], f, tmp_path / "o")
    assert not r_d.ok and r_d.cause == "bad_landmarks" and "coincide" in r_d.message
    assert [r.method for r in rs] == ["5pt", "5pt", ""]
    assert rs[2].cause == "bad_landmarks" and "c.5pt: 2 points" in rs[2].message
    assert lines[-1].startswith("error:") and "c.5pt" in lines[-1]
    assert summarize(rs) == "frontalized 2 of 3 photo(s) (landmarks: 2 5pt); 1 failed: 1 unusable landmark file"
    # a CSV row wins over the .5pt file
    csv_path = tmp_path / "lm.csv"
    _write_csv(csv_path, {"a.png": lm + 10})
    (r,) = frontalize_files([photos / "a.png"], f, tmp_path / "o2", csv_path)
    assert r.method == "csv" and np.allclose(r.landmarks, lm + 10)
    # the side-by-side shows the landmarks used: green eyes on the aligned crop, the output beside it
    sbs = np.asarray(Image.open(r.side_by_side_path))
    crop = np.asarray(Image.open(r.aligned_path))
    x, y = (int(round(v)) for v in r.aligned_landmarks[0])
    assert tuple(sbs[y, x]) == (0, 220, 0) and tuple(crop[y, x]) != (0, 220, 0)
    assert (sbs[:11, :64] != crop[:11, :64]).any()  # the label strip ("csv yaw +0")
    assert np.array_equal(sbs[:, 64:], np.asarray(Image.open(r.frontal_path)))


def test_frontalize_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    onnx_path = export_onnx(Gen(), (torch.zeros(1, 3, RES, RES), torch.zeros(1, 5, 2)), tmp_path / "g.onnx")
    good = tmp_path / "good.png"
    _coord_photo(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    csv_path = tmp_path / "lm.csv"
    _write_csv(csv_path, {"good.png": _photo_landmarks(0.0, 2.0, (70.0, 50.0))})
    base = ["frontalize", "--model", str(onnx_path), "--out", str(tmp_path / "o"), "--landmarks", str(csv_path)]
    assert cli_main(base + [str(good)]) == 0
    assert cli_main(base + [str(good), str(broken)]) == 1
    out = capsys.readouterr().out
    assert "frontalized 1 of 2 photo(s) (landmarks: 1 csv); 1 failed: 1 not a readable image" in out
    assert cli_main(["frontalize", str(good), "--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "o")]) == 2
    assert cli_main(["frontalize", str(good), "--model", str(onnx_path), "--out", str(tmp_path / "o"),
                     "--detectors", "hog,mtcnn"]) == 2
    assert "detector 'mtcnn' is unknown" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["frontalize", str(good), "--out", str(tmp_path / "o")])  # no --model
    assert e.value.code == 2


def test_every_export_format_is_accepted(tmp_path: Path) -> None:
    import shutil

    from slimface.export_format import save_export
    from slimface.deploy.quantize import quantize_int8
    from test_compress_space import TOY_FAMILY  # noqa: F401 - registers the toy family
    from test_compress_space import toy_supernet

    torch.manual_seed(0)
    gen = toy_supernet(64).eval()
    exp = tmp_path / "export"
    save_export(gen, exp, config="toy")
    x, lm = gen.example_inputs(1)
    export_onnx(gen, (x, lm), exp / "model.onnx")
    cal = [{"image": torch.rand(1, 3, 64, 64).numpy() * 2 - 1, "landmarks": lm.numpy()} for _ in range(4)]
    quantize_int8(exp / "model.onnx", exp / "model.int8.onnx", cal, guard=False)
    photo = tmp_path / "p.png"
    _coord_photo(photo)
    csv_path = tmp_path / "lm.csv"
    _write_csv(csv_path, {"p.png": _photo_landmarks(0.0, 2.0, (70.0, 50.0))})
    outs = {}
    for target in (exp, exp / "model.safetensors", exp / "arch.json", exp / "model.pt2", exp / "model.onnx",
                   exp / "model.int8.onnx"):
        o = tmp_path / f"o_{target.name}"
        assert cli_main(["frontalize", str(photo), "--model", str(target), "--out", str(o),
                         "--landmarks", str(csv_path)]) == 0, target
        outs[target.name] = np.asarray(Image.open(o / "p_frontal.png"), dtype=np.float32)
    ref = outs["export"]
    for name in ("model.safetensors", "arch.json", "model.pt2", "model.onnx"):
        assert np.abs(outs[name] - ref).max() <= 2.0, name  # the same network, whatever the file
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(exp / "model.safetensors", lone / "model.safetensors")
    assert cli_main(["frontalize", str(photo), "--model", str(lone / "model.safetensors"), "--out",
                     str(tmp_path / "o"), "--landmarks", str(csv_path)]) == 2


def test_weak_hog_side_detection_is_a_profile() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    face = _moved(pose_template(30.0), scale=0.4, shift=(10, 10))
    pred = lambda img, box: _fake68(face)  # noqa: E731
    weak = face_detect.landmarks_in_box(rgb, Detection((0, 0, 60, 60), 0.1, "hog", "right"), pred)
    assert weak.profile and weak.yaw == 75.0  # a side filter firing weakly: beyond its ~45 deg range
    sure = face_detect.landmarks_in_box(rgb, Detection((0, 0, 60, 60), 1.5, "hog", "right"), pred)
    assert not sure.profile and sure.yaw == 30.0 and np.allclose(sure.landmarks, face)
    cnn = face_detect.landmarks_in_box(rgb, Detection((0, 0, 60, 60), 1.0, "cnn"), pred, lambda i, b: "left")
    assert cnn.profile and cnn.yaw == -75.0 and cnn.method == "cnn"
