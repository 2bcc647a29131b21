"""A rerun never mixes old and new work (issue 22): stage keys from inputs, keyed checkpoints, status.

Fast unit tests of slimface.stage_keys and of the Trainer's keyed resume, then the tiny preset through
the real `slimface` command: one module-scoped run, an unchanged rerun (every stage skipped) and a rerun
with a teacher trained longer (everything downstream re-runs, the supernet from step 0); a recognizer
replaced by hand, seen by `slimface status`; an interrupted supernet that resumes when nothing upstream
changed; and a report that refuses to put a student beside a teacher it was not distilled from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimface import stage_keys as K
from slimface.config import load_config
from slimface.pipeline_config import PipelineConfig

sys.path.insert(0, str(Path(__file__).parent))
import _train_toy as toy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
#: what these tests do not look at (ONNX/int8 exports, dlib scoring): left out to keep the runs short
FAST = ["--set", "deploy.onnx=false", "--set", "judge.dlib=false"]


def slimface(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "slimface.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_cfg(out: Path, **over: object) -> PipelineConfig:
    return load_config(PipelineConfig, TINY, {"out_dir": str(out), **{k.replace("__", "."): v for k, v in over.items()}})


def stages_of(cfg: PipelineConfig) -> list[str]:
    from slimface.pipeline import Pipeline

    return Pipeline(cfg, progress=False).stages()


# ----------------------------------------------------------------------------------- unit: keys
def _finish(cfg: PipelineConfig, out: Path, stage: str, stages: list[str], files: dict[str, bytes],
            outputs: dict | None = None) -> dict:
    """Pretend ``stage`` ran: write its files (paths relative to OUT) and its marker."""
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    marker = K.new_marker(cfg, out, K.stage_key(cfg, out, stage, stages), outputs or {}, 1.0)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    (out / "stages" / f"{stage}.json").write_text(json.dumps(marker))
    return marker


def _rewrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes in place, a second later (filesystems keep mtime in coarse ticks)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _fake_run(tmp_path: Path, **over: object) -> tuple[PipelineConfig, Path, list[str]]:
    out = tmp_path / "run"
    cfg = tiny_cfg(out, **over)
    stages = stages_of(cfg)
    root = tmp_path / "data"
    _finish(cfg, out, "data", stages, {}, {"root": str(root), "train_pairs": 10})
    _finish(cfg, out, "recognizer", stages, {"recognizer/recognizer.safetensors": b"rec"})
    _finish(cfg, out, "judge", stages, {"judge/judge.safetensors": b"judge"})
    _finish(cfg, out, "teacher.tpgan", stages, {"tpgan/teacher/generator.safetensors": b"G" * 100,
                                                "tpgan/teacher/discriminator.safetensors": b"D"})
    _finish(cfg, out, "supernet.tpgan", stages, {"tpgan/supernet/supernet.safetensors": b"S"})
    _finish(cfg, out, "search.tpgan", stages, {"tpgan/search/result.json": b"{}"})
    _finish(cfg, out, "finetune.tpgan", stages, {"tpgan/finetune/supernet.safetensors": b"F"})
    _finish(cfg, out, "export.tpgan", stages, {"tpgan/export/model.safetensors": b"X"})
    _finish(cfg, out, "evaluate", stages, {"evaluate/results.json": b"{}"})
    return cfg, out, stages


def test_dependency_table_per_family_and_shared() -> None:
    stages = ["data", "recognizer", "judge"] + [f"{k}.{f}" for f in ("tpgan", "crgan")
                                                for k in ("teacher", "supernet", "search", "finetune", "export")]
    stages += ["evaluate", "bench", "report"]
    assert K.dependencies("recognizer", stages) == ["data"]
    assert K.dependencies("supernet.crgan", stages) == ["data", "recognizer", "teacher.crgan"]
    assert K.dependencies("finetune.tpgan", stages) == ["data", "recognizer", "teacher.tpgan", "supernet.tpgan",
                                                        "search.tpgan"]
    assert K.dependencies("export.tpgan", stages) == ["data", "search.tpgan", "finetune.tpgan"]
    assert K.dependencies("evaluate", stages) == ["data", "recognizer", "judge", "teacher.tpgan", "export.tpgan",
                                                  "teacher.crgan", "export.crgan"]
    assert "judge" not in K.dependencies("evaluate", [s for s in stages if s != "judge"])  # a run without one
    assert K.label("teacher.tpgan") == "tpgan teacher" and K.label("recognizer") == "recognizer"


def test_own_settings_and_what_a_checkpoint_survives(tmp_path: Path) -> None:
    base = tiny_cfg(tmp_path)
    longer = tiny_cfg(tmp_path, teachers__tpgan__train__steps=12)
    other_lr = tiny_cfg(tmp_path, teachers__tpgan__train__lr=1e-5)
    t = "teacher.tpgan"
    assert K.own_settings(base, t) != K.own_settings(longer, t)
    assert K.resume_settings(base, t) == K.resume_settings(longer, t)  # trained longer: it resumes
    assert K.resume_settings(base, t) != K.resume_settings(other_lr, t)
    # the teacher's settings are not the supernet's: they reach it through the teacher's weights
    assert K.own_settings(base, "supernet.tpgan") == K.own_settings(longer, "supernet.tpgan")
    assert K.own_settings(base, "evaluate") == K.own_settings(longer, "evaluate")
    budget = tiny_cfg(tmp_path, search__budget="3x")
    assert K.own_settings(base, "search.tpgan") != K.own_settings(budget, "search.tpgan")
    assert K.resume_settings(base, "search.tpgan") == K.resume_settings(budget, "search.tpgan")  # cache holds
    # another search metric: another stage, and its cached metrics do not hold
    recon = tiny_cfg(tmp_path, search__metric="recon")
    assert K.own_settings(base, "search.tpgan") != K.own_settings(recon, "search.tpgan")
    assert K.resume_settings(base, "search.tpgan") != K.resume_settings(recon, "search.tpgan")
    assert "metric" not in K.own_settings(base, "search.tpgan")["search"]  # older runs keep their keys
    # int8 where faster changes what an ort-int8 latency search prices, and only that search
    int8 = {"search__latency": "5ms", "search__runtime": "ort-int8"}
    assert K.own_settings(tiny_cfg(tmp_path, **int8), "search.tpgan") != K.own_settings(
        tiny_cfg(tmp_path, **int8, deploy__int8_nodes="faster"), "search.tpgan")
    assert K.own_settings(base, "search.tpgan") == K.own_settings(
        tiny_cfg(tmp_path, deploy__int8_nodes="faster"), "search.tpgan")
    assert K.settings_changes(K.own_settings(base, t), K.own_settings(longer, t)) == [
        ("teachers.tpgan.train.steps", 6, 12)]


def test_key_follows_input_content_not_upstream_settings(tmp_path: Path) -> None:
    cfg, out, stages = _fake_run(tmp_path)
    for stage in stages[:-2]:  # every stage that "ran" is done
        assert K.stale_reasons(K.read_marker(out, stage), K.stage_key(cfg, out, stage, stages), out) == [], stage
    # the teacher's weights change (same size, new mtime): it is re-hashed and its readers are stale
    gen = out / "tpgan/teacher/generator.safetensors"
    _rewrite(gen, b"H" * 100)
    sk = K.stage_key(cfg, out, "supernet.tpgan", stages)
    reasons = K.stale_reasons(K.read_marker(out, "supernet.tpgan"), sk, out)
    assert [r.text for r in reasons] == ["tpgan teacher changed (generator.safetensors replaced by hand)"]
    assert not reasons[0].resumable
    assert K.stale_reasons(K.read_marker(out, "judge"), K.stage_key(cfg, out, "judge", stages), out) == []
    # back to the old bytes: done again
    _rewrite(gen, b"G" * 100)
    assert K.stale_reasons(K.read_marker(out, "supernet.tpgan"), K.stage_key(cfg, out, "supernet.tpgan", stages),
                           out) == []


def test_recorded_hash_is_trusted_while_size_and_mtime_hold(tmp_path: Path) -> None:
    cfg, out, stages = _fake_run(tmp_path)
    gen = out / "tpgan/teacher/generator.safetensors"
    st = gen.stat()
    gen.write_bytes(b"Z" * 100)  # same size...
    os.utime(gen, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and mtime: not hashed again
    key = K.stage_key(cfg, out, "supernet.tpgan", stages).key
    assert key == K.read_marker(out, "supernet.tpgan")["fingerprint"]
    os.utime(gen, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert K.stage_key(cfg, out, "supernet.tpgan", stages).key != key
    fresh = K.refreshed(K.read_marker(out, "teacher.tpgan"), out)
    assert fresh is not None and fresh["files"]["tpgan/teacher/generator.safetensors"]["sha256"] == K.sha256_file(gen)


def test_a_given_teacher_or_recognizer_file_is_keyed_by_content(tmp_path: Path) -> None:
    given = tmp_path / "shipped"
    given.mkdir()
    (given / "teacher.safetensors").write_bytes(b"teacher v1")
    (given / "lightcnn.pth").write_bytes(b"recognizer v1")
    cfg, out, stages = _fake_run(tmp_path, teachers__tpgan__checkpoint=str(given / "teacher.safetensors"),
                                 recognizer__checkpoint=str(given / "lightcnn.pth"))
    assert K.output_paths(cfg, out, "recognizer") == [given / "lightcnn.pth"]
    assert K.output_paths(cfg, out, "teacher.tpgan")[0] == given / "teacher.safetensors"
    assert str(given / "teacher.safetensors") in K.read_marker(out, "teacher.tpgan")["files"]
    _rewrite(given / "teacher.safetensors", b"teacher v2")  # the shipped file is swapped for another
    rows = {r.stage: r for r in K.status(cfg, out, stages)}
    assert rows["teacher.tpgan"].state == "done"
    assert rows["supernet.tpgan"].reason == "tpgan teacher changed (teacher.safetensors replaced by hand)"
    assert rows["recognizer"].state == "done" and rows["judge"].state == "done"


def test_status_names_the_change_and_the_stages_that_wait(tmp_path: Path) -> None:
    cfg, out, stages = _fake_run(tmp_path)
    rows = {r.stage: r for r in K.status(tiny_cfg(out, teachers__tpgan__train__steps=12), out, stages)}
    assert rows["recognizer"].state == "done" and rows["judge"].state == "done"
    assert rows["teacher.tpgan"].state == "stale"
    assert rows["teacher.tpgan"].reason == "setting teachers.tpgan.train.steps changed (6 -> 12)"
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan", "export.tpgan", "evaluate"):
        assert (rows[stage].state, rows[stage].reason) == ("stale", "upstream teacher.tpgan is stale"), stage
    assert rows["bench"].state == "missing" and rows["report"].state == "missing"
    (out / "judge/judge.safetensors").unlink()
    rows = {r.stage: r for r in K.status(cfg, out, stages)}
    assert rows["judge"].state == "missing" and "judge/judge.safetensors is gone" in rows["judge"].reason
    assert rows["evaluate"].reason == "judge changed (judge.safetensors is gone)"


def test_legacy_marker_is_stale(tmp_path: Path) -> None:
    cfg, out, stages = _fake_run(tmp_path)
    (out / "stages" / "recognizer.json").write_text(json.dumps({"stage": "recognizer", "wall_s": 1.0, "outputs": {},
                                                                "fingerprint": "0123456789abcdef"}))
    reasons = K.stale_reasons(K.read_marker(out, "recognizer"), K.stage_key(cfg, out, "recognizer", stages), out)
    assert "older slimface" in reasons[0].text


def test_claim_moves_a_cache_of_another_key_aside(tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    assert K.claim(cache, "aaaa") is None
    cache.write_text('{"config": "x"}\n')
    assert K.claim(cache, "aaaa") is None and cache.is_file()
    moved = K.claim(cache, "bbbb")
    assert moved == tmp_path / "cache.jsonl.stale-aaaa" and moved.read_text() == '{"config": "x"}\n'
    assert not cache.exists() and (tmp_path / "cache.jsonl.key").read_text().strip() == "bbbb"


def test_provenance_refuses_a_student_of_another_teacher(tmp_path: Path) -> None:
    cfg, out, stages = _fake_run(tmp_path)
    prov = K.provenance(out, ["tpgan"])["tpgan"]
    assert prov["status"] == "ok" and prov["teacher_key"] == prov["student_teacher_key"]
    assert prov["teacher_file"] == "tpgan/teacher/generator.safetensors"
    lines, refused = K.provenance_lines({"tpgan": prov})
    assert not refused and any(prov["teacher_key"] in line and "tpgan compressed" in line for line in lines)
    # the teacher is retrained and evaluate re-run, but not the student: they must not share a table
    _finish(cfg, out, "teacher.tpgan", stages, {"tpgan/teacher/generator.safetensors": b"new teacher"})
    _finish(cfg, out, "evaluate", stages, {"evaluate/results.json": b"{}"})
    prov = K.provenance(out, ["tpgan"])["tpgan"]
    assert prov["status"] == "mismatch" and prov["teacher_key"] != prov["student_teacher_key"]
    lines, refused = K.provenance_lines({"tpgan": prov})
    assert refused == {"tpgan"} and any("rows are left out" in line for line in lines)
    shutil.rmtree(out / "tpgan" / "export")  # a teacher-only run: nothing to refuse
    assert K.provenance(out, ["tpgan"])["tpgan"]["status"] == "no student"


# ----------------------------------------------------------------------------------- unit: Trainer
def test_trainer_resumes_only_checkpoints_of_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimface.train.checkpoint import list_checkpoints, load_latest
    from slimface.train.loop import Trainer

    torch.set_num_threads(1)
    out = tmp_path / "t"
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(out, steps=4, ckpt_every=2, key="k1")).fit()
    assert load_latest(out / "checkpoints")[0]["key"] == "k1"
    capsys.readouterr()
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(out, steps=6, ckpt_every=2, key="k1")).fit()
    assert "resumed from" in capsys.readouterr().out  # same key, more steps: it continues
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(out, steps=6, ckpt_every=2, key="k2",
                                                          key_reason="[x] toy teacher changed")).fit()
    text = capsys.readouterr().out
    assert "resumed from" not in text
    line = [ln for ln in text.splitlines() if "restarts from step 0" in ln]
    assert line == [f"[x] toy teacher changed: t restarts from step 0 (old checkpoints moved to "
                    f"{out / 'checkpoints.stale-k1'})"]
    assert [s for s, _ in list_checkpoints(out / "checkpoints.stale-k1")] == [2, 4, 6]  # moved, not deleted
    assert (out / "checkpoints.stale-k1" / "scalars.jsonl").is_file()
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [2, 4, 6]  # trained again from 0
    # no key (a plain Trainer): the old behaviour, whatever the checkpoint holds
    Trainer(toy.ToyTask(), toy.ToyData(), toy.make_config(out, steps=6, ckpt_every=2)).fit()
    assert "nothing to train" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- the tiny preset
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny run; a copy of it; an unchanged rerun; a rerun with the teacher trained longer."""
    work = tmp_path_factory.mktemp("rerun")
    out = work / "run"
    sets = ["--set", f"data.root={work / 'data'}", *FAST]
    base = ["--config", str(TINY), "--out", str(out), *sets, "--no-progress"]
    first = slimface("run", *base, cwd=work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    shutil.copytree(out, work / "first", symlinks=True)
    same = slimface("run", *base, cwd=work, timeout=300)
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    (out / "tpgan" / "export" / "model.int8.onnx").write_bytes(b"an int8 model of an earlier export")
    longer = slimface("run", *base, "--set", "teachers.tpgan.train.steps=12", cwd=work)
    assert longer.returncode == 0, longer.stdout[-3000:] + longer.stderr[-3000:]
    return {"work": work, "out": out, "first": work / "first", "base": base, "sets": sets, "same": same,
            "longer": longer}


def test_unchanged_rerun_skips_every_stage(runs: dict) -> None:
    text = runs["same"].stdout
    stages = stages_of(tiny_cfg(runs["out"]))
    for stage in stages:
        assert f"[{stage}] up to date" in text, stage
    assert text.count("up to date") == len(stages)
    assert "running" not in text.replace("slimface run", "")


def test_teacher_trained_longer_reruns_everything_downstream(runs: dict) -> None:
    text, out, first = runs["longer"].stdout, runs["out"], runs["first"]
    for stage in ("data", "recognizer", "judge"):
        assert f"[{stage}] up to date" in text, stage
    assert "[teacher.tpgan] running (setting teachers.tpgan.train.steps changed (6 -> 12))" in text
    assert re.search(r"resumed from \S+teacher/checkpoints/ckpt_000006\.pt at step 6", text)  # the teacher resumes
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan", "evaluate", "bench", "report"):
        assert re.search(rf"\[{re.escape(stage)}\] running \(.*tpgan teacher changed", text), stage
    assert "[export.tpgan] running (tpgan search changed; tpgan finetune changed)" in text
    # the supernet starts again from step 0 (one line says why); nothing of the old one is deleted
    stale = sorted((out / "tpgan" / "supernet").glob("checkpoints.stale-*"))
    assert len(stale) == 1 and (stale[0] / "ckpt_000006.pt").is_file()
    assert (f"[supernet.tpgan] tpgan teacher changed: supernet restarts from step 0 (old checkpoints moved to "
            f"{stale[0]})") in text
    assert not re.search(r"resumed from \S+supernet/checkpoints", text)
    assert "finetune restarts from step 0" in text and "search cache moved to" in text
    assert "nothing to train" not in text
    assert (out / "tpgan/export/model.safetensors").read_bytes() != (first / "tpgan/export/model.safetensors").read_bytes()
    assert not (out / "tpgan/export/model.int8.onnx").exists()  # not this export's: never evaluated as its own
    # the report names the (new) teacher each student was distilled from
    prov = json.loads((out / "report" / "results.json").read_text())["provenance"]["tpgan"]
    teacher_now = K.content_digest(K.read_marker(out, "teacher.tpgan"), out)
    assert prov["status"] == "ok" and prov["teacher_key"] == prov["student_teacher_key"] == teacher_now
    assert prov["teacher_key"] != K.content_digest(K.read_marker(first, "teacher.tpgan"), first)
    assert f"| tpgan compressed | distilled from the tpgan teacher | `{teacher_now}` |" in \
        (out / "report" / "report.md").read_text()
    status = slimface("status", *runs["base"], "--set", "teachers.tpgan.train.steps=12", cwd=runs["work"], timeout=120)
    assert status.returncode == 0, status.stderr
    assert all(line.split()[1] == "done" for line in status.stdout.splitlines()[1:]), status.stdout


def test_recognizer_replaced_by_hand_makes_its_readers_stale(runs: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    shutil.copytree(runs["first"], out, symlinks=True)
    weights = out / "recognizer" / "recognizer.safetensors"
    state = load_file(str(weights))
    torch.manual_seed(1)
    save_file({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()},
              str(weights))  # another recognizer of the same architecture
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    proc = slimface("status", "--config", str(TINY), "--out", str(out), *runs["sets"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert rows["data"].split()[1] == "done" and rows["judge"].split()[1] == "done"
    assert "recognizer.safetensors replaced by hand" in rows["recognizer"]
    for stage in ("teacher.tpgan", "supernet.tpgan", "search.tpgan", "finetune.tpgan", "evaluate"):
        assert "stale: recognizer changed (recognizer.safetensors replaced by hand)" in rows[stage], rows[stage]
    for stage in ("export.tpgan", "bench", "report"):
        assert rows[stage].split()[1] == "stale:", rows[stage]
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == before  # status wrote nothing


class _Killed(BaseException):
    """What a kill -9 leaves behind: the process is gone right after a checkpoint, nothing else runs."""


def test_interrupted_supernet_resumes_when_nothing_upstream_changed(runs: dict, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from slimface.cli import main
    from slimface.train.loop import Trainer

    out = tmp_path / "run"
    shutil.copytree(runs["first"], out, symlinks=True)
    shutil.rmtree(out / "tpgan" / "supernet")
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan", "export.tpgan", "evaluate", "bench", "report"):
        (out / "stages" / f"{stage}.json").unlink()
    args = ["run", "--config", str(TINY), "--out", str(out), *runs["sets"], "--only", "supernet", "--no-progress"]
    save = Trainer._save

    def save_then_die(self, sampler, info):  # noqa: ANN001, ANN202
        path = save(self, sampler, info)
        if self.cfg.out_dir.name == "supernet" and self.step == 3:
            raise _Killed
        return path

    torch.set_num_threads(1)
    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(_Killed):
        main(args)
    assert not (out / "stages" / "supernet.tpgan.json").exists()
    monkeypatch.setattr(Trainer, "_save", save)
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert re.search(r"resumed from \S+supernet/checkpoints/ckpt_000003\.pt at step 3", text), text
    assert "restarts from step 0" not in text
    assert not list((out / "tpgan" / "supernet").glob("checkpoints.stale-*"))
    assert K.read_marker(out, "supernet.tpgan")["outputs"]["final"]["step"] == 6.0


def test_report_refuses_a_student_beside_a_teacher_it_was_not_made_from(runs: dict, tmp_path: Path) -> None:
    """Only the teacher and evaluate re-run (``--only``): the old student must not sit beside the new teacher."""
    out = tmp_path / "run"
    shutil.copytree(runs["first"], out, symlinks=True)
    proc = slimface("run", "--config", str(TINY), "--out", str(out), *runs["sets"],
                    "--set", "teachers.tpgan.train.steps=8", "--only", "teacher", "evaluate", "report",
                    "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "its rows are left out" in proc.stdout
    report = (out / "report" / "report.md").read_text()
    assert "rows are left out" in report and "| tpgan compressed |" not in report
    prov = json.loads((out / "report" / "results.json").read_text())["provenance"]["tpgan"]
    assert prov["status"] == "mismatch"
