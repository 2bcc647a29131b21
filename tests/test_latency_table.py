"""Latency tables per runtime on the toy design space: schema, prediction, int8 node selection."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch

from slimface.compress.config import SearchConfig
from slimface.compress.space import ConfigSpace
from slimface.deploy import latency_table as lt
from slimface.deploy.latency_table import (
    LatencyModel,
    LatencyTable,
    build_table,
    design_layers,
    fp32_nodes,
    onnx_node_module,
    parse_latency,
)
from slimface.errors import CheckpointError, ConfigError
from slimface.nn.super_layers import width_groups
from test_compress_space import TOY_FAMILY, _build_gen

RES = 16


@pytest.fixture(scope="module")
def torch_table() -> LatencyTable:
    torch.manual_seed(0)
    return build_table(TOY_FAMILY, RES, runtime="torch", threads=1, max_grid=2, fit_subnets=3)


def _space_and_net() -> tuple[ConfigSpace, torch.nn.Module]:
    net = _build_gen(RES, 3, 1.0, separable=True).eval()
    return ConfigSpace.from_supernet(TOY_FAMILY, net), net


def test_table_schema_and_roundtrip(torch_table: LatencyTable, tmp_path: Path) -> None:
    t = torch_table
    assert t.build_seconds < 60  # a test-sized table builds in seconds
    d = json.loads(t.save(tmp_path / "t.json").read_text())
    assert d["schema"] == lt.SCHEMA and d["runtime"] == "torch" and d["threads"] == 1
    assert d["machine"]["cpu"] and "torch" in d["versions"] and "onnxruntime" in d["versions"]
    assert d["model"] == {"family": TOY_FAMILY.name, "resolution": RES, "channels": 3, "width_mult": 1.0}
    assert len(d["fit"]["subnets"]) == 3 and {"overhead_ms", "scale", "ms_per_melem"} <= set(d["fit"])
    ops = {s["op"] for s in d["sites"].values()}
    assert {"conv", "dwconv", "deconv"} <= ops  # every conv type of the design space
    for s in d["sites"].values():
        assert len(s["ms"]) == len(s["cin"]) and all(len(r) == max(1, len(s["cout"])) for r in s["ms"])
        assert all(v >= 0 for r in s["ms"] for v in r)
    back = LatencyTable.load(tmp_path / "t.json")
    space, net = _space_and_net()
    cfg = space.largest()
    assert LatencyModel(back, net)(cfg) == pytest.approx(LatencyModel(t, net)(cfg))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CheckpointError, match="latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_the_table_times_the_teacher_for_relative_budgets(torch_table: LatencyTable, tmp_path: Path) -> None:
    assert torch_table.teacher_ms is not None and torch_table.teacher_ms > 0
    back = LatencyTable.load(torch_table.save(tmp_path / "t.json"))
    assert back.teacher_ms == pytest.approx(torch_table.teacher_ms)
    cfg = SearchConfig(latency="12.5x", latency_size="full")
    cfg.validate()
    assert cfg.latency_factor() == 12.5 and cfg.latency_at() == (128, 1.0)
    assert SearchConfig(latency="15ms").latency_factor() is None and SearchConfig().latency_at() is None
    assert SearchConfig(latency_size="64x0.5").latency_at() == (64, 0.5)


def test_the_search_key_names_its_table_threads_only_off_the_default() -> None:
    """search.threads (the threads its latency table is timed on) is a search setting: a table of
    other threads prices other candidates, so the search re-runs; at 1 it stays out of the key."""
    from slimface.config import load_config
    from slimface.pipeline_config import PipelineConfig
    from slimface.stage_keys import own_settings

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    one, two = (own_settings(load_config(PipelineConfig, tiny, {"search.latency": "10x", "search.threads": t}),
                             "search.tpgan") for t in (1, 2))
    assert "threads" not in one["search"] and two["search"]["threads"] == 2


def test_candidates_priced_at_another_size(tmp_path: Path) -> None:
    """search.latency_size: a config of the small supernet is priced as the same design at another size
    (its widths keep their fractions), from a table of that size cached under its own name, rebuilt
    when a relative budget needs the teacher's time and the cached table lacks it."""
    space, net = _space_and_net()
    size = (2 * RES, 2.0)
    path = tmp_path / f"latency_torch_t1_{2 * RES}x2.json"
    stale = build_table(TOY_FAMILY, 2 * RES, 3, 2.0, "torch", 1, max_grid=2, fit_subnets=2, teacher=False)
    stale.save(path)
    model = lt.search_latency_model(TOY_FAMILY, net, "torch", 1, cache_dir=tmp_path, size=size, need_teacher=True)
    table = LatencyTable.load(path)
    assert table.teacher_ms is not None and table.teacher_ms > 0  # rebuilt: the stale one had none
    assert (table.model["resolution"], table.model["width_mult"]) == size
    assert isinstance(model, lt.MappedLatencyModel) and model.table.teacher_ms == table.teacher_ms
    target = lt._build(TOY_FAMILY, table.model, None)
    tspace = ConfigSpace.from_supernet(TOY_FAMILY, target)
    assert model.size_map(space.smallest()) == tspace.smallest()
    assert model.size_map(space.largest()) == tspace.largest()
    cfg = space.sample(torch.Generator().manual_seed(5))
    mapped = model.size_map(cfg)
    assert model(cfg) == pytest.approx(LatencyModel(table, target)(mapped))
    full, tfull = width_groups(net), width_groups(target)
    for g, c in cfg.items():  # each group keeps its fraction: the nearest choice of the target
        want = c / full[g] * tfull[g]
        assert abs(mapped[g] - want) == min(abs(x - want) for x in tspace.choices[g])
    mtime = path.stat().st_mtime_ns
    again = lt.search_latency_model(TOY_FAMILY, net, "torch", 1, cache_dir=tmp_path, size=size, need_teacher=True)
    assert path.stat().st_mtime_ns == mtime and again(cfg) == pytest.approx(model(cfg))  # reused, not rebuilt
    own = lt.search_latency_model(TOY_FAMILY, net, "torch", 1, cache_dir=tmp_path)  # the run's own size
    assert isinstance(own, LatencyModel) and (tmp_path / "latency_torch_t1.json").is_file()
    no_teacher = tmp_path / "no_teacher.json"
    stale.save(no_teacher)
    with pytest.raises(ConfigError, match="no teacher time"):
        lt.search_latency_model(TOY_FAMILY, net, "torch", 1, table_path=no_teacher, size=size, need_teacher=True)


def test_prediction_is_layer_sum_plus_fitted_overhead(torch_table: LatencyTable) -> None:
    space, net = _space_and_net()
    model = LatencyModel(torch_table, net)
    layers = design_layers(net)
    assert len(model.layers) == len(layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
                                                   for m in net.modules())
    cfg = space.sample(torch.Generator().manual_seed(3))
    per = model.per_layer(cfg)
    assert model.layer_sum(cfg) == pytest.approx(sum(r["ms"] for r in per))
    t = torch_table
    assert model(cfg) == pytest.approx(t.overhead_ms + t.scale * model.layer_sum(cfg) + t.ms_per_melem * model.melems(cfg))
    # (which of two measured layer sums is larger is a timing, not a behaviour: the activation volume
    # the overhead term reads is exact)
    assert model.melems(space.smallest()) < model.melems(space.largest())
    # grid points are read back exactly, others interpolated between their neighbours
    site_tab = next(s for s in t.sites.values() if len(s.cin) == 2 and len(s.cout) == 2)
    a, b = site_tab.cin
    assert site_tab.lookup(a, site_tab.cout[0]) == pytest.approx(site_tab.ms[0][0])
    mid = site_tab.lookup((a + b) / 2, site_tab.cout[0])
    assert min(site_tab.ms[0][0], site_tab.ms[1][0]) - 1e-9 <= mid <= max(site_tab.ms[0][0], site_tab.ms[1][0]) + 1e-9


def test_fit_recovers_a_known_cost_model() -> None:
    pts = [(s, e, 2.0 + 1.5 * s + 0.5 * e) for s, e in ((1, 1), (2, 5), (4, 2), (8, 9), (3, 7))]
    assert lt._fit(pts) == pytest.approx((2.0, 1.5, 0.5))
    overhead, scale, per_elem = lt._fit([(1, 1, 3.0), (2, 2, 4.0)])  # too few points: an offset only
    assert (overhead, scale, per_elem) == (2.0, 1.0, 0.0)
    # measured on a 2-thread Xeon (ONNX Runtime fp32, full-size TP-GAN sub-networks): layer sum and
    # activation volume rise together; least squares on both gives the volume a negative weight, on
    # the volume alone a negative overhead (-8.4 ms: the smallest sub-networks predicted at half their
    # time). The fit keeps to non-negative terms and picks by leave-one-out error: overhead + layers.
    real = [(11.01, 8.5, 14.05), (105.75, 64.3, 116.86), (46.88, 34.0, 46.6), (47.9, 34.9, 48.8),
            (18.46, 17.0, 23.02), (85.79, 54.4, 87.9)]
    overhead, scale, per_elem = lt._fit(real)
    assert overhead >= 0 and per_elem == 0 and scale == pytest.approx(1.055, abs=0.01)
    assert overhead + scale * 11.01 == pytest.approx(14.05, rel=0.25)  # the smallest, within a quarter


def test_parse_latency() -> None:
    assert parse_latency("15ms") == 15.0 and parse_latency("0.02s") == 20.0 and parse_latency(7) == 7.0
    for bad in ("fast", "-3ms", "0"):
        with pytest.raises(ConfigError, match="latency"):
            parse_latency(bad)


def test_onnx_node_names_map_back_to_modules() -> None:
    assert onnx_node_module("/res/res.0/conv1/depthwise/Conv") == "res.0.conv1.depthwise"
    assert onnx_node_module("/enc2/enc2.0/pointwise/Conv") == "enc2.0.pointwise"
    assert onnx_node_module("/out/Conv") == "out"


def test_every_conv_of_a_tpgan_export_maps_to_its_module(tmp_path: Path) -> None:
    """TP-GAN's local pathways sit in a ModuleDict the exporter leaves out of node names."""
    from slimface.deploy.onnx_export import export_onnx
    from slimface.families import build_generator

    net = build_generator("tpgan", 64, 3, 0.25, separable=True).eval()
    path = export_onnx(net, net.example_inputs(), tmp_path / "t.onnx")
    pairs = lt.conv_nodes_by_module(path, net)
    convs = [ly.name for ly in design_layers(net) if ly.site.op != "linear"]
    assert len(pairs) == len(convs) == sum(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(path)).graph.node)
    eye = next(m for m in convs if m.startswith("local.") and m.endswith("depthwise"))
    assert onnx_node_module(pairs[eye]).split(".")[-1] == "depthwise" and "local" not in pairs[eye]


def _certain_int8_verdict(s: lt.SiteTable) -> None:
    """A flat grid per site (its mean timed fp32 time, at least 1 us) with int8 10x slower for depthwise
    convs and 10x faster for the rest: every lookup, inside or past the grid, gives the same verdict
    (a timed grid of tiny convs can extrapolate below zero, where both times read 0)."""
    base = max(sum(map(sum, s.fp32_ms)) / sum(map(len, s.fp32_ms)), 1e-3)
    s.fp32_ms = [[base] * len(row) for row in s.fp32_ms]
    s.ms = [[(10.0 if s.site.op == "dwconv" else 0.1) * base] * len(row) for row in s.fp32_ms]


def test_int8_node_selection_keeps_the_listed_nodes_fp32(tmp_path: Path) -> None:
    """A table that says depthwise int8 is slow keeps every depthwise conv fp32 in the quantized graph."""
    from slimface.deploy.calibration import random_calibration
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.quantize import quantize_int8
    from slimface.deploy.runtime import load_frontalizer

    table = build_table(TOY_FAMILY, RES, runtime="ort-int8", threads=1, max_grid=2, fit_subnets=0)
    assert all(s.fp32_ms is not None for s in table.sites.values())
    for s in table.sites.values():  # make the verdict certain: depthwise int8 10x slower, the rest 10x faster
        _certain_int8_verdict(s)
    space, net = _space_and_net()
    cfg = space.smallest()
    model = LatencyModel(table, net, int8_where_faster=True)
    keep = model.fp32_layers(cfg)
    dw = [n for n, m in net.named_modules() if getattr(m, "depthwise", False) is True]
    assert sorted(keep) == sorted(dw) and keep
    assert model.layer_sum(cfg) < LatencyModel(table, net).layer_sum(cfg)  # the cheaper choice per layer
    tied = copy.deepcopy(table)  # a grid extrapolated below zero reads 0 ms in both
    for s in tied.sites.values():
        s.ms, s.fp32_ms = [[0.0] * len(r) for r in s.ms], [[0.0] * len(r) for r in s.ms]
    assert LatencyModel(tied, net, int8_where_faster=True).fp32_layers(cfg) == []  # no evidence: stays int8

    sub = _build_gen(RES, 3, 1.0, separable=True, sub=cfg).eval()
    path = export_onnx(sub, sub.example_inputs(), tmp_path / "s.onnx")
    nodes = fp32_nodes(path, sub, keep)
    assert len(nodes) == len(keep)
    rep = quantize_int8(path, tmp_path / "s.int8.onnx", random_calibration(sub.example_inputs(), 4),
                        nodes_to_exclude=nodes)
    assert rep.fp32_nodes == nodes
    assert rep.fp32_ops.get("Conv", 0) + rep.fp32_ops.get("FusedConv", 0) >= len(nodes)  # still fp32 after ORT
    assert rep.int8_ops.get("QLinearConv", 0) == sum(1 for n in onnx.load(str(path)).graph.node
                                                     if n.op_type == "Conv") - len(nodes)
    f = load_frontalizer(rep.path)  # the session keeps them fp32 too (WeightBiasQuantization off)
    assert json.loads(f.metadata["slimface.int8_fp32_nodes"]) == nodes
    x, lm = sub.example_inputs()
    assert f(x.numpy(), lm.numpy()).shape == tuple(x.shape)
    from slimface.deploy.int8_guard import int8_summary

    line = int8_summary(rep.path)  # the report's "what ran in int8" line
    assert "QLinearConv x" in line and f"{len(nodes)} convs kept fp32" in line and "\n" not in line


def test_cli_latency_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimface.cli import main

    out = tmp_path / "toy.json"
    assert main(["latency-table", TOY_FAMILY.name, "--runtime", "torch", "--resolution", "64", "--grid", "2",
                 "--fit-subnets", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| model | runtime |" in text and str(out) in text
    assert LatencyTable.load(out).model["resolution"] == 64
    with pytest.raises(ConfigError, match="runtime"):
        lt.check_runtime("tflite")


# ----------------------------------------------------------------------------- latency-budgeted search
def test_search_respects_a_latency_budget_on_a_toy_space(tmp_path: Path) -> None:
    """Analytic toy: MACs and latency disagree (group "b" is cheap in MACs but slow), so the
    latency-feasible optimum differs from the MACs-only one; exhaustive and evolution both respect it."""
    from slimface.compress.search import search
    from test_compress_search import SPACE, cost_fn, value_fn

    lat = {"a": 0.02, "b": 0.2, "c": 0.02, "d": 0.05, "e": 0.01}

    def latency_fn(cfg: dict[str, int]) -> float:
        return 1.0 + sum(lat[g] * v for g, v in cfg.items())

    space = ConfigSpace(SPACE)
    macs_budget, budget_ms = 300_000, 6.0
    feasible = [c for c in space.enumerate() if cost_fn(c)[0] < macs_budget and latency_fn(c) <= budget_ms]
    best = max(feasible, key=value_fn)
    macs_only = max((c for c in space.enumerate() if cost_fn(c)[0] < macs_budget), key=value_fn)
    assert latency_fn(macs_only) > budget_ms  # the MACs-only answer would break the latency budget
    out = tmp_path / "evaluated.jsonl"
    res = search(None, space, macs_budget, value_fn, SearchConfig(method="exhaustive"), cost_fn=cost_fn,
                 latency_fn=latency_fn, latency_budget_ms=budget_ms, out_jsonl=out)
    assert res.best_cfg == best and res.best_latency_ms == pytest.approx(latency_fn(best))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(feasible) and all(r["latency_ms"] <= budget_ms for r in lines)
    assert all(r["latency_ms"] == pytest.approx(latency_fn(space.decode(r["config"]))) for r in lines)
    evo = search(None, space, macs_budget, value_fn, SearchConfig(method="evolution", population=20, generations=8),
                 cost_fn=cost_fn, latency_fn=latency_fn, latency_budget_ms=budget_ms)
    assert all(r["latency_ms"] <= budget_ms and r["macs"] < macs_budget for r in evo.evaluated)
    assert value_fn(evo.best_cfg) >= 0.95 * value_fn(best)
    with pytest.raises(ConfigError, match="latency budget .* below the smallest"):
        search(None, space, macs_budget, value_fn, cost_fn=cost_fn, latency_fn=latency_fn, latency_budget_ms=1.0)


def test_search_with_a_measured_table(torch_table: LatencyTable) -> None:
    """The real thing on the toy supernet: candidates priced by the torch table stay under the budget."""
    from slimface.compress.search import search

    space, net = _space_and_net()
    model = LatencyModel(torch_table, net)
    lo, hi = model(space.smallest()), model(space.largest())
    budget_ms = lo + 0.5 * (hi - lo)
    res = search(net, space, 1e12, lambda cfg: float(sum(cfg.values())),
                 SearchConfig(method="evolution", population=8, generations=2), latency_fn=model, latency_budget_ms=budget_ms, resolution=RES)
    assert res.evaluated and all(r["latency_ms"] <= budget_ms for r in res.evaluated)
    assert res.best_latency_ms is not None and res.best_latency_ms <= budget_ms


def test_int8_choice_is_made_at_the_deployment_size(tmp_path: Path) -> None:
    """With ``size``, the int8/fp32 choice per conv comes from the table of the same design at that
    size (where the student is deployed and timed), and names the small supernet's own modules, which
    its export's ONNX nodes carry; the search prices each conv at its faster precision."""
    from slimface.deploy.calibration import random_calibration
    from slimface.deploy.latency_table import search_latency_model, slow_int8_modules
    from slimface.deploy.onnx_export import export_onnx
    from slimface.deploy.quantize import quantize_int8

    table = build_table(TOY_FAMILY, RES, runtime="ort-int8", threads=1, max_grid=2, fit_subnets=0,
                        width_mult=2.0, teacher=False)
    for s in table.sites.values():  # certain verdict: depthwise int8 10x slower, the rest 10x faster
        _certain_int8_verdict(s)
    path = table.save(tmp_path / "t.json")
    space, net = _space_and_net()
    cfg = space.smallest()
    keep = slow_int8_modules(TOY_FAMILY, net, cfg, table_path=path, size=(RES, 2.0))
    dw = [n for n, m in net.named_modules() if getattr(m, "depthwise", False) is True]
    assert keep and sorted(keep) == sorted(dw)
    faster = search_latency_model(TOY_FAMILY, net, "ort-int8", table_path=path, size=(RES, 2.0),
                                  int8_where_faster=True)
    plain = search_latency_model(TOY_FAMILY, net, "ort-int8", table_path=path, size=(RES, 2.0))
    assert faster(cfg) < plain(cfg)

    sub = _build_gen(RES, 3, 1.0, separable=True, sub=cfg).eval()
    onnx_path = export_onnx(sub, sub.example_inputs(), tmp_path / "s.onnx")
    nodes = fp32_nodes(onnx_path, sub, keep)
    assert len(nodes) == len(keep)
    rep = quantize_int8(onnx_path, tmp_path / "s.int8.onnx", random_calibration(sub.example_inputs(), 4),
                        nodes_to_exclude=nodes, guard=False)
    assert rep.fp32_nodes == nodes
