"""Checkpoint files: atomic writes, checksums, fallback, safe loading, RNG state, disk-full handling."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimface.errors import CheckpointError
from slimface.fileio import safe_load
from slimface.train import checkpoint as C

sys.path.insert(0, str(Path(__file__).parent))
import _train_toy as toy  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a loaded 2-core box: intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _state(step: int) -> dict:
    torch.manual_seed(step)
    return {"step": step, "w": torch.randn(64, 64), "meta": {"name": "x", "lr": [0.1, 0.2]}}


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_roundtrip_keep_last_and_no_temp_files(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        path = C.save_checkpoint(tmp_path, step, _state(step), keep_last=2)
        assert path == tmp_path / f"ckpt_{step:06d}.pt"
        assert C.verify_checksum(path) is True
    assert _files(tmp_path) == [
        "ckpt_000015.pt", "ckpt_000015.pt.sha256", "ckpt_000020.pt", "ckpt_000020.pt.sha256"
    ]
    state, path = C.load_latest(tmp_path)
    assert path.name == "ckpt_000020.pt" and state["step"] == 20
    assert torch.equal(state["w"], _state(20)["w"]) and state["meta"]["lr"] == [0.1, 0.2]
    assert C.load_latest(tmp_path / "empty") is None


def test_stale_temp_file_from_killed_writer_is_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".tmp-ckpt_000005.pt.12345").write_bytes(b"half a checkpoint")
    C.save_checkpoint(tmp_path, 10, _state(10), keep_last=3)
    assert _files(tmp_path) == ["ckpt_000010.pt", "ckpt_000010.pt.sha256"]
    assert C.load_latest(tmp_path)[1].name == "ckpt_000010.pt"


def test_truncated_newest_falls_back_with_log(tmp_path: Path, caplog) -> None:
    for step in (1, 2, 3):
        C.save_checkpoint(tmp_path, step, _state(step), keep_last=3)
    newest = tmp_path / "ckpt_000003.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    Path(str(newest) + ".sha256").unlink()  # no checksum: the load error itself must catch it
    with caplog.at_level(logging.WARNING, logger="slimface.train"):
        state, path = C.load_latest(tmp_path)
    assert path.name == "ckpt_000002.pt" and state["step"] == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "ckpt_000003.pt" in msgs[0] and "truncated" in msgs[0]


def test_checksum_mismatch_detected(tmp_path: Path, caplog) -> None:
    for step in (1, 2):
        C.save_checkpoint(tmp_path, step, _state(step), keep_last=3)
    newest = tmp_path / "ckpt_000002.pt"
    data = bytearray(newest.read_bytes())
    # flip a byte inside the tensor payload (the zip still opens; only the checksum notices)
    i = data.find(_state(2)["w"].numpy().tobytes()[:16])
    assert i > 0
    data[i + 3] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert C.verify_checksum(newest) is False
    with pytest.raises(CheckpointError, match=r"ckpt_000002\.pt does not match its \.sha256"):
        C.load_checked(newest)
    with caplog.at_level(logging.WARNING, logger="slimface.train"):
        state, path = C.load_latest(tmp_path)
    assert state["step"] == 1 and "sha256" in caplog.text


def test_all_corrupt_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    C.save_checkpoint(tmp_path, 1, _state(1), keep_last=3)
    (tmp_path / "ckpt_000001.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint .* all 1 are corrupt"):
        C.load_latest(tmp_path)


def test_missing_sidecar_but_intact_file_loads(tmp_path: Path) -> None:
    C.save_checkpoint(tmp_path, 7, _state(7), keep_last=3)
    Path(tmp_path / "ckpt_000007.pt.sha256").unlink()
    assert C.verify_checksum(tmp_path / "ckpt_000007.pt") is None
    assert C.load_latest(tmp_path)[0]["step"] == 7


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_refused_without_running_it(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    payload = {"weights": torch.zeros(2), "x": _Evil(marker)}
    if writer == "pickle":
        bad.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, bad)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="arbitrary Python objects"):
        safe_load(bad)
    assert not marker.exists()


def test_safe_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "nope.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        safe_load(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError) as ei:
        safe_load(tmp_path / "junk.pt")
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOSPC, "No space left on device"),
     RuntimeError("[enforce fail at inline_container.cc:1] . PytorchStreamWriter failed writing "
                  "file data/0: file write failed")],
)
def test_disk_full_leaves_earlier_checkpoints_intact(tmp_path: Path, monkeypatch, exc) -> None:
    C.save_checkpoint(tmp_path, 5, _state(5), keep_last=1)
    before = _files(tmp_path)
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        f.write(b"partial bytes that hit the end of the disk")
        raise exc

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as ei:
        C.save_checkpoint(tmp_path, 10, _state(10), keep_last=1)
    msg = str(ei.value)
    assert "ckpt_000010.pt" in msg and "\n" not in msg
    if isinstance(exc, OSError):
        assert "no space left on device" in msg
    monkeypatch.setattr(torch, "save", real_save)
    assert _files(tmp_path) == before  # no temp file, keep_last did not delete step 5
    state, path = C.load_latest(tmp_path)
    assert state["step"] == 5 and torch.equal(state["w"], _state(5)["w"])


def test_rng_capture_restore_and_weights_only(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    snap = C.capture_rng()
    C.save_checkpoint(tmp_path, 1, {"rng": snap}, keep_last=1)
    expect = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    C.restore_rng(C.load_latest(tmp_path)[0]["rng"])  # went through weights_only loading
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])
    with C.preserve_rng():
        torch.rand(100), np.random.rand(100), random.random()
    a = torch.rand(2)
    C.restore_rng(snap)
    random.random(), np.random.randn(3), torch.rand(3)
    assert torch.equal(a, torch.rand(2))


def test_fingerprint_check() -> None:
    C.check_fingerprint({"fingerprint": "tpgan@64 w0.25"}, "tpgan@64 w0.25", "x.pt")
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint x\.pt was written for tpgan@64 w0\.25, this run is crgan@64; "
        r"use another --out or delete it",
    ):
        C.check_fingerprint({"fingerprint": "tpgan@64 w0.25"}, "crgan@64", "x.pt")


def test_trainer_refuses_other_fingerprint(tmp_path: Path) -> None:
    from slimface.train.loop import Trainer

    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, steps=2)).fit()
    other = toy.ToyTask(fingerprint="crgan@64")
    with pytest.raises(CheckpointError, match="was written for toy@8 w1, this run is crgan@64"):
        Trainer(other, toy.ToyData(), toy.make_config(tmp_path, steps=4)).fit()


def test_trainer_falls_back_past_corrupt_newest(tmp_path: Path, caplog) -> None:
    from slimface.train.loop import Trainer

    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, steps=10, ckpt_every=5)).fit()
    newest = tmp_path / "checkpoints" / "ckpt_000010.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    tr = Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(tmp_path, steps=12, ckpt_every=5))
    with caplog.at_level(logging.WARNING, logger="slimface.train"):
        tr.fit()
    assert tr.resumed_from is not None and tr.resumed_from.name == "ckpt_000005.pt"
    assert "ckpt_000010.pt" in caplog.text
    names = _files(tmp_path / "checkpoints")
    assert "ckpt_000010.pt.corrupt" in names and "ckpt_000012.pt" in names
    assert not [n for n in names if n.startswith(".tmp")]
    assert os.path.getsize(tmp_path / "checkpoints" / "ckpt_000010.pt") > 1000  # rewritten at step 10
