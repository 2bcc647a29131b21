"""Conv type as part of the design space (``student.separable``, issue 18 item 1).

``all`` builds exactly today's student, ``none`` the teacher's convs, a pattern list exactly the
matched convs; a mix is warm-started (normal convs copied, separable ones factorised), exported
(static sub-network == supernet slice, MACs == profiled MACs, arch.json and ONNX rebuild the mix)
and keyed (the default stays out of every stage key).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimface.compress.config import OFAConfig
from slimface.compress.conv_types import auto_normal, build_supernet, matching_convs, select_separable
from slimface.compress.extract import extract_subnet
from slimface.compress.space import ConfigSpace
from slimface.config import from_dict, load_config
from slimface.errors import ConfigError
from slimface.families import build_generator, get_family
from slimface.models.blocks import ResBlock, convertible_convs
from slimface.nn.super_layers import SeparableConv2d, SuperConv2d

from _nets import assert_export_matches_supernet

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(resolution=64, channels=3, width_mult=0.0625)
FAMILIES = ("tpgan", "pim", "crgan")


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _separable(net: torch.nn.Module) -> list[str]:
    return sorted(n for n, m in net.named_modules() if isinstance(m, SeparableConv2d))


@pytest.mark.parametrize("family", FAMILIES)
def test_all_is_todays_student_and_none_is_the_teachers_convs(family: str) -> None:
    fam = get_family(family)
    today = fam.build_generator(separable=True, sub=None, **SIZE)
    teacher = fam.build_generator(separable=False, sub=None, **SIZE)
    every = build_supernet(family, setting="all", **SIZE)
    assert every.separable is True and every.arch()["separable"] is True
    assert _shapes(every) == _shapes(today)
    none = build_supernet(family, setting="none", **SIZE)
    assert none.separable is False and not _separable(none)
    assert _shapes(none) == _shapes(teacher)
    # every convertible conv turned back is the teacher's conv (same keys, so warm start copies it)
    back = build_generator(family, separable=[], **SIZE)
    assert back.separable is False and _shapes(back) == _shapes(teacher)
    back.load_state_dict(teacher.state_dict())
    x = teacher.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(back.eval()(*x), teacher.eval()(*x))


def test_patterns_pick_exactly_the_matched_convs() -> None:
    every = build_supernet("tpgan", **SIZE)
    convs = convertible_convs(every)
    nose = [n for n in convs if n.startswith("local.nose.")]
    net = build_supernet("tpgan", setting=["local.nose.*"], **SIZE)
    assert net.separable == sorted(nose) == _separable(net)
    for name in set(convs) - set(nose):  # the rest are the normal convs the teacher has there
        assert type(net.get_submodule(name)) is SuperConv2d
    # a width-group pattern picks the convs that produce that group: every residual block's first conv
    mids = matching_convs(every, ["*.mid"])
    res_conv1 = {n for n in convs if n.endswith(".conv1") and isinstance(every.get_submodule(n[:-6]), ResBlock)}
    assert mids and set(mids) == res_conv1
    # a pattern that matches every conv is "all" (canonical), one that matches nothing is refused
    assert select_separable(every, ["*"]) is True
    with pytest.raises(ConfigError, match="matches no convertible conv"):
        select_separable(every, ["encoder.s64.res.*", "decoder.nope.*"], "tpgan")


def test_negated_patterns_take_convs_out_in_order() -> None:
    every = build_supernet("tpgan", **SIZE)
    convs = convertible_convs(every)
    nose = [n for n in convs if n.startswith("local.nose.")]
    rest = [n for n in convs if n not in nose]
    assert nose and rest
    assert matching_convs(every, ["*", "!local.nose.*"]) == rest
    assert matching_convs(every, ["!local.nose.*"]) == rest  # removals alone start from every conv
    assert matching_convs(every, ["*", "!local.*", "local.nose.*"]) == [n for n in convs if n in nose or not n.startswith("local.")]
    net = build_supernet("tpgan", setting=["!local.nose.*"], **SIZE)
    assert net.separable == sorted(rest) == _separable(net)
    with pytest.raises(ConfigError, match="'!decoder.nope.\\*' matches no convertible conv"):
        matching_convs(every, ["*", "!decoder.nope.*"], "tpgan")


def test_the_config_is_checked_in_one_line() -> None:
    assert from_dict(OFAConfig, {"separable": ["encoder.*"]}).separable == ["encoder.*"]
    for bad, words in (("some", "use all, none, auto"), ([], "at least one"), ([""], "at least one")):
        with pytest.raises(ConfigError, match=words) as err:
            from_dict(OFAConfig, {"separable": bad}, "student")
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="separable_keep"):
        from_dict(OFAConfig, {"separable_keep": 1.5})
    with pytest.raises(ConfigError, match="sensitivity_steps"):
        from_dict(OFAConfig, {"sensitivity_steps": -1})


def test_auto_keeps_normal_the_convs_that_cost_most_per_mac() -> None:
    convs = ["a", "b", "c", "d", "e"]
    rows = [  # delta: metric change (negative hurts); per GMAC saved: a -1, b -10, c -0.5, d +2, e -4
        {"name": "a", "change": "separable", "delta": -1.0, "macs_saved": 1e9},
        {"name": "b", "change": "separable", "delta": -1.0, "macs_saved": 1e8},
        {"name": "c", "change": "separable", "delta": -1.0, "macs_saved": 2e9},
        {"name": "d", "change": "separable", "delta": 2.0, "macs_saved": 1e9},
        {"name": "e", "change": "separable", "delta": -0.4, "macs_saved": 1e8},
        {"name": "a", "change": "shrink", "delta": -100.0, "macs_saved": 1e3},  # shrink rows do not count
    ]
    assert auto_normal(rows, convs, 0.4) == ["b", "e"]
    assert auto_normal(rows, convs, 0.0) == []
    assert auto_normal(rows, convs, 0.5) == ["b", "e", "a"]  # ceil(2.5)
    assert len(auto_normal(rows, convs, 1.0)) == 5


def _mixed(family: str, patterns: list[str]) -> tuple[torch.nn.Module, torch.nn.Module]:
    from slimface.compress.warmstart import warm_start

    torch.manual_seed(0)
    teacher = build_generator(family, separable=False, **SIZE).eval()
    net = build_supernet(family, setting=patterns, **SIZE)
    report = warm_start(net, teacher, ConfigSpace.from_supernet(get_family(family), net).groups, sort=False)
    assert report.factorized == len(net.separable) and not report.kept
    teacher_state = teacher.state_dict()
    normal = set(convertible_convs(build_supernet(family, **SIZE))) - set(net.separable)
    assert normal
    for name in normal:  # normal convs are copied from the teacher as they are
        assert torch.equal(net.get_submodule(name).weight, teacher_state[f"{name}.weight"])
    return net, teacher


@pytest.mark.parametrize("family,patterns", [("tpgan", ["encoder.*", "local.left_eye.u*"]),
                                             ("crgan", ["encoder.down.s16", "generator.*"])])
def test_a_mix_exports_as_the_supernet_slice_with_its_profiled_macs(family: str, patterns: list[str],
                                                                    tmp_path: Path) -> None:
    net, _ = _mixed(family, patterns)
    space = ConfigSpace.from_supernet(get_family(family), net)
    cfg = space.sample(torch.Generator().manual_seed(3))
    static = extract_subnet(family, net, cfg, **SIZE)
    assert static.separable == net.separable and _separable(static) == net.separable
    loaded = assert_export_matches_supernet(net, static, cfg, space.encode(cfg), tmp_path / "export")
    assert loaded.separable == net.separable


def test_a_mix_goes_through_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.runtime import check_onnx

    net, _ = _mixed("crgan", ["encoder.*"])
    space = ConfigSpace.from_supernet(get_family("crgan"), net)
    static = extract_subnet("crgan", net, space.smallest(), **SIZE)
    inputs = static.example_inputs()
    path = export_onnx(static, inputs, tmp_path / "model.onnx")
    assert check_onnx(static, path, inputs) < 1e-4


def test_the_latency_table_builds_the_mix() -> None:
    from slimface.deploy.latency_table import _build, _design

    net = build_supernet("crgan", setting=["encoder.*"], **SIZE)
    model = {"family": "crgan", **SIZE, **_design(net)}
    assert _separable(_build("crgan", model, None)) == net.separable
    assert _design(build_supernet("crgan", **SIZE)) == {}  # tables of all-separable students stay valid


def test_stage_keys_leave_the_default_out() -> None:
    from slimface import stage_keys as K
    from slimface.pipeline_config import PipelineConfig

    def cfg(**sets: object):  # noqa: ANN202
        return load_config(PipelineConfig, REPO / "configs" / "tiny.yaml", sets)

    base = cfg()
    for stage in ("supernet.tpgan", "search.tpgan", "finetune.tpgan"):
        text = str(K.own_settings(base, stage))
        assert "separable" not in text and "sensitivity" not in text, stage
        # asking for the sensitivity table alone changes none of the compression stages
        assert K.own_settings(cfg(**{"student.sensitivity": True}), stage) == K.own_settings(base, stage)
    stages = ["data", "recognizer", "teacher.tpgan", "sensitivity.tpgan", "supernet.tpgan"]
    assert "sensitivity.tpgan" not in K.dependencies("supernet.tpgan", stages, cfg(**{"student.sensitivity": True}))
    pats = cfg(**{"student.separable": ["encoder.*"]})
    auto = cfg(**{"student.separable": "auto"})
    for stage in ("supernet.tpgan", "finetune.tpgan"):
        assert K.own_settings(pats, stage)["student"]["separable"] == ["encoder.*"]
        assert "separable_keep" not in K.own_settings(pats, stage)["student"]
        assert K.own_settings(auto, stage)["student"]["separable_keep"] == 0.25
    assert K.own_settings(pats, "search.tpgan")["student.separable"] == ["encoder.*"]
    assert K.own_settings(auto, "search.tpgan")["student.separable_keep"] == 0.25
    assert "sensitivity.tpgan" in K.dependencies("supernet.tpgan", stages, auto)
    # the sensitivity stage's key: its fine-tune and metric settings, not the conv-type choice
    sens = K.own_settings(auto, "sensitivity.tpgan")["student"]
    assert "separable" not in sens and sens["sensitivity_steps"] == 10 and set(sens["train"]) == {"lr", "batch_size"}


def test_the_full_size_bench_builds_the_runs_mix() -> None:
    from slimface.evaluate.arch_bench import build_pair

    net = build_supernet("crgan", setting=["encoder.*"], **SIZE)
    _, static, _ = build_pair("crgan", 128, 3, 0.0625, "smallest", net.separable)
    # the 64 px student's separable convs, at 128 px (which adds a block on each side: kept normal)
    assert static is not None and _separable(static) == net.separable
