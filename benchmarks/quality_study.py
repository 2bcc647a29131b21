"""Repeat the compression of one trained teacher over several seeds, each lever on and off, and print
mean ± sd of the student's rank-1, its paired difference to the teacher, MACs and image quality.

    python benchmarks/quality_study.py --config configs/quick.yaml --base-run runs/quick --family tpgan \\
        --seeds 0 1 2 --lever fit=student.warm_start_fit=activations --lever cold=student.warm_start=false \\
        --out runs/quality_study

The base run is the "one trained teacher": its data, recognizer, judge and ``teacher.<family>``
stages must be finished for the study's config. Every (setting, seed) gets its own run folder under
``--out`` holding those stages' markers and hard links to (or copies of) their files, so
``slimface run --only supernet search finetune export evaluate`` re-runs the compression alone;
the seed is ``student.seed`` (the compression seed: the top-level ``seed`` keys the teacher too). A
setting is the baseline (every lever off) or one lever on: ``NAME=KEY=VALUE``, a config override,
repeated with the same NAME to switch several overrides together. A rerun of the study skips the
finished runs (the pipeline skips up-to-date stages). The figures are one scorer's (``--scorer``,
default the primary judge), as the evaluate stage writes them: ``avg`` is the unweighted mean over the
probe yaw groups, the same average the paired student-minus-teacher interval is computed on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

#: stages a study run reuses from the base run (never retrained) and the ones it runs
UPSTREAM = ("data", "recognizer", "judge", "teacher")
#: (sensitivity and mobile run only where a lever turns them on: student.separable auto, mobile_teacher)
COMPRESSION = ("sensitivity", "mobile", "supernet", "search", "finetune", "export", "evaluate")
BASELINE = "baseline"
#: per-seed figures summarised as mean ± sd
FIGURES = ("student_rank1", "teacher_rank1", "diff", "delta_vs_baseline", "student_macs", "compression",
           "ssim", "hf_ratio", "mobile_rank1", "conversion", "pruning")


class StudyError(Exception):
    """A mistake in the study's input: one line, exit 2."""


# ----------------------------------------------------------------------------- arguments
def parse_levers(items: Sequence[str]) -> dict[str, list[str]]:
    """``["fit=student.warm_start_fit=activations", ...]`` -> ``{"fit": ["student.warm_start_fit=activations"]}``;
    a name given twice collects both overrides (switched on together)."""
    levers: dict[str, list[str]] = {}
    for item in items:
        name, sep, override = item.partition("=")
        if not sep or "=" not in override or not name.strip() or not override.partition("=")[0].strip():
            raise StudyError(f"--lever {item!r}: expected NAME=KEY=VALUE, "
                             "e.g. --lever fit=student.warm_start_fit=activations")
        name = name.strip()
        if name == BASELINE or not all(c.isalnum() or c in "-_." for c in name):
            raise StudyError(f"--lever {item!r}: the name must be letters, digits, '-', '_' or '.', "
                             f"and not {BASELINE!r}")
        levers.setdefault(name, []).append(override.strip())
    return levers


def settings_of(levers: dict[str, list[str]]) -> dict[str, list[str]]:
    """The study's settings: the baseline (no override), then each lever on alone."""
    return {BASELINE: [], **levers}


def load_cfg(config: Path, out: Path, sets: Sequence[str]) -> Any:
    """The run config exactly as ``slimface run --config config --out out --set ...`` loads it."""
    from slimface.cli import _parse_set
    from slimface.config import load_config
    from slimface.pipeline_config import PipelineConfig

    overrides = _parse_set(list(sets))
    overrides["out_dir"] = str(out)
    return load_config(PipelineConfig, config, overrides)


def stage_list(family: str) -> list[str]:
    """The stages of a one-family run, in run order (as ``Pipeline.stages``)."""
    from slimface.pipeline import TRAIN_STAGES

    return ["data", "recognizer", "judge", *(f"{k}.{family}" for k in TRAIN_STAGES), "evaluate", "bench", "report"]


def upstream_stages(family: str) -> list[str]:
    return [s if s != "teacher" else f"teacher.{family}" for s in UPSTREAM]


def check_upstream(cfg: Any, run: Path, family: str) -> list[tuple[str, str, str]]:
    """``(stage, state, reason)`` of every upstream stage of ``run`` that is not done for ``cfg``."""
    from slimface import stage_keys

    wanted = set(upstream_stages(family))
    return [(r.stage, r.state, r.reason) for r in stage_keys.status(cfg, run, stage_list(family))
            if r.stage in wanted and r.state != "done"]


# ----------------------------------------------------------------------------- run folders
def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link (same inode: the marker's record holds without
    re-hashing) or, across file systems, a copy with the mtime kept."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".study-tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def seed_run(base: Path, run: Path, family: str) -> None:
    """Give ``run`` the base run's upstream stages: their markers and the files they record inside
    the base run (files outside it, e.g. the dataset or a given checkpoint, are recorded by absolute
    path and read where they are). Idempotent; a base stage that changed since is brought over again."""
    from slimface import stage_keys

    for stage in upstream_stages(family):
        marker = stage_keys.read_marker(base, stage)
        if marker is None:
            continue
        for rel in marker.get("files") or {}:
            if not Path(rel).is_absolute():
                _link_or_copy(base / rel, run / rel)
        dst = run / "stages" / f"{stage}.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or dst.read_text() != (base / "stages" / f"{stage}.json").read_text():
            shutil.copy2(base / "stages" / f"{stage}.json", dst)


def run_command(config: Path, run: Path, family: str, sets: Sequence[str], overrides: Sequence[str],
                seed: int) -> list[str]:
    """The ``slimface run`` of one (setting, seed): the compression stages only."""
    cmd = [sys.executable, "-m", "slimface.cli", "run", "--config", str(config), "--out", str(run),
           "--set", f"families=[{family}]"]
    for item in [*sets, *overrides, f"student.seed={seed}"]:
        cmd += ["--set", item]
    return cmd + ["--only", *COMPRESSION, "--no-progress"]


# ----------------------------------------------------------------------------- figures
def run_row(run: Path, family: str, scorer: str | None, teacher_macs: float) -> dict[str, Any]:
    """One finished run's figures by ``scorer`` (None: the run's primary judge)."""
    from slimface.export_format import load_export
    from slimface.nn.profile import count_macs, count_params

    ev = json.loads((run / "evaluate" / "results.json").read_text())
    scorer = scorer or ev["primary_judge"]
    models = ev["models"]
    t_name, s_name = f"{family} teacher", f"{family} compressed"
    if s_name not in models or t_name not in models:
        raise StudyError(f"{run}/evaluate/results.json has no {s_name!r} beside {t_name!r}")
    student, teacher = models[s_name], models[t_name]
    if scorer not in student["rank1_by"]:
        raise StudyError(f"--scorer {scorer!r}: the evaluate stage scored with {', '.join(student['rank1_by'])}")
    paired = student["vs_teacher"][scorer]["avg"]
    net = load_export(run / family / "export").eval()
    macs = float(count_macs(net, net.example_inputs()))
    quality = student.get("quality") or {}
    mobile = models.get(f"{family} mobile teacher")  # a lever with student.mobile_teacher: its two losses
    split = {"mobile_rank1": mobile["rank1_by"][scorer]["avg"] if mobile else None,
             "conversion": mobile["vs_teacher"][scorer]["avg"]["diff"] if mobile else None,
             "pruning": student["vs_mobile"][scorer]["avg"]["diff"] if mobile else None}
    return {"scorer": scorer, "student_rank1": student["rank1_by"][scorer]["avg"], **split,
            "teacher_rank1": teacher["rank1_by"][scorer]["avg"], "diff": paired["diff"], "ci": list(paired["ci"]),
            "student_macs": macs, "student_params": float(count_params(net)),
            "compression": teacher_macs / macs if macs else float("nan"),
            "ssim": quality.get("ssim"), "hf_ratio": quality.get("hf_ratio")}


def mean_sd(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample sd (n - 1) of the values given; sd None for fewer than two."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting: mean ± sd over seeds of every figure, and the worst (highest) upper and lowest
    lower end of the paired 95% intervals. ``delta_vs_baseline`` (student minus the baseline's
    student of the same seed) is added to the rows that have a baseline partner."""
    baseline = {r["seed"]: r["student_rank1"] for r in rows if r["setting"] == BASELINE}
    for r in rows:
        r["delta_vs_baseline"] = (r["student_rank1"] - baseline[r["seed"]]) if r["seed"] in baseline else None
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        entry.update({f: mean_sd([r.get(f) for r in mine]) for f in FIGURES})
        entry["worst_ci_high"] = max(r["ci"][1] for r in mine)
        entry["worst_ci_low"] = min(r["ci"][0] for r in mine)
        out[setting] = entry
    return out


def _pm(s: dict[str, Any], fmt: str = ".2f", scale: float = 1.0, signed: bool = False) -> str:
    if s["mean"] is None:
        return "–"
    sign = "+" if signed else ""
    text = f"{s['mean'] / scale:{sign}{fmt}}"
    return text + (f" ± {s['sd'] / scale:{fmt}}" if s["sd"] is not None else "")


def markdown(summary: dict[str, dict[str, Any]], settings: dict[str, list[str]], scorer: str) -> str:
    rows = [f"| setting | overrides | seeds | student rank-1 ({scorer}) | teacher rank-1 | student − teacher "
            "| worst 95% CI high | Δ vs baseline (same seed) | student MACs (M) | compression | SSIM | HF ratio "
            "| mobile teacher rank-1 | conversion (mobile − teacher) | pruning (student − mobile) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        over = ", ".join(f"`{o}`" for o in settings.get(name, [])) or "–"
        rows.append(f"| {name} | {over} | {len(s['seeds'])} | {_pm(s['student_rank1'])} | {_pm(s['teacher_rank1'])} "
                    f"| {_pm(s['diff'], signed=True)} | {s['worst_ci_high']:+.2f} "
                    f"| {_pm(s['delta_vs_baseline'], signed=True)} | {_pm(s['student_macs'], '.1f', 1e6)} "
                    f"| {_pm(s['compression'], '.2f')}× | {_pm(s['ssim'], '.3f')} | {_pm(s['hf_ratio'], '.2f')} "
                    f"| {_pm(s['mobile_rank1'])} | {_pm(s['conversion'], signed=True)} | {_pm(s['pruning'], signed=True)} |")
    return "\n".join(rows)


def teacher_macs_of(cfg: Any, family: str) -> float:
    """MACs of the teacher generator's architecture at the run's size (batch 1)."""
    from slimface.families import build_generator
    from slimface.nn.profile import count_macs

    net = build_generator(family, cfg.data.resolution, cfg.data.channels, cfg.teacher(family).width_mult).eval()
    return float(count_macs(net, net.example_inputs()))


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


# ----------------------------------------------------------------------------- the study
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the preset the base run was made with")
    p.add_argument("--base-run", type=Path, required=True, help="a run folder whose data, recognizer, judge "
                   "and teacher stages are finished: the one trained teacher")
    p.add_argument("--family", default="tpgan")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="compression seeds (student.seed)")
    p.add_argument("--lever", action="append", default=[], metavar="NAME=KEY=VALUE",
                   help="a config override switched on against the baseline; repeat the NAME to group overrides")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override common to every run")
    p.add_argument("--scorer", default=None, help="whose rank-1 to summarise (judge, dlib, loss recognizer); "
                   "default: the primary judge")
    p.add_argument("--out", type=Path, default=Path("runs/quality_study"), help="the study folder")
    args = p.parse_args(argv)
    from slimface.errors import SlimfaceError

    try:
        return study(args)
    except (StudyError, SlimfaceError) as e:  # bad input (a config value too): one line, exit 2
        print(f"error: quality_study: {e}", file=sys.stderr)
        sys.exit(2)


def study(args: argparse.Namespace) -> dict[str, Any]:
    from slimface.deploy.int8_guard import cpu_name

    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise StudyError(f"--seeds {' '.join(map(str, args.seeds))}: give distinct seeds >= 0")
    if not args.config.is_file():
        raise StudyError(f"--config {args.config}: no such file")
    settings = settings_of(parse_levers(args.lever))
    fam, base = args.family, args.base_run
    common = [f"families=[{fam}]", *args.set]
    cfg = load_cfg(args.config, base, common)  # a bad --set or family fails here, before anything runs
    for name, over in settings.items():  # ... and so does a bad lever
        load_cfg(args.config, base, [*common, *over])
    if not base.is_dir():
        raise StudyError(f"--base-run {base}: no such run folder")
    fix = (f"slimface run --config {args.config} --out {base} --set 'families=[{fam}]'"
           + "".join(f" --set {shlex.quote(s)}" for s in args.set) + " --only data recognizer judge teacher")
    for stage, state, reason in check_upstream(cfg, base, fam):
        raise StudyError(f"--base-run {base}: stage {stage} is {state}" + (f" ({reason})" if reason else "")
                         + f"; produce it with: {fix}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_macs = teacher_macs_of(cfg, fam)
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"quality study: {fam} from {base}, settings {', '.join(settings)}, seeds "
          f"{' '.join(map(str, args.seeds))}; CPU {cpu_name()}, OMP_NUM_THREADS={threads}", flush=True)
    todo = [(name, over, seed) for name, over in settings.items() for seed in args.seeds]
    for name, over, seed in todo:  # every run folder first: a lever that reaches upstream fails before any run
        run = out / f"{name}-seed{seed}"
        seed_run(base, run, fam)
        run_cfg = load_cfg(args.config, run, [*common, *over, f"student.seed={seed}"])
        for stage, state, reason in check_upstream(run_cfg, run, fam):
            raise StudyError(f"setting {name!r} ({', '.join(over)}) makes stage {stage} {state}"
                             + (f" ({reason})" if reason else "") + ": a lever may only change the compression "
                             "stages (supernet, search, finetune, export)")
    rows, commands = [], []
    for i, (name, over, seed) in enumerate(todo, 1):
        run = out / f"{name}-seed{seed}"
        cmd = run_command(args.config, run, fam, args.set, over, seed)
        commands.append(shlex.join(cmd))
        t0 = time.perf_counter()
        print(f"[{i}/{len(todo)}] {name} seed {seed} -> {run} ...", end="", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(run / "study.log", "a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            tail = (run / "study.log").read_text().splitlines()[-15:]
            print(" failed", flush=True)
            print("\n".join(tail), file=sys.stderr)
            sys.exit(f"error: quality_study: the run of {name} seed {seed} failed (exit {rc}); "
                     f"log: {run / 'study.log'}")
        text = (run / "study.log").read_text().rpartition("\n$ ")[2]
        ran = re.findall(r"^\[([\w.]+)\] running", text, flags=re.M)
        print(f" {'ran ' + ', '.join(ran) if ran else 'up to date'} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append({"setting": name, "seed": seed, "run": str(run), **run_row(run, fam, args.scorer, t_macs)})

    summary = summarise(rows)
    scorer = rows[0]["scorer"]
    table = markdown(summary, settings, scorer)
    now = datetime.datetime.now().astimezone()
    result = {"config": str(args.config), "base_run": str(base), "family": fam, "scorer": scorer,
              "seeds": args.seeds, "settings": settings, "common_sets": args.set, "teacher_macs": t_macs,
              "cpu": cpu_name(), "omp_num_threads": threads, "date": now.isoformat(timespec="seconds"),
              "commit": _commit(), "commands": commands, "summary": summary, "runs": rows,
              "notes": "rank-1 in %, the evaluate stage's avg (unweighted mean over the probe yaw groups); "
                       "diff and ci: student minus teacher on the same probes, 95% bootstrap interval; "
                       "sd: sample sd over seeds"}
    path = out / "quality_study.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{fam}, scorer {scorer}, seeds {' '.join(map(str, args.seeds))}, CPU {cpu_name()}, "
          f"{now:%Y-%m-%d}; mean ± sd over seeds\n\n{table}\n\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
