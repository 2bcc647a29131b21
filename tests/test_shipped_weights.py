"""Shipped weights (issue 17): weights/manifest.json, fingerprints, and runs that start from them.

- The data fingerprint of the built-in data changes with every setting that changes the rendered images
  (and with the renderer's version); two rendered subjects match a stored hash, so a machine that renders
  other bytes is caught here.
- Manifest verification: a changed byte, a file or config of another architecture, and weights trained
  on other data are refused with one line (CheckpointError) naming what differs.
- A tiny run packs its own tiny weights; a second tiny run loads them instead of training (no
  checkpoints; "[teacher.tpgan] ... shipped" in its output; the report says where the teacher came
  from), and ``--set teachers.tpgan.pretrained=false`` trains the teacher again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import slimface.data.synth as synth
from slimface import shipped, shipped_pack
from slimface import stage_keys as K
from slimface.config import load_config
from slimface.data.synth import SynthConfig, data_fingerprint, render_dataset
from slimface.errors import CheckpointError, ConfigError
from slimface.pipeline_config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
#: the source run only needs networks of the right shapes: a couple of steps each
SHORT = ["--set", "recognizer.train.steps=2", "--set", "judge.train.steps=2",
         "--set", "teachers.tpgan.train.steps=2", "--set", "judge.dlib=false"]
PRETRAINED = ["--set", "recognizer.pretrained=true", "--set", "judge.pretrained=true",
              "--set", "teachers.tpgan.pretrained=true", "--set", "judge.dlib=false", "--set", "deploy.onnx=false"]


def slimface(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "slimface.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ data fingerprint
def test_data_fingerprint_follows_every_render_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    base = SynthConfig(subjects=16, train_subjects=10, resolution=64, illuminations=2, seed=0)
    fp = data_fingerprint(base)
    assert fp["generator"] == "slimface.synth" and fp["render_version"] == synth.RENDER_VERSION
    same = SynthConfig(subjects=16, train_subjects=10, resolution=64, illuminations=2)
    assert data_fingerprint(same)["fingerprint"] == fp["fingerprint"]  # a pure function of the settings
    for change in ({"seed": 1}, {"subjects": 17}, {"resolution": 128}, {"illuminations": 3}, {"pitch": True},
                   {"gray": True}, {"train_subjects": 9}):
        other = SynthConfig(**{**base.__dict__, **change})
        assert data_fingerprint(other)["fingerprint"] != fp["fingerprint"], change
    monkeypatch.setattr(synth, "RENDER_VERSION", synth.RENDER_VERSION + 1)  # the renderer's pixels changed
    assert data_fingerprint(base)["fingerprint"] != fp["fingerprint"]
    monkeypatch.undo()
    monkeypatch.setattr(synth, "VERSION", synth.VERSION + 1)  # the on-disk layout changed
    assert data_fingerprint(base)["fingerprint"] != fp["fingerprint"]


#: sha256 of the two subjects below, decoded (file name + uint8 pixels, in manifest order), and of their
#: manifest.csv (landmarks). Decoded pixels rather than PNG bytes: zlib builds compress differently.
#: The renderer computes in float64, and these hashes are the same with numpy's AVX-512, AVX2 and
#: SSE paths (NPY_DISABLE_CPU_FEATURES); the float32 renderer of RENDER_VERSION 1 was not. A failure
#: here means this machine renders other training data than the shipped weights were trained on.
RENDER_SHA256 = "a378798b90a797a67c3c9e0a4508f58f1eb151f459411e1c94697d1c24f363fc"
MANIFEST_SHA256 = "923e12cc1f41447c116f29d6fddc1b3222dd4b6850a776bd1a0b1071ce9eda24"


def test_two_rendered_subjects_match_the_stored_hash(tmp_path: Path) -> None:
    cfg = SynthConfig(subjects=2, train_subjects=1, resolution=64, illuminations=2, seed=0)
    root = render_dataset(cfg, tmp_path / "ds", progress=False, workers=1)
    h = hashlib.sha256()
    with (root / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 13 * 2
    for r in rows:
        h.update(r["file"].encode())
        h.update(np.asarray(Image.open(root / r["file"])).tobytes())
    meta = json.loads((root / "dataset.json").read_text())
    assert data_fingerprint(meta)["fingerprint"] == data_fingerprint(cfg)["fingerprint"]  # disk == settings
    assert hashlib.sha256((root / "manifest.csv").read_bytes()).hexdigest() == MANIFEST_SHA256, \
        "landmarks differ from the reference render"
    assert h.hexdigest() == RENDER_SHA256, (
        f"this machine renders other pixels (sha256 {h.hexdigest()}) than the reference: its built-in data "
        "differ from the data the shipped weights were trained on (numpy SIMD path or renderer change; "
        "bump RENDER_VERSION if the renderer changed on purpose)")


# ------------------------------------------------------------------------------ runs and weights
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny source run (2 steps a network), its weights packed, and a run that starts from them."""
    work = tmp_path_factory.mktemp("packed")
    data = ["--set", f"data.root={work / 'data'}"]
    src = work / "src"
    _ok(slimface("run", "--config", str(TINY), "--out", str(src), *data, *SHORT, "--no-progress",
                 "--only", "data", "recognizer", "judge", "teacher", cwd=work))
    weights = work / "weights"
    shipped_pack.pack(src, weights, fp16=["discriminator"], command="pytest tiny source run", say=lambda _: None)
    out = work / "uses"
    common = ("--config", str(TINY), "--out", str(out), *data, "--set", f"weights={weights}", "--no-progress")
    log = _ok(slimface("run", *common, *PRETRAINED, "--only", "data", "recognizer", "judge", "teacher", "report",
                       cwd=work))
    return {"work": work, "src": src, "weights": weights, "out": out, "common": common, "log": log, "data": data}


def _cfg(runs: dict, **over: object) -> PipelineConfig:
    sets = {"out_dir": str(runs["work"] / "check"), "data.root": str(runs["work"] / "data"),
            "weights": str(runs["weights"]), "judge.dlib": False, "teachers.tpgan.pretrained": True}
    return load_config(PipelineConfig, TINY, {**sets, **over})


def _pipe(cfg: PipelineConfig):  # noqa: ANN202
    from slimface.pipeline import Pipeline

    return Pipeline(cfg, progress=False)


def test_manifest_records_files_fingerprints_and_command(runs: dict, tmp_path: Path) -> None:
    manifest = json.loads((runs["weights"] / "manifest.json").read_text())
    assert manifest["schema"] == shipped.SCHEMA and manifest["command"] == "pytest tiny source run"
    assert set(manifest["files"]) == {"judge.safetensors", "recognizer.safetensors", "tpgan.generator.safetensors",
                                      "tpgan.discriminator.safetensors"}
    roles = {e["role"] for e in manifest["files"].values()}
    assert roles == {r for r in shipped.ROLES if r.split()[0] not in ("mobile", "supernet")}  # none of those ran
    for name, e in manifest["files"].items():
        blob = (runs["weights"] / name).read_bytes()
        assert e["sha256"] == hashlib.sha256(blob).hexdigest() and e["size"] == len(blob)
        assert e["data"]["dataset"]["subjects"] == 16 and e["data"]["dataset"]["generator"] == "slimface.synth"
        assert e["arch"]["resolution"] == 64 and e["arch"]["channels"] == 3 and e["arch"]["state"]
    assert manifest["files"]["tpgan.discriminator.safetensors"]["dtype"] == "float16"
    assert manifest["files"]["tpgan.generator.safetensors"]["dtype"] == "float32"
    assert manifest["files"]["tpgan.generator.safetensors"]["arch"]["width_mult"] == 0.0625
    assert manifest["files"]["judge.safetensors"]["data"]["identities"] == "second_half"
    assert manifest["total_bytes"] == sum(e["size"] for e in manifest["files"].values()) <= shipped.MAX_TOTAL_BYTES
    assert "not measured" in manifest["files"]["tpgan.generator.safetensors"]["figures"]["note"]  # no evaluate ran
    assert shipped.verify(runs["weights"], say=lambda _: None) == 4
    # packing the same run again writes the same bytes (no timestamps, metadata in a fixed order)
    again = shipped_pack.pack(runs["src"], tmp_path / "w", fp16=["discriminator"], command="pytest tiny source run",
                         say=lambda _: None).parent
    for name in [*manifest["files"], "manifest.json"]:
        assert (again / name).read_bytes() == (runs["weights"] / name).read_bytes(), name


def test_run_loads_shipped_weights_without_training(runs: dict) -> None:
    out, log = runs["out"], runs["log"]
    assert "[teacher.tpgan] tpgan teacher generator: shipped" in log and "not trained in this run" in log
    assert "[judge] judge: shipped" in log and "[recognizer] loss recognizer: shipped" in log
    for folder in (out / "tpgan" / "teacher", out / "judge", out / "recognizer"):
        assert not (folder / "checkpoints").exists() and not (folder / "scalars.jsonl").exists()
    # the run's copies hold the shipped tensors (the fp16 discriminator cast back to fp32)
    from safetensors.torch import load_file

    for rel, name in (("tpgan/teacher/generator.safetensors", "tpgan.generator.safetensors"),
                      ("tpgan/teacher/discriminator.safetensors", "tpgan.discriminator.safetensors"),
                      ("judge/judge.safetensors", "judge.safetensors")):
        mine, theirs = load_file(str(out / rel)), load_file(str(runs["weights"] / name))
        assert set(mine) == set(theirs)
        for k, v in mine.items():
            assert v.dtype == (torch.float32 if theirs[k].is_floating_point() else theirs[k].dtype)
            assert torch.equal(v, theirs[k].to(v.dtype))
    marker = K.read_marker(out, "teacher.tpgan")
    assert marker["outputs"]["origin"] == "shipped"
    manifest = json.loads((runs["weights"] / "manifest.json").read_text())
    assert marker["settings"]["pretrained"].startswith(manifest["files"]["tpgan.generator.safetensors"]["sha256"][:16])
    report = (out / "report" / "report.md").read_text()
    assert f"| tpgan teacher | shipped `{runs['weights'] / 'tpgan.generator.safetensors'}`" in report
    # an unchanged rerun skips every stage; status agrees
    again = _ok(slimface("run", *runs["common"], *PRETRAINED, "--only", "data", "recognizer", "judge", "teacher",
                         cwd=runs["work"]))
    assert "[teacher.tpgan] up to date" in again and ": shipped" not in again


def test_pretrained_false_trains_the_teacher(runs: dict) -> None:
    log = _ok(slimface("run", *runs["common"], *PRETRAINED, "--set", "teachers.tpgan.pretrained=false",
                       "--set", "teachers.tpgan.train.steps=2", "--only", "teacher", cwd=runs["work"]))
    assert "[teacher.tpgan] running (setting pretrained changed" in log
    assert ": shipped" not in log and "step 2/2" in log
    teacher = runs["out"] / "tpgan" / "teacher"
    assert list((teacher / "checkpoints").glob("ckpt_*.pt"))
    assert "origin" not in K.read_marker(runs["out"], "teacher.tpgan")["outputs"]


def test_init_shipped_continues_training_from_the_shipped_networks(runs: dict, tmp_path: Path) -> None:
    """teachers.<f>.init_shipped: the run's teacher trains, starting from the verified shipped generator
    and discriminator (at a vanishing lr its parameters stay the shipped ones; trained from scratch
    they do not); the key names the files' content, and the report says where training started."""
    from safetensors.torch import load_file

    shipped_gen = load_file(str(runs["weights"] / "tpgan.generator.safetensors"))
    sets = [*runs["data"], "--set", f"weights={runs['weights']}", "--set", "recognizer.pretrained=true",
            "--set", "judge.pretrained=true", "--set", "judge.dlib=false", "--set", "teachers.tpgan.train.steps=2",
            "--set", "teachers.tpgan.train.lr=1e-12", "--no-progress"]
    far = {}
    for name, init in (("init", "true"), ("scratch", "false")):
        out = tmp_path / name
        log = _ok(slimface("run", "--config", str(TINY), "--out", str(out), *sets, "--set",
                           f"teachers.tpgan.init_shipped={init}", "--only", "data", "recognizer", "judge", "teacher",
                           "report", cwd=runs["work"]))
        assert "step 2/2" in log and ("starts from shipped" in log) == (init == "true")
        gen = load_file(str(out / "tpgan" / "teacher" / "generator.safetensors"))
        params = [k for k in shipped_gen if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        far[name] = max(float((gen[k] - shipped_gen[k]).abs().max()) for k in params)
    assert far["init"] < 1e-6 < far["scratch"], far
    marker = K.read_marker(tmp_path / "init", "teacher.tpgan")
    manifest = json.loads((runs["weights"] / "manifest.json").read_text())
    assert marker["settings"]["teachers.tpgan"]["init_shipped"].startswith(
        manifest["files"]["tpgan.generator.safetensors"]["sha256"][:16])
    assert marker["outputs"]["init"]["teacher generator"]["file"].endswith("tpgan.generator.safetensors")
    report = (tmp_path / "init" / "report" / "report.md").read_text()
    assert f"trained in this run from shipped `{runs['weights'] / 'tpgan.generator.safetensors'}`" in report
    with pytest.raises(ConfigError, match="init_shipped trains from the shipped weights; it excludes pretrained"):
        _cfg(runs, **{"teachers.tpgan.init_shipped": True})


def test_a_changed_byte_is_refused(runs: dict, tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "w"
    shutil.copytree(runs["weights"], weights)
    path = weights / "tpgan.generator.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        shipped.verify(weights, say=lambda _: None)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"checksum mismatch.*teachers\.tpgan\.pretrained=false"):
        shipped.install(_pipe(_cfg(runs, weights=str(weights))), "teacher.tpgan", say=lambda _: None)
    proc = slimface("weights", "verify", str(weights), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "checksum mismatch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    ok = slimface("weights", "verify", str(runs["weights"]), cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and "4 files verified" in ok.stdout


def test_another_architecture_is_refused(runs: dict, tmp_path: Path) -> None:
    # this run's config builds a wider teacher than the shipped one
    with pytest.raises(CheckpointError, match=r"another architecture: width_mult is 0\.0625 there, this run's "
                                              r"config has 0\.125; set teachers\.tpgan\.pretrained=false"):
        shipped.install(_pipe(_cfg(runs, **{"teachers.tpgan.width_mult": 0.125})), "teacher.tpgan", say=lambda _: None)
    # a file of another architecture put in place of the shipped one (its checksum updated too)
    import shutil

    from safetensors.torch import save_file

    from slimface.families import build_generator

    weights = tmp_path / "w"
    shutil.copytree(runs["weights"], weights)
    other = build_generator("tpgan", 64, 3, 0.125)
    path = weights / "tpgan.generator.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    manifest = json.loads((weights / "manifest.json").read_text())
    entry = manifest["files"]["tpgan.generator.safetensors"]
    entry["sha256"], entry["size"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    manifest["total_bytes"] = sum(e["size"] for e in manifest["files"].values())
    (weights / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="its layers do not match the architecture"):
        shipped.verify(weights, say=lambda _: None)
    with pytest.raises(CheckpointError, match="its layers do not match the architecture"):
        shipped.install(_pipe(_cfg(runs, weights=str(weights))), "teacher.tpgan", say=lambda _: None)


def test_weights_trained_on_other_data_are_refused(runs: dict) -> None:
    with pytest.raises(CheckpointError, match=r"trained on other data: dataset\.seed is 0 there, this run's data "
                                              r"has 1; set teachers\.tpgan\.pretrained=false"):
        shipped.install(_pipe(_cfg(runs, **{"data.synth.seed": 1})), "teacher.tpgan", say=lambda _: None)
    with pytest.raises(CheckpointError, match=r"trained on other data: split\.val_subjects is 3 there"):
        shipped.install(_pipe(_cfg(runs, **{"data.val_subjects": 2})), "teacher.tpgan", say=lambda _: None)
    # a judge trained on the loss recognizer's identities is not this run's judge
    pipe = _pipe(_cfg(runs, **{"judge.identities": "first_half", "judge.pretrained": True}))
    with pytest.raises(CheckpointError, match=r"identities is 'second_half' there.*set judge\.pretrained=false"):
        shipped.install(pipe, "judge", say=lambda _: None)
    # and the CLI's check against a config says so too, in one line
    proc = slimface("weights", "verify", str(runs["weights"]), "--config", str(TINY), *runs["data"],
                    "--set", "data.synth.seed=1", cwd=runs["work"], timeout=120)
    assert proc.returncode == 2 and "trained on other data" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pack_refuses_over_the_size_limit_and_writes_nothing(runs: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipped_pack, "MAX_TOTAL_BYTES", 1_000_000)
    with pytest.raises(CheckpointError, match=r"over the 1 MB limit.*--fp16"):
        shipped_pack.pack(runs["src"], tmp_path / "w", say=lambda _: None)
    assert not (tmp_path / "w").exists()


def test_fp16_files_load_as_fp32_and_shrink(runs: dict, tmp_path: Path) -> None:
    shipped_pack.pack(runs["src"], tmp_path / "w", fp16=["all"], say=lambda _: None)
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    full = json.loads((runs["weights"] / "manifest.json").read_text())
    g = "tpgan.generator.safetensors"
    assert manifest["files"][g]["dtype"] == "float16" and manifest["files"][g]["size"] < 0.6 * full["files"][g]["size"]
    slot = shipped.Slot("teacher generator", "tpgan")
    state, _ = shipped.load_file_checked(tmp_path / "w", manifest["files"][g], slot)
    from safetensors.torch import load_file

    ref = load_file(str(runs["src"] / "tpgan" / "teacher" / "generator.safetensors"))
    for k, v in state.items():
        assert v.dtype == ref[k].dtype
        if v.is_floating_point():
            torch.testing.assert_close(v, ref[k], rtol=2e-3, atol=1e-4)


def test_int8_quantization_round_trips_within_half_a_step() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.logspace(-4, 1, 6).view(-1, 1, 1, 1)  # rows of any scale
    w[2] = 0  # an all-zero slice
    q, scale = shipped.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (6,) and int(q.abs().max()) == 127
    back = shipped.dequantize({"w": q, "w" + shipped.Q8_SCALE: scale, "b": torch.ones(6)})
    assert set(back) == {"w", "b"} and back["w"].dtype == torch.float32
    err = (back["w"] - w).abs().flatten(1).amax(1)
    assert torch.all(err <= scale / 2 * (1 + 1e-5)) and torch.all(back["w"][2] == 0)
    assert not torch.allclose(back["w"], w, atol=0, rtol=1e-7)  # it does round: the test could fail


def test_int8_files_load_as_fp32_quarter_size_and_verify(runs: dict, tmp_path: Path) -> None:
    shipped_pack.pack(runs["src"], tmp_path / "w", fp16=["all"], int8=["tpgan.generator"], say=lambda _: None)
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    full = json.loads((runs["weights"] / "manifest.json").read_text())
    g = "tpgan.generator.safetensors"
    assert manifest["files"][g]["dtype"] == "int8" and manifest["files"]["judge.safetensors"]["dtype"] == "float16"
    assert manifest["files"][g]["size"] < 0.35 * full["files"][g]["size"]
    slot = shipped.Slot("teacher generator", "tpgan")
    state, _ = shipped.load_file_checked(tmp_path / "w", manifest["files"][g], slot)
    from safetensors.torch import load_file

    ref = load_file(str(runs["src"] / "tpgan" / "teacher" / "generator.safetensors"))
    assert set(state) == set(ref)  # the scales are gone, the keys are the network's
    for k, v in state.items():
        assert v.dtype == ref[k].dtype and v.shape == ref[k].shape
        if v.is_floating_point() and v.dim() >= 2:
            step = ref[k].abs().flatten(1).amax(1).clamp_min(1e-12) / 127
            assert torch.all((v - ref[k]).abs().flatten(1).amax(1) <= step / 2 * 1.001 + 1e-7), k
    assert shipped.verify(tmp_path / "w", say=lambda _: None) == len(manifest["files"])
    manifest["files"][g]["dtype"] = "float16"  # the file's int8 tensors then contradict its manifest
    (tmp_path / "w" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"tpgan.generator.safetensors: stored as .*I8.*float16"):
        shipped.verify(tmp_path / "w", say=lambda _: None)


def test_convert_re_encodes_shipped_files_and_keeps_their_records(runs: dict, tmp_path: Path) -> None:
    src = runs["weights"]
    before = json.loads((src / "manifest.json").read_text())
    g, d = "tpgan.generator.safetensors", "tpgan.discriminator.safetensors"
    shipped_pack.convert(src, tmp_path / "w", int8=["tpgan.generator"], say=lambda _: None)
    after = json.loads((tmp_path / "w" / "manifest.json").read_text())
    old, new = before["files"][g], after["files"][g]
    assert new["dtype"] == "int8" and new["size"] < old["size"] and new["sha256"] != old["sha256"]
    assert new["encoding"]["sha256_before"] == old["sha256"] and new["encoding"]["from"] == old["dtype"]
    kept = ("trained", "arch", "data", "figures")
    assert {k: new[k] for k in kept} == {k: old[k] for k in kept}
    assert (tmp_path / "w" / d).read_bytes() == (src / d).read_bytes() and after["files"][d] == before["files"][d]
    assert after["total_bytes"] == sum(e["size"] for e in after["files"].values())
    assert shipped.verify(tmp_path / "w", say=lambda _: None) == len(after["files"])
    assert json.loads((src / "manifest.json").read_text()) == before  # the source folder is untouched
    with pytest.raises(CheckpointError, match="nothing to convert"):  # in place, already int8
        shipped_pack.convert(tmp_path / "w", int8=["tpgan.generator"], say=lambda _: None)
    (tmp_path / "w" / d).write_bytes((tmp_path / "w" / d).read_bytes()[:-1] + b"x")  # a damaged file
    proc = slimface("weights", "convert", str(tmp_path / "w"), "--out", str(tmp_path / "w2"), "--fp16", "judge",
                    cwd=runs["work"])
    assert proc.returncode == 2 and "checksum mismatch" in proc.stderr and not (tmp_path / "w2").exists()
    (tmp_path / "w" / d).write_bytes((src / d).read_bytes())
    proc = slimface("weights", "convert", str(tmp_path / "w"), "--fp16", "judge", cwd=runs["work"])
    j = json.loads((tmp_path / "w" / "manifest.json").read_text())["files"]["judge.safetensors"]
    assert _ok(proc) and j["dtype"] == "float16" and j["encoding"]["from"] == "float32"


def test_stage_keys_ignore_the_off_switches(runs: dict) -> None:
    off = load_config(PipelineConfig, TINY, {"out_dir": "x"})
    for stage in ("recognizer", "judge", "teacher.tpgan", "evaluate"):
        text = json.dumps(K.own_settings(off, stage))
        assert "pretrained" not in text and '"weights"' not in text  # keys of older runs do not change
        assert "init_shipped" not in text
    on = _cfg(runs)
    teacher = K.own_settings(on, "teacher.tpgan")
    assert "train" not in teacher["teachers.tpgan"] and teacher["pretrained"].count("+") == 1
    assert shipped.stage_key_part(on, "recognizer") is None  # still trained in that config
    # the report's Provenance table: where each teacher came from
    assert shipped.origin_text({}, "tpgan/teacher/generator.safetensors") == \
        "trained in this run: `tpgan/teacher/generator.safetensors`"
    assert shipped.origin_text({"source": "given.safetensors"}, "given.safetensors") == "given file `given.safetensors`"
    marker = K.read_marker(runs["src"], "teacher.tpgan")
    assert "origin" not in marker["outputs"]
    assert K.provenance(runs["src"], ["tpgan"])["tpgan"]["origin"] == {}


# ------------------------------------------------------------------------------ shipped mobile teachers
MOBILE = ["--set", "student.mobile_teacher=true", "--set", "student.mobile_steps=2", "--set", "student.mobile_eval_every=2"]


def test_a_mobile_teacher_ships_and_loads_without_training(runs: dict, tmp_path: Path) -> None:
    """A source run's mobile teacher is packed beside its teacher (``<family>.mobile.*``), and a run
    with ``student.mobile_pretrained`` installs it, verified, instead of training it."""
    import shutil

    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(runs["src"], src)
    _ok(slimface("run", "--config", str(TINY), "--out", str(src), *runs["data"], *SHORT, *MOBILE, "--no-progress",
                 "--only", "mobile", cwd=runs["work"]))
    weights = tmp_path / "weights"
    shipped_pack.pack(src, weights, fp16=["discriminator"], command="pytest", say=lambda _: None)
    manifest = json.loads((weights / "manifest.json").read_text())
    entry = manifest["files"]["tpgan.mobile.generator.safetensors"]
    assert entry["role"] == "mobile generator" and entry["arch"]["net"] == "tpgan student"
    assert manifest["files"]["tpgan.mobile.discriminator.safetensors"]["dtype"] == "float16"
    assert shipped.verify(weights, say=lambda _: None) == len(manifest["files"])

    out = tmp_path / "uses"
    common = ("--config", str(TINY), "--out", str(out), *runs["data"], "--set", f"weights={weights}", "--no-progress")
    log = _ok(slimface("run", *common, *PRETRAINED, *MOBILE, "--set", "student.mobile_pretrained=true",
                       "--only", "data", "recognizer", "judge", "teacher", "mobile", cwd=runs["work"]))
    assert "[mobile.tpgan] tpgan mobile generator: shipped" in log and "not trained in this run" in log
    mobile = out / "tpgan" / "mobile"
    assert not (mobile / "checkpoints").exists()
    mine, theirs = load_file(str(mobile / "generator.safetensors")), load_file(str(src / "tpgan" / "mobile" /
                                                                               "generator.safetensors"))
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)  # fp32: bit-exact
    marker = K.read_marker(out, "mobile.tpgan")
    assert marker["outputs"]["origin"] == "shipped"
    assert marker["settings"] == {"pretrained": entry["sha256"][:16] + "+" +
                                  manifest["files"]["tpgan.mobile.discriminator.safetensors"]["sha256"][:16]}

    # another student design (convs left normal by a pattern) is another architecture: refused, one line
    bad = _ok_fail(slimface("run", *common, *PRETRAINED, *MOBILE, "--set", "student.mobile_pretrained=true",
                            "--set", "student.separable=[decoder.*]", "--only", "mobile", cwd=runs["work"]))
    assert "shipped tpgan mobile generator" in bad and "another architecture" in bad
    assert "student.mobile_pretrained=false" in bad


@pytest.mark.parametrize("packed,finished,kinds", [
    (["judge", "teacher.tpgan"], ["teacher.tpgan", "teacher.crgan"], ["teacher"]),
    # a supernet distilled from a mobile teacher: remaking it runs the teacher and mobile stages too
    (["teacher.tpgan", "supernet.tpgan"], ["teacher.tpgan", "mobile.tpgan", "supernet.tpgan"],
     ["teacher", "mobile", "supernet"]),
    # the mobile stage of another family is not this supernet's
    (["supernet.tpgan"], ["teacher.tpgan", "teacher.pim", "mobile.pim", "supernet.tpgan"], ["teacher", "supernet"]),
    (["recognizer", "judge"], ["teacher.tpgan"], []),
])
def test_the_reproducing_command_runs_every_stage_the_packed_files_came_from(packed, finished, kinds) -> None:
    cmd = shipped_pack.reproduce_command("pretrain", packed, [*packed, *finished])
    assert cmd == ("slimface run --config configs/pretrain.yaml --only data recognizer judge "
                   + "".join(k + " " for k in kinds) + "evaluate report")


def test_pack_takes_only_the_stages_it_is_given(runs: dict, tmp_path: Path) -> None:
    out = tmp_path / "some"
    shipped_pack.pack(runs["src"], out, stages=["recognizer", "teacher"], say=lambda _: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"recognizer.safetensors", "tpgan.generator.safetensors",
                                      "tpgan.discriminator.safetensors"}
    assert manifest["command"].endswith("--only data recognizer judge teacher evaluate report")
    with pytest.raises(CheckpointError, match="no finished 'supernet' stage to pack.*finished: recognizer, judge"):
        shipped_pack.pack(runs["src"], tmp_path / "none", stages=["judge", "supernet"], say=lambda _: None)
    assert not (tmp_path / "none").exists()  # nothing written


def test_pack_merge_replaces_one_network_and_keeps_the_others(runs: dict, tmp_path: Path) -> None:
    """--merge: a network retrained in a run of its own replaces its entry; the other files stay, each
    entry names the command that made it; a manifest of another dataset is not merged into."""
    out = tmp_path / "merged"
    shipped_pack.pack(runs["src"], out, stages=["recognizer", "judge"], say=lambda _: None)
    before = json.loads((out / "manifest.json").read_text())
    judge_bytes = (out / "judge.safetensors").read_bytes()
    shipped_pack.pack(runs["src"], out, stages=["recognizer"], command="slimface run --retrain-it",
                      say=lambda _: None, merge=True)
    after = json.loads((out / "manifest.json").read_text())
    assert list(after["files"]) == list(before["files"])  # the replaced entry stays in its place
    assert set(after["files"]) == {"recognizer.safetensors", "judge.safetensors"}
    assert after["files"]["recognizer.safetensors"]["command"] == "slimface run --retrain-it"
    assert after["files"]["judge.safetensors"]["command"] == before["command"] == after["command"]
    assert after["total_bytes"] == sum(f["size"] for f in after["files"].values())
    assert (out / "judge.safetensors").read_bytes() == judge_bytes
    assert shipped.verify(out, say=lambda _: None) == 2  # every file, the kept one too, matches its checksum
    other = json.loads((out / "manifest.json").read_text())
    other["data"]["dataset"]["fingerprint"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="another dataset"):
        shipped_pack.pack(runs["src"], out, stages=["recognizer"], say=lambda _: None, merge=True)
    assert json.loads((out / "manifest.json").read_text()) == other  # nothing written


# ------------------------------------------------------------------------------ shipped supernets
@pytest.fixture(scope="module")
def supernet_weights(runs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source run's weights plus its supernet, discriminator and mappers (``<family>.supernet.*``)."""
    import shutil

    src = tmp_path_factory.mktemp("supernet_src") / "src"
    shutil.copytree(runs["src"], src)
    _ok(slimface("run", "--config", str(TINY), "--out", str(src), *runs["data"], *SHORT, "--no-progress",
                 "--only", "supernet", cwd=runs["work"]))
    weights = src.parent / "weights"
    shipped_pack.pack(src, weights, fp16=["discriminator"], say=lambda _: None)
    return weights


def test_a_supernet_ships_and_a_run_searches_and_finetunes_it_without_training_it(
        runs: dict, supernet_weights: Path, tmp_path: Path) -> None:
    """A source run's supernet (+ its discriminator and mappers) is packed as ``<family>.supernet.*``;
    a run with ``student.supernet_pretrained`` installs all three, verified, and goes on to search
    and fine-tune; turning the switch off trains the supernet again."""
    from safetensors.torch import load_file

    weights = supernet_weights
    manifest = json.loads((weights / "manifest.json").read_text())
    parts = {f"tpgan.supernet.{p}.safetensors": p for p in ("generator", "discriminator", "mappers")}
    assert set(parts) <= set(manifest["files"])
    assert manifest["files"]["tpgan.supernet.generator.safetensors"]["arch"]["net"] == "tpgan student"
    assert manifest["files"]["tpgan.supernet.mappers.safetensors"]["arch"]["net"] == "tpgan mappers"
    assert manifest["files"]["tpgan.supernet.generator.safetensors"]["trained"]["settings"]["search.budget"] == "2x"
    assert "supernet" in manifest["command"].split()  # the command that reproduces every packed file
    assert shipped.verify(weights, say=lambda _: None) == len(manifest["files"])

    out = tmp_path / "uses"
    common = ("--config", str(TINY), "--out", str(out), *runs["data"], "--set", f"weights={weights}", "--no-progress")
    on = ("--set", "student.supernet_pretrained=true")
    log = _ok(slimface("run", *common, *PRETRAINED, *on, "--only", "data", "recognizer", "judge", "teacher",
                       "supernet", "search", "finetune", cwd=runs["work"]))
    for part in parts.values():
        assert f"[supernet.tpgan] tpgan supernet {part}: shipped" in log
    sup = out / "tpgan" / "supernet"
    assert not (sup / "checkpoints").exists()  # installed, not trained
    for fname, part in parts.items():
        mine = load_file(str(sup / f"{'supernet' if part == 'generator' else part}.safetensors"))
        theirs = load_file(str(weights / fname))
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k].float()) for k in mine)
    assert (out / "tpgan" / "search" / "result.json").is_file()
    assert (out / "tpgan" / "finetune" / "supernet.safetensors").is_file()
    marker = K.read_marker(out, "supernet.tpgan")
    assert marker["outputs"]["origin"] == "shipped"
    assert marker["settings"] == {"pretrained": "+".join(manifest["files"][f]["sha256"][:16] for f in parts)}
    lines, _ = K.provenance_lines(K.provenance(out, ["tpgan"]))  # the report says where the supernet came from
    row = next(ln for ln in lines if ln.startswith("| tpgan supernet |"))
    assert f"shipped `{weights / 'tpgan.supernet.generator.safetensors'}`" in row
    assert "| tpgan teacher | shipped" in "\n".join(lines)
    # the switch keys the supernet only: the fine-tune's own settings do not change with it
    cfg_on = load_config(PipelineConfig, TINY, {"student.supernet_pretrained": True})
    cfg_off = load_config(PipelineConfig, TINY, {})
    for stage in ("finetune.tpgan", "search.tpgan"):
        assert K.own_settings(cfg_on, stage) == K.own_settings(cfg_off, stage)

    # a supernet of another design (convs left normal by a pattern) is refused, one line
    bad = _ok_fail(slimface("run", *common, *PRETRAINED, *on, "--set", "student.separable=[decoder.*]",
                            "--only", "supernet", cwd=runs["work"]))
    assert "shipped tpgan supernet generator" in bad and "another architecture" in bad
    assert "student.supernet_pretrained=false" in bad
    # switched off: the supernet stage is stale (its key named the shipped files) and trains
    log = _ok(slimface("run", *common, *PRETRAINED, "--only", "supernet", cwd=runs["work"]))
    assert "shipped" not in log.split("[supernet.tpgan]")[-1].splitlines()[0]
    assert (sup / "checkpoints").is_dir()


def test_supernet_init_shipped_trains_on_from_the_shipped_supernet(runs: dict, supernet_weights: Path,
                                                                   tmp_path: Path) -> None:
    """``student.supernet_init_shipped``: the supernet stage trains, starting from the verified
    shipped supernet, discriminator and mappers (at a vanishing lr its parameters stay the shipped
    ones; from the teacher's warm start they do not); its key names the files' content, the report
    says where training started, and it excludes ``supernet_pretrained``."""
    from safetensors.torch import load_file

    shipped_net = load_file(str(supernet_weights / "tpgan.supernet.generator.safetensors"))
    params = [k for k in shipped_net if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    far = {}
    for init in ("true", "false"):
        out = tmp_path / init
        log = _ok(slimface("run", "--config", str(TINY), "--out", str(out), *runs["data"], *PRETRAINED,
                           "--set", f"weights={supernet_weights}", "--set", f"student.supernet_init_shipped={init}",
                           "--set", "student.train.steps=2", "--set", "student.train.lr=1e-12", "--no-progress",
                           "--only", "data", "recognizer", "judge", "teacher", "supernet", "report",
                           cwd=runs["work"]))
        assert "step 2/2" in log and ("supernet generator: starts from shipped" in log) == (init == "true")
        net = load_file(str(out / "tpgan" / "supernet" / "supernet.safetensors"))
        far[init] = max(float((net[k] - shipped_net[k].float()).abs().max()) for k in params)
    assert far["true"] < 1e-6 < far["false"], far
    marker = K.read_marker(tmp_path / "true", "supernet.tpgan")
    files = json.loads((supernet_weights / "manifest.json").read_text())["files"]
    assert marker["settings"]["student"]["supernet_init_shipped"] == "+".join(
        files[f"tpgan.supernet.{p}.safetensors"]["sha256"][:16] for p in ("generator", "discriminator", "mappers"))
    assert "supernet_init_shipped" not in json.dumps(K.read_marker(tmp_path / "false", "supernet.tpgan")["settings"])
    report = (tmp_path / "true" / "report" / "report.md").read_text()
    assert f"trained in this run from shipped `{supernet_weights / 'tpgan.supernet.generator.safetensors'}`" in report
    with pytest.raises(ConfigError, match="supernet_init_shipped trains on from the shipped supernet"):
        _cfg(runs, **{"student.supernet_init_shipped": True, "student.supernet_pretrained": True})


def _ok_fail(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_mobile_pretrained_needs_the_mobile_teacher() -> None:
    from slimface.errors import ConfigError

    with pytest.raises(ConfigError, match="mobile_pretrained.*mobile_teacher=true"):
        load_config(PipelineConfig, TINY, {"student.mobile_pretrained": True})


@pytest.mark.parametrize("families", [["tpgan"], ["pim"], ["crgan"]])
def test_the_repository_weights_hold_and_match_what_the_quick_preset_loads(families: list[str],
                                                                           tmp_path: Path) -> None:
    """Every file `configs/quick.yaml` switches on is in `weights/`, intact, and its generators fit
    that preset's architecture: the default run cannot stop on a shipped file. (The recognizers'
    check needs the rendered data, which a fresh clone has not made yet: the run's own stages do it.)"""
    from slimface.pipeline import Pipeline

    cfg = load_config(PipelineConfig, REPO / "configs" / "quick.yaml",
                      {"out_dir": str(tmp_path), "families": families, "weights": str(REPO / "weights"),
                       "data.root": str(tmp_path / "not_rendered")})
    pipe = Pipeline(cfg, progress=False)
    slots = [slot for stage in pipe.stages() for slot in shipped.slots_of(stage) if slot.switched_on(cfg)]
    loaded = {slot.file for slot in slots}
    assert {"judge.safetensors", "recognizer.safetensors", f"{families[0]}.generator.safetensors"} <= loaded
    assert f"{families[0]}.supernet.generator.safetensors" in loaded  # every family searches a shipped supernet
    manifest = shipped.read_manifest(REPO / "weights")
    assert loaded <= set(manifest["files"])
    assert shipped.verify(REPO / "weights", say=lambda _: None) == len(manifest["files"])
    for slot in slots:
        if slot.family is not None:
            shipped.check_against(pipe, manifest["files"][slot.file], slot, str(REPO / "weights" / slot.file))
