"""The run's report: the paper's four tables for our run, figures, and results.json.

Everything here is read back from what the stages wrote (evaluate/results.json, bench/bench.json,
search results, stage markers), so the report can be rebuilt without re-running anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimface.evaluate.bench import RUNTIME_LABELS
from slimface.evaluate.context import RunContext
from slimface.evaluate.rank1 import table1_markdown, table2_markdown
from slimface.fileio import atomic_write
from slimface.nn.counts import format_count

YAW_COLUMNS = (90, 75, 60, 45, 30, 15)


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _rank1(entry: dict[str, Any]) -> dict[str, float]:
    """Per-yaw rank-1 with ``avg`` recomputed over the six yaw groups of Table 1."""
    r = {str(k): float(v) for k, v in entry["rank1"].items() if k != "avg"}
    vals = [r[str(y)] for y in YAW_COLUMNS if str(y) in r]
    r["avg"] = sum(vals) / len(vals) if vals else float("nan")
    return r


def _pitch_yaw(entry: dict[str, Any]) -> dict[tuple[int, int], float]:
    out = {}
    for key, v in entry.get("rank1_pitch_yaw", {}).items():
        if key == "avg":
            continue
        p, y = key.split("/")
        out[(int(p), int(y))] = float(v)
    return out


def _t1_rows(models: dict[str, Any], scorer: str) -> dict[str, dict[Any, float]]:
    rows = {}
    for name, e in models.items():
        r = e.get("rank1_by", {}).get(scorer)
        if r is not None:
            rows[name] = {int(k) if k.isdigit() else k: v for k, v in _rank1({"rank1": r}).items()}
    return rows


def _ci_text(ci: Any) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "–"


def judge_tables(ev: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Markdown for Table 1 per scorer, the loss-minus-judge gap, image quality and the paired
    student-vs-teacher differences; plus the same figures for results.json."""
    models = ev.get("models", {})
    judges = ev.get("scorers") or {}
    if not judges:  # an evaluate of an older run: only the run's recognizer scored
        t1 = {name: {int(k) if k.isdigit() else k: v for k, v in _rank1(e).items()} for name, e in models.items()}
        return ["## Table 1 — rank-1 (%) per yaw (run's recognizer)", "", table1_markdown(t1), ""], {}
    lines: list[str] = []
    out: dict[str, Any] = {}
    primary = ev.get("primary_judge") or next(iter(judges))
    for name, info in judges.items():
        rows = _t1_rows(models, name)
        role = "**seen in training** (identity losses, distillation, search)" if info["seen_in_training"] \
            else "independent: no training, search or fine-tune saw it"
        lines += [f"## Table 1 — rank-1 (%) per yaw, scored by: {name}" + (" (primary)" if name == primary else ""),
                  "", f"{info['kind']}; {role}; learned from {info['identities']}; {info['probes']} probes; "
                  f"ceiling (ground-truth frontals) {info['ceiling_rank1']:.1f}%.", "", table1_markdown(rows), ""]
        cis = {m: e.get("rank1_ci_by", {}).get(name, {}).get("avg") for m, e in models.items()}
        if any(cis.values()):
            lines += ["95% bootstrap interval of the average (probes resampled per yaw): " + "; ".join(
                f"{m} {_ci_text(ci)}" for m, ci in cis.items() if ci), ""]
        out[name] = {**info, "rank1": {m: _rank1({"rank1": models[m]["rank1_by"][name]}) for m in rows},
                     "rank1_avg_ci": {m: ci for m, ci in cis.items() if ci}}
    # the loss recognizer's view minus the primary judge's: a large gap flags a generator fooling its loss
    loss_names = [n for n, i in judges.items() if i["seen_in_training"]]
    if loss_names:
        loss = loss_names[0]
        lines += ["## Loss recognizer vs independent judge (average rank-1)", "",
                  "A generator that fools its identity loss scores much higher by the loss recognizer than by "
                  "the judges.", "", "| model | " + " | ".join(judges) + f" | {loss} − {primary} |",
                  "|---|" + "---|" * (len(judges) + 1)]
        gaps = {}
        for m, e in models.items():
            avgs = {n: _rank1({"rank1": e["rank1_by"][n]})["avg"] if n in e.get("rank1_by", {}) else None
                    for n in judges}
            gap = avgs[loss] - avgs[primary] if avgs.get(loss) is not None and avgs.get(primary) is not None else None
            gaps[m] = gap
            lines.append(f"| {m} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in avgs.values())
                         + f" | {'–' if gap is None else f'{gap:+.2f}'} |")
        lines.append("")
        out["loss_minus_judge"] = gaps
    # image quality with the artefact figure
    lines += ["## Image quality against the ground-truth frontal", "",
              "HF ratio: the output's high-frequency energy over the ground truth's (1 = as sharp as the truth; "
              "stripes or checkerboards push it above 1, blur below).", "",
              "| model | SSIM | PSNR (dB) | L1 | HF ratio |", "|---|---|---|---|---|"]
    for m, e in models.items():
        q = e.get("quality") or {}
        if m == "no frontalization" or not q:
            continue
        lines.append(f"| {m} | {q.get('ssim', float('nan')):.3f} | {q.get('psnr', float('nan')):.2f} | "
                     f"{q.get('l1', float('nan')):.3f} | {q.get('hf_ratio', float('nan')):.2f} |")
    lines.append("")
    # students against their own teachers, paired on the same probes
    for key, title, out_key in (
            ("vs_teacher", "Student minus teacher", "student_minus_teacher"),
            ("vs_mobile", "Student minus mobile teacher: the pruning loss", "student_minus_mobile_teacher")):
        paired = {m: e[key] for m, e in models.items() if e.get(key)}
        if not paired:
            continue
        lines += [f"## {title} (paired on the same probes, average rank-1)", "",
                  "| model | " + " | ".join(f"{n} Δ [95% CI]" for n in judges) + " |",
                  "|---|" + "---|" * len(judges)]
        for m, vt in paired.items():
            cells = []
            for n in judges:
                a = vt.get(n, {}).get("avg")
                cells.append("–" if a is None else f"{a['diff']:+.2f} {_ci_text(a['ci'])}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        out[out_key] = paired
    return lines, out


def write_report(ctx: RunContext) -> Path:
    from slimface.evaluate.figures import plot_pareto

    out = ctx.out / "report"
    out.mkdir(parents=True, exist_ok=True)
    ev = _read(ctx.out / "evaluate" / "results.json") or {"models": {}}
    bench = _read(ctx.out / "bench" / "bench.json") or {}
    models = ev["models"]
    fams = ctx.families
    # a student is never put beside a teacher it was not distilled from (slimface.stage_keys)
    prov, prov_lines, refused = ctx.provenance()
    if refused:
        models = {m: e for m, e in models.items() if not any(m.startswith(f"{f} compressed") for f in refused)}
        ev, bench = {**ev, "models": models}, {f: b for f, b in bench.items() if f not in refused}
        for f in sorted(refused):
            print(f"  {f}: the compressed student was not distilled from the {f} teacher measured here; "
                  "its rows are left out of the report (see its Provenance section)", flush=True)
    stage_times = {}
    for stage in ctx.stages:
        marker = ctx.out / "stages" / f"{stage}.json"
        if marker.is_file():
            stage_times[stage] = round(float(json.loads(marker.read_text())["wall_s"]), 1)

    results: dict[str, Any] = {"name": ctx.name, "families": {}, "stages_wall_s": stage_times,
                               "probes": ev.get("probes"), "gallery": ev.get("gallery")}
    if "no frontalization" in models:
        results["baseline"] = {"rank1": _rank1(models["no frontalization"])}
    lines = [f"# slimface report: {ctx.name}", ""]
    lines += [
        f"Data: {ctx.data_kind} at {ctx.resolution}x{ctx.resolution}, "
        f"{ev.get('probes', '?')} test probes against a gallery of {ev.get('gallery', '?')} identities. "
        "Rank-1 is the cosine-nearest gallery identity, ± yaws pooled, read from the independent judges "
        "(no training stage, search or fine-tune ever saw them); the loss recognizer's figures follow, "
        "marked as seen in training.",
        "",
    ]
    # ---- Table 1, once per scorer: independent judges first, the loss recognizer last
    judge_lines, judge_results = judge_tables(ev)
    lines += judge_lines
    results["judges"] = judge_results
    if any("rank1_pitch_yaw" in e for e in models.values()):
        t2 = {name: _pitch_yaw(e) for name, e in models.items() if "ONNX" not in name}
        lines += ["## Table 2 — rank-1 (%) per pitch × yaw", "", table2_markdown(t2), ""]
    # ---- Table 3 and 4
    t3 = ["## Table 3 — compression", "",
          "| model | size | teacher params | teacher MACs | compressed params | compressed MACs | config |",
          "|---|---|---|---|---|---|---|"]
    t4 = ["## Table 4 — measured latency and memory (batch 1)", "",
          "| model | size | teacher latency | compressed latency | speedup | teacher peak memory | "
          "compressed peak memory | memory reduction | threads |",
          "|---|---|---|---|---|---|---|---|---|"]
    deploy = ["## Deployment runtimes (compressed model)", "",
              "| model | size | runtime | latency (ms) | speedup vs PyTorch | rank-1 avg | Δ rank-1 vs PyTorch |",
              "|---|---|---|---|---|---|---|"]
    size_label = f"{ctx.resolution}² ×{{w}}"
    for fam in fams:
        b = bench.get(fam, {})
        search = _read(ctx.family_dir(fam) / "search" / "result.json") or {}
        fam_res: dict[str, Any] = {}
        for role, key in (("teacher", f"{fam} teacher"), ("student", f"{fam} compressed")):
            rs = b.get("run_size", {}).get(role, {})
            fam_res[role] = {
                "params": rs.get("params"), "macs": rs.get("macs"),
                "rank1": _rank1(models[key]) if key in models else None,
                "quality": models.get(key, {}).get("quality"),
                "latency_ms": {"cpu": rs.get("latency_ms")},
                "latency_median_ms": {"cpu": rs.get("latency_median_ms")},
                "peak_memory_mb": rs.get("peak_memory_mb"),
            }
        fam_res["student"]["config"] = search.get("config")
        for label, key in (("run_size", "run_size"), ("full_size", "full_size")):
            r = b.get(key)
            if not r:
                continue
            t, s = r["teacher"], r["student"]
            tp, tm = t.get("params") or (r.get("teacher_params")), t.get("macs")
            size = (size_label.format(w=ctx.teacher_widths[fam]) if key == "run_size"
                    else "128² ×1.0 (official widths)")
            if key == "full_size":
                tp, tm = r.get("teacher_counts", {}).get("params"), r.get("teacher_counts", {}).get("macs")
                sp, sm = r.get("student_counts", {}).get("params"), r.get("student_counts", {}).get("macs")
                fam_res["full_size"] = r
            else:
                sp, sm = s.get("params"), s.get("macs")
            if tp and sp and tm and sm:
                t3.append(f"| {fam} | {size} | {format_count(tp)} | {format_count(tm)} | {format_count(sp)} "
                          f"({tp / sp:.1f}×) | {format_count(sm)} ({tm / sm:.1f}×) | "
                          f"`{r.get('student_config') or search.get('config', '')}` |")
            t4.append(f"| {fam} | {size} | {t['latency_ms']:.2f} ms | {s['latency_ms']:.2f} ms | "
                      f"{r['speedup']:.2f}× | {t.get('peak_memory_mb', float('nan')):.1f} MB | "
                      f"{s.get('peak_memory_mb', float('nan')):.1f} MB | {r.get('memory_reduction', float('nan')):.2f}× | "
                      f"{r.get('threads', t.get('threads', ''))} |")
        if b.get("run_size"):
            fam_res["speedup"] = b["run_size"]["speedup"]
            fam_res["memory_reduction"] = b["run_size"].get("memory_reduction")
            fam_res["mac_reduction"] = (fam_res["teacher"]["macs"] or 0) / max(fam_res["student"]["macs"] or 1, 1)
        runtimes = b.get("runtimes", {})
        base_ms = runtimes.get(RUNTIME_LABELS[0], {}).get("latency_ms")
        base_r1 = fam_res["student"]["rank1"]["avg"] if fam_res["student"]["rank1"] else None
        fam_res["runtimes"] = {}
        evaluated_as = (f"{fam} compressed", f"{fam} compressed (ONNX fp32)", f"{fam} compressed (ONNX int8)")
        for label, key in zip(RUNTIME_LABELS, evaluated_as):
            rt = runtimes.get(label)
            r1 = _rank1(models[key])["avg"] if key in models else None
            if rt is None:
                continue
            fam_res["runtimes"][label] = {"latency_ms": rt["latency_ms"], "rank1_avg": r1}
            speed = f"{base_ms / rt['latency_ms']:.2f}×" if base_ms else "–"
            delta = f"{r1 - base_r1:+.2f}" if (r1 is not None and base_r1 is not None) else "–"
            run_label = size_label.format(w=ctx.teacher_widths[fam])
            deploy.append(f"| {fam} | {run_label} | {label} | {rt['latency_ms']:.2f} | {speed} | "
                          f"{r1:.2f} | {delta} |" if r1 is not None else
                          f"| {fam} | {run_label} | {label} | {rt['latency_ms']:.2f} | {speed} | – | – |")
        refused = (ev.get("int8_refused") or {}).get(fam) or b.get("int8_refused")
        if refused:  # int8 refused on this CPU (deploy.int8_guard): said instead of a collapsed rank-1
            fam_res["int8_refused"] = refused
            deploy.append(f"| {fam} | {size_label.format(w=ctx.teacher_widths[fam])} | {RUNTIME_LABELS[2]} "
                          f"| – | – | {refused.replace('|', '/')} | – |")
        if (ctx.family_dir(fam) / "export" / "model.int8.onnx").is_file():  # what ran in int8
            from slimface.deploy.int8_guard import int8_summary

            fam_res["int8"] = int8_summary(ctx.family_dir(fam) / "export" / "model.int8.onnx")
        # full-size student (official widths, random weights): latency only, rank-1 is meaningless
        full_rts = (b.get("full_size") or {}).get("runtimes") or {}
        if full_rts:
            fam_res["full_size_runtimes"] = {}
            for label in RUNTIME_LABELS:
                rt = full_rts.get(label)
                if rt is None:
                    continue
                speed = rt.get("speedup_vs_pytorch")
                fam_res["full_size_runtimes"][label] = {"latency_ms": rt["latency_ms"],
                                                        "latency_median_ms": rt.get("latency_median_ms"),
                                                        "speedup_vs_pytorch": speed}
                deploy.append(f"| {fam} | 128² ×1.0 (official widths, random weights) | {label} | "
                              f"{rt['latency_ms']:.2f} | " + (f"{speed:.2f}×" if speed else "–") + " | — | — |")
            if "int8_vs_ort_fp32" in full_rts:
                fam_res["full_size_runtimes"]["int8_vs_ort_fp32"] = full_rts["int8_vs_ort_fp32"]
        results["families"][fam] = fam_res
        # Pareto figure of the search
        evaluated = ctx.family_dir(fam) / "search" / "evaluated.jsonl"
        if evaluated.is_file():
            pts = [json.loads(l) for l in evaluated.read_text().splitlines() if l.strip()]
            for p in pts:
                p["chosen"] = p.get("config") == search.get("config")
            if pts:
                plot_pareto(pts, out / f"pareto_{fam}.png")
    for table in (t3, t4, deploy):
        if len(table) == 4:  # header only: a teacher-only run
            table.append("\n_No compressed student in this run yet: run the search, finetune, export and bench "
                         "stages._")
    if len(t4) > 4:
        t4 += ["", "_Teacher and student are timed as deployed (eval mode, batch norms folded into their convs) "
               "and alternated run by run in one process._"]
    deploy += [""] + [f"- int8 {f}: {r['int8']}" for f, r in results["families"].items() if r.get("int8")]
    lines += t3 + [""] + t4 + [""] + deploy + [""]
    if fams and fams[0] in results["families"]:
        results["teacher"] = results["families"][fams[0]]["teacher"]
        results["student"] = results["families"][fams[0]]["student"]
    # ---- figures and timings
    lines += prov_lines
    results["provenance"] = prov
    lines += ["## Figures", ""]
    for fig, title in (("frontalization_grid.png", "Input / ground truth / teacher / compressed per yaw"),
                       ("rank1_vs_yaw.png", "Rank-1 versus yaw")):
        src = ctx.out / "evaluate" / fig
        if src.is_file():
            (out / fig).write_bytes(src.read_bytes())
            lines += [f"### {title}", "", f"![{title}]({fig})", ""]
    for fam in fams:
        if (out / f"pareto_{fam}.png").is_file():
            lines += [f"### Search: MACs vs identity similarity ({fam})", "", f"![pareto {fam}](pareto_{fam}.png)", ""]
    lines += ["## Stage wall times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stage_times.items()]
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=float))
    atomic_write(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
