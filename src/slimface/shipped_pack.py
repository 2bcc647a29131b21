"""``slimface weights pack``: copy what a (pretraining) run trained into ``weights/`` with its manifest.

Apart from :mod:`slimface.shipped` (which loads and verifies) because packing reads the run's stage
markers (:mod:`slimface.stage_keys`), and the stage keys in turn ask :mod:`slimface.shipped` what a
stage installed: one module for both would import itself in a circle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from slimface import stage_keys as K
from slimface.errors import CheckpointError
from slimface.shipped import (FAMILY_PARTS, MANIFEST, MAX_TOTAL_BYTES, Q8_SCALE, SCHEMA, Slot, arch_fingerprint,
                              data_of, dataset_fingerprint, sha256_bytes, slot_net, slots_of)

if TYPE_CHECKING:
    import torch


def _wanted(name: str, names: Iterable[str]) -> bool:
    """Whether a file is named by ``names`` (``all``, a role, a family or a file; --fp16 / --int8)."""
    wanted = {w.strip().removesuffix(".safetensors") for w in names if w.strip()}
    stem = name.removesuffix(".safetensors")
    return "all" in wanted or stem in wanted or any(stem.endswith("." + w) or stem.startswith(w + ".") for w in wanted)


def _half(k: str, v: "torch.Tensor", where: str) -> "torch.Tensor":
    import torch

    h = v.to(torch.float16)
    if not torch.isfinite(h).all() and torch.isfinite(v).all():
        raise CheckpointError(f"{where}: {k} overflows fp16 (|x| up to {v.abs().max().item():.3g}); "
                              "pack this file in fp32 (leave it out of --fp16 and --int8)")
    return h


def _stored(tensors: Mapping[str, "torch.Tensor"], dtype: str, where: str) -> dict[str, "torch.Tensor"]:
    """The tensors as a file of ``dtype`` stores them: float32 as they are; float16 every float;
    int8 every weight (2+ dims) per slice of its first dimension, with fp32 scales
    (:func:`slimface.shipped.quantize_int8`), the rest fp16."""
    from slimface.shipped import quantize_int8

    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if dtype != "float32" and v.is_floating_point():
            if dtype == "int8" and v.dim() >= 2:
                q, scale = quantize_int8(v)
                out[k], out[k + Q8_SCALE] = q, scale
                continue
            v = _half(k, v, where)
        out[k] = v
    return out


def _encoded(tensors: Mapping[str, "torch.Tensor"], slot: Slot, dtype: str, where: str) -> bytes:
    """A shipped file's bytes: the tensors stored as ``dtype`` (:func:`_stored`) with the one metadata
    entry that names its role, family and dtype."""
    from safetensors.torch import save

    # one metadata entry: safetensors writes several in a random order (a re-pack must be byte-identical)
    meta = {"slimface": json.dumps({"role": slot.role, "family": slot.family, "dtype": dtype}, sort_keys=True)}
    return save(_stored(tensors, dtype, where), metadata=meta)


def _write(out: Path, blobs: Mapping[str, bytes], files: Mapping[str, Any], manifest: Mapping[str, Any],
           say: Callable[[str], None]) -> None:
    """Each file, then the manifest that names them, written atomically (a reader never sees half)."""
    from slimface.fileio import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    for fname, blob in blobs.items():
        atomic_write(out / fname, lambda f, b=blob: f.write(b))
        say(f"  {fname}: {len(blob) / 1e6:.2f} MB {files[fname]['dtype']} sha256 {files[fname]['sha256'][:12]}")
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def _figures(run: Path, slot: Slot, evaluation: Mapping[str, Any] | None, fresh: bool) -> dict[str, Any]:
    if evaluation is None:
        return {"note": "no evaluate/results.json in the run: not measured"}
    if not fresh:
        return {"note": "evaluate/results.json measured other weights than these (re-run evaluate, then pack)"}
    scorers = evaluation.get("scorers") or {}
    if slot.role == "judge":
        return {"ceiling_rank1": (scorers.get("judge") or {}).get("ceiling_rank1")}
    if slot.role == "recognizer":
        return {"ceiling_rank1": (scorers.get("loss recognizer") or {}).get("ceiling_rank1")}
    if slot.role in ("teacher generator", "mobile generator"):
        name = f"{slot.family} teacher" if slot.kind == "teacher" else f"{slot.family} mobile teacher"
        model = (evaluation.get("models") or {}).get(name) or {}
        return {"rank1_by": model.get("rank1_by"), "rank1_ci_by": model.get("rank1_ci_by"),
                "quality": model.get("quality")}
    return {}


def _names(name: str, stage: str) -> bool:
    """Whether ``name`` (a stage, or a kind such as ``teacher``) names ``stage``."""
    return stage == name or stage.startswith(name + ".")


def reproduce_command(preset: str, packed: Iterable[str], finished: Iterable[str]) -> str:
    """The run that remakes the ``packed`` stages: each family stage kind up to the last packed one
    that the run ``finished`` for a packed family (a supernet distilled from a mobile teacher needs
    that mobile stage, and every stage its teacher), then evaluate and report."""
    kinds_in_order = tuple(FAMILY_PARTS)  # teacher, mobile, supernet: the pipeline's order
    packed, finished = list(packed), set(finished)
    fams = {s.partition(".")[2] for s in packed if "." in s}
    last = max((kinds_in_order.index(s.partition(".")[0]) for s in packed if "." in s), default=-1)
    kinds = [k for k in kinds_in_order[:last + 1] if any(f"{k}.{f}" in finished for f in fams)]
    return f"slimface run --config configs/{preset}.yaml --only " + " ".join(
        ["data", "recognizer", "judge", *kinds, "evaluate", "report"])


def pack(run: str | Path, out: str | Path, fp16: Iterable[str] = (), command: str | None = None,
         say: Callable[[str], None] = print, stages: Iterable[str] | None = None, merge: bool = False,
         int8: Iterable[str] = ()) -> Path:
    """Copy a run's judge, loss recognizer, teachers (generator + discriminator), mobile teachers and
    supernets (+ mappers) to ``out`` with a manifest; ``stages``: only these finished stages (names,
    or kinds that stand for every family's). ``merge``: keep the other files of ``out``'s manifest
    (one network retrained in a run of its own replaces its entry only; each entry names the command
    that made it). Nothing is written when any check fails (a stage not finished, a file changed
    since its stage wrote it, another dataset than the kept files', or more than
    :data:`MAX_TOTAL_BYTES` in all). ``fp16`` / ``int8``: the files stored in fp16, or with int8 weights
    (int8 wins where both name a file); loading gives fp32 either way."""
    from safetensors.torch import load_file

    run, out = Path(run), Path(out)
    fp16, int8 = list(fp16), list(int8)
    data_marker = K.read_marker(run, "data")
    if data_marker is None:
        raise CheckpointError(f"{run} is not a finished slimface run (no stages/data.json); run it first")
    data_settings = (data_marker.get("settings") or {}).get("data") or {}
    data_fp = dataset_fingerprint(data_settings)
    root = Path((data_marker.get("outputs") or {}).get("root") or "")
    on_disk = root / "dataset.json"
    if data_settings.get("kind", "synth") == "synth" and on_disk.is_file():
        from slimface.data.synth import data_fingerprint

        disk_fp = data_fingerprint(json.loads(on_disk.read_text()))
        if disk_fp["fingerprint"] != data_fp["fingerprint"]:
            raise CheckpointError(f"{on_disk} does not match the run's data settings (fingerprint "
                                  f"{disk_fp['fingerprint']} vs {data_fp['fingerprint']}); re-run the data stage")
    evaluation = None
    ev_path = run / "evaluate" / "results.json"
    if ev_path.is_file():
        evaluation = json.loads(ev_path.read_text())
    ev_inputs = (K.read_marker(run, "evaluate") or {}).get("inputs") or {}

    done = [p.stem for p in sorted((run / "stages").glob("*.json"))]
    wanted = [s for s in ("recognizer", "judge") if s in done] + sorted(
        s for s in done if "." in s and s.partition(".")[0] in FAMILY_PARTS)
    if stages is not None:
        picked = list(stages)
        for name in picked:
            if not any(_names(name, s) for s in wanted):
                raise CheckpointError(f"{run} has no finished {name!r} stage to pack (finished: "
                                      f"{', '.join(wanted) or 'none'}); run it first or leave it out of --stages")
        wanted = [s for s in wanted if any(_names(n, s) for n in picked)]
    if not wanted:
        raise CheckpointError(f"{run} has no finished recognizer, judge or teacher stage to pack")
    blobs: dict[str, bytes] = {}
    files: dict[str, Any] = {}
    for stage in wanted:
        marker = K.read_marker(run, stage) or {}
        replaced, missing = K.changed_files(marker, run)
        if replaced or missing:
            raise CheckpointError(f"{run}: the {stage} stage's {(replaced + missing)[0]} changed or is gone since "
                                  "the stage wrote it; re-run the stage, then pack")
        settings = marker.get("settings") or {}
        fresh = ev_inputs.get(stage) is not None and ev_inputs.get(stage) == K.content_digest(marker, run)
        kind, _, fam = stage.partition(".")
        recognizing = kind in ("judge", "recognizer")
        if recognizing:
            own = settings.get(kind) or {}
        else:  # a family's networks: a mobile teacher has its teacher's width
            source = settings if kind == "teacher" else (K.read_marker(run, f"teacher.{fam}") or {}).get("settings")
            own = (source or {}).get(f"teachers.{fam}") or {}
        for slot in slots_of(stage):
            src = slot.run_path(run)
            if not src.is_file():
                if slot.role == "teacher discriminator":
                    raise CheckpointError(f"{src} is missing: a teacher ships with the discriminator its students "
                                          "inherit; re-run the teacher stage")
                raise CheckpointError(f"{src} is missing (a given checkpoint is not packed); re-run the {stage} stage")
            tensors = load_file(str(src))
            dtype = "int8" if _wanted(slot.file, int8) else "float16" if _wanted(slot.file, fp16) else "float32"
            blob = _encoded(tensors, slot, dtype, str(src))
            net = slot_net(slot, own.get("variant"))
            shapes = {k: list(v.shape) for k, v in tensors.items()}
            recog = own if recognizing else None
            blobs[slot.file] = blob
            files[slot.file] = {
                "role": slot.role, "family": slot.family, "sha256": sha256_bytes(blob), "size": len(blob),
                "dtype": dtype,
                "arch": arch_fingerprint(str(net), int(data_settings.get("resolution", 64)),
                                         int(data_settings.get("channels", 3)), float(own.get("width_mult", 0)),
                                         shapes),
                "data": data_of(data_settings, recog),
                "figures": _figures(run, slot, evaluation, fresh),
                "trained": {"stage": stage, "key": marker.get("fingerprint"), "wall_s": marker.get("wall_s"),
                            "settings": settings},
            }
    name = ((K.read_marker(run, "report") or {}).get("settings") or {}).get("name") or run.name
    this_command = command or reproduce_command(name, wanted, done)
    kept: dict[str, Any] = {}
    old: dict[str, Any] = {}
    if merge:
        old, kept = _kept_entries(out, files, data_of(data_settings))
    total = sum(len(b) for b in blobs.values()) + sum(int(e["size"]) for e in kept.values())
    if total > MAX_TOTAL_BYTES:
        sizes = ", ".join(f"{n} {len(b) / 1e6:.1f} MB" for n, b in blobs.items())
        raise CheckpointError(f"the packed weights weigh {total / 1e6:.1f} MB, over the {MAX_TOTAL_BYTES / 1e6:.0f} MB "
                              f"limit ({sizes}); store more of them in fp16 or int8 (--fp16 all, --int8 FILES) or "
                              "ship fewer")
    manifest = {
        "schema": SCHEMA,
        "command": this_command,
        "run": str(run),
        "versions": _versions(),
        "data": data_of(data_settings),
        "total_bytes": total,
        "max_total_bytes": MAX_TOTAL_BYTES,
        "scorers": (evaluation or {}).get("scorers"),
        "baseline": {"no frontalization": (((evaluation or {}).get("models") or {}).get("no frontalization")
                                           or {}).get("rank1_by")},
        "files": files,
    }
    if merge and old:  # the kept files' run stays the manifest's; the new entries name their own
        for f in files.values():
            f["command"], f["run"] = this_command, str(run)
        manifest.update({k: old[k] for k in ("command", "run", "scorers", "baseline") if k in old})
        order = [*(old.get("files") or {}), *(f for f in files if f not in (old.get("files") or {}))]
        manifest["files"] = {f: files[f] if f in files else kept[f] for f in order}  # in place: a small diff
    _write(out, blobs, files, manifest, say)
    say(f"packed {len(blobs)} files, {total / 1e6:.2f} MB, into {out}; manifest {out / MANIFEST}")
    return out / MANIFEST


def convert(weights: str | Path, out: str | Path | None = None, int8: Iterable[str] = (),
            fp16: Iterable[str] = (), say: Callable[[str], None] = print) -> Path:
    """Re-encode shipped files (``int8`` / ``fp16`` name them as for :func:`pack`) without the run
    that trained them: each is verified, stored anew, and its manifest entry keeps where it came from
    (trained, command, figures) with ``encoding`` added: the dtype and sha256 it had, and that its
    figures were measured on that file. ``out``: another folder (a copy of all files), default in place.
    Nothing is written when any check fails."""
    from slimface.shipped import load_file_checked, read_manifest, verify

    weights = Path(weights)
    out = weights if out is None else Path(out)
    verify(weights, say=lambda _: None)  # every file intact first: a copy must not carry a damaged one
    manifest = read_manifest(weights)
    int8, fp16 = list(int8), list(fp16)
    blobs: dict[str, bytes] = {}
    files = {name: dict(entry) for name, entry in manifest["files"].items()}
    for name, entry in files.items():
        dtype = "int8" if _wanted(name, int8) else "float16" if _wanted(name, fp16) else None
        slot = Slot(str(entry.get("role")), entry.get("family"))
        if dtype is None or dtype == entry.get("dtype"):
            if out != weights:
                blobs[name] = (weights / name).read_bytes()
            continue
        state, sha = load_file_checked(weights, entry, slot)
        blob = _encoded(state, slot, dtype, str(weights / name))
        blobs[name] = blob
        entry["encoding"] = {"from": entry.get("dtype") or "float32", "sha256_before": sha,
                             "figures": f"measured on the {entry.get('dtype') or 'float32'} file"}
        entry.update(sha256=sha256_bytes(blob), size=len(blob), dtype=dtype)
    if out == weights and not blobs:
        raise CheckpointError(f"nothing to convert in {weights}: no file named by --int8/--fp16 has another dtype "
                              f"(files: {', '.join(files)})")
    total = sum(int(e["size"]) for e in files.values())
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"the converted weights weigh {total / 1e6:.1f} MB, over the "
                              f"{MAX_TOTAL_BYTES / 1e6:.0f} MB limit; name more files")
    _write(out, blobs, files, {**manifest, "total_bytes": total, "files": files}, say)
    say(f"{out}: {len(files)} files, {total / 1e6:.2f} MB; manifest {out / MANIFEST}")
    return out / MANIFEST


def _kept_entries(out: Path, files: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``out``'s manifest and the entries of it that a merge keeps (every file not packed now), after
    checking that they were trained on the same dataset (none: nothing to merge into)."""
    path = out / MANIFEST
    if not path.is_file():
        return {}, {}
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg}); restore it from git before merging") from None
    if (old.get("data") or {}).get("dataset") != data.get("dataset"):
        raise CheckpointError(f"{path} ships networks of another dataset than this run's; pack without --merge "
                              "(a new folder) or re-run on that dataset")
    kept = {}
    for fname, entry in (old.get("files") or {}).items():
        if fname not in files:
            kept[fname] = {**entry, "command": entry.get("command", old.get("command")),
                           "run": entry.get("run", old.get("run"))}
    return old, kept


def _versions() -> dict[str, str]:
    import torch

    from slimface.data.synth import RENDER_VERSION, VERSION

    try:
        from importlib.metadata import version

        own = version("slimface")
    except Exception:  # noqa: BLE001 - not installed as a package
        own = "unknown"
    return {"slimface": own, "torch": torch.__version__, "synth": str(VERSION), "render": str(RENDER_VERSION)}


# --------------------------------------------------------------------------------------- verify

__all__ = ["convert", "pack"]
