"""Which student design does int8 speed up? At full size (128x128, official widths; random weights:
latency depends only on the architecture), normal-conv (dense) students pruned to a fraction of every
width, in ONNX Runtime fp32 and int8, against a run's MACs-searched separable student in ONNX Runtime
fp32, all alternated in one process.

    python benchmarks/int8_dense_students.py --from-run runs/quick --fractions 0.3 0.2 --threads 2

ONNX Runtime's int8 convs pay on dense 3x3 convs with many channels and lose on depthwise ones
(docs/experiments/2026-12-int8-kernels.md): the question is whether a dense student under the same
MACs budget beats the separable one once both run as deployed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from slimface.errors import run_or_exit


def dense_config(fraction: float, model: str = "tpgan") -> dict[str, int]:
    """Every width group of the full-size dense design at the allowed width nearest ``fraction``."""
    from slimface.compress.extract import student_space
    from slimface.nn.super_layers import width_groups

    supernet, space = student_space(model, 128, 3, 1.0, separable=False)
    full = width_groups(supernet)
    return {g: (min(ch, key=lambda c: (abs(c - fraction * full[g]), c)) if g in full else ch[0])
            for g, ch in space.choices.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-run", type=Path, required=True, help="a finished run: its searched (separable) student")
    p.add_argument("--family", default="tpgan")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("int8_dense_students.json"))
    args = p.parse_args(argv)
    return run_or_exit(lambda: run(args))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from slimface.deploy.latency_table import library_versions, machine_info, net_runner
    from slimface.errors import ConfigError
    from slimface.evaluate.arch_bench import build_pair, run_student
    from slimface.evaluate.bench import benchmark_callables
    from slimface.families.registry import build_generator
    from slimface.nn.profile import count_macs

    fam = args.family
    if not all(0 < f <= 1 for f in args.fractions):
        raise ConfigError(f"--fractions {args.fractions}: each must be in (0, 1]")
    code, design = run_student(args.from_run, fam)
    teacher, separable, _ = build_pair(fam, 128, 3, 1.0, code, design["separable"], design["max_kernel"])
    assert separable is not None
    inputs = teacher.example_inputs()
    t_macs = count_macs(teacher, inputs)
    nets: dict[str, tuple[Any, str]] = {"separable (the run's search)": (separable, "ort")}
    macs = {"separable (the run's search)": count_macs(separable, inputs)}
    for f in args.fractions:
        dense = build_generator(fam, 128, 3, 1.0, separable=False, sub=dense_config(f, fam)).eval()
        for rt in ("ort", "ort-int8"):
            name = f"dense at {f:g} width ({'int8' if rt == 'ort-int8' else 'fp32'})"
            nets[name] = (dense, rt)
            macs[name] = count_macs(dense, inputs)
    with contextlib.ExitStack() as stack:
        fns = {name: stack.enter_context(net_runner(net, rt, args.threads))[0] for name, (net, rt) in nets.items()}
        timed = benchmark_callables(fns, warmup=args.warmup, runs=args.runs, threads=args.threads, block=5)
    ref = timed["separable (the run's search)"]["latency_median_ms"]
    rows = [{"student": k, "runtime": "ONNX Runtime " + ("int8" if rt == "ort-int8" else "fp32"),
             "macs": macs[k], "fewer_macs": t_macs / macs[k], "p50_ms": timed[k]["latency_median_ms"],
             "p90_ms": timed[k]["latency_p90_ms"], "vs_separable_fp32": ref / timed[k]["latency_median_ms"]}
            for k, (_, rt) in nets.items()]
    res = {"family": fam, "run": str(args.from_run), "threads": args.threads, "runs": args.runs,
           "machine": machine_info(), "versions": library_versions(), "teacher_macs": t_macs, "rows": rows}
    print(f"{fam} at 128x128, full width, {args.threads} thread(s), {res['machine']['cpu']}; p50 of {args.runs} "
          "alternated calls, random weights")
    print("| student | runtime | MACs (fewer than the teacher) | p50 ms | faster than the separable student in fp32 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['student']} | {r['runtime']} | {r['macs'] / 1e9:.2f}G ({r['fewer_macs']:.1f}x) | {r['p50_ms']:.1f} "
              f"| {r['vs_separable_fp32']:.2f}x |")
    args.out.write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    main()
