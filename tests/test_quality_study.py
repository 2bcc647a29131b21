"""benchmarks/quality_study.py (issue 18, item 6) and the compression seed it varies (``student.seed``).

Fast: the per-setting aggregation on hand-made rows; which stage keys the compression seed reaches
(supernet, search, finetune and, through their outputs, export/evaluate; never data, recognizer,
judge or teacher), and that its default leaves every key as it was; the lever parser and the one-line
errors. Slow: a tiny base run (data to teacher), then the study with two seeds and one lever, which
must not retrain the teacher.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimface import stage_keys as K
from slimface.config import load_config
from slimface.pipeline_config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SCRIPT = REPO / "benchmarks" / "quality_study.py"
FAST = ["--set", "deploy.onnx=false", "--set", "judge.dlib=false"]


def _study_module():  # noqa: ANN202 - the benchmark script as a module
    spec = importlib.util.spec_from_file_location("quality_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


qs = _study_module()


def tiny_cfg(out: Path, **over: object) -> PipelineConfig:
    return load_config(PipelineConfig, TINY,
                       {"out_dir": str(out), **{k.replace("__", "."): v for k, v in over.items()}})


# ----------------------------------------------------------------------------------- aggregation
def _row(setting: str, seed: int, student: float, teacher: float, ci_hi: float, macs: float = 2e6) -> dict:
    return {"setting": setting, "seed": seed, "student_rank1": student, "teacher_rank1": teacher,
            "diff": student - teacher, "ci": [student - teacher - 5.0, ci_hi], "student_macs": macs,
            "compression": 10e6 / macs, "ssim": 0.5, "hf_ratio": None}


def test_summary_mean_sd_worst_interval_and_paired_delta() -> None:
    rows = [_row("baseline", 0, 40.0, 50.0, 1.0), _row("baseline", 1, 44.0, 50.0, 2.5),
            _row("fit", 0, 46.0, 50.0, 3.5), _row("fit", 1, 46.0, 50.0, -1.0, macs=4e6)]
    s = qs.summarise(rows)
    assert list(s) == ["baseline", "fit"]
    b, f = s["baseline"], s["fit"]
    assert b["seeds"] == [0, 1] and b["student_rank1"]["n"] == 2
    assert b["student_rank1"]["mean"] == pytest.approx(42.0)
    assert b["student_rank1"]["sd"] == pytest.approx(math.sqrt(8.0))  # sample sd: (2² + 2²) / (2 - 1)
    assert b["diff"]["mean"] == pytest.approx(-8.0)
    assert b["worst_ci_high"] == 2.5 and f["worst_ci_high"] == 3.5  # the highest upper end over seeds
    assert f["worst_ci_low"] == pytest.approx(-9.0)
    # the lever against the baseline of the same seed: +6 and +2
    assert [r["delta_vs_baseline"] for r in rows if r["setting"] == "fit"] == [6.0, 2.0]
    assert f["delta_vs_baseline"]["mean"] == pytest.approx(4.0)
    assert b["delta_vs_baseline"]["mean"] == 0.0
    assert f["compression"]["mean"] == pytest.approx((5.0 + 2.5) / 2)
    assert f["hf_ratio"] == {"mean": None, "sd": None, "n": 0}  # absent figures stay absent
    table = qs.markdown(s, {"baseline": [], "fit": ["student.warm_start_fit=activations"]}, "judge")
    assert ("| fit | `student.warm_start_fit=activations` | 2 | 46.00 ± 0.00 | 50.00 ± 0.00 | -4.00 ± 0.00 "
            "| +3.50 |") in table
    one = qs.summarise([_row("baseline", 3, 40.0, 50.0, 1.0)])["baseline"]
    assert one["student_rank1"] == {"mean": 40.0, "sd": None, "n": 1}  # one seed: no sd, not a zero one


def test_a_mobile_teacher_lever_reports_conversion_and_pruning_apart() -> None:
    rows = [_row("baseline", 0, 40.0, 50.0, 1.0),
            {**_row("mobile", 0, 47.0, 50.0, 1.0), "mobile_rank1": 49.0, "conversion": -1.0, "pruning": -2.0}]
    s = qs.summarise(rows)
    assert s["mobile"]["conversion"]["mean"] == -1.0 and s["mobile"]["pruning"]["mean"] == -2.0
    assert s["baseline"]["pruning"]["n"] == 0  # no mobile teacher: no split
    table = qs.markdown(s, {"baseline": [], "mobile": ["student.mobile_teacher=true"]}, "judge")
    assert "| 49.00 | -1.00 | -2.00 |" in table and table.splitlines()[2].endswith("| – | – | – |")


def test_lever_parser_groups_overrides_and_refuses_bad_ones() -> None:
    levers = qs.parse_levers(["fit=student.warm_start_fit=activations", "cold=student.warm_start=false",
                              "fit=student.warm_start_fit_images=64"])
    assert levers == {"fit": ["student.warm_start_fit=activations", "student.warm_start_fit_images=64"],
                      "cold": ["student.warm_start=false"]}
    assert list(qs.settings_of(levers)) == ["baseline", "fit", "cold"]
    for bad in ("fit", "fit=student.warm_start", "=a=b", "baseline=student.seed=1", "a b=x=1"):
        with pytest.raises(qs.StudyError):
            qs.parse_levers([bad])


# ----------------------------------------------------------------------------------- the compression seed
COMPRESSION_STAGES = ("supernet.tpgan", "search.tpgan", "finetune.tpgan")
UPSTREAM_STAGES = ("data", "recognizer", "judge", "teacher.tpgan")


def test_compression_seed_keys_only_the_compression_stages(tmp_path: Path) -> None:
    base, seeded = tiny_cfg(tmp_path), tiny_cfg(tmp_path, student__seed=2)
    for stage in UPSTREAM_STAGES + ("export.tpgan", "evaluate", "bench", "report"):
        assert K.own_settings(base, stage) == K.own_settings(seeded, stage), stage
    for stage in COMPRESSION_STAGES:
        assert K.own_settings(base, stage) != K.own_settings(seeded, stage), stage
    assert ("student.seed", K._UNSET, 2) in K.settings_changes(K.own_settings(base, "supernet.tpgan"),
                                                               K.own_settings(seeded, "supernet.tpgan"))
    # the default adds nothing to any key: runs made before the setting existed stay done
    for stage in COMPRESSION_STAGES:
        assert "seed" not in K.own_settings(base, stage).get("student", {}), stage
    assert "student.seed" not in K.own_settings(base, "search.tpgan")
    # a family's own recipe can set it too
    fam = tiny_cfg(tmp_path, teachers__tpgan__student__seed=1)
    assert K.own_settings(fam, "teacher.tpgan") == K.own_settings(base, "teacher.tpgan")
    assert K.own_settings(fam, "supernet.tpgan") != K.own_settings(base, "supernet.tpgan")


def test_compression_seed_makes_downstream_stale_but_not_the_teacher(tmp_path: Path) -> None:
    from test_pipeline_rerun import _fake_run

    cfg, out, stages = _fake_run(tmp_path)
    seeded = tiny_cfg(out, student__seed=1)
    rows = {r.stage: r for r in K.status(seeded, out, stages)}
    for stage in UPSTREAM_STAGES:
        assert rows[stage].state == "done", (stage, rows[stage])
    assert rows["supernet.tpgan"].state == "stale"
    assert "setting student.seed changed" in rows["supernet.tpgan"].reason
    assert rows["search.tpgan"].state == "stale" and "student.seed" in rows["search.tpgan"].reason
    for stage in ("export.tpgan", "evaluate"):  # they wait on what the compression writes next
        assert rows[stage].state == "stale" and rows[stage].reason.startswith("upstream"), rows[stage]
    # seed 0 is the run as it was made
    assert all(r.state == "done" for r in K.status(tiny_cfg(out, student__seed=0), out, stages)
               if r.stage not in ("bench", "report"))


def test_negative_compression_seed_is_a_config_error(tmp_path: Path) -> None:
    from slimface.errors import ConfigError

    with pytest.raises(ConfigError, match="student.seed must be >= 0"):
        tiny_cfg(tmp_path, student__seed=-1)


# ----------------------------------------------------------------------------------- the script's errors
def _study(*args: str, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_unfinished_base_run_is_one_line_naming_the_stage_and_the_fix(tmp_path: Path) -> None:
    from test_pipeline_rerun import _fake_run

    _, out, _ = _fake_run(tmp_path)
    (out / "stages" / "teacher.tpgan.json").unlink()
    r = _study("--config", str(TINY), "--base-run", str(out), "--out", str(tmp_path / "study"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage teacher.tpgan is missing" in lines[0]
    assert f"slimface run --config {TINY} --out {out}" in lines[0]
    assert "--only data recognizer judge teacher" in lines[0]
    assert not (tmp_path / "study").exists()  # nothing ran
    bad = _study("--config", str(TINY), "--base-run", str(out), "--lever", "x=student.no_such_key=1", cwd=tmp_path)
    assert bad.returncode == 2 and "no_such_key" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_lever_that_changes_the_teacher_is_refused(tmp_path: Path) -> None:
    from test_pipeline_rerun import _fake_run

    _, out, _ = _fake_run(tmp_path, data__root=str(tmp_path / "data"))
    r = _study("--config", str(TINY), "--base-run", str(out), "--out", str(tmp_path / "study"), "--seeds", "0",
               "--set", f"data.root={tmp_path / 'data'}", "--lever", "t=teachers.tpgan.train.lr=0.5", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "setting 't'" in r.stderr and "stage teacher.tpgan stale" in r.stderr and "compression" in r.stderr


# ----------------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_study_on_the_tiny_preset_reuses_the_teacher(tmp_path: Path) -> None:
    sets = ["--set", f"data.root={tmp_path / 'data'}", *FAST]
    base = tmp_path / "base"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    made = subprocess.run([sys.executable, "-m", "slimface.cli", "run", "--config", str(TINY), "--out", str(base),
                           *sets, "--only", "data", "recognizer", "judge", "teacher", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    teacher_marker = (base / "stages" / "teacher.tpgan.json").read_text()
    gen = base / "tpgan" / "teacher" / "generator.safetensors"
    gen_bytes, gen_mtime = gen.read_bytes(), gen.stat().st_mtime_ns

    study = tmp_path / "study"
    args = ["--config", str(TINY), "--base-run", str(base), "--out", str(study), "--seeds", "0", "1",
            "--lever", "uniform=student.sampling=uniform", *sets]
    r = _study(*args, cwd=tmp_path, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| baseline |" in r.stdout and "| uniform | `student.sampling=uniform` | 2 |" in r.stdout

    # the teacher was never retrained: the base run is untouched and every run skipped the teacher stage
    assert (base / "stages" / "teacher.tpgan.json").read_text() == teacher_marker
    assert gen.read_bytes() == gen_bytes and gen.stat().st_mtime_ns == gen_mtime
    for name in ("baseline-seed0", "baseline-seed1", "uniform-seed0", "uniform-seed1"):
        run = study / name
        log = (run / "study.log").read_text()
        assert "[teacher" not in log and "[recognizer" not in log and "[judge" not in log
        assert "[supernet.tpgan] running" in log and "[evaluate] done" in log
        assert (run / "tpgan" / "teacher" / "generator.safetensors").read_bytes() == gen_bytes
        assert K.read_marker(run, "teacher.tpgan") == json.loads(teacher_marker)
        ev = K.read_marker(run, "evaluate")
        assert ev["inputs"]["teacher.tpgan"] == K.content_digest(json.loads(teacher_marker), base)

    res = json.loads((study / "quality_study.json").read_text())
    assert res["scorer"] == "judge" and res["seeds"] == [0, 1] and res["cpu"]
    assert [(row["setting"], row["seed"]) for row in res["runs"]] == [
        ("baseline", 0), ("baseline", 1), ("uniform", 0), ("uniform", 1)]
    assert len(res["commands"]) == 4 and all("student.seed=" in c for c in res["commands"])
    assert set(res["summary"]) == {"baseline", "uniform"}
    for row in res["runs"]:
        assert 0 <= row["student_rank1"] <= 100 and 0 <= row["teacher_rank1"] <= 100
        assert row["diff"] == pytest.approx(row["student_rank1"] - row["teacher_rank1"])
        assert row["ci"][0] <= row["diff"] <= row["ci"][1]
        assert row["compression"] > 1
    # two seeds are two different compressions of the same teacher
    s0, s1 = (study / "baseline-seed0" / "tpgan" / "finetune" / "supernet.safetensors",
              study / "baseline-seed1" / "tpgan" / "finetune" / "supernet.safetensors")
    assert s0.read_bytes() != s1.read_bytes()
    assert res["runs"][0]["teacher_rank1"] == res["runs"][1]["teacher_rank1"]  # the same teacher, the same probes

    again = _study(*args, cwd=tmp_path, timeout=600)  # resumable: every run is up to date
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("up to date in") == 4
