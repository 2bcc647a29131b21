"""The ``slimface`` command.

Every sub-command turns user mistakes (SlimfaceError) into one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from slimface.errors import ConfigError, SlimfaceError

DEFAULT_CONFIG = Path("configs/quick.yaml")

#: OS errors that mean "the place you asked us to write to cannot take it" (user-fixable, one line).
_USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on device; free disk space or use another --out (files already written are intact)",
    errno.EDQUOT: "disk quota exceeded; free space or use another --out (files already written are intact)",
    errno.EACCES: "permission denied; fix the permissions or use another --out",
    errno.EROFS: "read-only file system; use a writable --out",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line (exit 2) like every other input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}; see '{self.prog} --help'\n")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set a.b=3`` overrides; values are parsed as YAML scalars (3, 0.5, true, "x")."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set teacher.train.steps=50")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load_pipeline_config(args: argparse.Namespace):  # noqa: ANN202
    from slimface.config import load_config
    from slimface.pipeline_config import PipelineConfig

    overrides = _parse_set(getattr(args, "set", []) or [])
    if getattr(args, "out", None):
        overrides["out_dir"] = str(args.out)
    return load_config(PipelineConfig, args.config, overrides)


# ---------------------------------------------------------------------------------- commands
def _run_pipeline(args: argparse.Namespace, only: Sequence[str] | None, force: bool) -> int:
    cfg = _load_pipeline_config(args)  # validated before torch is imported: config errors are instant
    from slimface.pipeline import Pipeline

    Pipeline(cfg, progress=not args.no_progress).run(only=only, force=force)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(args, args.only, args.force)


def cmd_search(args: argparse.Namespace) -> int:
    if args.budget:
        args.set = list(args.set or []) + [f"search.budget={args.budget}"]
    if args.latency:
        args.set = list(args.set or []) + [f"search.latency={args.latency}"]
    if args.runtime:
        args.set = list(args.set or []) + [f"search.runtime={args.runtime}"]
    if args.latency_size:
        args.set = list(args.set or []) + [f"search.latency_size={args.latency_size}"]
    if args.threads:
        args.set = list(args.set or []) + [f"search.threads={args.threads}"]
    return _run_pipeline(args, ["search"], force=True)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """The sensitivity table of every family's teacher (training data, recognizer and teacher first
    when they are not done): ``OUT/<family>/sensitivity/sensitivity.{json,md,png}``."""
    args.set = list(args.set or []) + ["student.sensitivity=true"]
    return _run_pipeline(args, ["data", "recognizer", "teacher", "sensitivity"], force=False)


def cmd_status(args: argparse.Namespace) -> int:
    """Each stage of a run as done / stale (what changed) / missing; runs and writes nothing."""
    cfg = _load_pipeline_config(args)
    from slimface.pipeline import Pipeline

    pipe = Pipeline(cfg, progress=False)
    rows = pipe.status()
    print(f"slimface status '{cfg.name}' -> {pipe.out}")
    width = max(len(r.stage) for r in rows)
    for row in rows:
        print(row.line(width))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if getattr(args, "benchmark", None):
        return _cmd_benchmark(args)
    return _run_pipeline(args, ["evaluate", "report"], force=True)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    """``evaluate --benchmark cfp-fp``: a real-photo benchmark of an exported model."""
    if not args.data or not args.model:
        raise ConfigError(f"--benchmark {args.benchmark} needs --data ROOT (the CFP folder) and --model EXPORT")
    cfg = _load_pipeline_config(args)
    from slimface.evaluate.cfp_eval import run_cfp_benchmark
    from slimface.pipeline import Pipeline

    md, _ = run_cfp_benchmark(
        cfg, args.data, args.model, recognizers=args.recognizer, detectors=_detectors(args.detectors),
        use_fiducials=not args.no_fiducials, results_dir=args.results,
        run=lambda: Pipeline(cfg, progress=False).context(),
    )
    print(md.read_text())
    return 0


def _detectors(text: str | None) -> list[str] | None:
    return [d.strip() for d in text.split(",") if d.strip()] if text else None


def cmd_data_synth(args: argparse.Namespace) -> int:
    from slimface.data.synth import SynthConfig, render_dataset
    from slimface.config import from_dict

    cfg = from_dict(
        SynthConfig,
        {
            "subjects": args.subjects,
            "train_subjects": min(args.train_subjects, args.subjects - 1),
            "resolution": args.resolution,
            "illuminations": args.illuminations,
            "pitch": args.pitch,
            "gray": args.gray,
            "seed": args.seed,
        },
        where="data synth",
    )
    out = render_dataset(cfg, Path(args.out), progress=not args.no_progress)
    print(f"dataset ready: {out}")
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from slimface.data.preview import make_preview

    out = make_preview(Path(args.root), Path(args.out), subjects=args.subjects)
    print(f"wrote {out}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from slimface.cli_reports import profile_report

    report = profile_report(
        args.model, resolution=args.resolution, width_mult=args.width_mult, student=args.student,
        channels=args.channels,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from slimface.nn.counts import format_count

        for key in ("teacher", "student"):
            if key in report:
                r = report[key]
                print(f"{key:8s} {format_count(r['params']):>9s} params  {format_count(r['macs']):>9s} MACs"
                      + (f"  config {r['config']}" if r.get("config") else ""))
        if "mac_reduction" in report:
            print(f"reduction: {report['mac_reduction']:.1f}x MACs, {report['param_reduction']:.1f}x params")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from slimface.evaluate.arch_bench import bench_report

    report = bench_report(
        args.model, resolution=args.resolution, width_mult=args.width_mult, student=args.student,
        warmup=args.warmup, runs=args.runs, threads=args.threads, device=args.device,
        runtimes=args.runtimes, fold_bn=not args.no_fold_bn, torch_mode=args.torch_mode,
        max_kernel=args.max_kernel, batch=args.batch,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        t, s = report["teacher"], report.get("student")
        print(f"PyTorch {report['torch_mode']}, batch {report['batch']}, {report['threads']} thread(s), "
              f"{report['device']}, {report['machine'].get('cpu')}")
        print(f"teacher  {t['latency_ms']:.2f} ms  {t['peak_memory_mb']:.1f} MB")
        if s:
            print(f"student  {s['latency_ms']:.2f} ms  {s['peak_memory_mb']:.1f} MB")
            print(f"speedup {report['speedup']:.2f}x  memory reduction {report['memory_reduction']:.2f}x")
        rts = report.get("runtimes")
        if rts:
            from slimface.evaluate.bench import RUNTIME_LABELS

            for label in (lb for lb in RUNTIME_LABELS if lb in rts):
                r = rts[label]
                print(f"student {label:18s} {r['latency_ms']:8.2f} ms (median {r['latency_median_ms']:.2f})  "
                      f"{r['speedup_vs_pytorch']:.2f}x vs PyTorch")
            for name, ratio in rts.get("ratios", {}).items():
                print(f"{name}: {ratio:.2f}x (p50, one interleaved run)")
            if "int8_refused" in rts:
                print(rts["int8_refused"])
            else:
                print(f"int8 vs ONNX Runtime fp32: {rts['int8_vs_ort_fp32']:.2f}x  (int8 output diff vs fp32: max "
                      f"{rts['int8']['max_abs_diff']:.3f}, mean {rts['int8']['mean_abs_diff']:.4f})")
    return 0


def cmd_latency_table(args: argparse.Namespace) -> int:
    """Time every layer shape of a student design space in one runtime; write the JSON table."""
    from slimface.evaluate.arch_bench import check_arch_args
    from slimface.deploy.latency_table import build_table, check_runtime

    check_runtime(args.runtime)
    check_arch_args(args.model, args.resolution, args.width_mult)
    out = Path(args.out or f"latency_{args.model}_{args.runtime}_{args.resolution}_w{args.width_mult:g}_t{args.threads}.json")
    from slimface.config import check_kernel_cap

    check_kernel_cap(args.max_kernel, "--max-kernel")
    table = build_table(args.model, args.resolution, 3, args.width_mult, args.runtime, args.threads,
                        max_grid=args.grid, fit_subnets=args.fit_subnets, max_kernel=args.max_kernel,
                        progress=None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    table.save(out)
    points = sum(len(s.cin) * max(1, len(s.cout)) for s in table.sites.values())
    print(f"| model | runtime | threads | CPU | layer sites | points | overhead | x layers | per Melem | teacher | built |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {args.model} {args.resolution}² ×{args.width_mult:g} | {table.runtime} | {table.threads} | "
          f"{table.machine.get('cpu')} | {len(table.sites)} | {points} | {table.overhead_ms:.2f} ms | "
          f"{table.scale:.3f} | {table.ms_per_melem:.2f} ms | {table.teacher_ms or float('nan'):.2f} ms | "
          f"{table.build_seconds:.0f} s |")
    print(f"wrote {out}")
    return 0


def cmd_frontalize(args: argparse.Namespace) -> int:
    from slimface.deploy.frontalize import run_frontalize

    # one line per photo; a photo that fails does not stop the batch. Exit 0 only if all were written.
    return run_frontalize(args.images, args.model, args.out, args.landmarks, detectors=_detectors(args.detectors))


def _file_names(items: list[str] | None) -> list[str]:
    """The files that repeated, comma-separated ``--fp16`` / ``--int8`` options name."""
    return [n for item in (items or []) for n in item.split(",")]


def cmd_weights_pack(args: argparse.Namespace) -> int:
    """Copy a run's judge, loss recognizer, teachers, mobile teachers and supernets into a
    shipped-weights folder + manifest."""
    from slimface.shipped_pack import pack

    pack(args.run, args.out, fp16=_file_names(args.fp16), command=args.command, stages=args.stages,
         merge=args.merge, int8=_file_names(args.int8))
    return 0


def cmd_weights_convert(args: argparse.Namespace) -> int:
    """Re-encode shipped files (int8 / fp16) in place or into another folder, keeping their records."""
    from slimface.shipped_pack import convert

    convert(args.weights, args.out, int8=_file_names(args.int8), fp16=_file_names(args.fp16))
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    """Check a shipped-weights folder: checksums, layers, dtypes, size; with --config, also against a run."""
    from slimface.shipped import verify

    pipe = None
    if args.config is not None:
        cfg = _load_pipeline_config(args)
        from slimface.pipeline import Pipeline

        pipe = Pipeline(cfg, progress=False)
    verify(args.weights, pipe=pipe)
    return 0


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="slimface", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="preset YAML (default: %(default)s)")
        sp.add_argument("--out", type=Path, help="output directory (overrides out_dir)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set teachers.tpgan.train.steps=50")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run the whole pipeline (data, recognizer, teacher, supernet, search, "
                                   "fine-tune, export, evaluate, benchmark, report)")
    with_config(r)
    r.add_argument("--only", nargs="+", help="run only these stages (see the report's stage list)")
    r.add_argument("--force", action="store_true", help="re-run stages even if their outputs are complete")
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="each stage of a run: done, stale (and what changed) or missing; "
                                       "runs nothing")
    with_config(st)
    st.set_defaults(func=cmd_status)

    s = sub.add_parser("search", help="search the trained supernet under a MACs budget")
    with_config(s)
    s.add_argument("--budget", help="MACs budget: 2.5G, 300M, or a reduction factor like 10x")
    s.add_argument("--latency", help="predicted-latency budget too: 15ms, or 10x of the teacher's latency (a latency "
                                     "table of --runtime is timed on this machine unless search.latency_table names one)")
    s.add_argument("--runtime", choices=["torch", "ort", "ort-int8"], help="runtime of --latency (default ort)")
    s.add_argument("--latency-size", help="price candidates at this size: run (default), full (128x128, official "
                                          "widths: where a small preset's student is deployed) or e.g. 128x0.5")
    s.add_argument("--threads", type=int, help="threads the latency table is timed on: the deployment's (default 1)")
    s.set_defaults(func=cmd_search)

    sn = sub.add_parser("sensitivity", help="score each single change of the teacher (one conv made separable, "
                                            "one width group at its smallest) after a short fine-tune: "
                                            "OUT/<family>/sensitivity/ table and plot")
    with_config(sn)
    sn.set_defaults(func=cmd_sensitivity)

    e = sub.add_parser("evaluate", help="rank-1 per yaw, image quality and figures for a finished run; "
                                        "or a real-photo benchmark (--benchmark cfp-fp)")
    with_config(e)
    e.add_argument("--benchmark", choices=["cfp-fp"], help="evaluate an exported model on real photos instead")
    e.add_argument("--data", help="benchmark folder (CFP: the one holding Data/ and Protocol/)")
    e.add_argument("--model", help="exported model: export folder, model.safetensors, model.pt2, .onnx, .int8.onnx")
    e.add_argument("--recognizer", action="append", choices=["run", "loss", "dlib"],
                   help="judge(s): the run's independent judge, its loss recognizer, dlib's ResNet "
                        "(repeat; default: run and dlib)")
    e.add_argument("--detectors", help="face detectors in fallback order (default: hog,cnn)")
    e.add_argument("--no-fiducials", action="store_true", help="ignore CFP's fiducials; detect every face")
    e.add_argument("--results", type=Path, help="where to write cfp_fp.md/.json (default: OUT/evaluate/cfp-fp)")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("data", help="built-in synthetic data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("synth", help="render the synthetic multi-pose face dataset")
    ds.add_argument("--out", required=True)
    ds.add_argument("--subjects", type=int, default=337)
    ds.add_argument("--train-subjects", type=int, default=200)
    ds.add_argument("--resolution", type=int, default=128, choices=[64, 128])
    ds.add_argument("--illuminations", type=int, default=5)
    ds.add_argument("--pitch", action="store_true", help="also pitch -15/0/+15 (CAS-PEAL-like names)")
    ds.add_argument("--gray", action="store_true")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--no-progress", action="store_true")
    ds.set_defaults(func=cmd_data_synth)
    dp = dsub.add_parser("preview", help="a grid of identities x yaws")
    dp.add_argument("root")
    dp.add_argument("--out", required=True)
    dp.add_argument("--subjects", type=int, default=8)
    dp.set_defaults(func=cmd_data_preview)

    pr = sub.add_parser("profile", help="params and MACs of a teacher and (optionally) a student")
    pr.add_argument("model", help="tpgan, crgan or pim")
    pr.add_argument("--resolution", type=int, default=128, choices=[64, 128])
    pr.add_argument("--width-mult", type=float, default=1.0)
    pr.add_argument("--channels", type=int, default=3, choices=[1, 3])
    pr.add_argument("--student", help="a config string, 'smallest' or 'largest'")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)

    b = sub.add_parser("bench", help="latency and peak memory, teacher vs student (batch 1 unless --batch)")
    b.add_argument("model", help="tpgan, crgan or pim")
    b.add_argument("--resolution", type=int, default=128, choices=[64, 128])
    b.add_argument("--width-mult", type=float, default=1.0)
    b.add_argument("--student", help="a config string, 'smallest' or 'largest'")
    b.add_argument("--max-kernel", type=int, help="the student design's kernel cap (student.max_kernel)")
    b.add_argument("--warmup", type=int, default=100)
    b.add_argument("--runs", type=int, default=100)
    b.add_argument("--threads", type=int)
    b.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N where a GPU is present")
    b.add_argument("--batch", type=int, default=1, help="images per call (default 1, the paper's protocol)")
    b.add_argument("--runtimes", action="store_true",
                   help="also time the student under PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8 "
                        "(exported and quantized in a temporary directory)")
    b.add_argument("--no-fold-bn", action="store_true",
                   help="time the PyTorch models as built, without folding batch norms into their convs")
    b.add_argument("--torch-mode", default="eager", choices=["eager", "channels_last", "compiled"],
                   help="how both PyTorch models run: eager NCHW, channels-last memory, or channels-last + "
                        "torch.compile (needs a C++ compiler; minutes to compile at full size)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    lt = sub.add_parser("latency-table", help="time every layer shape of a student design space in one "
                                              "runtime (batch 1) and write a JSON latency table for the search")
    lt.add_argument("model", help="model family, e.g. tpgan")
    lt.add_argument("--runtime", default="ort", choices=["torch", "ort", "ort-int8"])
    lt.add_argument("--threads", type=int, default=1)
    lt.add_argument("--resolution", type=int, default=128)
    lt.add_argument("--width-mult", type=float, default=1.0)
    lt.add_argument("--grid", type=int, default=4, help="channel counts timed per axis of a layer site (default 4)")
    lt.add_argument("--fit-subnets", type=int, default=6, help="whole sub-networks measured to fit the overhead")
    lt.add_argument("--max-kernel", type=int, help="the student design's kernel cap (student.max_kernel)")
    lt.add_argument("--out", help="JSON path (default latency_MODEL_RUNTIME_RES_wW_tT.json)")
    lt.add_argument("--quiet", action="store_true")
    lt.set_defaults(func=cmd_latency_table)

    f = sub.add_parser("frontalize", help="frontalize your own photos with an exported model")
    f.add_argument("images", nargs="+")
    f.add_argument("--model", required=True,
                   help="exported model: export folder, model.safetensors (arch.json beside it), model.pt2, "
                        ".onnx, .int8.onnx, or TorchScript .pt")
    f.add_argument("--out", required=True)
    f.add_argument("--landmarks", help="CSV with file,lex,ley,rex,rey,nx,ny,mlx,mly,mrx,mry (else a .5pt file "
                                       "beside a photo, CFP fiducials, or face detection)")
    f.add_argument("--detectors", help="face detectors in fallback order (default: hog,cnn)")
    f.set_defaults(func=cmd_frontalize)

    w = sub.add_parser("weights", help="shipped weights (weights/manifest.json): pack a run's, verify them")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wp = wsub.add_parser("pack", help="copy a run's judge, loss recognizer, teachers, mobile teachers and "
                                      "supernets (+ discriminators) as safetensors with a manifest (checksums, "
                                      "fingerprints, figures)")
    wp.add_argument("--run", type=Path, required=True, help="the finished run folder, e.g. runs/pretrain")
    wp.add_argument("--out", type=Path, default=Path("weights"), help="where to write them (default: %(default)s)")
    wp.add_argument("--fp16", action="append", metavar="NAMES",
                    help="store these files in fp16 (comma-separated: all, judge, recognizer, tpgan.generator, "
                         "generator, discriminator, ...); loading casts back to fp32")
    wp.add_argument("--int8", action="append", metavar="NAMES",
                    help="store these files' weights in int8 with a scale per output channel, the rest in "
                         "fp16 (names as for --fp16): half of fp16's bytes; check the network's figures "
                         "after (evaluate), as for fp16")
    wp.add_argument("--command", help="the command that reproduces the weights (default: slimface run --config "
                                      "configs/<run name>.yaml --only data recognizer judge <the packed kinds> "
                                      "evaluate report)")
    wp.add_argument("--stages", nargs="+", metavar="STAGE",
                    help="pack only these finished stages (recognizer, judge, teacher.tpgan, mobile.tpgan, "
                         "supernet.tpgan, or a kind for all its families: teacher, mobile, supernet); default: all")
    wp.add_argument("--merge", action="store_true",
                    help="keep the other files of --out's manifest: replace only the packed networks' entries "
                         "(a network retrained in a run of its own)")
    wp.set_defaults(func=cmd_weights_pack)
    wc = wsub.add_parser("convert", help="store shipped files in int8 or fp16 without re-packing their run "
                                         "(the manifest keeps where they came from)")
    wc.add_argument("weights", nargs="?", type=Path, default=Path("weights"), help="default: %(default)s")
    wc.add_argument("--out", type=Path, help="write a converted copy of the folder here (default: in place)")
    wc.add_argument("--int8", action="append", metavar="NAMES", help="as for pack")
    wc.add_argument("--fp16", action="append", metavar="NAMES", help="as for pack")
    wc.set_defaults(func=cmd_weights_convert)
    wv = wsub.add_parser("verify", help="check every shipped file against the manifest (and, with --config, "
                                        "against that run's architecture and data)")
    wv.add_argument("weights", nargs="?", type=Path, default=Path("weights"), help="default: %(default)s")
    wv.add_argument("--config", type=Path, help="also check against this preset's networks and data")
    wv.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    wv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    wv.set_defaults(func=cmd_weights_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SlimfaceError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        hint = _USER_OS_ERRORS.get(exc.errno or 0)
        if hint is None or args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
