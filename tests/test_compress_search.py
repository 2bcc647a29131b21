"""Sub-network search: budget, exhaustive/evolutionary optimum on an analytic toy problem, cache reuse,
Pareto front, the identity metric, and distributed search == single-process search."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.compress.config import Budget, SearchConfig
from slimface.compress.search import identity_metric, pareto_front, search
from slimface.compress.space import ConfigSpace, macs_of
from slimface.errors import ConfigError
from test_compress_space import single_thread, toy_batch, toy_space, toy_supernet  # noqa: F401

# An analytic problem: cost grows with every width, the metric rewards two groups most, so the best
# feasible config is not simply the largest one.
SPACE = {"a": [8, 16, 24, 32], "b": [8, 16, 24, 32], "c": [8, 16, 24, 32], "d": [8, 16, 24, 32], "e": [8, 16]}
COST = {"a": 3, "b": 1, "c": 2, "d": 2, "e": 5}
VALUE = {"a": 1.0, "b": 0.9, "c": 0.1, "d": 0.35, "e": 0.05}


def cost_fn(cfg: dict[str, int]) -> tuple[int, int]:
    macs = sum(COST[g] * v for g, v in cfg.items()) * 1000
    return macs, sum(cfg.values())


def value_fn(cfg: dict[str, int]) -> float:
    return sum(VALUE[g] * v for g, v in cfg.items()) - 0.001 * sum(v * v for v in cfg.values())


def brute_best(space: ConfigSpace, budget: float) -> tuple[dict[str, int], float]:
    best = max((c for c in space.enumerate() if cost_fn(c)[0] < budget), key=value_fn)
    return best, value_fn(best)


BUDGET = 220_000  # largest costs 13*32*1000 - 5*16*1000 = 336k; smallest 104k


def test_exhaustive_finds_known_best_and_respects_budget(tmp_path: Path) -> None:
    space = ConfigSpace(SPACE)
    best, val = brute_best(space, BUDGET)
    out = tmp_path / "points.jsonl"
    res = search(None, space, BUDGET, value_fn, SearchConfig(method="auto"), cost_fn=cost_fn, out_jsonl=out)
    assert res.method == "exhaustive"
    assert res.best_cfg == best and res.best_metric == pytest.approx(val)
    assert res.best_macs < BUDGET
    assert all(r["macs"] < BUDGET for r in res.evaluated)
    n_feasible = sum(1 for c in space.enumerate() if cost_fn(c)[0] < BUDGET)
    assert len(res.evaluated) == n_feasible == res.new_evaluations
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == n_feasible and set(lines[0]) == {"config", "macs", "params", "metric"}


def test_evolution_finds_known_best() -> None:
    space = ConfigSpace(SPACE)
    best, val = brute_best(space, BUDGET)
    calls: list[str] = []

    def counted(cfg: dict[str, int]) -> float:
        calls.append(space.encode(cfg))
        return value_fn(cfg)

    evo = SearchConfig(method="evolution", population=24, generations=12)
    res = search(None, space, Budget("220k").count, counted, evo, seed=3, cost_fn=cost_fn)
    assert res.method == "evolution"
    assert res.best_cfg == best and res.best_metric == pytest.approx(val)
    assert len(calls) == len(set(calls)) == res.new_evaluations  # never evaluates a config twice
    assert len(calls) < space.size()  # did not degenerate into enumeration
    assert all(cost_fn(space.decode(c))[0] < BUDGET for c in calls)
    again = search(None, space, BUDGET, value_fn, evo, seed=3, cost_fn=cost_fn)
    assert again.best_config == res.best_config and [r["config"] for r in again.evaluated] == [
        r["config"] for r in res.evaluated]


def test_budget_too_small_is_one_line_error() -> None:
    space = ConfigSpace(SPACE)
    with pytest.raises(ConfigError) as e:
        search(None, space, 50_000, value_fn, cost_fn=cost_fn)
    msg = str(e.value)
    assert "\n" not in msg and "50.00K" in msg and "104.00K" in msg and "raise --budget" in msg
    with pytest.raises(ConfigError):
        search(None, space, 0, value_fn, cost_fn=cost_fn)
    with pytest.raises(ConfigError, match="method 'best'"):
        search(None, space, BUDGET, value_fn, SearchConfig(method="best"), cost_fn=cost_fn)  # type: ignore[arg-type]


def test_cache_reuse(tmp_path: Path) -> None:
    space = ConfigSpace(SPACE)
    cache = tmp_path / "cache.jsonl"
    evo = SearchConfig(method="evolution", population=16, generations=3)
    first = search(None, space, BUDGET, value_fn, evo, seed=1, cost_fn=cost_fn, cache_path=cache)
    assert first.new_evaluations > 0
    with open(cache, "a") as f:
        f.write('{"config": "8_8_8')  # a torn line from a killed run is ignored

    def boom(cfg: dict[str, int]) -> float:
        raise AssertionError(f"re-evaluated {cfg}")

    second = search(None, space, BUDGET, boom, evo, seed=1, cost_fn=cost_fn, cache_path=cache)
    assert second.new_evaluations == 0
    assert second.best_config == first.best_config and second.best_metric == first.best_metric


def test_pareto_front() -> None:
    pts = [{"macs": 1, "metric": 0.5}, {"macs": 2, "metric": 0.4}, {"macs": 3, "metric": 0.7},
           {"macs": 3, "metric": 0.6}, {"macs": 5, "metric": 0.9}, {"macs": 4, "metric": 0.9}]
    front = pareto_front(pts)
    assert [(p["macs"], p["metric"]) for p in front] == [(1, 0.5), (3, 0.7), (4, 0.9)]


class _FakeRecognizer(nn.Module):
    """L2-normalised pooled pixels: a deterministic stand-in for a face recognizer."""

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(F.adaptive_avg_pool2d(images, 4).flatten(1), dim=1)


def test_identity_metric_on_real_macs_search() -> None:
    net = toy_supernet()
    full = toy_space(net)
    # a 4-config slice of the toy space, searched with MACs counted on the supernet
    space = ConfigSpace({g: ([8, 32] if g in ("enc2", "res.0.mid") else [full.choices[g][-1]]) for g in full.groups})
    val = [toy_batch(seed=20), toy_batch(seed=21)]
    rec = _FakeRecognizer()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = identity_metric(net, space.largest(), val, rec, bn_batches=[toy_batch(seed=22)])
    assert -1.0 <= m <= 1.0
    assert m != identity_metric(net, space.smallest(), val, rec)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    budget = macs_of(net, space.largest())  # strict: the largest config itself is excluded
    res = search(net, space, budget, lambda c: identity_metric(net, c, val, rec))
    assert res.best_macs < budget and res.best_cfg != space.largest()
    assert len(res.evaluated) == 3
    assert res.best_macs == macs_of(net, res.best_cfg)


# ---------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        space = ConfigSpace(SPACE)
        mine: list[str] = []

        def fn(cfg: dict[str, int]) -> float:
            mine.append(space.encode(cfg))
            return value_fn(cfg)

        res = search(None, space, BUDGET, fn, SearchConfig(method="evolution", population=20, generations=4), seed=5,
                     cost_fn=cost_fn, cache_path=Path(out_dir) / "cache.jsonl")
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
            {"best": res.best_config, "metric": res.best_metric, "mine": mine,
             "evaluated": [r["config"] for r in res.evaluated]}))
    finally:
        dist.destroy_process_group()


def test_distributed_search_matches_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    space = ConfigSpace(SPACE)
    single = search(None, space, BUDGET, value_fn, SearchConfig(method="evolution", population=20, generations=4),
                    seed=5, cost_fn=cost_fn)
    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["best"] == single.best_config and r["metric"] == pytest.approx(single.best_metric)
        assert r["evaluated"] == [x["config"] for x in single.evaluated]
    assert r0["mine"] and r1["mine"] and not set(r0["mine"]) & set(r1["mine"])  # disjoint shards
    assert len(r0["mine"]) + len(r1["mine"]) == single.new_evaluations
    cached = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(cached) == single.new_evaluations  # only rank 0 writes the cache


def test_resolution_check() -> None:
    net = toy_supernet()
    full = toy_space(net)
    space = ConfigSpace({g: ([8, 16] if g == "enc2" else [full.choices[g][0]]) for g in full.groups})
    res = search(net, space, 1e9, lambda c: float(c["enc2"]), resolution=32)
    assert res.best_cfg["enc2"] == 16
    with pytest.raises(ValueError):
        search(net, space, 1e9, lambda c: 0.0, resolution=64)
