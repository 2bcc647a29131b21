"""Every kind of bad user input, walked through the `slimface` command, table-driven.

The rule under test (README, DESIGN.md "Errors"): bad input gets ONE line on stderr,
``error: <what is wrong and what to do>``, exit code 2, no traceback, and nothing already written
is damaged. Each case checks a distinctive part of its message, the exit code, the single line, and
that every file that existed before (the output dir, the dataset, the fixtures) has the same bytes
afterwards; new files are allowed only where a case lists them explicitly.

The table runs in-process through ``slimface.cli.main`` (the same code path as the console script,
about 20x faster than starting Python + torch per case on a 2-core machine); a subset, one case per
category, also runs as a real ``python -m slimface.cli`` subprocess. Nothing here trains a model:
the only shared setup is the tiny preset's data stage (one subprocess) plus weight files written
from freshly built generators.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from slimface.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TEMP_PATTERNS = (".tmp-*", "*.tmp")  # an atomic writer's leftovers: never allowed to survive


class _Evil:
    """A pickle payload that would create a marker file when unpickled (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Identity(torch.nn.Module):
    """A valid TorchScript 'generator' for the frontalize cases (scripted from this file's source)."""

    def forward(self, x: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x * 0.5


@dataclass
class World:
    root: Path   # everything below is snapshotted per case
    run: Path    # an output dir with the data stage done and an (untrained) supernet
    data: Path   # data.root of the tiny synthetic dataset
    fx: Path     # fixture files
    marker: Path  # created only if an evil pickle ran


def _save_generator(family: str, resolution: int, width: float, path: Path, separable: bool = False) -> None:
    from safetensors.torch import save_file

    from slimface.families import build_generator

    gen = build_generator(family, resolution, 3, width, separable=separable)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in gen.state_dict().items()}, str(path))


def _write_image_variants(folder: Path) -> None:
    """Copies of the tiny synthetic images under their Multi-PIE names (no manifest)."""
    folder.mkdir(parents=True)
    for p in sorted(folder.parent.parent.glob("data/*/images/*.png")):
        shutil.copy2(p, folder / p.name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    run, data, fx = root / "run", root / "data", root / "fx"
    proc = subprocess.run(
        [sys.executable, "-m", "slimface.cli", "run", "--config", str(TINY), "--out", str(run),
         "--set", f"data.root={data}", "--only", "data", "--no-progress"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fx.mkdir()
    # weights: the search stage's input, and teachers of the right / another family, width, resolution
    _save_generator("tpgan", 64, 0.0625, run / "tpgan" / "supernet" / "supernet.safetensors", separable=True)
    _save_generator("crgan", 64, 0.0625, fx / "crgan.safetensors")
    _save_generator("tpgan", 64, 0.125, fx / "tpgan_w0125.safetensors")
    _save_generator("tpgan", 128, 0.0625, fx / "tpgan_r128.safetensors")
    (fx / "not_safetensors.safetensors").write_bytes(b"this is not a safetensors file " * 4)
    # models for frontalize
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it still is an export format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_Identity()), str(fx / "ok.pt"))
    (fx / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 40)
    (fx / "random.bin").write_bytes(bytes(range(256)) * 2)
    (fx / "random.pt").write_bytes(bytes(reversed(range(256))) * 2)
    torch.save({"weight": torch.zeros(2, 2)}, fx / "state_dict.pt")
    marker = root / "PWNED"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil(marker)}, fx / "evil.pt")
    torch.save({"x": _Evil(marker)}, fx / "evil.pth.tar")
    with open(fx / "evil_raw.pt", "wb") as fh:
        pickle.dump(_Evil(marker), fh)
    # photos and landmarks
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 100, 90)).save(fx / "photo.png")
    (fx / "lm_bad_columns.csv").write_text("file,x,y\nphoto.png,1,2\n")
    (fx / "lm_not_numbers.csv").write_text(
        "file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry\nphoto.png,22,20,left,20,32,32,25,44,40,44\n")
    # configs
    (fx / "broken.yaml").write_text("name: x\ndata: {kind: synth\n")
    # dataset folders that cannot be used
    (fx / "empty").mkdir()
    (fx / "text_only").mkdir()
    (fx / "text_only" / "notes.txt").write_text("not an image\n")
    (fx / "bad_names").mkdir()
    first = sorted(data.glob("*/images/*.png"))[0]
    shutil.copy2(first, fx / "bad_names" / "face_one.png")
    shutil.copy2(first, fx / "bad_names" / "IMG_0002.png")
    _write_image_variants(root / "mp" / "clean")
    return World(root, run, data, fx, marker)


# ------------------------------------------------------------------------------------ helpers
def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_intact(before: dict[str, str], after: dict[str, str], allowed_new: tuple[str, ...] = (),
                  allowed_changed: tuple[str, ...] = ()) -> None:
    """Files from before keep their bytes (except ``allowed_changed`` patterns); new files must match
    ``allowed_new``; no temp file survives."""
    changed = [k for k, h in before.items()
               if after.get(k) != h and not any(fnmatch.fnmatch(k, pat) for pat in allowed_changed)]
    assert not changed, f"files damaged or removed: {changed}"
    new = sorted(set(after) - set(before))
    temps = [k for k in new if any(fnmatch.fnmatch(Path(k).name, t) for t in TEMP_PATTERNS)]
    assert not temps, f"temp files left behind: {temps}"
    unexpected = [k for k in new if not any(fnmatch.fnmatch(k, pat) for pat in allowed_new)]
    assert not unexpected, f"files the failing command may not add: {unexpected}"


def assert_one_line(err: str, message: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert message in lines[0], f"{message!r} not in {lines[0]!r}"
    return lines[0]


def expand(world: World, argv: list[str]) -> list[str]:
    keys = {"run": world.run, "data": world.data, "fx": world.fx, "tiny": TINY, "root": world.root}
    return [a.format(**{k: str(v) for k, v in keys.items()}) for a in argv]


RUN = ["run", "--config", "{tiny}", "--out", "{run}", "--set", "data.root={data}", "--no-progress"]
SEARCH = ["search", "--config", "{tiny}", "--out", "{run}", "--set", "data.root={data}", "--no-progress"]


def teacher_ckpt(path: str) -> list[str]:
    return [*RUN, "--only", "teacher", "--set", f"teachers.tpgan.checkpoint={path}"]


def dataset(kind: str, root: str) -> list[str]:
    return [*RUN, "--only", "data", "--set", f"data.kind={kind}", "--set", f"data.root={root}"]


def frontalize(model: str, *extra: str) -> list[str]:
    return ["frontalize", "{fx}/photo.png", "--model", model, "--out", "{root}/front_out", *extra]


# (id, argv, distinctive message, files the failing command may add)
CASES: list[tuple[str, list[str], str, tuple[str, ...]]] = [
    # --- config: syntax, missing file, unknown keys, wrong types, invalid values
    ("yaml-syntax", ["run", "--config", "{fx}/broken.yaml"], "is not valid YAML at line 3", ()),
    ("config-missing", ["run", "--config", "{fx}/nope.yaml"], "nope.yaml does not exist", ()),
    ("unknown-nested-key", [*RUN, "--set", "data.synth.subjectz=3"], "data.synth: unknown key 'subjectz'", ()),
    ("unknown-top-key", [*RUN, "--set", "recognizr.width_mult=1"], "unknown key 'recognizr'", ()),
    ("unknown-train-key", [*RUN, "--set", "teachers.tpgan.train.stepz=3"], "unknown key 'stepz'", ()),
    ("wrong-type-int", [*RUN, "--set", "data.synth.subjects=many"], "data.synth.subjects: expected an integer", ()),
    ("wrong-type-list", [*RUN, "--set", "families=tpgan"], "families: expected a list", ()),
    ("wrong-list-item", [*RUN, "--set", "families=[tpgan, 3]"], "families[1]: expected a string", ()),
    ("unknown-family", [*RUN, "--set", "families=[stylegan]"], "unknown model 'stylegan'", ()),
    ("wrong-type-mapping", [*RUN, "--set", "data.synth=5"], "data.synth: expected a mapping", ()),
    ("wrong-type-dict-value", [*RUN, "--set", "teachers.tpgan.loss.symmetry=abc"], "loss.symmetry: expected a number", ()),
    ("unknown-loss-key", [*RUN, "--set", "teachers.tpgan.loss.l1=1"], "teachers.tpgan.loss: unknown key 'l1'", ()),
    ("negative-steps", [*RUN, "--set", "student.train.steps=-5"], "steps must be at least 1, got -5", ()),
    ("zero-batch", [*RUN, "--set", "teachers.tpgan.train.batch_size=0"], "batch_size must be at least 1", ()),
    ("resolution", [*RUN, "--set", "data.resolution=96"], "data.resolution must be 64 or 128", ()),
    ("channels", [*RUN, "--set", "data.channels=2"], "data.channels must be 1 or 3", ()),
    ("dataset-kind", [*RUN, "--set", "data.kind=celeba"], "'celeba' is not one of", ()),
    ("search-metric", [*RUN, "--set", "search.metric=judge"], "search.metric: 'judge' is not one of", ()),
    ("policy", [*RUN, "--set", "data.policy=ignore"], "'ignore' is not one of 'skip', 'stop'", ()),
    ("set-without-value", [*RUN, "--set", "data"], "expected KEY=VALUE", ()),
    ("unknown-stage", [*RUN, "--only", "polish"], "unknown stage 'polish'", ()),
    ("unknown-option", ["run", "--frobnicate"], "unrecognized arguments: --frobnicate", ()),
    ("search-population", [*RUN, "--only", "search", "--set", "search.population=1", "--set", "search.budget=500M"], "search.population must be at least 2", ()),
    # --- budgets
    ("budget-below-smallest", [*SEARCH, "--budget", "1M"], "below the smallest sub-network", ()),
    ("budget-below-smallest-set", [*RUN, "--only", "search", "--set", "search.budget=1k"],
     "below the smallest sub-network", ()),
    ("budget-malformed", [*SEARCH, "--budget", "lots"], "search.budget: 'lots' is not a budget; use", ()),
    ("budget-negative", [*SEARCH, "--budget=-3M"], "a MACs budget must be a positive count", ()),
    ("budget-factor", [*SEARCH, "--budget", "0.5x"], "a reduction factor must be above 1", ()),
    ("latency-factor", [*SEARCH, "--latency", "0.5x"], "a factor of the teacher's latency must be above 1", ()),
    ("latency-malformed", [*SEARCH, "--latency", "soon"], "search.latency must be a duration like 15ms or a factor", ()),
    ("latency-zero", [*SEARCH, "--latency", "0ms"], "search.latency '0ms' must be a positive duration", ()),
    ("latency-size", [*SEARCH, "--latency", "10x", "--latency-size", "96x1"], "search.latency_size '96x1' is unknown", ()),
    ("search-threads", [*SEARCH, "--set", "search.threads=0"], "search.threads must be a thread count >= 1", ()),
    # --- checkpoints of another architecture / resolution / format
    ("ckpt-other-family", teacher_ckpt("{fx}/crgan.safetensors"), "they belong to another architecture", ()),
    ("ckpt-other-width", teacher_ckpt("{fx}/tpgan_w0125.safetensors"), "another architecture, width or resolution", ()),
    ("ckpt-other-resolution", teacher_ckpt("{fx}/tpgan_r128.safetensors"), "'encoder.fc.weight' has shape", ()),
    ("ckpt-not-safetensors", teacher_ckpt("{fx}/not_safetensors.safetensors"), "not a readable safetensors file", ()),
    ("ckpt-missing", teacher_ckpt("{fx}/nope.safetensors"), "nope.safetensors do not exist", ()),
    ("profile-student-length", ["profile", "tpgan", "--student", "8_8"], "'8_8' has 2 width(s) but this model has", ()),
    ("profile-width", ["profile", "tpgan", "--width-mult", "-1"], "--width-mult -1: must be in (0, 4]", ()),
    ("profile-model", ["profile", "stylegan"], "unknown model 'stylegan'", ()),
    ("bench-max-kernel", ["bench", "tpgan", "--resolution", "64", "--max-kernel", "4"],
     "--max-kernel must be an odd kernel size (1, 3, 5...), got 4", ()),
    ("student-max-kernel", [*RUN, "--set", "student.max_kernel=2"], "student.max_kernel must be an odd", ()),
    ("model-corrupt-onnx", frontalize("{fx}/corrupt.onnx"), "not a loadable ONNX model", ()),
    ("model-random-file", frontalize("{fx}/random.bin"), "unknown model format .bin", ()),
    ("model-random-pt", frontalize("{fx}/random.pt"), "not a TorchScript model (not a zip archive)", ()),
    ("model-state-dict", frontalize("{fx}/state_dict.pt"), "a torch.save pickle", ()),
    ("model-missing", frontalize("{fx}/nope.onnx"), "nope.onnx does not exist", ()),
    # --- pickles that would run code
    ("pickle-frontalize", frontalize("{fx}/evil.pt"), "does not unpickle model files", ()),
    ("pickle-frontalize-raw", frontalize("{fx}/evil_raw.pt"), "a raw pickle file", ()),
    ("pickle-recognizer", [*RUN, "--only", "recognizer", "--set", "recognizer.checkpoint={fx}/evil.pth.tar"],
     "refuses to unpickle code", ()),
    # --- landmarks
    ("landmarks-missing", frontalize("{fx}/ok.pt", "--landmarks", "{fx}/missing.csv"), "missing.csv does not exist", ()),
    ("landmarks-columns", frontalize("{fx}/ok.pt", "--landmarks", "{fx}/lm_bad_columns.csv"),
     "missing column(s) lex,ley", ()),
    ("landmarks-values", frontalize("{fx}/ok.pt", "--landmarks", "{fx}/lm_not_numbers.csv"),
     "lm_not_numbers.csv:2: landmark values must be numbers", ()),
    # --- dataset folders, for every kind
    *[
        (f"{kind}-{what}", dataset(kind, "{fx}/" + folder), msg, ())
        for kind in ("multipie", "caspeal", "folder")
        for what, folder, msg in (
            ("missing", "no_such_dir", "dataset folder not found"),
            ("file-not-folder", "broken.yaml", "is a file, not a folder"),
            ("empty", "empty", "no image files" if kind != "folder" else "needs"),
            ("text-only", "text_only", "no image files" if kind != "folder" else "manifest.csv"),
            ("bad-names", "bad_names", "2 unparseable name" if kind != "folder" else "manifest.csv"),
        )
    ],
]

#: one case per category also goes through a real subprocess
SUBPROCESS_CASES = ("yaml-syntax", "unknown-nested-key", "negative-steps", "budget-malformed",
                    "ckpt-other-family", "profile-width", "pickle-frontalize", "landmarks-columns",
                    "multipie-bad-names", "unknown-option")


@pytest.mark.parametrize("case_id,argv,message,allowed", CASES, ids=[c[0] for c in CASES])
def test_bad_input_in_process(world: World, capsys: pytest.CaptureFixture[str], case_id: str, argv: list[str],
                              message: str, allowed: tuple[str, ...]) -> None:
    before = snapshot(world.root)
    capsys.readouterr()
    try:
        rc = main(expand(world, argv))
    except SystemExit as exc:  # argparse errors exit from inside the parser
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert_one_line(err, message)
    assert_intact(before, snapshot(world.root), allowed)
    assert not world.marker.exists(), "an untrusted pickle ran code"


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS_CASES], ids=lambda c: c[0])
def test_bad_input_subprocess(world: World, case: tuple[str, list[str], str, tuple[str, ...]]) -> None:
    _, argv, message, allowed = case
    before = snapshot(world.root)
    proc = subprocess.run([sys.executable, "-m", "slimface.cli", *expand(world, argv)], cwd=world.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-1000:]
    assert_one_line(proc.stderr, message)
    assert_intact(before, snapshot(world.root), allowed)
    assert not world.marker.exists()


def test_teacher_width_zero_is_a_config_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(world.root)
    rc = main(expand(world, [*RUN, "--only", "teacher", "--set", "teachers.tpgan.width_mult=0"]))
    assert rc == 2
    assert_one_line(capsys.readouterr().err, "width_mult")
    assert_intact(before, snapshot(world.root))


# ------------------------------------------------------------------- damaged images in a dataset
def _damage(folder: Path, how: str) -> Path:
    """Damage one image of a Multi-PIE-named folder; returns the damaged file."""
    from PIL import Image

    target = {"truncated": "003_01_01_051_07.png", "wrong-size": "004_01_01_051_07.png",
              "wrong-channels": "005_01_01_051_07.png", "empty": "006_01_01_051_07.png",
              "garbage": "007_01_01_051_07.png"}[how]
    p = folder / target
    if how == "truncated":
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2])
    elif how == "wrong-size":
        Image.open(p).convert("RGB").resize((37, 50)).save(p)
    elif how == "wrong-channels":
        Image.open(p).convert("LA").save(p)
    elif how == "empty":
        p.write_bytes(b"")
    else:
        p.write_bytes(b"\x89PNG but not really" * 10)
    return p


DAMAGE = {"truncated": "unreadable image", "wrong-size": "wrong size (37x50", "wrong-channels": "wrong channel count",
          "empty": "empty file", "garbage": "unreadable image"}


def _mp_args(world: World, root: Path, out: Path, policy: str) -> list[str]:
    return ["run", "--config", str(TINY), "--out", str(out), "--only", "data", "--no-progress",
            "--set", "data.kind=multipie", "--set", f"data.root={root}", "--set", "data.train_subjects=10",
            "--set", f"data.policy={policy}"]


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_image_with_policy_stop_names_the_file(world: World, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], how: str) -> None:
    root = tmp_path / "mp"
    shutil.copytree(world.root / "mp" / "clean", root)
    bad = _damage(root, how)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(_mp_args(world, root, out, "stop"))
    line = assert_one_line(capsys.readouterr().err, DAMAGE[how])
    assert rc == 2 and str(bad) in line and "data.policy=skip" in line
    assert_intact(before, snapshot(tmp_path))  # the data stage wrote no marker


def test_damaged_images_with_policy_skip_are_counted_and_the_run_proceeds(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "mp"
    shutil.copytree(world.root / "mp" / "clean", root)
    for how in DAMAGE:
        _damage(root, how)
    capsys.readouterr()
    rc = main(_mp_args(world, root, tmp_path / "out", "skip"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"skipped_files {len(DAMAGE)}" in cap.out
    assert (tmp_path / "out" / "stages" / "data.json").is_file()
    # the loader's one-line log summary names the reasons
    summary = [r.getMessage() for r in caplog.records if "files skipped" in r.getMessage()]
    assert len(summary) == 1 and "5 files skipped" in summary[0], caplog.text
    assert "wrong size" in summary[0] and "wrong channel count" in summary[0] and "empty file" in summary[0]


# ------------------------------------------------------------------------------- disk full
def _enospc_on(monkeypatch: pytest.MonkeyPatch, pattern: str) -> list[Path]:
    """Make the atomic writer hit a full disk half-way through any file whose name matches ``pattern``."""
    import slimface.fileio as fileio
    import slimface.pipeline as pipeline
    import slimface.train.checkpoint as ck

    real = fileio.atomic_write
    hits: list[Path] = []

    def failing_write(f: Any) -> None:
        f.write(b"\0" * 4096)  # part of the file made it to disk ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk was full

    def atomic_write(target: Path, data: Any) -> Path:
        if fnmatch.fnmatch(Path(target).name, pattern):
            hits.append(Path(target))
            return real(target, failing_write)
        return real(target, data)

    # every module that writes files binds the one atomic writer by name
    for module in (fileio, ck, pipeline):
        monkeypatch.setattr(module, "atomic_write", atomic_write)
    return hits


TRAINER_FILES = ("recognizer/checkpoints/ckpt_*", "recognizer/samples/*.png", "recognizer/*.jsonl",
                 "recognizer/*.log", "recognizer/*.csv")


@pytest.mark.parametrize(
    "pattern,allowed_new,allowed_changed",
    [
        # the final weights: this run's Trainer checkpoints, samples and logs may appear; the old weights stay
        ("recognizer.safetensors", TRAINER_FILES, ()),
        # the Trainer's first checkpoint: the step-1 sample grid and logs may appear, no checkpoint
        ("ckpt_*.pt", tuple(p for p in TRAINER_FILES if "ckpt_" not in p), ()),
        # the stage marker, written after the stage finished: its new weights legitimately replace the old
        ("recognizer.json", TRAINER_FILES, ("recognizer/recognizer.safetensors",)),
    ],
    ids=["weights", "trainer-checkpoint", "stage-marker"],
)
def test_disk_full_is_one_line_and_keeps_earlier_files(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, pattern: str,
                                                       allowed_new: tuple[str, ...],
                                                       allowed_changed: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    (out / "recognizer").mkdir(parents=True)
    shutil.copytree(world.run / "stages", out / "stages")
    (out / "recognizer" / "recognizer.safetensors").write_bytes(b"weights of an earlier run")
    before = snapshot(out)
    hits = _enospc_on(monkeypatch, pattern)
    capsys.readouterr()
    rc = main(["run", "--config", str(TINY), "--out", str(out), "--set", f"data.root={world.data}",
               "--only", "recognizer", "--no-progress", "--set", "recognizer.train.steps=2",
               "--set", "recognizer.train.ckpt_every=1", "--set", "recognizer.train.log_every=1"])
    err = capsys.readouterr().err
    assert hits, f"the write of {pattern} was never attempted"
    assert rc == 2, err
    line = assert_one_line(err, "no space left on device")
    assert hits[0].name in line
    assert_intact(before, snapshot(out), allowed_new, allowed_changed)
    assert not (out / "stages" / "recognizer.json").exists()  # the stage is not marked done


def test_disk_full_elsewhere_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain OSError(ENOSPC) from any other write (e.g. the report) reaches main(): still one line, exit 2."""
    from slimface.pipeline import Pipeline

    def full(self: Any, only: Any = None, force: bool = False) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.md"))

    monkeypatch.setattr(Pipeline, "run", full)
    rc = main(["evaluate", "--config", str(TINY), "--out", str(tmp_path / "run"), "--no-progress"])
    line = assert_one_line(capsys.readouterr().err, "no space left on device")
    assert rc == 2 and "report.md" in line


def test_a_bad_search_budget_fails_before_any_work(tmp_path: Path) -> None:
    """``search.budget`` is parsed when the config loads (issue 21): a typo fails at once, in one line,
    with exit 2 and nothing written, not after the teacher has trained; integer MAC counts load."""
    from slimface.compress.config import Budget
    from slimface.config import load_config
    from slimface.errors import ConfigError
    from slimface.pipeline_config import PipelineConfig

    out = tmp_path / "run"
    # a torch that cannot be imported: the config must be checked before any torch import
    (tmp_path / "no_torch" / "torch").mkdir(parents=True)
    (tmp_path / "no_torch" / "torch" / "__init__.py").write_text("raise ImportError('torch imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "no_torch"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "slimface.cli", "run", "--config", str(TINY), "--out", str(out),
                           "--set", "search.budget=abc"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "search.budget: 'abc' is not a budget" in lines[0]
    assert not out.exists() and proc.stdout == ""
    for text, value in (("10x", None), ("72.8M", 72.8e6), ("2.5G", 2.5e9), (72_800_000, 72.8e6), (3e8, 3e8)):
        budget = load_config(PipelineConfig, TINY, {"search.budget": text}).search.budget
        assert isinstance(budget, Budget) and (budget.count == value if value else budget.factor == 10.0)
    for bad, why in (("1x", "factor must be above 1"), ("0", "positive count"), ("-5M", "positive count"),
                     (True, "not a budget"), ("10 MB", "not a budget")):
        with pytest.raises(ConfigError, match=why):
            load_config(PipelineConfig, TINY, {"search.budget": bad})
