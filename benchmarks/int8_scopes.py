"""Where does a student's int8 error come from? Its exported ``model.onnx`` quantized with parts of the
network kept fp32 (``deploy.int8_fp32`` patterns), each variant's output against fp32 on the run's own
calibration profiles (the export stage's inputs), as PSNR and mean abs difference.

    python benchmarks/int8_scopes.py --config configs/quick.yaml --run runs/quick \\
        --scope 'decoder.s128.*' --scope 'decoder.s128.*,decoder.s64.*' --scope 'decoder.*' --out int8_scopes.json

Each ``--scope`` is one variant (comma-separated patterns, matched as ``deploy.int8_fp32`` matches
them: the convs and element-wise ops under a module); ``all`` (nothing kept fp32) always comes first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from slimface.errors import run_or_exit


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the preset the run was made with")
    p.add_argument("--run", type=Path, required=True, help="a run folder with an exported student")
    p.add_argument("--family", default="tpgan")
    p.add_argument("--scope", action="append", default=[], help="comma-separated module patterns kept fp32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the run's --set overrides")
    p.add_argument("--out", type=Path, default=Path("int8_scopes.json"))
    args = p.parse_args(argv)
    return run_or_exit(lambda: run(args))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from slimface.cli import _parse_set
    from slimface.config import load_config
    from slimface.deploy.int8_guard import cpu_name
    from slimface.deploy.latency_table import fp32_nodes
    from slimface.deploy.quantize import calibration_from_batches, quantize_int8
    from slimface.export_format import load_export
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    cfg = load_config(PipelineConfig, args.config, {**_parse_set(list(args.set)), "out_dir": str(args.run)})
    pipe = Pipeline(cfg, progress=False)
    export = args.run / args.family / "export"
    student = load_export(export).eval()
    onnx_path = export / "model.onnx"
    n = cfg.deploy.calibration_batches  # the export stage's calibration profiles
    pairs = pipe.data.train_pairs
    calib = calibration_from_batches(pipe.batches(pairs[:: max(1, len(pairs) // max(n, 1))], 1, n), limit=n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scope in ["", *args.scope]:
            patterns = [s.strip() for s in scope.split(",") if s.strip()]
            nodes = fp32_nodes(onnx_path, student, patterns)
            rep = quantize_int8(onnx_path, Path(tmp) / "m.int8.onnx", calib, nodes_to_exclude=nodes, guard=False)
            rows.append({"fp32": patterns, "fp32_nodes": len(nodes), "psnr_db": rep.psnr_db,
                         "mean_abs_diff": rep.mean_abs_diff, "int8_ops": rep.int8_ops})
    print(f"{args.family} student of {args.run}, {len(calib)} calibration profiles, {cpu_name()}")
    print("| kept fp32 | nodes | PSNR vs fp32 (dB) | mean abs diff |\n|---|---|---|---|")
    for r in rows:
        print(f"| {', '.join(r['fp32']) or 'nothing (all int8)'} | {r['fp32_nodes']} | {r['psnr_db']:.2f} "
              f"| {r['mean_abs_diff']:.4f} |")
    res = {"run": str(args.run), "family": args.family, "cpu": cpu_name(), "calibration": len(calib), "rows": rows}
    args.out.write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    main()
