"""Table 4 at the paper's setting: full-size (128x128, official widths) teachers against compressed
students, batch 1, teacher and student alternated in one process; random weights (latency and
memory depend only on the architecture).

    python benchmarks/bench_full_size.py --models tpgan crgan --warmup 100 --runs 100 --out bench.json
    python benchmarks/bench_full_size.py --models tpgan --from-run runs/quick --threads 2 \
        --torch-mode eager channels_last compiled      # one row per PyTorch mode (slimface.deploy.torch_modes)

The student of each family is ``--student`` (a config string, ``smallest``) or, with ``--from-run
RUN_DIR``, the config the run's search chose, mapped onto the full-size design space (each group
keeps its fraction of the full width), in the run's design (conv types, kernel cap).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from slimface.errors import run_or_exit
from slimface.evaluate.arch_bench import bench_report, run_student
from slimface.nn.counts import format_count


def student_for(model: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The full-size student's config and design (conv types, kernel cap): ``--student`` and
    ``--max-kernel``, or with ``--from-run`` the run's searched config and exported design."""
    if args.from_run:
        return run_student(Path(args.from_run), model)
    return args.student, {"max_kernel": args.max_kernel}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tpgan", "crgan"])
    p.add_argument("--student", default="smallest", help="config string or 'smallest'")
    p.add_argument("--from-run", help="a finished `slimface run` directory: use its searched configs and design")
    p.add_argument("--max-kernel", type=int, help="the student's kernel cap (student.max_kernel), with --student")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--torch-mode", nargs="+", default=["eager"], choices=["eager", "channels_last", "compiled"],
                   help="how PyTorch runs both models; several modes give one row each")
    p.add_argument("--out", type=Path, default=Path("bench_full_size.json"))
    args = p.parse_args(argv)
    return run_or_exit(lambda: run(args))


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = ["| model | PyTorch mode | teacher params / MACs | student params / MACs | teacher ms | student ms "
            "| speedup (p50) | teacher MB | student MB | memory reduction |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        code, design = student_for(model, args)
        for mode in args.torch_mode:
            r = bench_report(model, 128, 1.0, student=code, warmup=args.warmup, runs=args.runs,
                             threads=args.threads, device=args.device, torch_mode=mode, **design)
            results[model if len(args.torch_mode) == 1 else f"{model} {mode}"] = r
            t, s, tc, sc = r["teacher"], r["student"], r["teacher_counts"], r["student_counts"]
            p50 = t["latency_p50_ms"] / s["latency_p50_ms"]
            rows.append(
                f"| {model} | {mode} | {format_count(tc['params'])} / {format_count(tc['macs'])} | "
                f"{format_count(sc['params'])} / {format_count(sc['macs'])} | {t['latency_p50_ms']:.1f} | "
                f"{s['latency_p50_ms']:.1f} | {p50:.2f}× | {t['peak_memory_mb']:.0f} | "
                f"{s['peak_memory_mb']:.0f} | {r['memory_reduction']:.2f}× |"
            )
            print(f"{model} ({mode}): speedup {p50:.2f}x (p50), memory reduction {r['memory_reduction']:.2f}x",
                  flush=True)
    table = "\n".join(rows)
    first = next(iter(results.values()))
    print(f"\ndevice {args.device} ({first['machine'].get('cpu')}), threads {first['threads']}, warm-up "
          f"{args.warmup}, runs {args.runs} (p50 latency, teacher and student alternated)\n\n{table}")
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
