"""int8 that is never silently wrong: settings per CPU, the fp32 check after quantizing and on load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from slimface.deploy import int8_guard
from slimface.deploy.int8_guard import choose_settings, refusal_note
from slimface.deploy.runtime import load_or_refusal
from slimface.deploy.onnx_export import export_onnx
from slimface.deploy.quantize import calibration_from_batches, quantize_int8
from slimface.deploy.runtime import load_frontalizer
from slimface.errors import CheckpointError, Int8RefusedError
from test_deploy import _inputs, _model

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
VNNI = frozenset({"avx2", "avx512f", "avx512_vnni"})


@pytest.fixture
def no_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees an AVX2-only x86 CPU (as on the AMD EPYC of issue 19)."""
    monkeypatch.setattr(int8_guard, "cpu_features", lambda: AVX2_ONLY)
    monkeypatch.setattr(int8_guard, "cpu_arch", lambda: "x86_64")


@pytest.fixture
def with_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_guard, "cpu_features", lambda: VNNI)
    monkeypatch.setattr(int8_guard, "cpu_arch", lambda: "x86_64")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(_model(), _inputs(), tmp_path_factory.mktemp("int8") / "gen.onnx")


def _calibration() -> list[dict[str, np.ndarray]]:
    batches = []
    for s in range(2):
        x, lm = _inputs(b=4, seed=10 + s)
        batches.append({"profile": x, "landmarks": lm})
    return calibration_from_batches(batches)


def _weight_range(path: Path) -> int:
    model = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
               for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4)


def test_settings_follow_the_cpu() -> None:
    vnni = choose_settings(VNNI, "x86_64")
    assert (vnni.weight_type, vnni.reduce_range) == ("QInt8", False)
    for feats in (AVX2_ONLY, frozenset({"avx2", "avx512f", "avx512bw"})):  # AVX-512 without VNNI saturates too
        s = choose_settings(feats, "x86_64")
        assert s.reduce_range and "no VNNI" in s.reason and "without VNNI" in s.cpu_features
    assert not choose_settings(frozenset({"asimd", "asimddp"}), "aarch64").reduce_range
    assert choose_settings(frozenset(), "x86_64").reduce_range  # flags unreadable: the safe choice
    assert choose_settings(frozenset(), "riscv64").reduce_range


def test_non_vnni_cpu_gets_7bit_weights_recorded_in_the_model(fp32: Path, tmp_path: Path, no_vnni: None) -> None:
    rep = quantize_int8(fp32, tmp_path / "q.onnx", _calibration())
    assert rep.settings["reduce_range"] and rep.settings["weight_type"] == "QInt8"
    assert _weight_range(rep.path) <= 64  # 7-bit: two u8 x s8 products fit int16, nothing saturates
    assert rep.psnr_db > 35 and rep.mean_abs_diff < 0.02
    f = load_frontalizer(rep.path)  # re-checked on load
    settings = json.loads(f.metadata["slimface.int8_settings"])
    assert settings["reduce_range"] and settings["cpu"] == int8_guard.cpu_name()
    assert "AVX2 without VNNI" in settings["cpu_features"]
    assert f.int8_check is not None and f.int8_check["psnr_db"] > 35


def test_vnni_cpu_keeps_8bit_weights(fp32: Path, tmp_path: Path, with_vnni: None) -> None:
    rep = quantize_int8(fp32, tmp_path / "q.onnx", _calibration())
    assert not rep.settings["reduce_range"] and _weight_range(rep.path) > 64


def _break(src: Path, dst: Path, factor: float = 40.0) -> None:
    """A deliberately broken int8 model: every weight's dequantize scale multiplied by ``factor``
    (what saturated int16 sums look like downstream), metadata and check data kept."""
    model = onnx.load(str(src))
    weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4}
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    for t in model.graph.initializer:
        if t.name in scales:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    dst.write_bytes(model.SerializeToString())


def test_broken_int8_model_is_refused_on_load(fp32: Path, tmp_path: Path, no_vnni: None) -> None:
    good = quantize_int8(fp32, tmp_path / "q.onnx", _calibration()).path
    bad = tmp_path / "model.int8.onnx"
    _break(good, bad)
    with pytest.raises(Int8RefusedError, match=r"int8 refused on this CPU \(.*AVX2 without VNNI.*PSNR") as exc:
        load_frontalizer(bad)
    assert "\n" not in str(exc.value) and isinstance(exc.value, CheckpointError)
    rt, why = load_or_refusal(bad)  # what the evaluate/bench stages use: no crash, a reason
    assert rt is None and why is not None and "int8 refused on this CPU" in why
    assert load_frontalizer(bad.parent / "q.onnx").int8_check is not None  # the intact one still loads


def test_guard_after_quantizing_writes_nothing_and_leaves_a_note(fp32: Path, tmp_path: Path, no_vnni: None) -> None:
    out = tmp_path / "model.int8.onnx"
    out.write_bytes(b"stale model from an earlier run")
    with pytest.raises(Int8RefusedError, match="int8 refused on this CPU"):
        quantize_int8(fp32, out, _calibration(), min_psnr=200.0)  # no int8 model is that close
    assert not out.exists()
    note = refusal_note(out)
    assert note is not None and "without VNNI" in note
    assert load_or_refusal(out) == (None, note)  # evaluate/report say why instead of a rank-1
    assert int8_guard.int8_summary(out) == note
    quantize_int8(fp32, out, _calibration())  # a later success clears the note
    assert out.is_file() and refusal_note(out) is None


def test_int8_without_check_data_is_refused_only_where_it_can_saturate(
    fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int8_guard, "cpu_arch", lambda: "x86_64")
    monkeypatch.setattr(int8_guard, "cpu_features", lambda: VNNI)
    rep = quantize_int8(fp32, tmp_path / "q.onnx", _calibration())
    legacy = onnx.load(str(rep.path))  # as an older slimface wrote it: no settings, no check
    keep = [p for p in legacy.metadata_props if p.key not in ("slimface.int8_check", "slimface.int8_settings")]
    del legacy.metadata_props[:]
    legacy.metadata_props.extend(keep)
    old = tmp_path / "old.int8.onnx"
    old.write_bytes(legacy.SerializeToString())
    assert load_frontalizer(old).int8_check is None  # VNNI: nothing saturates
    monkeypatch.setattr(int8_guard, "cpu_features", lambda: AVX2_ONLY)
    with pytest.raises(Int8RefusedError, match="without VNNI.*no fp32 check"):
        load_frontalizer(old)


def test_recognizer_cosine_guard(fp32: Path, tmp_path: Path, with_vnni: None) -> None:
    import torch

    class Scrambler:  # a recognizer that sees every image as a new identity
        def embed(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(torch.randn(images.shape[0], 16), dim=1)

    class Pixels:  # embeddings = the pixels themselves: int8 keeps them close
        def embed(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(images.flatten(1), dim=1)

    assert quantize_int8(fp32, tmp_path / "ok.onnx", _calibration(), recognizer=Pixels()).path.is_file()
    with pytest.raises(Int8RefusedError, match="identity embedding cosine"):
        quantize_int8(fp32, tmp_path / "q.onnx", _calibration(), recognizer=Scrambler())
