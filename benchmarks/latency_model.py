"""How well does a latency table predict whole sub-networks? Median error on random sub-networks.

Usage:
    PYTHONPATH=src python benchmarks/latency_model.py --model tpgan --resolution 64 --width-mult 0.25 \
        --runtime torch --threads 1 --subnets 20 [--table TABLE.json] [--out latency_model.json]

Builds the table (or loads ``--table``), then measures ``--subnets`` random sub-networks of the
design space (sizes spread over it, :func:`spread_sample`; random weights, batch 1; seeds other than
the table's fit ones) in the runtime, each alternated in blocks with the smallest sub-network (its
latency = measured ratio x the smallest one's unloaded latency, so other load cancels out), and
prints predicted vs measured latency as Markdown, with the median and 90th-percentile relative
error; the JSON holds every figure plus the CPU, threads and library versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimface.compress.space import ConfigSpace, macs_of
from slimface.deploy.latency_table import (
    RUNTIMES,
    LatencyModel,
    LatencyTable,
    _build,
    _family,
    build_table,
    measure_relative,
    spread_sample,
)


def run(model: str, resolution: int, width_mult: float, runtime: str, threads: int, subnets: int,
        table_path: str | None, seed: int = 1, fit_subnets: int = 6, int8_where_faster: bool = False) -> dict[str, Any]:
    fam = _family(model)
    t0 = time.perf_counter()
    if table_path and Path(table_path).is_file():
        table = LatencyTable.load(table_path)
    else:
        table = build_table(fam, resolution, 3, width_mult, runtime, threads, fit_subnets=fit_subnets,
                            progress=lambda s: print(s, file=sys.stderr, flush=True))
        if table_path:
            table.save(table_path)
    build_s = time.perf_counter() - t0
    supernet = _build(fam, table.model, None)
    space = ConfigSpace.from_supernet(fam, supernet)
    lm = LatencyModel(table, supernet, int8_where_faster=int8_where_faster)
    # baseline: latency proportional to MACs (plus a constant), fitted on the table's own fit sub-networks
    fit_pts = [(macs_of(supernet, space.decode(f["config"])) / 1e6, f["measured_ms"]) for f in table.fit]
    if len(fit_pts) >= 2:
        slope, icpt = np.polyfit([p[0] for p in fit_pts], [p[1] for p in fit_pts], 1)
    else:
        slope, icpt = 0.0, float(fit_pts[0][1]) if fit_pts else 0.0
    gen = torch.Generator().manual_seed(1000 + seed)
    cfgs = [spread_sample(space, gen) for _ in range(subnets)]
    keep = (lambda c: lm.fp32_layers(c)) if int8_where_faster else None
    # each sub-network alternated with the smallest one in blocks: its latency is the measured ratio
    # times the smallest one's unloaded latency, so load from other jobs on the machine cancels out
    ratios, ref_ms = measure_relative(fam, table.model, cfgs, space.smallest(), table.runtime, table.threads,
                                      fp32_modules=keep)
    ref_pred = lm(space.smallest())
    rows = []
    for i, (cfg, ratio) in enumerate(zip(cfgs, ratios)):
        measured = ratio * ref_ms
        predicted = lm(cfg)
        macs = macs_of(supernet, cfg)
        by_macs = float(icpt + slope * macs / 1e6)
        rows.append({"config": space.encode(cfg), "macs": macs, "predicted_ms": predicted, "measured_ms": measured,
                     "measured_ratio_to_smallest": ratio, "predicted_ratio_to_smallest": predicted / ref_pred,
                     "rel_error": (predicted - measured) / measured, "macs_model_ms": by_macs,
                     "macs_model_rel_error": (by_macs - measured) / measured})
        print(f"  sub-network {i + 1}/{subnets}: predicted {predicted:.2f} ms, measured {measured:.2f} ms",
              file=sys.stderr, flush=True)
    errs = sorted(abs(r["rel_error"]) for r in rows)
    macs_errs = sorted(abs(r["macs_model_rel_error"]) for r in rows)
    ratio_errs = sorted(abs(r["predicted_ratio_to_smallest"] / r["measured_ratio_to_smallest"] - 1) for r in rows)
    macs_ref = float(icpt + slope * macs_of(supernet, space.smallest()) / 1e6)
    macs_ratio_errs = sorted(abs((r["macs_model_ms"] / macs_ref) / r["measured_ratio_to_smallest"] - 1) for r in rows)
    return {
        "model": table.model, "runtime": table.runtime, "threads": table.threads, "machine": table.machine,
        "versions": table.versions, "table_sites": len(table.sites), "table_build_seconds": build_s,
        "fit": {"overhead_ms": table.overhead_ms, "scale": table.scale, "ms_per_melem": table.ms_per_melem,
                "subnets": table.fit},
        "int8_where_faster": int8_where_faster,
        "median_abs_rel_error": statistics.median(errs) if errs else float("nan"),
        "p90_abs_rel_error": errs[min(len(errs) - 1, int(0.9 * len(errs)))] if errs else float("nan"),
        "macs_model_median_abs_rel_error": statistics.median(macs_errs) if macs_errs else float("nan"),
        "median_abs_ratio_error": statistics.median(ratio_errs) if ratio_errs else float("nan"),
        "max_abs_ratio_error": ratio_errs[-1] if ratio_errs else float("nan"),
        "macs_model_median_abs_ratio_error": statistics.median(macs_ratio_errs) if macs_ratio_errs else float("nan"),
        "smallest_measured_ms": ref_ms, "smallest_predicted_ms": ref_pred,
        "subnets": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    m = res["model"]
    lines = [
        f"## Latency model: {m['family']} {m['resolution']}² ×{m['width_mult']:g}, runtime {res['runtime']}"
        + (" (int8 where faster)" if res["int8_where_faster"] else ""),
        "",
        f"CPU {res['machine'].get('cpu')} ({res['machine'].get('cpu_features')}), {res['threads']} thread(s); "
        + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
        f"Table: {res['table_sites']} layer sites, built in {res['table_build_seconds']:.0f} s; prediction = "
        f"{res['fit']['overhead_ms']:.2f} ms + {res['fit']['scale']:.3f} x sum of layers + "
        f"{res['fit']['ms_per_melem']:.2f} ms per million activation elements (fitted on "
        f"{len(res['fit']['subnets'])} sub-networks).",
        "",
        "| sub-network | MACs | predicted (ms) | measured (ms) | error | MACs-linear model error |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["subnets"]):
        lines.append(f"| {i + 1} | {r['macs'] / 1e6:.1f}M | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
                     f"{100 * r['rel_error']:+.1f}% | {100 * r['macs_model_rel_error']:+.1f}% |")
    lines += ["", f"**Median |error| {100 * res['median_abs_rel_error']:.1f}%**, 90th percentile "
              f"{100 * res['p90_abs_rel_error']:.1f}% over {len(res['subnets'])} random sub-networks "
              f"(sizes spread over the space); latency as a linear function of MACs, fitted on the same "
              f"sub-networks: median {100 * res['macs_model_median_abs_rel_error']:.1f}%.",
              "", f"Relative to the smallest sub-network (the ratio measured alternated in one run, which other "
              f"load on the machine does not move): median |error| {100 * res['median_abs_ratio_error']:.1f}% "
              f"(max {100 * res['max_abs_ratio_error']:.1f}%); MACs-linear model "
              f"{100 * res['macs_model_median_abs_ratio_error']:.1f}%. Smallest sub-network: predicted "
              f"{res['smallest_predicted_ms']:.2f} ms, measured {res['smallest_measured_ms']:.2f} ms."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tpgan")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--width-mult", type=float, default=0.25)
    ap.add_argument("--runtime", choices=RUNTIMES, default="torch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--fit-subnets", type=int, default=6)
    ap.add_argument("--int8-where-faster", action="store_true",
                    help="ort-int8: keep convs fp32 where the table says int8 is slower")
    ap.add_argument("--table", help="load this table if it exists, else build and save it there")
    ap.add_argument("--out", help="write the JSON here")
    args = ap.parse_args(argv)
    res = run(args.model, args.resolution, args.width_mult, args.runtime, args.threads, args.subnets, args.table,
              fit_subnets=args.fit_subnets, int8_where_faster=args.int8_where_faster)
    print(markdown(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
