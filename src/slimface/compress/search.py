"""Search the trained supernet for the best sub-network under a MACs budget (no retraining).

Exhaustive when the space is small, evolutionary otherwise (reference defaults: population 100,
parent ratio 0.25, mutation ratio 0.5). Only configs with MACs < budget are candidates: initial
samples are drawn with rejection, and mutation/crossover retry until their child is feasible.

Every evaluated config is cached (in memory and appended to ``cache_path`` as JSON lines, so an
interrupted or repeated search skips what it already knows; the cache belongs to one supernet
checkpoint and one validation set -- keep it in that run's directory) and written to ``out_jsonl``
for Pareto plots. Under ``torch.distributed`` every generation's new candidates are split into
disjoint shards per rank and the results all-gathered, so each rank ends with the same answer as a
single process (candidate generation only depends on the seed and on gathered results).

Candidates' MACs are torchprofile's count (``count_macs``) computed by the eager counter
``count_macs_fast`` (same integer, no jit trace), after a cheap conv-only lower bound has
screened them; the winner's count is checked once against torchprofile itself.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.compress.config import SearchConfig
from slimface.compress.bn import Batch, default_forward, preserve_bn, recalibrate_bn
from slimface.compress.space import Config, ConfigSpace, active_config, macs_of, params_of
from slimface.errors import ConfigError
from slimface.fileio import atomic_write, set_aside_unless_keyed, write_key
from slimface.models.judge import refuse_judge
from slimface.nn.modes import module_mode, unwrap
from slimface.nn.counts import format_count
from slimface.nn.profile import ConvMacsModel
from slimface.train import distributed as D

EvaluateFn = Callable[[Config], float]  # fn(cfg) -> metric (higher is better)


@dataclass
class SearchResult:
    best_cfg: Config
    best_config: str
    best_metric: float
    best_macs: int
    best_params: int
    evaluated: list[dict[str, Any]] = field(default_factory=list)
    new_evaluations: int = 0
    method: str = ""
    best_latency_ms: float | None = None  # predicted, when searched under a latency budget
    cache_set_aside: Path | None = None  # where a cache of another key went (``cache_key``)


# -------------------------------------------------------------------- metrics
def _eval_outputs(model: nn.Module, cfg: Config, val_batches: Sequence[Batch], bn_batches: Sequence[Batch],
                  fn: Callable[[Tensor, Batch], Tensor]) -> float:
    """Mean of ``fn(output, batch)`` per sample over ``val_batches`` for sub-network ``cfg``."""
    if not val_batches:
        raise ConfigError("the validation split is empty; hold out some training identities for search")
    inner = unwrap(model)
    total, count = 0.0, 0
    with active_config(inner, cfg), preserve_bn(inner), torch.no_grad():
        recalibrate_bn(inner, bn_batches or val_batches)
        with module_mode(inner):
            for batch in val_batches:
                values = fn(default_forward(inner, batch), batch)
                total += float(values.sum())
                count += values.numel()
    return total / max(count, 1)


def identity_metric(supernet: nn.Module, cfg: Config, val_batches: Sequence[Batch], recognizer: Any,
                    bn_batches: Sequence[Batch] | None = None) -> float:
    """Mean cosine similarity between recognizer features of the sub-network's output and of the
    ground-truth frontal, on a validation split of TRAINING identities (never test identities),
    after BN recalibration on ``bn_batches`` (default: the validation batches). ``recognizer`` is
    the loss recognizer: a judge is refused, so no search decision is ever made by one."""
    refuse_judge(recognizer, "the search metric")

    def fn(out: Tensor, batch: Batch) -> Tensor:
        a = recognizer.embed(out)
        b = recognizer.embed(batch["frontal"])
        return F.cosine_similarity(a, b, dim=1)

    return _eval_outputs(supernet, cfg, val_batches, bn_batches or [], fn)


def recon_metric(supernet: nn.Module, cfg: Config, val_batches: Sequence[Batch],
                 bn_batches: Sequence[Batch] | None = None) -> float:
    """Negative mean L1 to the ground truth (higher is better): the metric without a recognizer."""
    return _eval_outputs(
        supernet, cfg, val_batches, bn_batches or [],
        lambda out, b: -(out - b["frontal"]).abs().flatten(1).mean(1),
    )


# -------------------------------------------------------------------- pareto
def pareto_front(points: Sequence[Mapping[str, Any]], cost: str = "macs", value: str = "metric") -> list[dict[str, Any]]:
    """Points not dominated by another (lower-or-equal cost and strictly higher value, or lower cost
    and equal value), sorted by cost."""
    ordered = sorted(points, key=lambda p: (p[cost], -p[value]))
    front: list[dict[str, Any]] = []
    best = -math.inf
    for p in ordered:
        if p[value] > best:
            front.append(dict(p))
            best = p[value]
    return front


# -------------------------------------------------------------------- cache
def _read_cache(path: Path | None, space: ConfigSpace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            space.decode(rec["config"])
            out[rec["config"]] = {"config": rec["config"], "macs": int(rec["macs"]),
                                  "params": int(rec["params"]), "metric": float(rec["metric"])}
        except (ValueError, KeyError, TypeError, ConfigError):
            continue  # a torn last line from a killed run, or a record of another space
    return out


# -------------------------------------------------------------------- search
class _Searcher:
    def __init__(self, space: ConfigSpace, budget: float, evaluate_fn: EvaluateFn,
                 cost_fn: Callable[[Config], tuple[int, int]], cache_path: Path | None,
                 bound_fn: Callable[[Config], int] | None = None,
                 latency_fn: Callable[[Config], float] | None = None, latency_budget: float | None = None,
                 cache_key: str | None = None) -> None:
        self.space, self.budget, self.evaluate_fn, self.cost_fn = space, budget, evaluate_fn, cost_fn
        self.latency_fn, self.latency_budget = latency_fn, latency_budget
        self._latency: dict[str, float] = {}
        self.bound_fn = bound_fn
        self.cache_path = cache_path
        self.cache_key = cache_key
        self.cache_set_aside: Path | None = None
        if cache_path is not None and cache_key is not None and D.is_main():
            # a cache of another supernet / recognizer / validation set moves aside before it is read
            self.cache_set_aside = set_aside_unless_keyed(cache_path, cache_key)
        D.barrier()
        self.cache = _read_cache(cache_path, space)
        self.order: list[str] = []  # configs touched by this search, in order
        self.new = 0
        self._costs: dict[str, tuple[int, int]] = {k: (r["macs"], r["params"]) for k, r in self.cache.items()}

    def cost(self, cfg: Config) -> tuple[int, int]:
        key = self.space.encode(cfg)
        if key not in self._costs:
            self._costs[key] = self.cost_fn(cfg)
        return self._costs[key]

    def latency(self, cfg: Config) -> float | None:
        """Predicted latency (ms) of ``cfg`` when searching under a latency budget, else None."""
        if self.latency_fn is None:
            return None
        key = self.space.encode(cfg)
        if key not in self._latency:
            self._latency[key] = float(self.latency_fn(cfg))
        return self._latency[key]

    def feasible(self, cfg: Config) -> bool:
        """Exact MACs under the budget (and predicted latency within the latency budget, if any); a
        cheap lower bound (when given) rejects most MACs misses first."""
        if self.latency_budget is not None and (self.latency(cfg) or 0.0) > self.latency_budget:
            return False
        if self.bound_fn is not None and self.space.encode(cfg) not in self._costs and self.bound_fn(cfg) >= self.budget:
            return False
        return self.cost(cfg)[0] < self.budget

    def with_latency(self, rec: dict[str, Any]) -> dict[str, Any]:
        lat = self.latency(self.space.decode(rec["config"]))
        return rec if lat is None else {**rec, "latency_ms": lat}

    def repair(self, cfg: Config, gen: torch.Generator) -> Config:
        """Shrink random groups until the cheap bound fits the budget, so the sampled candidates
        land near the budget instead of being rejected one costly count each."""
        if self.latency_budget is not None and self.latency_fn is not None:
            cfg = self.space.shrink(cfg, lambda c: self.latency(c) or 0.0, self.latency_budget, gen)
        if self.bound_fn is None:
            return cfg
        # the bound misses norms and element-wise ops (a few % of the exact count): aim below it
        return self.space.shrink(cfg, self.bound_fn, 0.97 * self.budget, gen)

    def evaluate(self, cfgs: Sequence[Config]) -> list[dict[str, Any]]:
        """Records for ``cfgs``; unknown ones are evaluated (sharded over ranks) and cached."""
        keys = list(dict.fromkeys(self.space.encode(c) for c in cfgs))
        todo = [k for k in keys if k not in self.cache]
        rank, world = D.rank(), D.world_size()
        mine = [(k, float(self.evaluate_fn(self.space.decode(k)))) for k in todo[rank::world]]
        results = dict(item for part in D.all_gather_object(mine) for item in part)
        new_records = []
        for k in todo:  # keep the single-process order
            macs, params = self.cost(self.space.decode(k))
            rec = {"config": k, "macs": int(macs), "params": int(params), "metric": results[k]}
            self.cache[k] = rec
            new_records.append(rec)
        self.new += len(new_records)
        if new_records and self.cache_path is not None and D.is_main():
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path, "a") as f:
                for rec in new_records:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if self.cache_key is not None:
                write_key(self.cache_path, self.cache_key)
        for k in keys:
            if k not in self.order:
                self.order.append(k)
        return [self.cache[k] for k in keys]


def search(
    supernet: nn.Module | None,
    space: ConfigSpace,
    budget_macs: float,
    evaluate_fn: EvaluateFn,
    cfg: SearchConfig | None = None,
    *,
    seed: int = 0,
    cache_path: str | Path | None = None,
    out_jsonl: str | Path | None = None,
    exhaustive_limit: int = 1000,
    max_tries: int = 1000,
    cost_fn: Callable[[Config], tuple[int, int]] | None = None,
    resolution: int | None = None,
    latency_fn: Callable[[Config], float] | None = None,
    latency_budget_ms: float | None = None,
    cache_key: str | None = None,
) -> SearchResult:
    """Best sub-network (highest ``evaluate_fn(cfg)``) with MACs < ``budget_macs``.

    ``cfg``: the search settings (:class:`~slimface.compress.config.SearchConfig`: method, population,
    generations, parent/mutation ratios, mutation probability; its budget and batches are the stage's).
    ``cost_fn(cfg) -> (macs, params)`` defaults to counting on ``supernet`` (at ``resolution``, which
    must be the supernet's own if given) (:func:`~slimface.compress.space.macs_of`). Evolution:
    ``population`` feasible random configs, then per generation the best ``parent_ratio`` survive,
    ``mutation_ratio`` of the population is made by mutating parents (each group resampled with
    ``mutate_prob``) and the rest by crossover.
    ``latency_fn(cfg) -> ms`` (e.g. a :class:`~slimface.deploy.latency_table.LatencyModel`): every
    evaluated record gets ``latency_ms``; with ``latency_budget_ms`` only configs predicted at or
    under it are candidates (as well as under the MACs budget). ``cache_key``: what the cached
    metrics were computed from (the stage's resume key); a ``cache_path`` of another key is moved aside
    before it is read, and the key is recorded beside the cache once a record is written.
    """
    sc = cfg if cfg is not None else SearchConfig()
    sc.validate()
    budget = float(budget_macs)
    if not budget > 0:
        raise ConfigError(f"budget {budget_macs!r} is not a positive number of MACs")
    method, population, generations = sc.method, sc.population, sc.generations
    parent_ratio, mutation_ratio, mutate_prob = sc.parent_ratio, sc.mutation_ratio, sc.mutate_prob
    bound_fn: Callable[[Config], int] | None = None
    reference_fn: Callable[[Config], int] | None = None
    if cost_fn is None:
        if supernet is None:
            raise ValueError("search needs a supernet or a cost_fn")
        net = supernet
        # candidates are counted by the fast eager counter (the same integer as torchprofile's
        # count_macs, ~10x cheaper); the winner is checked once against torchprofile itself
        cost_fn = lambda c: (macs_of(net, c, resolution), params_of(net, c))  # noqa: E731
        reference_fn = lambda c: macs_of(net, c, resolution, reference=True)  # noqa: E731
        if hasattr(net, "example_inputs"):
            bound_fn = ConvMacsModel(net, net.example_inputs(1))  # type: ignore[operator]

    if latency_budget_ms is not None and latency_fn is None:
        raise ValueError("a latency budget needs a latency_fn (a latency model of the target runtime)")
    s = _Searcher(space, budget, evaluate_fn, cost_fn, Path(cache_path) if cache_path else None, bound_fn,
                  latency_fn, latency_budget_ms, cache_key)
    if latency_budget_ms is not None and (s.latency(space.smallest()) or 0.0) > latency_budget_ms:
        raise ConfigError(
            f"latency budget {latency_budget_ms:g} ms is below the smallest sub-network's predicted "
            f"{s.latency(space.smallest()):.2f} ms on this runtime; raise --latency above it"
        )
    smallest = s.cost(space.smallest())[0]
    if smallest >= budget:
        raise ConfigError(
            f"budget {format_count(budget)} is below the smallest sub-network ({format_count(smallest)}); "
            f"raise --budget above {format_count(smallest)}"
        )
    if method == "auto":
        method = "exhaustive" if space.size() <= exhaustive_limit else "evolution"

    if method == "exhaustive":
        cands = [c for c in space.enumerate(max(exhaustive_limit, space.size())) if s.feasible(c)]
        s.evaluate(cands)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        n_parents = max(1, int(round(population * parent_ratio)))
        n_mut = int(round(population * mutation_ratio))

        def retry(make: Callable[[], Config]) -> Config:
            for _ in range(max_tries):
                c = s.repair(make(), gen)
                if s.feasible(c):
                    return c
            return space.smallest()  # always feasible here (checked above)

        pop = [retry(lambda: space.sample(gen)) for _ in range(population)]
        records = s.evaluate(pop)
        for _ in range(generations):
            records = sorted({r["config"]: r for r in records}.values(), key=lambda r: (-r["metric"], r["config"]))
            parents = [space.decode(r["config"]) for r in records[:n_parents]]

            def pick() -> Config:
                return parents[int(torch.randint(len(parents), (1,), generator=gen))]

            children = [retry(lambda: space.mutate(pick(), mutate_prob, gen)) for _ in range(n_mut)]
            children += [retry(lambda: space.crossover(pick(), pick(), gen))
                         for _ in range(population - n_parents - n_mut)]
            records = records[:n_parents] + s.evaluate(children)

    evaluated = [s.with_latency(s.cache[k]) for k in s.order]
    best = max(evaluated, key=lambda r: (r["metric"], -r["macs"], r["config"]))
    if reference_fn is not None:
        ref = int(reference_fn(space.decode(best["config"])))
        if ref != int(best["macs"]):  # a bug in count_macs_fast: report torchprofile's number
            warnings.warn(f"search: fast MAC count {best['macs']} of {best['config']} differs from "
                          f"torchprofile's {ref}; reporting torchprofile's", RuntimeWarning, stacklevel=2)
            best = dict(best, macs=ref)
    if out_jsonl is not None and D.is_main():
        atomic_write(Path(out_jsonl), "".join(json.dumps(r, sort_keys=True) + "\n" for r in evaluated))
    D.barrier()
    return SearchResult(
        best_cfg=space.decode(best["config"]), best_config=best["config"], best_metric=best["metric"],
        best_macs=best["macs"], best_params=best["params"], evaluated=evaluated, new_evaluations=s.new,
        method=method, best_latency_ms=best.get("latency_ms"), cache_set_aside=s.cache_set_aside,
    )


__all__ = ["SearchResult", "search", "identity_metric", "recon_metric", "pareto_front"]
