"""Loaders, the data model's protocol helpers (pairs/split/gallery), images and landmarks."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from _data_fixtures import (
    build_caspeal,
    build_folder,
    build_multipie,
    build_synth,
    caspeal_name,
    truncate,
    write_image,
    write_multipie_manifest,
)

from slimface.data import caspeal, multipie
from slimface.data.images import read_image
from slimface.data.landmarks import DlibLandmarks, ManifestLandmarks, dlib5_to_ours
from slimface.data.loaders import load_dataset
from slimface.data.records import CANONICAL_LANDMARKS_128, FaceIndex, FaceRecord, canonical_landmarks
from slimface.errors import DataError

# ---------------------------------------------------------------- records


def test_canonical_landmarks_scale():
    assert CANONICAL_LANDMARKS_128.shape == (5, 2) and CANONICAL_LANDMARKS_128.dtype == np.float32
    np.testing.assert_allclose(canonical_landmarks(64), CANONICAL_LANDMARKS_128 / 2)
    np.testing.assert_allclose(canonical_landmarks(128)[0], [44, 41])
    assert canonical_landmarks(128)[0, 0] < canonical_landmarks(128)[1, 0]  # left = smaller x


def test_split_int_and_list_are_subject_disjoint():
    recs = [FaceRecord(Path(f"{s}.png"), s, 0) for s in ("10", "2", "1", "alice")]
    idx = FaceIndex(recs)
    assert idx.subjects() == ["1", "2", "10", "alice"]  # numeric-aware
    tr, te = idx.split(2)
    assert tr.subjects() == ["1", "2"] and te.subjects() == ["10", "alice"]
    tr, te = idx.split(["alice"])
    assert tr.subjects() == ["alice"] and set(te.subjects()).isdisjoint(tr.subjects())
    with pytest.raises(DataError, match="train_subjects=9"):
        idx.split(9)
    with pytest.raises(DataError, match="no default train/test split"):
        idx.split()


# ---------------------------------------------------------------- Multi-PIE


@pytest.fixture
def mp_official(tmp_path: Path) -> Path:
    build_multipie(tmp_path / "mp", sessions=(("01", "01"), ("01", "02"), ("04", "02")))
    return tmp_path / "mp"


def test_multipie_official_tree_parses_and_maps_yaw(mp_official: Path):
    idx = load_dataset("multipie", mp_official)
    # 5 subjects x 3 recordings x 7 cameras x 2 illuminations
    assert len(idx) == 5 * 3 * 7 * 2 and idx.report.n_skipped == 0
    assert idx.yaw_groups() == [0, 15, 30, 45, 90]
    r = next(r for r in idx if r.path.name == "150_01_01_240_07.png")
    assert (r.subject, r.session, r.recording, r.yaw, r.illumination, r.expression) == ("150", "01", "01", 90, 7, "N")
    assert r.path.parent.name == "24_0" and r.image_size == (16, 16)
    assert {x.yaw for x in idx if x.path.name.split("_")[3] == "110"} == {-90}
    assert {x.expression for x in idx if (x.session, x.recording) == ("01", "02")} == {"S"}  # smile
    assert {x.expression for x in idx if (x.session, x.recording) == ("04", "02")} == {"N"}  # 2nd neutral


def test_multipie_flat_equals_official(tmp_path: Path, mp_official: Path):
    build_multipie(tmp_path / "flat", layout="flat", sessions=(("01", "01"), ("01", "02"), ("04", "02")))
    a = load_dataset("multipie", mp_official)
    b = load_dataset("auto", tmp_path / "flat")
    assert b.kind == "multipie"
    key = lambda r: (r.subject, r.session, r.recording, r.yaw, r.illumination)  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))


def test_setting2_split_and_neutral(mp_official: Path):
    idx = load_dataset("multipie", mp_official)
    tr, te = multipie.setting2(idx)
    assert tr.subjects() == ["001", "002", "150"] and te.subjects() == ["201", "250"]
    assert set(tr.subjects()).isdisjoint(te.subjects())
    assert {r.expression for r in tr} | {r.expression for r in te} == {"N"}
    assert {(r.session, r.recording) for r in tr} == {("01", "01"), ("04", "02")}
    # the default split of a Multi-PIE index is setting 2's subject boundary
    dtr, dte = idx.split()
    assert dtr.subjects() == ["001", "002", "150"] and dte.subjects() == ["201", "250"]


def test_pairs_match_subject_session_recording_illumination(mp_official: Path):
    idx = load_dataset("multipie", mp_official)
    pairs = idx.pairs()
    assert len(pairs) == len(idx)  # every image (frontals included) has a target
    for p, f in pairs:
        assert f.yaw == 0 and f.pitch == 0 and f.path.parent.name == "05_1"
        assert (p.subject, p.session, p.recording, p.illumination) == (f.subject, f.session, f.recording, f.illumination)
    no_frontal = idx.pairs(include_frontal=False)
    assert len(no_frontal) == len(idx) - sum(r.yaw == 0 for r in idx)
    assert all(p.yaw != 0 for p, _ in no_frontal)


def test_gallery_one_frontal_illum07_per_subject(mp_official: Path):
    idx = load_dataset("multipie", mp_official)
    g = idx.gallery()
    assert [r.subject for r in g] == idx.subjects()
    assert all(r.yaw == 0 and r.illumination == 7 and r.expression == "N" for r in g)
    assert all((r.session, r.recording) == ("01", "01") for r in g)  # lowest neutral session first


def test_gallery_falls_back_without_illum07(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051", "050"), illuminations=(3,))
    g = load_dataset("multipie", tmp_path).gallery()
    assert len(g) == 1 and g[0].illumination == 3 and g[0].yaw == 0


def test_subject_without_frontal(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001", "002"), cameras=("051", "050"))
    for p in tmp_path.rglob("002_*_051_*.png"):
        p.unlink()
    idx = load_dataset("multipie", tmp_path)
    pairs = idx.pairs()
    assert {p.subject for p, _ in pairs} == {"001"}
    assert idx.report.notes["profiles without a frontal target"] == 2
    assert [r.subject for r in idx.gallery()] == ["001"]
    with pytest.raises(DataError, match="subject 002 has no frontal image.*002_01_01_050"):
        idx.pairs(policy="stop")
    with pytest.raises(DataError, match="subject 002 has no frontal"):
        idx.gallery(policy="stop")


def test_other_cameras_ignored_with_count_even_when_stopping(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051", "081", "191"), illuminations=(7,))
    idx = load_dataset("multipie", tmp_path, policy="stop")
    assert len(idx) == 1
    assert sum(idx.report.ignored.values()) == 2 and idx.report.n_skipped == 0


@pytest.fixture
def mp_with_bad(tmp_path: Path) -> Path:
    build_multipie(tmp_path, subjects=("001",), cameras=("051", "050"), illuminations=(7,))
    write_image(tmp_path / "holiday_photo.png")
    write_image(tmp_path / "001_01_01_999_07.png")
    (tmp_path / "001_02_01_051_07.png").write_bytes(b"")
    (tmp_path / "001_03_01_051_07.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path


def test_skip_policy_counts_by_reason(mp_with_bad: Path):
    idx = load_dataset("multipie", mp_with_bad, policy="skip")
    assert len(idx) == 2
    rep = idx.report
    assert rep.skipped == {"unparseable name": 1, "unknown camera": 1, "empty file": 1, "unreadable image": 1}
    assert rep.files_seen == 6 and rep.loaded == 2
    assert "4 files skipped" in rep.summary()


def test_stop_policy_names_file_and_problem(mp_with_bad: Path):
    # files are scanned in sorted order; remove each offender in turn to reach the next one
    expected = [
        ("001_01_01_999_07.png", "unknown camera"),
        ("001_02_01_051_07.png", "empty file"),
        ("001_03_01_051_07.png", "unreadable image"),
        ("holiday_photo.png", "unparseable name"),
    ]
    for name, reason in expected:
        with pytest.raises(DataError) as e:
            load_dataset("multipie", mp_with_bad, policy="stop")
        msg = str(e.value)
        assert name in msg and reason in msg and "policy='skip'" in msg and "\n" not in msg
        (mp_with_bad / name).unlink()
    assert len(load_dataset("multipie", mp_with_bad, policy="stop")) == 2


def test_truncated_png_caught_with_verify(tmp_path: Path):
    files = build_multipie(tmp_path, subjects=("001",), cameras=("051", "050"), illuminations=(7,), size=64)
    truncate(files[1])
    assert len(load_dataset("multipie", tmp_path)) == 2  # cheap header check passes
    idx = load_dataset("multipie", tmp_path, verify=True)
    assert len(idx) == 1 and idx.report.skipped == {"unreadable image": 1}
    with pytest.raises(DataError, match="001_01_01_050_07.png.*unreadable image"):
        load_dataset("multipie", tmp_path, verify=True, policy="stop")


def test_official_tree_name_folder_mismatch(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051",), illuminations=(7,))
    write_image(tmp_path / "session01" / "multiview" / "001" / "01" / "05_1" / "001_01_01_050_07.png")
    idx = load_dataset("multipie", tmp_path)
    assert idx.report.skipped == {"name does not match its folders": 1}


def test_empty_missing_and_all_bad_folders(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("multipie", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable images in .*empty: no image files"):
        load_dataset("multipie", tmp_path / "empty")
    for i in range(3):
        write_image(tmp_path / "bad" / f"img{i}.png")
    with pytest.raises(DataError, match=r"3 files skipped \(3 unparseable name\).*check the layout"):
        load_dataset("multipie", tmp_path / "bad")
    with pytest.raises(DataError, match="cannot tell the dataset kind"):
        load_dataset("auto", tmp_path / "bad")
    with pytest.raises(DataError, match="unknown dataset kind"):
        load_dataset("celeba", tmp_path / "bad")  # type: ignore[arg-type]


def test_manifest_landmarks_and_missing_rows(tmp_path: Path):
    files = build_multipie(tmp_path, layout="flat", subjects=("001",), cameras=("051", "041"), illuminations=(7,))
    write_multipie_manifest(tmp_path, files)
    with open(tmp_path / "manifest.csv", "a") as f:
        f.write("001_01_01_130_07.png,001,01,01,130,-30,0,7,1,1,2,1,1.5,2,1,3,2,3\n")
    idx = load_dataset("multipie", tmp_path)
    assert idx.report.skipped == {"listed in manifest but missing": 1}
    r = next(r for r in idx if r.yaw == 30)
    assert r.landmarks.shape == (5, 2) and r.landmarks[0, 0] == pytest.approx((44 + 30 / 9) / 8, abs=1e-3)
    assert all(r.landmarks is None for r in load_dataset("multipie", tmp_path, landmarks="none"))
    src = ManifestLandmarks(tmp_path / "manifest.csv")
    np.testing.assert_allclose(src(tmp_path / "001_01_01_041_07.png"), r.landmarks)
    with pytest.raises(DataError, match="no landmarks for"):
        src(tmp_path / "other.png", required=True)
    (tmp_path / "manifest.csv").write_text("file,yaw\nx.png,0\n")
    with pytest.raises(DataError, match="lacks column"):
        ManifestLandmarks(tmp_path / "manifest.csv")


# ---------------------------------------------------------------- CAS-PEAL-R1


def test_caspeal_name_parsing():
    f = caspeal.parse_caspeal_name("MY_000064_IEU+00_PD-22_EN_A0_D0_T0_BB_M0_R1_S0")
    assert f["subject"] == "000064" and f["yaw"] == -22 and f["pitch"] == -15 and f["expression"] == "N"
    f = caspeal.parse_caspeal_name("FO_000270_PU+45_IFM+45_EL_A1_D2_T1_BW")  # reordered, fewer fields
    assert (f["yaw"], f["pitch"], f["expression"], f["accessory"], f["time"]) == (45, 15, "L", "1", "1")
    assert caspeal.parse_caspeal_name("MY_000064_IEU+00_EN_A0") is None  # no pose field
    assert caspeal.parse_caspeal_name("001_01_01_051_07") is None
    assert caspeal.lighting_code("E", "U", 0) == 0
    codes = {caspeal.lighting_code(s, e, a) for s in "EFL" for e in "UMD" for a in range(-90, 91)}
    assert len(codes) == 9 * 181 and 0 in codes


def test_caspeal_loader_pairs_gallery(tmp_path: Path):
    build_caspeal(tmp_path)
    write_image(tmp_path / "POSE" / "MY_000064_IEU+00_EN_A0_D0_T0_BB_M0_R1_S0.png")  # no pose field
    idx = load_dataset("auto", tmp_path)
    assert idx.kind == "caspeal" and idx.subjects() == ["000064", "000065", "000101"]
    assert idx.report.skipped == {"unparseable name": 1}
    assert idx.yaw_groups() == [0, 15, 22, 30, 45, 67]
    assert {r.pitch for r in idx} == {-15, 0, 15}
    pairs = idx.pairs()
    assert len(pairs) == len(idx)
    for p, f in pairs:
        assert "_PM+00_" in f.path.name and p.subject == f.subject and p.condition == f.condition
    up = next(p for p, _ in pairs if "_PU+00_" in p.path.name)
    assert (up.yaw, up.pitch) == (0, 15)
    assert len(idx.pairs(include_frontal=False)) == len(idx) - 3  # PU+00 / PD+00 stay as profiles
    g = idx.gallery()
    assert len(g) == 3 and all("_PM+00_" in r.path.name for r in g)
    assert read_image(g[0].path).shape == (16, 16, 3)  # grayscale file replicated to RGB
    with pytest.raises(DataError, match="MY_000064_IEU\\+00_EN_A0.*unparseable name"):
        load_dataset("caspeal", tmp_path, policy="stop")


def test_caspeal_lighting_kept_apart(tmp_path: Path):
    write_image(tmp_path / caspeal_name("000001", "M+00"))
    write_image(tmp_path / caspeal_name("000001", "M+22", lighting="FM+45"))
    idx = load_dataset("caspeal", tmp_path)
    assert idx.pairs(include_frontal=False) == []  # different lighting: no pair
    assert idx.report.notes["profiles without a frontal target"] == 1


# ---------------------------------------------------------------- plain folder / synth


def test_plain_folder(tmp_path: Path):
    build_folder(tmp_path)
    write_image(tmp_path / "carol" / "unlisted.png")
    write_image(tmp_path / "toplevel.png")
    idx = load_dataset("folder", tmp_path)
    assert idx.subjects() == ["alice", "bob"] and len(idx) == 6
    assert idx.report.skipped == {"not in manifest": 2}
    a = next(r for r in idx if r.path.name == "alice_30.png")
    assert a.yaw == 30 and a.illumination == 7 and a.landmarks is not None
    assert next(r for r in idx if r.path.name == "bob_30.png").landmarks is None
    assert [r.yaw for r in idx.gallery()] == [0, 0]
    assert all(f.path.name.endswith("_0.png") and f.subject == p.subject for p, f in idx.pairs())
    (tmp_path / "manifest.csv").unlink()
    with pytest.raises(DataError, match="needs .*manifest.csv with columns file,yaw"):
        load_dataset("folder", tmp_path)


def test_synth_reads_dataset_json(tmp_path: Path):
    build_synth(tmp_path, subjects=4, train_subjects=3)
    idx = load_dataset("auto", tmp_path)
    assert idx.kind == "synth" and idx.train_subjects == 3 and idx.frontal_illumination == 7
    tr, te = idx.split()
    assert tr.subjects() == ["001", "002", "003"] and te.subjects() == ["004"]
    assert all(r.landmarks is not None for r in idx)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["complete"] = False
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="incomplete"):
        load_dataset("synth", tmp_path)


def test_synth_with_pitch_uses_caspeal_names(tmp_path: Path):
    import csv

    files = build_caspeal(tmp_path, subjects=("000001", "000002"), poses=("M+00", "M+45", "U+15", "D-30"))
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "subject", "session", "recording", "camera", "yaw", "pitch", "illumination",
                    "lex", "ley", "rex", "rey", "nx", "ny", "mlx", "mly", "mrx", "mry"])
        for p in files:
            r = caspeal.parse_caspeal(p, p.name)
            w.writerow([p.relative_to(tmp_path).as_posix(), r.subject[-3:], "01", "01", "", r.yaw, r.pitch, 7, *range(10)])
    (tmp_path / "dataset.json").write_text(json.dumps({"generator": "slimface.synth", "pitch": True,
                                                       "train_subjects": 1, "frontal_illumination": 7, "complete": True}))
    idx = load_dataset("auto", tmp_path)
    assert idx.kind == "synth" and {r.pitch for r in idx} == {-15, 0, 15}
    assert {r.illumination for r in idx} == {7}  # manifest overrides the name's lighting code
    assert [r.illumination for r in idx.gallery()] == [7, 7]
    np.testing.assert_allclose(idx[0].landmarks.ravel(), np.arange(10))
    tr, te = idx.split()
    assert tr.subjects() == ["001"] and te.subjects() == ["002"]  # manifest ids win over 6-digit names


def test_dlib_landmark_mode_counts_misses(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051", "050"), illuminations=(7,), size=32)
    idx = load_dataset("multipie", tmp_path, landmarks="dlib")
    assert all(r.landmarks is None for r in idx)  # noise images: no face
    assert idx.report.notes["no face found (dlib)"] == 2
    with pytest.raises(DataError, match="unknown landmarks source"):
        load_dataset("multipie", tmp_path, landmarks="mtcnn")  # type: ignore[arg-type]


# ---------------------------------------------------------------- images


def test_read_image_range_resize_channels_and_errors(tmp_path: Path):
    p = write_image(tmp_path / "a.png", (20, 16))
    a = read_image(p)
    assert a.shape == (16, 20, 3) and a.dtype == np.float32 and -1 <= a.min() and a.max() <= 1
    assert read_image(p, 8, 1).shape == (8, 8, 1)
    with pytest.raises(DataError, match="a.png is 20x16 but 16x16 is required"):
        read_image(p, 16, strict_size=True)
    g = write_image(tmp_path / "g.png", 16, mode="L")
    with pytest.raises(DataError, match="1 channel"):
        read_image(g, 16, 3, strict_size=True)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")
    t = truncate(write_image(tmp_path / "t.png", 64))
    with pytest.raises(DataError, match="t.png"):
        read_image(t)


# ---------------------------------------------------------------- landmarks


def test_dlib5_conversion_known_points():
    # dlib order: one eye's two corners, the other eye's two corners, nose base
    pts = np.array([[90, 40], [80, 40], [30, 40], [40, 40], [60, 70]], dtype=np.float32)
    lm = dlib5_to_ours(pts)
    np.testing.assert_allclose(lm[0], [35, 40])  # left = smaller x
    np.testing.assert_allclose(lm[1], [85, 40])
    # eye midpoint (60, 40), nose base (60, 70): nose tip at 0.7 and mouth at 1.4 of the way
    np.testing.assert_allclose(lm[2], [60, 40 + 0.7 * 30], atol=1e-4)
    mouth_y = 40 + 1.4 * 30
    np.testing.assert_allclose(lm[3], [60 - 50 * 15 / 42, mouth_y], atol=1e-4)
    np.testing.assert_allclose(lm[4], [60 + 50 * 15 / 42, mouth_y], atol=1e-4)


def test_dlib_no_face_found(tmp_path: Path):
    p = write_image(tmp_path / "noise.png", 64)
    det = DlibLandmarks()
    assert det(p) is None
    with pytest.raises(DataError, match="no face found in .*noise.png"):
        det(p, required=True)


def test_dlib_on_a_real_face():
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib sample photo not installed")
    lm = DlibLandmarks()(photo, required=True)
    le, re_, nose, ml, mr = lm
    assert le[0] < re_[0] and ml[0] < mr[0]
    assert 60 < re_[0] - le[0] < 120  # inter-ocular distance of a ~512 px portrait
    assert le[1] < nose[1] < ml[1] and re_[1] < nose[1] < mr[1]
    # eyes where they are in the photo; the nose landmark is the tip, above dlib's nose base (~252)
    assert 150 < le[1] < 230 and 225 < nose[1] < 248
