"""Tests of the built-in synthetic face dataset (slimface.data.synth / synth_render / preview)."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import slimface.data.synth as synth
from slimface.data.preview import make_preview
from slimface.data.synth import (
    MANIFEST_COLUMNS,
    SynthConfig,
    identity_params,
    is_complete,
    render_dataset,
    render_face,
)
from slimface.data.synth_render import EYE_L, EYE_R, Identity, sample_identity
from slimface.errors import ConfigError, DataError

TINY = SynthConfig(subjects=3, train_subjects=2, resolution=64, illuminations=2, seed=0)


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "images").iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_dataset(TINY, tmp_path_factory.mktemp("synth") / "ds", progress=False, workers=1)


def test_layout_names_and_manifest(tiny: Path) -> None:
    rows = _rows(tiny)
    with (tiny / "manifest.csv").open() as fh:
        assert tuple(fh.readline().strip().split(",")) == MANIFEST_COLUMNS
    assert len(rows) == 3 * 13 * 2
    assert len(list((tiny / "images").iterdir())) == len(rows)
    pat = re.compile(r"^images/(\d{3})_01_01_(\d{3})_(\d{2})\.png$")
    for r in rows:
        m = pat.match(r["file"])
        assert m, r["file"]
        assert m.group(1) == r["subject"] and m.group(2) == r["camera"]
        assert m.group(3) == r["illumination"]
        assert synth.YAW_TO_CAMERA[int(r["yaw"])] == r["camera"]
        assert (tiny / r["file"]).is_file()
    assert {r["illumination"] for r in rows} == {"04", "07"}
    assert sorted({int(r["yaw"]) for r in rows}) == list(range(-90, 91, 15))
    assert {r["subject"] for r in rows} == {"001", "002", "003"}
    meta = json.loads((tiny / "dataset.json").read_text())
    assert meta["complete"] is True and meta["generator"] == "slimface.synth"
    assert meta["illuminations"] == [4, 7] and meta["frontal_illumination"] == 7
    assert meta["train_subjects"] == 2 and meta["resolution"] == 64 and meta["pitch"] is False
    with Image.open(tiny / rows[0]["file"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert not (tiny / ".parts").exists()


def test_deterministic_and_seeded(tiny: Path, tmp_path: Path) -> None:
    again = render_dataset(TINY, tmp_path / "again", progress=False, workers=2)
    assert _files(again) == _files(tiny)
    assert (again / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()
    other = SynthConfig(subjects=3, train_subjects=2, resolution=64, illuminations=2, seed=1)
    a = np.asarray(render_face(identity_params(0, 1), 0, 0, 7, 64, False)[0], dtype=float)
    b = np.asarray(render_face(identity_params(other.seed, 1), 0, 0, 7, 64, False)[0], dtype=float)
    assert np.abs(a - b).mean() > 3.0


def _render_tiny(out: str) -> None:
    render_dataset(TINY, out, progress=False, workers=1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the render lock is fcntl's (POSIX)")
def test_a_second_run_waits_for_the_first_render_then_reuses_it(tiny: Path, tmp_path: Path) -> None:
    """Two runs side by side share one data cache: the second must not render into (or delete) the
    first one's partial output; it waits for the lock and then finds the render complete."""
    out = tmp_path / "shared"
    out.mkdir()
    ctx = multiprocessing.get_context("fork")
    with synth._render_lock(out):  # the "first run", mid-render
        child = ctx.Process(target=_render_tiny, args=(str(out),))
        child.start()
        child.join(1.5)
        assert child.is_alive(), "the second render did not wait for the lock"
        assert not (out / "dataset.json").exists() and not (out / "images").exists()
    child.join(120)
    assert child.exitcode == 0
    assert is_complete(out, TINY) and _files(out) == _files(tiny)
    both = [ctx.Process(target=_render_tiny, args=(str(tmp_path / "race"),)) for _ in range(2)]
    for proc in both:
        proc.start()
    for proc in both:
        proc.join(120)
    assert [proc.exitcode for proc in both] == [0, 0]
    assert _files(tmp_path / "race") == _files(tiny)
    assert (tmp_path / "race" / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()


def test_cached_second_call_rewrites_nothing(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert is_complete(tiny, TINY)
    render_dataset(TINY, tiny, progress=False, workers=1)
    after = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert before == after
    assert not is_complete(tiny, SynthConfig(subjects=3, train_subjects=2, resolution=128,
                                             illuminations=2))


def test_interrupted_render_resumes_per_subject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SynthConfig(subjects=3, train_subjects=1, resolution=64, illuminations=1, seed=3)
    real = synth._subject_task

    def failing(args):  # type: ignore[no-untyped-def]
        if args[2] == 3:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(synth, "_subject_task", failing)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(cfg, tmp_path / "ds", progress=False, workers=1)
    root = tmp_path / "ds"
    assert not (root / "dataset.json").exists() and not is_complete(root, cfg)
    first = root / "images" / "001_01_01_051_07.png"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(synth, "_subject_task", real)
    render_dataset(cfg, root, progress=False, workers=1)
    assert is_complete(root, cfg) and len(_rows(root)) == 3 * 13
    assert first.stat().st_mtime_ns == stamp  # subject 1 was not rendered again


def test_frontal_landmarks_at_canonical_positions() -> None:
    ref = np.array([[44, 41], [86, 41], [64, 65], [50, 89], [80, 89]], dtype=float)
    tol = np.array([3.0, 3.0, 5.5, 7.0, 7.0])
    for s in range(1, 21):
        lm = Identity(identity_params(0, s)).landmarks(0, 0, 128)
        assert (np.abs(lm - ref).max(1) <= tol).all(), (s, lm)
        lm64 = Identity(identity_params(0, s)).landmarks(0, 0, 64)
        np.testing.assert_allclose(lm64, lm / 2, atol=1e-6)


def test_landmarks_follow_yaw(tiny: Path) -> None:
    rows = [r for r in _rows(tiny) if r["subject"] == "001" and r["illumination"] == "07"]
    nose = {int(r["yaw"]): float(r["nx"]) for r in rows}
    assert nose[90] > 32 + 10 and nose[-90] < 32 - 10
    xs = [nose[y] for y in range(0, 91, 15)]
    assert all(b > a for a, b in zip(xs, xs[1:]))  # the nose sweeps with the camera ring
    eyes = {int(r["yaw"]): float(r["rex"]) - float(r["lex"]) for r in rows}
    assert eyes[0] > 15 and abs(eyes[90]) < 0.3 * eyes[0]  # eyes collapse together at profile


def test_identities_differ_and_light_keeps_geometry() -> None:
    p1, p2 = identity_params(0, 1), identity_params(0, 2)
    a, lm_a = render_face(p1, 0, 0, 7, 64, False)
    b, _ = render_face(p2, 0, 0, 7, 64, False)
    assert np.abs(a.astype(float) - b.astype(float)).mean() > 5.0
    c, lm_c = render_face(p1, 0, 0, 4, 64, False)
    np.testing.assert_array_equal(lm_a, lm_c)
    bg = np.all(a == a[0, 0], axis=-1)
    np.testing.assert_array_equal(bg, np.all(c == c[0, 0], axis=-1))  # same silhouette
    assert np.abs(a.astype(float) - c.astype(float))[~bg].mean() > 5.0  # different shading


def test_profile_hides_the_far_eye() -> None:
    ident = Identity(sample_identity(np.random.default_rng(5)))
    front = ident.geometry(0, 0, 64)
    assert (front.part == EYE_L).sum() > 3 and (front.part == EYE_R).sum() > 3
    for yaw, near, far, far_i in ((90, EYE_L, EYE_R, 1), (-90, EYE_R, EYE_L, 0)):
        geo = ident.geometry(yaw, 0, 64)
        assert (geo.part == near).sum() > 0
        assert (geo.part == far).sum() == 0
        x, y = np.round(geo.landmarks[far_i]).astype(int)
        assert geo.part[y, x] != far  # its landmark is still projected, onto something else
        assert geo.depth[y, x] < np.inf


def test_gray_mode_and_pitch_naming(tmp_path: Path) -> None:
    cfg = SynthConfig(subjects=2, train_subjects=1, resolution=64, illuminations=1, pitch=True,
                      gray=True, seed=0)
    root = render_dataset(cfg, tmp_path / "cas", progress=False, workers=1)
    rows = _rows(root)
    assert len(rows) == 2 * 7 * 3
    pat = re.compile(r"^images/MY_(\d{6})_IEU\+00_P([UMD])([+-]\d{2})_EN_A0_D0_T0_BB_M0_R1_S0\.png$")
    for r in rows:
        m = pat.match(r["file"])
        assert m, r["file"]
        assert int(m.group(1)) == int(r["subject"]) and int(m.group(3)) == int(r["yaw"])
        assert {"U": 15, "M": 0, "D": -15}[m.group(2)] == int(r["pitch"])
        with Image.open(root / r["file"]) as im:
            assert im.mode == "L" and im.size == (64, 64)
    ny = {int(r["pitch"]): float(r["ny"]) for r in rows if r["subject"] == "001" and r["yaw"] == "0"}
    assert ny[15] < ny[0] < ny[-15]  # looking up moves the nose up in the image


@pytest.mark.parametrize(
    "kwargs",
    [{"resolution": 96}, {"illuminations": 0}, {"illuminations": 21},
     {"subjects": 10, "train_subjects": 10}, {"subjects": 1000}],
)
def test_bad_config_raises(kwargs: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        render_dataset(SynthConfig(**kwargs), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_foreign_dataset_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"generator": "someone else"}')
    with pytest.raises(DataError, match="dataset.json"):
        render_dataset(TINY, tmp_path, progress=False)


def test_preview_grid(tiny: Path, tmp_path: Path) -> None:
    out = make_preview(tiny, tmp_path / "grid.png", subjects=8)
    with Image.open(out) as im:
        assert im.size == (13 * 64, 14 + 3 * 64)
        arr = np.asarray(im.convert("RGB"), dtype=float)
    cells = arr[14:, :, :].reshape(3, 64, 13, 64, 3)
    assert (cells.std(axis=(1, 3, 4)) > 10).all()  # every cell holds an image
    with pytest.raises(DataError):
        make_preview(tmp_path, tmp_path / "none.png")


def test_extra_identities_are_new_near_frontal_faces_of_the_same_generator(tiny: Path, tmp_path: Path) -> None:
    """A judge's extra identities: ids after the dataset's last subject, only |yaw| <= max_abs_yaw at
    pitch 0, the very pixels the dataset would render for those ids, loadable as a synth dataset."""
    from slimface.data.loaders import load_dataset
    from slimface.data.synth import render_identities

    root = render_identities(TINY, 2, 15, tmp_path / "extra", progress=False, workers=1)
    rows = _rows(root)
    assert {r["subject"] for r in rows} == {"004", "005"}
    assert sorted({int(r["yaw"]) for r in rows}) == [-15, 0, 15]
    assert len(rows) == 2 * 3 * 2
    bigger = SynthConfig(subjects=5, train_subjects=2, resolution=64, illuminations=2, seed=0)
    full = render_dataset(bigger, tmp_path / "full", progress=False, workers=1)
    for name, data in _files(root).items():
        assert (full / "images" / name).read_bytes() == data
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["subject_ids"] == [4, 5] and meta["complete"] is True
    index = load_dataset("synth", root)
    assert len(list(index)) == len(rows)
    # cached: a second call renders nothing; another count is another dataset
    stamp = (root / "dataset.json").stat().st_mtime_ns
    render_identities(TINY, 2, 15, root, progress=False, workers=1)
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    assert len(_rows(render_identities(TINY, 1, 15, root, progress=False, workers=1))) == 1 * 3 * 2
    with pytest.raises(ConfigError, match="beyond the 3-digit"):
        render_identities(TINY, 997, 15, tmp_path / "x", progress=False)
    # an offset skips ids (another recognizer's range): the same pixels those ids render anywhere
    shifted = render_identities(TINY, 1, 15, tmp_path / "shifted", progress=False, workers=1, offset=1)
    assert {r["subject"] for r in _rows(shifted)} == {"005"}
    assert json.loads((shifted / "dataset.json").read_text())["subject_ids"] == [5, 5]
    assert all((full / "images" / name).read_bytes() == data for name, data in _files(shifted).items())
