"""PairDataset / ImageDataset / make_loader: shapes, ranges, landmark scaling, policy, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _data_fixtures import build_caspeal, build_multipie, build_synth, landmarks_for, truncate

from slimface.data.loaders import load_dataset
from slimface.data.records import canonical_landmarks
from slimface.data.torch_data import ImageDataset, PairDataset, make_loader, subject_labels
from slimface.errors import DataError


@pytest.fixture
def synth_index(tmp_path: Path):
    return load_dataset("synth", build_synth(tmp_path / "s", subjects=4, train_subjects=3, size=16))


def test_pair_items_shapes_ranges_and_landmark_scaling(synth_index):
    pairs = synth_index.pairs()
    ds = PairDataset(pairs, resolution=32, channels=3)
    assert len(ds) == len(pairs)
    for i in range(len(ds)):
        item = ds[i]
        prof, front = pairs[i]
        assert item["profile"].shape == (3, 32, 32) and item["frontal"].shape == (3, 32, 32)
        assert item["profile"].dtype == torch.float32
        assert -1.0 <= float(item["profile"].min()) and float(item["profile"].max()) <= 1.0
        assert item["yaw"].dtype == torch.float32 and float(item["yaw"]) == prof.yaw
        assert item["subject"].dtype == torch.int64
        assert int(item["subject"]) == ds.subject_to_label[prof.subject]
        # 16 px manifest landmarks -> 32 px output: doubled
        want = np.array(landmarks_for(prof.yaw, 16), dtype=np.float32).reshape(5, 2) * 2
        np.testing.assert_allclose(item["landmarks"].numpy(), want, atol=1e-4)
        np.testing.assert_allclose(item["frontal_landmarks"].numpy(), np.array(landmarks_for(0, 16)).reshape(5, 2) * 2, atol=1e-4)
    assert ds.subject_to_label == {"001": 0, "002": 1, "003": 2, "004": 3}


def test_images_resized_exactly_and_gray_channels(tmp_path: Path):
    build_caspeal(tmp_path / "c", subjects=("000001",))
    idx = load_dataset("caspeal", tmp_path / "c")
    ds = ImageDataset(list(idx), resolution=8, channels=3)
    x = ds[0]["image"]
    assert x.shape == (3, 8, 8)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale replicated
    one = ImageDataset(list(idx), resolution=16, channels=1)[0]["image"]
    # native 16 px: no resampling, so values are exactly k/255 mapped to [-1,1]
    k = (one + 1) / 2 * 255
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_canonical_landmarks_when_record_has_none(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051", "190"), illuminations=(7,))
    idx = load_dataset("multipie", tmp_path)
    item = PairDataset(idx.pairs(), resolution=64, channels=1)[0]
    np.testing.assert_allclose(item["landmarks"].numpy(), canonical_landmarks(64))
    assert item["profile"].shape == (1, 64, 64)


def test_landmarks_scale_per_axis(tmp_path: Path):
    # a non-square 32x16 file: x scales by R/32, y by R/16
    from _data_fixtures import write_image

    from slimface.data.records import FaceRecord

    p = write_image(tmp_path / "w.png", (32, 16))
    lm = np.array([[8, 4], [24, 4], [16, 8], [10, 12], [22, 12]], dtype=np.float32)
    rec = FaceRecord(p, "x", 30, landmarks=lm)
    item = ImageDataset([rec], resolution=16)[0]
    np.testing.assert_allclose(item["landmarks"].numpy(), lm * np.array([0.5, 1.0]))


def test_lazy_bad_file_policy(tmp_path: Path):
    files = build_multipie(tmp_path, subjects=("001",), cameras=("051", "050", "041"), illuminations=(7,), size=64)
    truncate(files[1])  # 001_01_01_050_07.png: header ok, decoding fails
    idx = load_dataset("multipie", tmp_path)
    pairs = sorted(idx.pairs(), key=lambda pr: pr[0].path.name)
    bad_i = [p.path.name for p, _ in pairs].index("001_01_01_050_07.png")
    with pytest.raises(DataError, match="001_01_01_050_07.png"):
        PairDataset(pairs, 32, policy="stop")[bad_i]
    ds = PairDataset(pairs, 32, policy="skip")
    item = ds[bad_i]
    assert int(item["index"]) == (bad_i + 1) % len(ds)  # served the next good pair
    assert ds.skipped == 1
    batch = next(iter(make_loader(ds, batch_size=len(ds), shuffle=False)))
    assert batch["profile"].shape[0] == len(ds)


def test_cache_avoids_rereading(tmp_path: Path):
    build_multipie(tmp_path, subjects=("001",), cameras=("051",), illuminations=(7,))
    recs = list(load_dataset("multipie", tmp_path))
    ds = ImageDataset(recs, 16, cache=True)
    first = ds[0]["image"]
    recs[0].path.unlink()
    assert torch.equal(ds[0]["image"], first)
    with pytest.raises(DataError, match="not found"):
        ImageDataset(recs, 16, cache=False, policy="stop")[0]


def test_make_loader_is_deterministic(synth_index):
    ds = ImageDataset(list(synth_index), 8)
    order = lambda seed: torch.cat([b["index"] for b in make_loader(ds, 5, shuffle=True, seed=seed)]).tolist()  # noqa: E731
    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == list(range(len(ds)))
    batches = list(make_loader(ds, 5, shuffle=False, drop_last=True))
    assert all(b["image"].shape == (5, 3, 8, 8) for b in batches) and len(batches) == len(ds) // 5


def test_labels_and_empty_inputs(synth_index):
    tr, te = synth_index.split()
    labels = subject_labels(list(synth_index))
    ds = PairDataset(te.pairs(), 8, subject_to_label=labels)
    assert int(ds[0]["subject"]) == labels["004"] == 3
    with pytest.raises(DataError, match="no class label"):
        PairDataset(te.pairs(), 8, subject_to_label={"001": 0})
    with pytest.raises(DataError, match="no training pairs"):
        PairDataset([], 8)
