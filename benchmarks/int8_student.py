"""Issue 19's int8 bar in one table: the student a run searched for ONNX Runtime int8 latency
(``--set search.runtime=ort-int8 --set deploy.int8_nodes=faster``) against the MACs-searched student
under ONNX Runtime fp32, both at the deployment size (128x128, full width; random weights: latency
depends only on the architecture), alternated in one process, beside the two runs' average rank-1 by
their judge (the fp32 student's, and the int8 model's own from its run's evaluation).

    python benchmarks/int8_student.py --fp32-run runs/quick --int8-run runs/int8 --threads 2

Each student keeps its run's design (conv types, kernel cap); the int8 one keeps fp32 the convs its
run's export kept fp32 (``deploy.int8_nodes: faster``, chosen at the size its search priced).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from slimface.errors import ConfigError, run_or_exit


def student_of(run: Path, family: str, size: tuple[int, float] = (128, 1.0)) -> dict[str, Any]:
    """A finished run's searched student mapped to ``size``: config, design, fp32 modules, rank-1."""
    from slimface import stage_keys

    from slimface.evaluate.arch_bench import read_run_json, run_student

    code, design = run_student(run, family, size)
    result = read_run_json(run, family, "search", "result.json")
    ev = read_run_json(run, "evaluate", "results.json")
    marker = stage_keys.read_marker(run, f"export.{family}") or {}
    judge = ev["primary_judge"]
    models = ev["models"]

    def rank1(name: str) -> float | None:
        m = models.get(name)
        return None if m is None else float(m["rank1_by"][judge]["avg"])

    return {"run": str(run), "config": code, **design, "search_runtime": result.get("runtime"),
            "latency_size": result.get("latency_size"),
            "fp32_modules": list((marker.get("outputs") or {}).get("int8_fp32_modules") or []),
            "judge": judge, "rank1_fp32": rank1(f"{family} compressed"),
            "rank1_int8": rank1(f"{family} compressed (ONNX int8)"),
            "int8_refused": (ev.get("int8_refused") or {}).get(family)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32-run", type=Path, required=True, help="the run of the MACs-searched student")
    p.add_argument("--int8-run", type=Path, required=True, help="the run of the student searched for ort-int8")
    p.add_argument("--family", default="tpgan")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--size", default="128x1.0", help="RESOLUTIONxWIDTH the students are timed at (default full size)")
    p.add_argument("--teacher", action="store_true", help="time the teacher in ONNX Runtime fp32 too")
    p.add_argument("--out", type=Path, default=Path("int8_student.json"))
    args = p.parse_args(argv)
    return run_or_exit(lambda: run(args))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from slimface.deploy.latency_table import library_versions, machine_info, net_runner
    from slimface.evaluate.arch_bench import build_pair
    from slimface.evaluate.bench import benchmark_callables
    from slimface.nn.profile import count_macs

    fam = args.family
    try:
        res_s, width_s = args.size.lower().split("x")
        size = (int(res_s), float(width_s))
    except ValueError:
        raise ConfigError(f"--size {args.size!r}: give RESOLUTIONxWIDTH, e.g. 128x1.0") from None
    a, b = student_of(args.fp32_run, fam, size), student_of(args.int8_run, fam, size)
    teacher, s_fp32, _ = build_pair(fam, size[0], 3, size[1], a["config"], a["separable"], a["max_kernel"])
    _, s_int8, _ = build_pair(fam, size[0], 3, size[1], b["config"], b["separable"], b["max_kernel"])
    assert s_fp32 is not None and s_int8 is not None
    inputs = teacher.example_inputs()
    macs = {"teacher": count_macs(teacher, inputs), "fp32": count_macs(s_fp32, inputs),
            "int8": count_macs(s_int8, inputs)}
    with contextlib.ExitStack() as stack:
        fns = {"MACs-searched, ORT fp32": stack.enter_context(net_runner(s_fp32, "ort", args.threads))[0],
               "int8-searched, ORT fp32": stack.enter_context(net_runner(s_int8, "ort", args.threads))[0]}
        run8, info8 = stack.enter_context(net_runner(s_int8, "ort-int8", args.threads, b["fp32_modules"]))
        fns["int8-searched, ORT int8"] = run8
        if args.teacher:
            fns["teacher, ORT fp32"] = stack.enter_context(net_runner(teacher, "ort", args.threads))[0]
        timed = benchmark_callables(fns, warmup=args.warmup, runs=args.runs, threads=args.threads, block=5)
    p50 = {k: v["latency_median_ms"] for k, v in timed.items()}
    speedup = p50["MACs-searched, ORT fp32"] / p50["int8-searched, ORT int8"]
    gap = (None if b["rank1_int8"] is None or a["rank1_fp32"] is None else b["rank1_int8"] - a["rank1_fp32"])
    res = {"family": fam, "size": list(size), "threads": args.threads, "runs": args.runs, "machine": machine_info(),
           "versions": library_versions(), "fp32_student": a, "int8_student": b, "macs": macs,
           "int8_ops": info8, "latency": {k: {kk: v[kk] for kk in ("latency_median_ms", "latency_p90_ms")}
                                          for k, v in timed.items()},
           "int8_vs_macs_fp32": speedup, "rank1_int8_minus_fp32_student": gap}
    print(f"{fam} at {size[0]}x{size[0]}, width {size[1]:g}, {args.threads} thread(s), {res['machine']['cpu']}; "
          f"p50 of {args.runs} alternated calls")
    print("| model | MACs | ORT p50 (ms) | judge avg |\n|---|---|---|---|")
    for k, ms in p50.items():
        who = "fp32" if k.startswith("MACs") else "int8" if k.startswith("int8") else "teacher"
        r1 = (a["rank1_fp32"] if k.startswith("MACs") else b["rank1_int8"] if k.endswith("int8")
              else b["rank1_fp32"] if k.startswith("int8") else None)
        print(f"| {k} | {macs[who] / 1e9:.2f}G | {ms:.1f} | {'–' if r1 is None else f'{r1:.2f}'} |")
    print(f"int8-searched student in int8 vs MACs-searched student in ORT fp32: {speedup:.2f}x faster; rank-1 "
          + ("int8 refused: " + b["int8_refused"] if b["int8_refused"] else
             f"{'n/a' if gap is None else f'{gap:+.2f}'} points"))
    args.out.write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    main()
