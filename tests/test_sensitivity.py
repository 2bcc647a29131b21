"""The sensitivity stage (issue 18 item 2) on the tiny preset, and ``student.separable: auto`` after it.

One ``slimface sensitivity`` run (CR-GAN, the family with the fewest convertible convs, one fine-tune
step per variant): the table covers every convertible conv and every shrinkable width group with
finite numbers, Markdown and plot are written, a rerun skips it, and ``auto`` then builds a supernet
that splits a strict, non-empty subset of the convertible convs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimface.compress.conv_types import build_supernet, read_table
from slimface.compress.space import ConfigSpace
from slimface.config import load_config
from slimface.families import get_family
from slimface.models.blocks import convertible_convs
from slimface.pipeline_config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def slimface(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "slimface.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("sensitivity")
    args = ["--config", str(TINY), "--out", str(work / "run"), "--no-progress",
            "--set", f"data.root={work / 'data'}", "--set", "families=[crgan]",
            "--set", "student.sensitivity_steps=1"]
    proc = slimface("sensitivity", *args, cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return work / "run", args, proc


def test_the_table_covers_every_convertible_conv_and_group(run) -> None:
    out, _, proc = run
    folder = out / "crgan" / "sensitivity"
    table = json.loads((folder / "sensitivity.json").read_text())
    assert table["schema"] == "slimface.sensitivity/1" and table["steps"] == 1
    cfg = load_config(PipelineConfig, TINY, {"families": ["crgan"]})
    t = cfg.teacher("crgan")
    supernet = build_supernet("crgan", cfg.data.resolution, cfg.data.channels, t.width_mult)
    space = ConfigSpace.from_supernet(get_family("crgan"), supernet)
    rows = table["rows"]
    assert sorted(r["name"] for r in rows if r["change"] == "separable") == sorted(convertible_convs(supernet))
    assert sorted(r["name"] for r in rows if r["change"] == "shrink") == \
        sorted(g for g in space.groups if len(space.choices[g]) > 1)
    for r in rows:
        for key in ("macs", "macs_saved", "metric", "delta"):
            assert math.isfinite(r[key]), (r["name"], key)
        assert r["macs_saved"] > 0 and math.isfinite(r["delta_per_gmac"])
        assert math.isclose(r["delta"], r["metric"] - table["baseline"]["metric"], abs_tol=1e-9)
        assert r["macs"] + r["macs_saved"] == table["baseline"]["macs"]
    md = (folder / "sensitivity.md").read_text()
    assert all(f"`{r['name']}`" in md for r in rows)
    assert (folder / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "sensitivity.crgan" in proc.stdout and "supernet" not in proc.stdout


def test_a_rerun_skips_it_and_status_lists_it(run) -> None:
    out, args, _ = run
    again = slimface("sensitivity", *args, cwd=out.parent, timeout=300)
    assert again.returncode == 0 and "[sensitivity.crgan] up to date" in again.stdout
    status = slimface("status", *[a for a in args if a != "--no-progress"], "--set", "student.separable=auto",
                      cwd=out.parent, timeout=120)
    assert status.returncode == 0
    line = next(x for x in status.stdout.splitlines() if "sensitivity.crgan" in x)
    assert "done" in line


def test_auto_splits_a_strict_subset(run) -> None:
    out, _, _ = run
    cfg = load_config(PipelineConfig, TINY, {"families": ["crgan"], "student.separable": "auto"})
    table = read_table(out / "crgan" / "sensitivity" / "sensitivity.json", "crgan")
    t = cfg.teacher("crgan")
    every = convertible_convs(build_supernet("crgan", cfg.data.resolution, cfg.data.channels, t.width_mult))
    net = build_supernet("crgan", cfg.data.resolution, cfg.data.channels, t.width_mult, "auto", table,
                         cfg.student.separable_keep)
    assert isinstance(net.separable, list) and 0 < len(net.separable) < len(every)
    assert len(every) - len(net.separable) == math.ceil(cfg.student.separable_keep * len(every))
    # the kept-normal convs are those whose conversion cost most per GMAC saved
    cost = {r["name"]: -r["delta_per_gmac"] for r in table["rows"] if r["change"] == "separable"}
    kept = set(every) - set(net.separable)
    assert min(cost[n] for n in kept) >= max(cost[n] for n in net.separable)
    # the list the run prints (every kept conv negated) rebuilds the same design without the table
    fixed = build_supernet("crgan", cfg.data.resolution, cfg.data.channels, t.width_mult, [f"!{n}" for n in sorted(kept)])
    assert fixed.separable == net.separable
    assert {k: v.shape for k, v in fixed.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_auto_without_a_table_is_one_line(tmp_path: Path) -> None:
    from slimface.errors import ConfigError

    with pytest.raises(ConfigError, match="slimface sensitivity"):
        read_table(tmp_path / "nope.json", "crgan")
