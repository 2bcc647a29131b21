"""Searchable conv types (``student.separable: search``): every convertible conv is a
:class:`ConvChoice` of its normal and its separable conv, a ``conv:<name>`` key of every config that
the space samples / mutates / shrinks / encodes, the MACs and latency models price, warm start fills
(normal copied, separable factorised), supernet training samples, the search picks and export
materialises (static student == supernet slice, profiled MACs == ``macs_of``, ONNX)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from slimface.compress.config import OFAConfig
from slimface.compress.conv_types import build_supernet
from slimface.compress.extract import extract_subnet, scale_config_to_full
from slimface.compress.space import ConfigSpace, active_config, current_widths, macs_of
from slimface.config import from_dict
from slimface.errors import ConfigError
from slimface.families import build_generator, get_family
from slimface.models.blocks import convertible_convs
from slimface.nn.profile import ConvMacsModel, count_conv_macs, count_macs
from slimface.nn.super_layers import (
    NORMAL, SEPARABLE, ConvChoice, SeparableConv2d, SuperConv2d, conv_choices, conv_key, current_conv_choices,
    set_widths,
)
from _nets import assert_export_matches_supernet
from test_compress_space import TOY_FAMILY, ToyDisc, _build_gen, single_thread  # noqa: F401

SIZE = dict(resolution=64, channels=3, width_mult=0.0625)
RES = 16


def _toy(res: int = 32, seed: int = 0) -> torch.nn.Module:
    """The toy supernet with searched conv types (the toy family is not built through the registry)."""
    from slimface.models.blocks import make_conv_choices

    torch.manual_seed(seed)
    net = _build_gen(res, separable=True)
    net.separable = make_conv_choices(net)
    return net


def _mixed(space: ConfigSpace, seed: int) -> dict[str, int]:
    """A random config with both types present."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        cfg = space.sample(gen)
        if len({cfg[k] for k in space.convs}) == 2:
            return cfg


# ---------------------------------------------------------------------- the layer and the build
@pytest.mark.parametrize("family", ["tpgan", "crgan", "pim"])
def test_search_puts_a_choice_at_every_convertible_conv(family: str) -> None:
    every = build_supernet(family, setting="all", **SIZE)
    net = build_supernet(family, setting="search", **SIZE)
    assert net.separable == "search" and not conv_choices(every)
    assert list(conv_choices(net)) == convertible_convs(every) == convertible_convs(net)
    for name, choice in conv_choices(net).items():
        sep = every.get_submodule(name)
        assert isinstance(choice.separable, SeparableConv2d) and type(choice.normal) is SuperConv2d
        dw, w = sep.depthwise, choice.normal
        assert (w.in_chans, w.out_chans) == (dw.in_chans, sep.pointwise.out_chans)
        assert (w.kernel_size, w.stride, w.padding) == (dw.kernel_size, dw.stride, dw.padding)
        assert (w.bias is None) == (sep.pointwise.bias is None)
        assert choice.choice == SEPARABLE  # as built: the family's student


def test_a_choice_forwards_through_the_active_branch_at_the_active_widths() -> None:
    net = _toy()
    name, choice = next(iter(conv_choices(net).items()))
    x = torch.randn(2, choice.normal.in_channels, 8, 8)
    set_widths(net, {"enc2": 16, "res.0.mid": 8})
    with torch.no_grad():
        assert torch.equal(choice(x[:, : choice.normal.active_in()]), choice.separable(x[:, : choice.normal.active_in()]))
        choice.choice = NORMAL
        y = choice(x[:, : choice.normal.active_in()])
        assert torch.equal(y, choice.normal(x[:, : choice.normal.active_in()]))
    assert y.shape[1] == choice.normal.active_out() < choice.normal.out_channels


# ---------------------------------------------------------------------- the config space
def test_type_keys_are_part_of_the_space_and_its_string() -> None:
    net = _toy()
    space = ConfigSpace.from_supernet(TOY_FAMILY, net)
    names = list(conv_choices(net))
    assert space.convs == sorted(conv_key(n) for n in names) and all(space.choices[k] == [0, 1] for k in space.convs)
    assert space.groups == space.widths + space.convs  # widths first, then types
    assert all(space.smallest()[k] == SEPARABLE and space.largest()[k] == NORMAL for k in space.convs)
    cfg = _mixed(space, 0)
    code = space.encode(cfg)
    assert code.split("_")[len(space.widths):] == [str(cfg[k]) for k in space.convs]
    assert space.decode(code) == cfg
    # a widths-only string: decoded by the widths-only space, refused in one line by this one
    plain = ConfigSpace.from_supernet(TOY_FAMILY, _build_gen(32, separable=True))
    widths = "_".join(code.split("_")[: len(space.widths)])
    assert plain.decode(widths) == {g: cfg[g] for g in space.widths}
    with pytest.raises(ConfigError, match="conv types") as err:
        space.decode(widths)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="conv type 2"):
        space.decode(widths + "_2" * len(space.convs))
    assert space.size() == plain.size() * 2 ** len(space.convs)


def test_sample_mutate_crossover_shrink_enumerate_cover_the_types() -> None:
    space = ConfigSpace.from_supernet(TOY_FAMILY, _toy())
    gen = torch.Generator().manual_seed(1)
    samples = [space.sample(gen) for _ in range(40)]
    for k in space.convs:
        assert {s[k] for s in samples} == {0, 1}
    a, b = space.largest(), space.smallest()
    mixed = [space.crossover(a, b, gen) for _ in range(20)] + [space.mutate(a, 1.0, gen) for _ in range(20)]
    for cfg in mixed:
        space.validate(cfg)
    assert any(c[k] == SEPARABLE for c in mixed for k in space.convs)
    # shrink steps a type down to its cheaper choice (separable), as it narrows widths
    shrunk = space.shrink(a, lambda c: sum(c.values()), -1, gen)
    assert shrunk == space.smallest()
    small = ConfigSpace({"g": [8, 16], conv_key("c"): [0, 1]})
    assert sorted(small.encode(c) for c in small.enumerate()) == ["16_0", "16_1", "8_0", "8_1"]


def test_set_widths_ignores_types_and_active_config_applies_and_restores_both() -> None:
    net = _toy()
    space = ConfigSpace.from_supernet(TOY_FAMILY, net)
    cfg = _mixed(space, 2)
    set_widths(net, cfg)  # the type keys are not width groups
    assert current_widths(net) == {g: cfg[g] for g in space.widths}
    assert set(current_conv_choices(net).values()) == {SEPARABLE}
    set_widths(net, None)
    with active_config(net, cfg):
        assert current_conv_choices(net) == {k: cfg[k] for k in space.convs}
        assert current_widths(net) == {g: cfg[g] for g in space.widths}
        with active_config(net, space.largest()):
            assert set(current_conv_choices(net).values()) == {NORMAL}
        assert current_conv_choices(net) == {k: cfg[k] for k in space.convs}
    assert current_widths(net) is None and set(current_conv_choices(net).values()) == {SEPARABLE}


# ---------------------------------------------------------------------- cost models
@pytest.mark.parametrize("which", ["toy", "crgan"])
def test_the_conv_macs_formula_prices_both_types(which: str) -> None:
    net = _toy() if which == "toy" else build_supernet("crgan", setting="search", **SIZE)
    fam = TOY_FAMILY if which == "toy" else get_family("crgan")
    net.eval()
    space = ConfigSpace.from_supernet(fam, net)
    inputs = net.example_inputs(1)
    model = ConvMacsModel(net, inputs)
    for seed in range(4):
        cfg = _mixed(space, seed)
        with active_config(net, cfg):
            assert model(cfg) == count_conv_macs(net, inputs)
    assert model(space.smallest()) < model({**space.smallest(), **{k: NORMAL for k in space.convs}})
    assert macs_of(net, space.smallest()) < macs_of(net, {**space.smallest(), **{k: NORMAL for k in space.convs}})


def test_the_latency_model_prices_each_conv_with_its_active_type() -> None:
    from slimface.deploy.latency_table import LatencyModel, _build, build_table, design_layers

    torch.manual_seed(0)
    table = build_table(TOY_FAMILY, RES, runtime="torch", threads=1, max_grid=2, fit_subnets=0, separable="search")
    assert table.model["separable"] == "search"
    supernet = _build(TOY_FAMILY, table.model, None)
    assert conv_choices(supernet)
    model = LatencyModel(table, supernet)
    tagged = [ly for ly in model.layers if ly.choice is not None]
    assert {ly.choice[1] for ly in tagged} == {SEPARABLE, NORMAL}  # both types of every choice are tabled
    assert {ly.site.op for ly in tagged if ly.choice[1] == NORMAL} == {"conv"}
    assert {ly.site.op for ly in tagged if ly.choice[1] == SEPARABLE} == {"dwconv", "conv"}
    space = ConfigSpace.from_supernet(TOY_FAMILY, supernet)
    for seed in range(3):
        cfg = _mixed(space, seed)
        static = _build(TOY_FAMILY, table.model, cfg)  # the sub-network as export builds it
        expected = sum(table.layer_ms(ly.site, *ly.channels(None)) for ly in design_layers(static))
        assert model.layer_sum(cfg) == pytest.approx(expected)
        per = model.per_layer(cfg)
        assert len(per) == len(design_layers(static))
        assert model(cfg) == pytest.approx(table.overhead_ms + table.scale * expected + table.ms_per_melem * model.melems(cfg))


# ---------------------------------------------------------------------- warm start, training, search
@pytest.mark.parametrize("fit", [False, True])
def test_warm_start_copies_the_normal_branch_and_factorises_the_separable_one(fit: bool) -> None:
    from slimface.compress.warmstart import sort_channels, warm_start

    torch.manual_seed(1)
    teacher = _build_gen(32, separable=False).eval()
    every = _build_gen(32, separable=True)
    net = _toy()
    batches = [(torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 5, 2) * 32)] if fit else None
    groups = ConfigSpace.from_supernet(TOY_FAMILY, net).widths
    ref = warm_start(every, teacher, groups, batches=batches, images=4)
    rep = warm_start(net, teacher, groups, batches=batches, images=4)
    assert rep.factorized == ref.factorized == len(conv_choices(net)) and not rep.kept
    assert rep.fitted == ref.fitted and (rep.fit_layers > 0) == fit
    e_state = every.state_dict()
    sorted_teacher = copy.deepcopy(teacher)
    sort_channels(sorted_teacher, groups)
    sorted_state = sorted_teacher.state_dict()
    for name, choice in conv_choices(net).items():
        assert torch.equal(choice.normal.weight, sorted_state[f"{name}.weight"])  # the teacher's conv, exactly
        for part in ("depthwise", "pointwise"):  # what the all-separable student gets (SVD or the fit)
            assert torch.equal(getattr(choice.separable, part).weight, e_state[f"{name}.{part}.weight"])


def test_supernet_sampling_includes_the_types() -> None:
    from slimface.compress.ofa import OFATask
    from slimface.train.config import TrainConfig

    torch.manual_seed(1)
    teacher = _build_gen(32, separable=False).eval()
    net = _toy()
    space = ConfigSpace.from_supernet(TOY_FAMILY, net)
    budget = macs_of(net, _mixed(space, 0))
    uniform = OFATask(TOY_FAMILY, net, teacher, ToyDisc(), OFAConfig(train=TrainConfig(steps=4)))
    sampled = [uniform.configs_for_step(s)[0] for s in range(20)]
    assert all(set(c) == set(space.groups) for c in sampled)
    assert {c[k] for c in sampled for k in space.convs} == {0, 1}
    sandwich = OFATask(TOY_FAMILY, net, teacher, ToyDisc(), OFAConfig(train=TrainConfig(steps=4), sampling="sandwich"))
    assert sandwich.configs_for_step(0)[:2] == [space.largest(), space.smallest()]
    budgeted = OFATask(TOY_FAMILY, net, teacher, ToyDisc(), OFAConfig(train=TrainConfig(steps=4), sampling="budget"),
                       budget_macs=budget)
    model = ConvMacsModel(net, net.example_inputs(1))
    for step in range(6):
        (cfg,) = budgeted.configs_for_step(step)
        assert model(cfg) <= budget or cfg == space.smallest()
    batch = {"profile": torch.rand(2, 3, 32, 32) * 2 - 1, "frontal": torch.rand(2, 3, 32, 32) * 2 - 1,
             "landmarks": torch.rand(2, 5, 2) * 32}
    out = uniform.train_step(batch, 0)  # one step on a mixed sub-network trains; the net is reset after
    assert out["loss_g"] == out["loss_g"] and 0 < out["width_frac"] <= 1
    assert current_widths(net) is None and set(current_conv_choices(net).values()) == {SEPARABLE}


def test_search_picks_types_under_the_budget(tmp_path: Path) -> None:
    from slimface.compress.config import SearchConfig
    from slimface.compress.search import search

    net = _toy().eval()
    space = ConfigSpace.from_supernet(TOY_FAMILY, net)
    budget = macs_of(net, {**space.largest(), **{k: SEPARABLE for k in space.convs}}) * 0.9
    # a metric that likes normal convs and width: the best sub-network spends the budget on both
    res = search(net, space, budget, lambda c: sum(c[k] for k in space.convs) + 0.01 * sum(c[g] for g in space.widths),
                 SearchConfig(method="evolution", population=8, generations=2), seed=0,
                 out_jsonl=tmp_path / "evaluated.jsonl")
    assert res.best_macs < budget and any(res.best_cfg[k] == NORMAL for k in space.convs)
    records = [json.loads(line) for line in (tmp_path / "evaluated.jsonl").read_text().splitlines()]
    assert records and all(len(r["config"].split("_")) == len(space.groups) for r in records)
    assert all(r["macs"] == macs_of(net, space.decode(r["config"])) < budget for r in records)


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize("family", ["crgan", "tpgan"])
def test_a_searched_mix_exports_as_the_supernet_slice(family: str, tmp_path: Path) -> None:
    from slimface.compress.warmstart import warm_start

    torch.manual_seed(0)
    teacher = build_generator(family, separable=False, **SIZE).eval()
    net = build_supernet(family, setting="search", **SIZE)
    space = ConfigSpace.from_supernet(get_family(family), net)
    warm_start(net, teacher, space.widths, sort=False)
    net.eval()
    cfg = _mixed(space, 3)
    static = extract_subnet(family, net, cfg, **SIZE)
    names = list(conv_choices(net))
    assert static.separable == sorted(n for n in names if cfg[conv_key(n)] == SEPARABLE)
    assert not any(k.startswith("conv:") for k in static.arch()["sub"])
    assert sorted(n for n, m in static.named_modules() if isinstance(m, SeparableConv2d)) == static.separable
    assert not conv_choices(static)
    assert_export_matches_supernet(net, static, cfg, space.encode(cfg), tmp_path / "export")
    # the extremes: every conv separable is the family's student, every conv normal none of it
    assert extract_subnet(family, net, space.smallest(), **SIZE).separable is True
    assert extract_subnet(family, net, space.largest(), **SIZE).separable is False


def test_a_searched_mix_goes_through_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.runtime import check_onnx

    torch.manual_seed(0)
    net = build_supernet("crgan", setting="search", **SIZE).eval()
    space = ConfigSpace.from_supernet(get_family("crgan"), net)
    static = extract_subnet("crgan", net, _mixed(space, 5), **SIZE)
    inputs = static.example_inputs()
    path = export_onnx(static, inputs, tmp_path / "model.onnx")
    assert check_onnx(static, path, inputs) < 1e-4


def test_a_searched_config_maps_to_the_full_size_widths() -> None:
    net = build_supernet("crgan", setting="search", **SIZE)
    space = ConfigSpace.from_supernet(get_family("crgan"), net)
    cfg = _mixed(space, 1)
    plain = ConfigSpace.from_supernet(get_family("crgan"), build_supernet("crgan", **SIZE))
    widths_only = plain.encode({g: cfg[g] for g in space.widths})
    full = scale_config_to_full("crgan", space.encode(cfg), **SIZE)
    assert full == scale_config_to_full("crgan", widths_only, **SIZE)  # the types stay with the export


# ---------------------------------------------------------------------- config and keys
def test_the_setting_is_accepted_and_keyed() -> None:
    from slimface import stage_keys as K
    from slimface.config import load_config
    from slimface.pipeline_config import PipelineConfig

    assert from_dict(OFAConfig, {"separable": "search"}).separable == "search"
    with pytest.raises(ConfigError, match="use all, none, auto, search") as err:
        from_dict(OFAConfig, {"separable": "searched"}, "student")
    assert "\n" not in str(err.value)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(PipelineConfig, tiny, {"student.separable": "search"})
    base = load_config(PipelineConfig, tiny, {})
    for stage in ("supernet.tpgan", "finetune.tpgan"):
        assert K.own_settings(cfg, stage)["student"]["separable"] == "search"
        assert "separable_keep" not in K.own_settings(cfg, stage)["student"]
    assert K.own_settings(cfg, "search.tpgan")["student.separable"] == "search"
    assert K.own_settings(cfg, "export.tpgan") == K.own_settings(base, "export.tpgan")
    stages = ["data", "recognizer", "teacher.tpgan", "sensitivity.tpgan", "supernet.tpgan"]
    assert "sensitivity.tpgan" not in K.dependencies("supernet.tpgan", stages, cfg)


def test_a_choice_of_a_bare_module_tree_is_the_layer_used() -> None:
    """ConvChoice is usable on its own: the normal and separable convs of one layout."""
    from slimface.models.blocks import normal_conv
    from slimface.nn.channels import ch

    sep = SeparableConv2d(ch(8, "a"), ch(8, "b"), 3)
    choice = ConvChoice(normal_conv(sep), sep)
    x = torch.randn(1, 8, 6, 6)
    assert choice(x).shape == (1, 8, 6, 6)


# ---------------------------------------------------------------------- the pipeline
@pytest.mark.slow  # data, recognizer and teacher first: over a minute on a busy CPU (pytest -m slow)
def test_the_tiny_pipeline_searches_the_conv_types(tmp_path: Path) -> None:
    """supernet -> search -> finetune -> export with ``--set student.separable=search`` on the tiny
    preset: the search's config carries the types, the export is that mix and holds its MACs."""
    import os
    import subprocess
    import sys

    from slimface.export_format import load_export

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    args = [sys.executable, "-m", "slimface.cli", "run", "--config", str(repo / "configs" / "tiny.yaml"),
            "--out", str(out), "--set", f"data.root={tmp_path / 'data'}", "--set", "student.separable=search",
            "--set", "deploy.int8=false", "--no-progress",
            "--only", "data", "recognizer", "teacher", "supernet", "search", "finetune", "export"]
    proc = subprocess.run(args, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    supernet = build_supernet("tpgan", setting="search", resolution=64, channels=3, width_mult=0.0625)
    space = ConfigSpace.from_supernet(get_family("tpgan"), supernet)
    result = json.loads((out / "tpgan" / "search" / "result.json").read_text())
    cfg = space.decode(result["config"])  # widths and types
    records = [json.loads(line) for line in (out / "tpgan" / "search" / "evaluated.jsonl").read_text().splitlines()]
    assert all(len(r["config"].split("_")) == len(space.groups) for r in records)
    student = load_export(out / "tpgan" / "export")
    want = sorted(n for n in conv_choices(supernet) if cfg[conv_key(n)] == SEPARABLE)
    assert student.separable == (True if len(want) == len(space.convs) else want or False)
    assert count_macs(student, student.example_inputs(1)) == macs_of(supernet, cfg) == result["macs"]
    assert (out / "tpgan" / "export" / "model.onnx").is_file()
