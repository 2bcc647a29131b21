"""Stage keys: what every stage of a run reads, and one key that changes whenever any of it does.

A stage's **key** covers its own settings (its part of the config) and the *content* of the outputs
of the stages it reads (:data:`DEPENDS`), so a changed input makes every stage downstream of it stale
while an unchanged rerun still skips everything (what Bazel, DVC or Snakemake do). Content is the
sha256 of each output file, hashed once when the stage finishes and stored in its marker
``OUT/stages/<stage>.json`` (``files``: sha256, size, mtime_ns). Later runs trust a recorded hash while
the file's size, mtime and inode are unchanged and re-hash only a file that was replaced (by hand, or by
another run), so its readers become stale without re-hashing big weights on every run.

The **resume key** is what a training checkpoint was made from: the same inputs and settings minus
those a run may change and still continue (more steps, another logging period). A teacher trained
longer resumes; the supernet of a changed teacher starts again from step 0.

Everything here is a pure function of the config and of what is on disk (markers, output files);
the pipeline does the writing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from slimface.config import to_dict
from slimface.train.config import RUN_FIELDS

#: bumped when the key formula changes: markers of another version are stale
KEY_VERSION = 2
#: training settings a run may change and still continue from its checkpoints
CONTINUATION = frozenset({"steps", "batch_size", "log_every", "ckpt_every", "keep_last", "channels_last",
                          "sample_every", "sample_count", "eval_every", "resume"})
#: data-stage counts that define the splits every other stage trains and tests on
SPLIT_COUNTS = ("train_pairs", "val_pairs", "test_probes", "gallery", "train_identities", "skipped_files")

#: what each stage kind reads: a shared stage, the same family's ``kind.{fam}``, or every family's ``kind.*``
DEPENDS: dict[str, tuple[str, ...]] = {
    "data": (),
    "recognizer": ("data",),
    "judge": ("data",),
    "teacher": ("data", "recognizer"),
    "sensitivity": ("data", "recognizer", "teacher.{fam}"),
    # the sensitivity table only while student.separable is auto (see dependencies)
    # the mobile teacher only while student.mobile_teacher is on (the stage exists only then)
    "mobile": ("data", "recognizer", "teacher.{fam}", "sensitivity.{fam}"),
    "supernet": ("data", "recognizer", "teacher.{fam}", "sensitivity.{fam}", "mobile.{fam}"),
    "search": ("data", "recognizer", "teacher.{fam}", "supernet.{fam}"),  # teacher: a "10x" budget
    "finetune": ("data", "recognizer", "teacher.{fam}", "mobile.{fam}", "supernet.{fam}", "search.{fam}"),
    "export": ("data", "search.{fam}", "finetune.{fam}"),
    "evaluate": ("data", "recognizer", "judge", "teacher.*", "mobile.*", "export.*"),
    "bench": ("teacher.*", "search.*", "export.*"),
    "report": ("teacher.*", "search.*", "export.*", "evaluate", "bench"),
}

_UNSET = "<unset>"
_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> sha256, this process


def fingerprint(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split(stage: str) -> tuple[str, str]:
    """``"supernet.tpgan"`` -> ``("supernet", "tpgan")``; ``"data"`` -> ``("data", "")``."""
    kind, _, fam = stage.partition(".")
    return kind, fam


def label(stage: str) -> str:
    """How a stage's output is named in messages: ``"tpgan teacher"``, ``"recognizer"``."""
    kind, fam = split(stage)
    return f"{fam} {kind}" if fam else stage


def dependencies(stage: str, stages: Sequence[str], cfg: Any = None) -> list[str]:
    """The stages of this run whose outputs ``stage`` reads, in run order. With ``cfg``, a supernet
    reads its family's sensitivity table only under ``student.separable: auto`` (a table made for
    the report alone does not make the supernet stale)."""
    kind, fam = split(stage)
    wanted: list[str] = []
    for pattern in DEPENDS.get(kind, ()):
        if pattern.endswith(".*"):
            wanted += [s for s in stages if split(s)[0] == pattern[:-2] and split(s)[1]]
        else:
            wanted.append(pattern.format(fam=fam))
    if kind in ("supernet", "mobile") and cfg is not None and cfg.student_for(fam).separable != "auto":
        wanted.remove(f"sensitivity.{fam}")
    return [s for s in stages if s in wanted]


# ----------------------------------------------------------------------------- settings
def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _without_zero_extras(section: dict[str, Any]) -> dict[str, Any]:
    """A recognizer's section without its extra-identity, clipping and member settings where they are
    0 or empty, the default: runs from before those settings keep their keys."""
    return {k: v for k, v in section.items()
            if v or k not in ("extra_identities", "extra_offset", "grad_clip", "members")}


def own_settings(cfg: Any, stage: str) -> dict[str, Any]:
    """The part of the config ``stage`` itself reads, keyed by config path (``"teachers.tpgan"``).

    Upstream settings are left out on purpose: their effect reaches this stage through the content of
    the outputs it reads, so an upstream change that leaves those outputs identical re-runs nothing.
    """
    c = cfg
    kind, fam = split(stage)
    s: dict[str, Any]
    if kind == "data":
        s = {"data": to_dict(c.data)}
    elif kind == "recognizer":
        s = {"recognizer": _without_zero_extras(to_dict(c.recognizer)), "seed": c.seed}
    elif kind == "judge":
        judge = to_dict(c.judge)
        for evaluate_only in ("dlib", "dlib_probes_per_group"):  # read by the evaluate stage, not here
            judge.pop(evaluate_only, None)
        s = {"judge": _without_zero_extras(judge), "seed": c.seed}
    elif kind == "teacher":
        teacher = to_dict(c.teacher(fam))
        for recipe in ("student", "finetune"):  # the teacher does not depend on its family's recipe
            teacher.pop(recipe, None)
        if not teacher.get("lr_decay_steps"):  # constant lr, the default: older runs keep their keys
            teacher.pop("lr_decay_steps", None)
        if teacher.get("init_shipped"):  # keyed by the shipped files' content; false goes with the off switches
            from slimface.shipped import files_digest

            teacher["init_shipped"] = files_digest(c, stage)
        s = {f"teachers.{fam}": teacher, "seed": c.seed}
    elif kind == "sensitivity":
        student = _without_conv_types(_student_without_defaults(to_dict(c.student_for(fam))), "auto")
        # a fixed, constant-lr fine-tune of the teacher's single changes
        for unread in ("sampling", "budget_low", "warm_start", "decay_steps", *MOBILE_SETTINGS):
            student.pop(unread, None)
        if student.get("warm_start_fit") != "activations":
            student.pop("warm_start_fit_images", None)
        student["train"] = {k: student["train"][k] for k in ("lr", "batch_size")}
        s = {"student": student, "search": {k: to_dict(c.search)[k] for k in ("val_batches", "bn_batches")},
             "eval_batch_size": c.eval_batch_size, "seed": c.seed, "validation": VALIDATION_SAMPLE}
    elif kind == "mobile":
        student = _without_conv_types(_student_without_defaults(to_dict(c.student_for(fam))))
        for unread in ("sampling", "budget_low", "decay_steps"):  # one fixed sub-network, decay over its second half
            student.pop(unread, None)
        student["train"].pop("steps", None)  # mobile_steps instead
        s = {"student": student, "seed": c.seed}
    elif kind == "supernet":
        student = c.student_for(fam)
        s = {"student": _without_conv_types(_student_without_defaults(to_dict(student))), "seed": c.seed}
        if not (student.warm_start and student.warm_start_fit == "activations"):
            for unused in ("warm_start_fit", "warm_start_fit_images"):  # older runs keep their keys
                s["student"].pop(unused, None)
        if student.sampling == "budget":  # the supernet is then trained for one budget
            s["search.budget"] = c.search.budget
        if student.supernet_init_shipped:  # continued from the shipped files: keyed by their content
            from slimface.shipped import files_digest

            s["student"]["supernet_init_shipped"] = files_digest(c, stage)
    elif kind == "search":
        search = _without_defaults(to_dict(c.search), SEARCH_DEFAULTS_OUT_OF_KEYS)
        s = {"search": search, "eval_batch_size": c.eval_batch_size, "seed": c.seed, "validation": VALIDATION_SAMPLE}
        if c.student_for(fam).seed:  # the compression seed (student.seed) also seeds the search
            s["student.seed"] = c.student_for(fam).seed
        if c.search.latency and c.search.runtime == "ort-int8" and c.deploy.int8_nodes != "all":
            s["deploy.int8_nodes"] = c.deploy.int8_nodes  # prices each conv at its faster precision
        for key, value in _without_conv_types(_student_without_defaults(to_dict(c.student_for(fam)))).items():
            if key.startswith(DESIGN_PREFIXES):  # the design searched (the defaults stay out)
                s[f"student.{key}"] = value
    elif kind == "finetune":
        student = _without_conv_types(_student_without_defaults(to_dict(c.student_for(fam))))
        for supernet_only in ("train", "warm_start", "warm_start_fit", "warm_start_fit_images", "sampling",
                              "budget_low", "decay_steps"):
            student.pop(supernet_only, None)
        s = {"finetune": to_dict(c.finetune_for(fam)), "student": student, "seed": c.seed}
    elif kind == "export":
        s = {"deploy": to_dict(c.deploy), "eval_batch_size": c.eval_batch_size}
    else:
        s = _final_settings(c, kind)
    return _plain(_with_shipped(c, stage, _without_run_fields(s)))


#: how the search and the sensitivity analysis draw their validation pairs (Pipeline.search_batches):
#: spread over every validation identity. Searches and tables of runs that scored the first pairs
#: of the list (two or three identities) are stale.
VALIDATION_SAMPLE = "spread"
#: ``student`` settings of the mobile teacher, all left out of every key while it is off
MOBILE_SETTINGS = ("mobile_teacher", "mobile_steps", "mobile_gap", "mobile_eval_every")
#: ``student`` settings left out of every key at these values (their defaults, what every run
#: before them did): earlier runs keep their keys
STUDENT_DEFAULTS_OUT_OF_KEYS = {"seed": 0, "identity_lowpass": False, "identity_jitter": 0, "max_kernel": None, "channel_multiple": None,
                                "identity_target": "truth"}
#: ``search`` settings left out of the search key at these values (what every run before them did)
SEARCH_DEFAULTS_OUT_OF_KEYS = {"latency_size": "run", "threads": 1, "metric": "identity"}
#: ``student`` settings that make the student's design (which convs split, which kernels capped, which
#: widths are choices)
DESIGN_PREFIXES = ("separable", "max_kernel", "channel_multiple")
#: ``student`` switches to shipped networks: out of every key, since the stage that installs the file
#: keys on its checksum instead (:func:`_with_shipped`) and the stages after it on its content
SHIPPED_SWITCHES = ("mobile_pretrained", "supernet_pretrained", "supernet_init_shipped")


def _without_defaults(section: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``section`` minus the settings of ``defaults`` that stand at their default value."""
    return {k: v for k, v in section.items() if not (k in defaults and v == defaults[k])}


def _student_without_defaults(student: dict[str, Any]) -> dict[str, Any]:
    """A ``student`` section minus :data:`STUDENT_DEFAULTS_OUT_OF_KEYS` at their defaults, the
    :data:`SHIPPED_SWITCHES` and, while ``mobile_teacher`` is off, the mobile teacher's settings; any
    other value is a setting of the supernet, search and fine-tune."""
    mobile_off = not student.get("mobile_teacher")
    return {k: v for k, v in _without_defaults(student, STUDENT_DEFAULTS_OUT_OF_KEYS).items()
            if not (k in SHIPPED_SWITCHES or (mobile_off and k in MOBILE_SETTINGS))}


def _without_conv_types(student: dict[str, Any], keep: str = "") -> dict[str, Any]:
    """A ``student`` section minus the conv-type and sensitivity settings that change nothing for a
    stage: ``separable`` while it is ``all`` (the default: older runs keep their keys),
    ``separable_keep`` unless it is ``auto``, and the sensitivity switches (their effect reaches the
    supernet through the sensitivity table). ``keep="auto"``: the sensitivity stage's own view (it
    keeps ``sensitivity_steps``, and no conv-type setting)."""
    out = dict(student)
    separable = out.get("separable", "all")
    drop = {"sensitivity"}
    if keep == "auto":
        drop |= {"separable", "separable_keep"}
    else:
        drop.add("sensitivity_steps")
        if separable == "all":
            drop.add("separable")
        if separable != "auto":
            drop.add("separable_keep")
    return {k: v for k, v in out.items() if k not in drop}


def _without_run_fields(obj: Any, parent: str = "") -> Any:
    """``obj`` minus the per-stage fields of every ``train`` section (where it writes, its seed and
    key: the pipeline sets them, they are no settings)."""
    if isinstance(obj, dict):
        return {k: _without_run_fields(v, k) for k, v in obj.items() if not (parent == "train" and k in RUN_FIELDS)}
    return obj


def _without_off_switches(obj: Any, top: bool = True) -> Any:
    """``obj`` minus ``pretrained: false``, ``init_shipped: false`` and the top-level ``weights``
    folder: settings that change nothing while no stage uses shipped weights stay out of every key
    (older runs keep their keys)."""
    if isinstance(obj, dict):
        return {k: _without_off_switches(v, False) for k, v in obj.items()
                if not (k in ("pretrained", "init_shipped") and v is False) and not (top and k == "weights")}
    return obj


def _with_shipped(cfg: Any, stage: str, s: dict[str, Any]) -> dict[str, Any]:
    """A stage that installs shipped weights (slimface.shipped) depends on the manifest's checksums
    of its files instead of its training settings."""
    from slimface.shipped import stage_key_part

    s = _without_off_switches(s)
    part = stage_key_part(cfg, stage)
    if part is not None:
        if split(stage)[0] in ("mobile", "supernet"):  # the files, and the design they fit (checked when installed)
            design = {k: v for k, v in (s.get("student") or {}).items() if k.startswith(DESIGN_PREFIXES)}
            s = {"student": design} if design else {}
        for name, section in s.items():
            if isinstance(section, dict):
                if not (name == "recognizer" and section.get("members")):  # members train with it
                    section.pop("train", None)
                section.pop("loss", None)
        s["pretrained"] = part  # first in a stale stage's reasons: "setting pretrained changed"
    return s


def _final_settings(cfg: Any, kind: str) -> dict[str, Any]:
    """evaluate / bench / report: the config minus what only upstream stages read."""
    full = to_dict(cfg)
    for upstream in ("out_dir", "student", "finetune", "search", "deploy"):
        full.pop(upstream, None)
    for teacher in (full.get("teachers") or {}).values():
        for upstream in ("train", "loss", "student", "finetune"):
            teacher.pop(upstream, None)
    for net in ("recognizer", "judge"):
        if isinstance(full.get(net), dict):
            full[net].pop("train", None)
    unread = {"evaluate": ("name", "bench"),
              "bench": ("name", "recognizer", "judge", "eval_batch_size", "eval_probes_per_group")}
    for key in unread.get(kind, ()):
        full.pop(key, None)
    return full


def resume_settings(cfg: Any, stage: str) -> dict[str, Any]:
    """The settings a stage's checkpoints (or search cache) depend on: :func:`own_settings` minus
    the ones a run may change and still continue."""
    s = own_settings(cfg, stage)
    if split(stage)[0] == "search":  # cached metrics hold for any budget, method or population
        return {"search": {k: s["search"][k] for k in ("val_batches", "bn_batches", "metric") if k in s["search"]},
                "eval_batch_size": s["eval_batch_size"]}
    return _without_continuation(s)


def _without_continuation(obj: Any, parent: str = "") -> Any:
    if isinstance(obj, dict):
        return {k: _without_continuation(v, k) for k, v in obj.items()
                if not (parent == "train" and k in CONTINUATION)}
    return obj


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def settings_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(config.path, old, new)`` for every leaf that differs."""
    a, b = _flatten(old or {}), _flatten(new)
    return [(k, a.get(k, _UNSET), b.get(k, _UNSET)) for k in sorted(set(a) | set(b))
            if a.get(k, _UNSET) != b.get(k, _UNSET)]


# ----------------------------------------------------------------------------- output files
def member_path(cfg: Any, out: str | Path, i: int) -> Path:
    """Recognizer member ``i``'s file: its checkpoint, or where the recognizer stage trains it."""
    given = cfg.recognizer.members[i].checkpoint
    return Path(given) if given else Path(out) / "recognizer" / f"member{i}" / "recognizer.safetensors"


def output_paths(cfg: Any, out: str | Path, stage: str, outputs: dict[str, Any] | None = None) -> list[Path]:
    """The files ``stage`` produces (or, for a given checkpoint, the file it stands for) that
    existing stages read; only the ones that exist."""
    out = Path(out)
    kind, fam = split(stage)
    paths: list[Path]
    if kind == "data":
        root = Path((outputs or {}).get("root") or cfg.data.root)
        paths = [root / "dataset.json", root / "manifest.csv"]
    elif kind in ("recognizer", "judge"):
        given = getattr(cfg, kind).checkpoint
        paths = [Path(given)] if given else [out / kind / f"{kind}.safetensors"]
        if kind == "recognizer":
            paths += [member_path(cfg, out, i) for i in range(len(cfg.recognizer.members))]
    elif kind == "teacher":
        given = cfg.teacher(fam).checkpoint
        d = out / fam / "teacher"
        # the supernet also reads a discriminator left in the folder when the generator is given
        paths = ([Path(given)] if given else [d / "generator.safetensors"]) + [d / "discriminator.safetensors"]
    elif kind == "mobile":
        d = out / fam / "mobile"
        paths = [d / "generator.safetensors", d / "discriminator.safetensors"]
    elif kind == "supernet":
        d = out / fam / "supernet"
        paths = [d / "supernet.safetensors", d / "mappers.safetensors", d / "discriminator.safetensors"]
    elif kind == "search":
        paths = [out / fam / "search" / "result.json", out / fam / "search" / "evaluated.jsonl"]
    elif kind == "finetune":
        paths = [out / fam / "finetune" / "supernet.safetensors"]
    elif kind == "sensitivity":  # what the supernet reads (the .md and .png are views of it)
        paths = [out / fam / "sensitivity" / "sensitivity.json"]
    elif kind == "export":
        paths = _folder_files(out / fam / "export")
    else:
        paths = _folder_files(out / kind)
    return [p for p in paths if p.is_file()]


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (remembered per size and mtime within this process)."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


def _rel(path: Path, out: Path) -> str:
    try:
        return path.absolute().relative_to(out.absolute()).as_posix()
    except ValueError:
        return str(path.absolute())


def _path(rel: str, out: str | Path) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(out) / p


def file_records(paths: Iterable[Path], out: str | Path) -> dict[str, dict[str, Any]]:
    """``{path (relative to OUT when inside it): {sha256, size, mtime_ns}}`` for existing files."""
    recs = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        recs[_rel(p, Path(out))] = _stat_record(st, sha256_file(p))
    return recs


def _stat_record(st: os.stat_result, sha: str | None) -> dict[str, Any]:
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _same_stat(st: os.stat_result, rec: dict[str, Any]) -> bool:
    """Size, mtime and inode as recorded: the file was not rewritten (a rename onto it changes the inode
    even within one mtime tick)."""
    return (st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns")
            and rec.get("ino", st.st_ino) == st.st_ino)


def _current_sha(rel: str, rec: dict[str, Any], out: str | Path) -> str | None:
    """The file's sha256 now: the recorded one while size and mtime match, else hashed again."""
    p = _path(rel, out)
    try:
        st = p.stat()
    except OSError:
        return None
    if _same_stat(st, rec):
        return str(rec.get("sha256"))
    return sha256_file(p)


def changed_files(marker: dict[str, Any], out: str | Path) -> tuple[list[str], list[str]]:
    """``(replaced, missing)``: recorded output files whose content changed, or that are gone."""
    replaced, missing = [], []
    for rel, rec in (marker.get("files") or {}).items():
        sha = _current_sha(rel, rec, out)
        if sha is None:
            missing.append(rel)
        elif sha != rec.get("sha256"):
            replaced.append(rel)
    return replaced, missing


def refreshed(marker: dict[str, Any], out: str | Path) -> dict[str, Any] | None:
    """``marker`` with its file records brought up to date (size, mtime, and the hash of a file
    replaced by hand), or None when nothing changed: written back so it is hashed only once."""
    files = {}
    for rel, rec in (marker.get("files") or {}).items():
        p = _path(rel, out)
        try:
            st = p.stat()
        except OSError:
            files[rel] = rec
            continue
        files[rel] = _stat_record(st, _current_sha(rel, rec, out))
    return None if files == (marker.get("files") or {}) else {**marker, "files": files}


def content_extra(cfg: Any, stage: str, outputs: dict[str, Any]) -> Any:
    """What a stage hands on besides files: for data, the split settings and counts (the split
    is recomputed from them by every stage); None elsewhere."""
    if split(stage)[0] != "data":
        return None
    data = to_dict(cfg.data)
    # where the files are, a speed switch, and what to do with bad files (its effect: skipped_files)
    for unread in ("root", "cache_images", "policy"):
        data.pop(unread, None)
    return _plain({"data": data, "split": {k: outputs.get(k) for k in SPLIT_COUNTS if k in outputs}})


# ----------------------------------------------------------------------------- markers and keys
def read_marker(out: str | Path, stage: str) -> dict[str, Any] | None:
    """``OUT/stages/<stage>.json``, or None when it is missing or unreadable."""
    path = Path(out) / "stages" / f"{stage}.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def content_digest(marker: dict[str, Any], out: str | Path) -> str:
    """The content key of a finished stage's outputs: its files' hashes (as they are now) and what
    else it hands on. A file that is gone counts as a change."""
    if "files" not in marker:  # a marker from before stage keys: its own fingerprint stands in
        return f"legacy-{marker.get('fingerprint')}"
    shas = [_current_sha(rel, rec, out) or f"missing:{Path(rel).name}"
            for rel, rec in marker["files"].items()]
    return fingerprint({"files": sorted(shas), "content": marker.get("content")})


@dataclass(frozen=True)
class StageKey:
    """A stage's key now: from its settings and the content keys of the outputs it reads."""

    stage: str
    key: str  # the stage is done while its marker holds this
    resume_key: str  # checkpoints / caches made under another one are set aside
    settings: dict[str, Any]
    resume_settings: dict[str, Any]
    inputs: dict[str, str | None]  # dependency -> content key (None: it has not run)
    lineage: dict[str, str]  # every stage upstream -> the content key this work descends from


def stage_key(cfg: Any, out: str | Path, stage: str, stages: Sequence[str]) -> StageKey:
    settings = own_settings(cfg, stage)
    resume = resume_settings(cfg, stage)
    inputs: dict[str, str | None] = {}
    lineage: dict[str, str] = {}
    markers = {dep: read_marker(out, dep) for dep in dependencies(stage, stages, cfg)}
    for dep, marker in markers.items():
        inputs[dep] = content_digest(marker, out) if marker is not None else None
        if inputs[dep] is not None:
            lineage[dep] = str(inputs[dep])
    for marker in markers.values():
        for ancestor, digest in ((marker or {}).get("lineage") or {}).items():
            lineage.setdefault(ancestor, digest)
    key = fingerprint({"v": KEY_VERSION, "settings": settings, "inputs": inputs})
    resume_key = fingerprint({"v": KEY_VERSION, "settings": resume, "inputs": inputs})
    return StageKey(stage, key, resume_key, settings, resume, inputs, lineage)


def new_marker(cfg: Any, out: str | Path, sk: StageKey, outputs: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The marker of a stage that just finished: its key, what it read, and its output files' hashes."""
    paths = output_paths(cfg, out, sk.stage, outputs)
    return {"stage": sk.stage, "wall_s": wall_s, "outputs": outputs, "fingerprint": sk.key,
            "key_version": KEY_VERSION, "resume_key": sk.resume_key, "settings": sk.settings,
            "inputs": sk.inputs, "lineage": sk.lineage, "files": file_records(paths, out),
            "content": content_extra(cfg, sk.stage, outputs)}


@dataclass(frozen=True)
class Reason:
    """Why a stage is not done. ``resumable``: a change its checkpoints survive (more steps)."""

    text: str
    resumable: bool = False
    missing: bool = False  # never run, or its outputs are gone


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _input_change(dep: str, old: Any, new: Any, out: str | Path) -> str:
    if new is None or new == _UNSET:
        return f"{label(dep)} has no output now"
    if old is None or old == _UNSET:
        return f"{label(dep)} is new"
    marker = read_marker(out, dep) or {}
    replaced, missing = changed_files(marker, out)
    notes = [f"{Path(p).name} replaced by hand" for p in replaced] + [f"{Path(p).name} is gone" for p in missing]
    return f"{label(dep)} changed" + (f" ({', '.join(notes)})" if notes else "")


def stale_reasons(marker: dict[str, Any] | None, sk: StageKey, out: str | Path) -> list[Reason]:
    """Why ``marker`` does not stand for the stage now; ``[]`` when the stage is done."""
    if marker is None:
        return [Reason("not run yet", missing=True)]
    if marker.get("key_version") != KEY_VERSION or "files" not in marker:
        return [Reason("its marker was written by an older slimface (no input keys)")]
    _, missing = changed_files(marker, out)
    if missing:
        return [Reason(f"its output {missing[0]} is gone", missing=True)]
    if marker.get("fingerprint") == sk.key:
        return []
    reasons = []
    old_inputs = marker.get("inputs") or {}
    for dep in [d for d in sk.inputs if d in old_inputs] + [d for d in sk.inputs if d not in old_inputs] \
            + [d for d in old_inputs if d not in sk.inputs]:
        old, new = old_inputs.get(dep, _UNSET), sk.inputs.get(dep, _UNSET)
        if old != new:
            reasons.append(Reason(_input_change(dep, old, new, out)))
    survive = set(_flatten(sk.resume_settings))
    for path, old, new in settings_changes(marker.get("settings"), sk.settings):
        reasons.append(Reason(f"setting {path} changed ({_short(old)} -> {_short(new)})",
                              resumable=path not in survive))
    return reasons or [Reason("its key changed")]


def describe(reasons: Sequence[Reason], limit: int = 3) -> str:
    """One phrase: the first ``limit`` reasons and how many more."""
    texts = [r.text for r in reasons]
    more = f"; and {len(texts) - limit} more" if len(texts) > limit else ""
    return "; ".join(texts[:limit]) + more


@dataclass(frozen=True)
class StageStatus:
    stage: str
    state: str  # "done", "stale" or "missing"
    reason: str = ""

    def line(self, width: int = 16) -> str:
        return f"  {self.stage:<{width}s} {self.state}" + (f": {self.reason}" if self.reason else "")


def status(cfg: Any, out: str | Path, stages: Sequence[str]) -> list[StageStatus]:
    """Each stage as done / stale (with what changed) / missing, reading only markers and stats."""
    rows: list[StageStatus] = []
    states: dict[str, str] = {}
    roots: dict[str, list[str]] = {}  # the stages whose own change makes this one wait
    for stage in stages:
        marker = read_marker(out, stage)
        reasons = stale_reasons(marker, stage_key(cfg, out, stage, stages), out)
        waiting = [d for d in dependencies(stage, stages, cfg) if states.get(d, "done") != "done"]
        if reasons and reasons[0].missing:
            row = StageStatus(stage, "missing", "" if marker is None else reasons[0].text)
            roots[stage] = [stage]
        elif reasons:
            row = StageStatus(stage, "stale", describe(reasons))
            roots[stage] = [stage]
        elif waiting:  # it re-runs if what these write next differs from what it read
            causes = list(dict.fromkeys(r for d in waiting for r in roots[d]))
            row = StageStatus(stage, "stale", "upstream " + ", ".join(f"{c} is {states[c]}" for c in causes))
            roots[stage] = causes
        else:
            replaced, _ = changed_files(marker or {}, out)
            row = StageStatus(stage, "done", f"{', '.join(replaced)} replaced by hand since" if replaced else "")
        states[stage] = row.state
        rows.append(row)
    return rows


def claim(path: str | Path, key: str) -> Path | None:
    """Make ``path`` (a cache that belongs to one resume key) this key's: if its sidecar
    ``<path>.key`` names another key, move the file aside to ``<name>.stale-<oldkey>`` (nothing is
    deleted) and return where it went; then record ``key``. None when nothing was moved."""
    from slimface.fileio import set_aside_unless_keyed, write_key

    moved = set_aside_unless_keyed(path, key)
    write_key(path, key)
    return moved


# ----------------------------------------------------------------------------- provenance
def provenance(out: str | Path, families: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per family: the key of the teacher the evaluate stage measured, the key of the teacher its
    student was distilled from (through supernet, fine-tune and export), and whether they agree.

    ``status``: "ok", "mismatch", "unknown" (the student cannot be traced: exported before stage keys,
    or changed since it was evaluated) or "no student".
    """
    ev = read_marker(out, "evaluate") or {}
    ev_inputs = ev.get("inputs") or {}
    result: dict[str, dict[str, Any]] = {}
    for fam in families:
        t_stage, x_stage = f"teacher.{fam}", f"export.{fam}"
        t_marker, x_marker = read_marker(out, t_stage), read_marker(out, x_stage)
        teacher_now = content_digest(t_marker, out) if t_marker else None
        teacher_key = ev_inputs.get(t_stage, teacher_now) if ev else teacher_now
        teacher_files = list((t_marker or {}).get("files") or {})  # the generator (or given file) first
        entry: dict[str, Any] = {"teacher_key": teacher_key, "teacher_file": teacher_files[0] if teacher_files else None,
                                 "student_teacher_key": None, "status": "no student"}
        # where the teacher came from: shipped weights/ (slimface.shipped), a given file, or trained here
        outputs = (t_marker or {}).get("outputs") or {}
        entry["origin"] = _origin(outputs)
        entry["intermediates"] = {}  # the mobile teacher and supernet the student came through
        for kind in ("mobile", "supernet"):
            marker = read_marker(out, f"{kind}.{fam}")
            if marker is not None:
                entry["intermediates"][kind] = {"origin": _origin(marker.get("outputs") or {}),
                                                "file": next(iter(marker.get("files") or {}), None),
                                                "key": content_digest(marker, out)}
        if x_marker is not None and output_paths_exist(x_marker, out):  # a student to trace
            export_now = content_digest(x_marker, out)
            traced = (x_marker.get("lineage") or {}).get(t_stage)
            if ev and ev_inputs.get(x_stage) != export_now:
                traced = None
            entry["student_teacher_key"] = traced
            entry["status"] = "unknown" if traced is None else ("ok" if traced == teacher_key else "mismatch")
        result[fam] = entry
    return result


def _origin(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: outputs[k] for k in ("origin", "manifest", "manifest_sha256", "files", "source", "init") if k in outputs}


def output_paths_exist(marker: dict[str, Any], out: str | Path) -> list[str]:
    """The recorded output files of ``marker`` that exist now."""
    return [rel for rel in (marker.get("files") or {}) if _path(rel, out).is_file()]


def provenance_lines(prov: dict[str, dict[str, Any]]) -> tuple[list[str], set[str]]:
    """Report markdown for :func:`provenance`, and the families whose student rows must be left out."""
    lines = ["## Provenance — which teacher each student was distilled from", "",
             "Keys are content keys of each network's weights (slimface.stage_keys); a student is only shown "
             "beside the teacher it was distilled from.", "",
             "| model | teacher | teacher key |", "|---|---|---|"]
    refused: set[str] = set()
    notes = []
    for fam, p in prov.items():
        from slimface.shipped import origin_text

        lines.append(f"| {fam} teacher | {origin_text(p.get('origin'), p.get('teacher_file'))} | `{p['teacher_key']}` |")
        for kind, step in (p.get("intermediates") or {}).items():
            name = "mobile teacher" if kind == "mobile" else kind
            lines.append(f"| {fam} {name} | {origin_text(step['origin'], step['file'], kind)} | `{step['key']}` |")
        if p["status"] == "ok":
            lines.append(f"| {fam} compressed | distilled from the {fam} teacher | `{p['student_teacher_key']}` |")
        elif p["status"] in ("mismatch", "unknown"):
            refused.add(fam)
            made_from = (f"teacher key `{p['student_teacher_key']}`" if p["status"] == "mismatch"
                         else "a teacher that cannot be traced (exported before stage keys, or changed since "
                              "evaluate ran)")
            notes.append(f"_{fam}: the compressed student was distilled from {made_from}, not from the {fam} "
                         f"teacher measured here (key `{p['teacher_key']}`), so its rows are left out; "
                         "`slimface status` names the stale stages and `slimface run` re-runs them._")
    return lines + ([""] + notes if notes else []) + [""], refused


__all__ = [
    "DEPENDS", "KEY_VERSION", "Reason", "StageKey", "StageStatus", "changed_files", "claim", "content_digest",
    "dependencies", "describe", "file_records", "fingerprint", "label", "new_marker", "output_paths",
    "own_settings", "provenance", "provenance_lines", "read_marker", "refreshed", "resume_settings",
    "settings_changes", "sha256_file", "stage_key", "stale_reasons", "status",
]
