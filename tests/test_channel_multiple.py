"""The student's width step (``student.channel_multiple``): finer width choices for a narrow preset,
carried from the config to the supernet's design space, the latency table's design and the keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimface.compress.conv_types import build_supernet
from slimface.compress.space import ConfigSpace
from slimface.config import load_config
from slimface.deploy import latency_table as lt
from slimface.errors import ConfigError
from slimface.families import get_family

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(resolution=64, channels=3, width_mult=0.25)


def _cfg(**sets: object):  # noqa: ANN202
    from slimface.pipeline_config import PipelineConfig

    return load_config(PipelineConfig, REPO / "configs" / "tiny.yaml", sets)


def test_the_step_sets_every_prunable_groups_choices() -> None:
    fam = get_family("tpgan")
    net = build_supernet("tpgan", setting="none", **SIZE)
    coarse = ConfigSpace.from_supernet(fam, net)
    fine = ConfigSpace.from_supernet(fam, build_supernet("tpgan", setting="none", channel_multiple=4, **SIZE))
    assert build_supernet("tpgan", setting="all", channel_multiple=4, **SIZE).channel_multiple == 4  # separable path too
    assert fine.groups == coarse.groups
    for g in fine.groups:
        full = coarse.choices[g][-1]
        assert fine.choices[g][-1] == full and all(c % 4 == 0 or c == full for c in fine.choices[g])
        assert set(coarse.choices[g]) <= set(fine.choices[g])  # a finer grid keeps every coarse choice
    assert any(len(fine.choices[g]) > len(coarse.choices[g]) for g in fine.groups)
    assert min(min(v) for v in fine.choices.values()) == 4


def test_the_setting_is_checked_and_stays_out_of_keys_at_its_default() -> None:
    from slimface import stage_keys as K

    with pytest.raises(ConfigError, match="student.channel_multiple must be a positive"):
        _cfg(**{"student.channel_multiple": 0})
    with pytest.raises(ConfigError, match="set student.supernet_pretrained=false"):
        _cfg(**{"student.channel_multiple": 4, "student.supernet_pretrained": True})
    base, fine = _cfg(), _cfg(**{"student.channel_multiple": 4})
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan"):
        assert "channel_multiple" not in str(K.own_settings(base, stage)), stage
    for stage in ("supernet.tpgan", "search.tpgan"):  # the space trained and the space searched
        assert K.own_settings(fine, stage) != K.own_settings(base, stage), stage


def test_the_pipeline_builds_its_supernet_with_the_step(tmp_path: Path) -> None:
    from slimface.pipeline import Pipeline

    cfg = _cfg(**{"student.channel_multiple": 4, "student.separable": "none", "out_dir": str(tmp_path)})
    net = Pipeline(cfg)._supernet("tpgan")
    assert net.channel_multiple == 4
    assert min(min(v) for v in ConfigSpace.from_supernet(get_family("tpgan"), net).choices.values()) == 4


def test_a_latency_table_records_the_step_and_times_its_choices() -> None:
    """The table's design names the step (a cached table of another step is rebuilt), and the grid
    reaches the finer space's smallest widths instead of extrapolating below them."""
    assert "channel_multiple" not in lt._design(build_supernet("tpgan", setting="none", resolution=64, channels=3,
                                                               width_mult=0.0625))
    net = build_supernet("tpgan", setting="none", resolution=64, channels=3, width_mult=0.0625, channel_multiple=2)
    assert lt._design(net) == {"separable": False, "channel_multiple": 2}
    table = lt.build_table("tpgan", 64, 3, 0.0625, "ort", max_grid=2, fit_subnets=0, separable=False,
                           channel_multiple=2, teacher=False)
    assert table.model["channel_multiple"] == 2
    assert min(min(s.cin) for s in table.sites.values() if s.site.op == "conv") == 2
    space = ConfigSpace.from_supernet(get_family("tpgan"), lt._build("tpgan", table.model, None))
    assert min(min(v) for v in space.choices.values()) == 2


def test_a_config_of_the_finer_space_maps_to_full_size_with_its_step() -> None:
    """The search's config string is encoded in the run's space: mapping it to full size (benchmarks,
    the bench stage) needs the step the search result records, and a fine width keeps its fraction."""
    from slimface.compress.extract import scale_config_to_full, student_space

    net, fine = student_space("tpgan", 64, 3, 0.25, False, channel_multiple=4)
    cfg = fine.smallest()
    code = fine.encode(cfg)
    with pytest.raises(ConfigError, match="not allowed"):
        scale_config_to_full("tpgan", code, 64, 3, 0.25)  # read in the family's coarser space
    full_net, full = student_space("tpgan", 128, 3, 1.0)
    mapped = full.decode(scale_config_to_full("tpgan", code, 64, 3, 0.25, channel_multiple=4))
    coarse_smallest = student_space("tpgan", 64, 3, 0.25, False)[1].smallest()
    coarse = full.decode(scale_config_to_full("tpgan", fine.encode(coarse_smallest), 64, 3, 0.25, channel_multiple=4))
    assert sum(mapped.values()) < sum(coarse.values())  # quarter widths map below the half widths

