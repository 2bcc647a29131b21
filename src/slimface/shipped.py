"""Shipped weights: trained judge, loss recognizer, teachers, mobile teachers and supernets in
``weights/``, verified before use.

``slimface weights pack --run runs/pretrain --out weights/`` copies what a (pretraining) run trained,
as safetensors (fp16 for the files named with ``--fp16``, int8 weights with per-channel scales for
``--int8``; loading gives fp32), and writes
``weights/manifest.json``::

    {"schema": "slimface.weights/1", "command": <what reproduces them>, "total_bytes", "max_total_bytes",
     "data": <the data fingerprint>, "scorers": {...}, "baseline": {...},
     "files": {"tpgan.generator.safetensors": {
         "role": "teacher generator", "family": "tpgan", "sha256", "size", "dtype": "float16",
         "arch": {"net": "tpgan", "resolution", "channels", "width_mult", "state": <hash of the sorted
                  state-dict keys + shapes>, "tensors"},
         "data": {"dataset": <slimface.data.synth.data_fingerprint>, "split": {"train_subjects",
                  "val_subjects"}, ("identities", "max_abs_yaw", "extra_identities", "extra_offset" if any: recognizers only)},
         "figures": {"rank1_by": {scorer: {yaw: %}}, "quality": {"ssim", "psnr", "hf_ratio", "l1"}},
         "trained": {"stage", "key", "wall_s", "settings"}}, ...}}

A run uses them instead of training with ``recognizer.pretrained``, ``judge.pretrained``,
``teachers.<family>.pretrained``, ``student.mobile_pretrained`` or ``student.supernet_pretrained``
(files from the top-level ``weights:`` folder; a family's files are
``<family>.[mobile.|supernet.]<part>``). The stage then checks the file's checksum, its architecture
(against the network this run's config builds) and its data fingerprint (against this run's data
settings), refuses a mismatch with one line naming what differs
(:class:`~slimface.errors.CheckpointError`), and writes the weights (fp32) where the stage would have
written them, so every stage downstream, and the stage keys that hash those files, see them as usual.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from slimface.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimface.pipeline import Pipeline

SCHEMA = "slimface.weights/1"
MANIFEST = "manifest.json"
#: the most the shipped files may weigh together (issue 17): a clone stays small
MAX_TOTAL_BYTES = 40_000_000
#: the key suffix of an int8 weight's scales in a file packed with ``--int8`` (one fp32 per first-dim slice)
Q8_SCALE = ".__int8_scale__"
ROLES = ("judge", "recognizer", "teacher generator", "teacher discriminator", "mobile generator",
         "mobile discriminator", "supernet generator", "supernet discriminator", "supernet mappers")
#: a family's shipped networks per stage kind: the teacher, its mobile teacher (the student design at
#: full width) and the trained supernet (with the discriminator and distillation mappers it trained)
FAMILY_PARTS = {"teacher": ("generator", "discriminator"), "mobile": ("generator", "discriminator"),
                "supernet": ("generator", "discriminator", "mappers")}


# ----------------------------------------------------------------------------------------- slots
@dataclass(frozen=True)
class Slot:
    """One shipped file's place: its role, its family (teachers) and where a run keeps it."""

    role: str
    family: str | None = None

    @property
    def kind(self) -> str:
        """The stage kind that writes it: judge, recognizer, teacher, mobile (a family's mobile teacher)
        or supernet."""
        return self.role.split()[0]

    @property
    def part(self) -> str:
        """generator, discriminator or mappers (a family's networks); the role itself for the recognizers."""
        return self.role.split()[-1]

    @property
    def file(self) -> str:
        if self.role in ("judge", "recognizer"):
            return f"{self.role}.safetensors"
        middle = "" if self.kind == "teacher" else f"{self.kind}."  # teacher files keep their names
        return f"{self.family}.{middle}{self.part}.safetensors"

    @property
    def label(self) -> str:
        return {"judge": "judge", "recognizer": "loss recognizer"}.get(self.role) or f"{self.family} {self.role}"

    @property
    def stage(self) -> str:
        return self.role if self.role in ("judge", "recognizer") else f"{self.kind}.{self.family}"

    @property
    def switch(self) -> str:
        """The setting that turns the shipped file off (the stage then trains); the family's own student
        section, since it overrides the top-level one (configs/quick.yaml switches TP-GAN's supernet there)."""
        if self.role in ("judge", "recognizer"):
            return f"{self.role}.pretrained"
        if self.kind in ("mobile", "supernet"):
            return f"teachers.{self.family}.student.{self.kind}_pretrained"
        return f"teachers.{self.family}.pretrained"

    def switched_on(self, cfg: Any) -> bool:
        """Whether ``cfg`` loads this file instead of training it."""
        if self.kind in ("mobile", "supernet"):
            return bool(getattr(cfg.student_for(str(self.family)), f"{self.kind}_pretrained"))
        return bool(getattr(_role_settings(cfg, self), "pretrained", False))

    def run_path(self, out: str | Path) -> Path:
        """Where a run's own stage writes this network."""
        out = Path(out)
        if self.role in ("judge", "recognizer"):
            return out / self.role / f"{self.role}.safetensors"
        part = "supernet" if (self.kind, self.part) == ("supernet", "generator") else self.part
        return out / str(self.family) / self.kind / f"{part}.safetensors"


def slots_of(stage: str) -> list[Slot]:
    """The shipped files a stage installs: ``"judge"``, ``"recognizer"``, ``"teacher.<family>"``,
    ``"mobile.<family>"`` (the family's mobile teacher) or ``"supernet.<family>"``."""
    kind, _, fam = stage.partition(".")
    if kind in ("judge", "recognizer"):
        return [Slot(kind)]
    if kind in FAMILY_PARTS and fam:
        return [Slot(f"{kind} {part}", fam) for part in FAMILY_PARTS[kind]]
    return []


# ----------------------------------------------------------------------------------- fingerprints
def state_signature(shapes: Mapping[str, Sequence[int]]) -> str:
    """16 hex digits over the sorted state-dict keys and their shapes: the architecture as stored."""
    items = sorted((str(k), [int(n) for n in s]) for k, s in shapes.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def module_shapes(module: "nn.Module") -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def arch_fingerprint(net: str, resolution: int, channels: int, width_mult: float,
                     shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    return {"net": net, "resolution": int(resolution), "channels": int(channels), "width_mult": float(width_mult),
            "state": state_signature(shapes), "tensors": len(shapes)}


def dataset_fingerprint(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data fingerprint of a run's ``data`` settings (a plain dict, as ``to_dict(cfg.data)`` or a
    stage marker holds them): for the built-in data, :func:`slimface.data.synth.data_fingerprint` of the
    render settings; other data are named by kind and folder only."""
    if data.get("kind", "synth") == "synth":
        from slimface.data.synth import SynthConfig, data_fingerprint

        s = data.get("synth") or {}
        return data_fingerprint(SynthConfig(
            subjects=int(s.get("subjects", 337)), train_subjects=int(s.get("train_subjects", 200)),
            resolution=int(data.get("resolution", 64)), illuminations=int(s.get("illuminations", 5)),
            pitch=bool(s.get("pitch", False)), gray=bool(s.get("gray", False)), seed=int(s.get("seed", 0))))
    plain = {"generator": str(data.get("kind")), "root": str(data.get("root"))}
    return {**plain, "fingerprint": hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]}


def data_of(data: Mapping[str, Any], recognizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a network was trained on: the dataset, the split, and (recognizers) which identities."""
    out: dict[str, Any] = {"dataset": dataset_fingerprint(data),
                           "split": {"train_subjects": data.get("train_subjects"),
                                     "val_subjects": data.get("val_subjects")}}
    if recognizer is not None:
        out["identities"] = recognizer.get("identities")
        out["max_abs_yaw"] = recognizer.get("max_abs_yaw")
        for extra in ("extra_identities", "extra_offset"):  # identities beyond the dataset (0: none)
            if recognizer.get(extra):
                out[extra] = recognizer.get(extra)
    return out


def _role_settings(cfg: Any, slot: Slot) -> Any:
    """The config section of the network (a mobile teacher has its teacher's width)."""
    return getattr(cfg, slot.role) if slot.role in ("judge", "recognizer") else cfg.teacher(str(slot.family))


def expected_data(cfg: Any, slot: Slot) -> dict[str, Any]:
    """The data fingerprint this run would train ``slot`` on (from the config alone)."""
    from slimface.config import to_dict

    if slot.role in ("judge", "recognizer"):
        return data_of(to_dict(cfg.data), to_dict(_role_settings(cfg, slot)))
    return data_of(to_dict(cfg.data))


def expected(pipe: "Pipeline", slot: Slot) -> tuple["nn.Module", dict[str, Any]]:
    """The network this run's config builds for ``slot`` (untrained) and its architecture fingerprint
    (a recognizer's class count comes from the run's data, so those load the data)."""
    cfg = pipe.cfg
    d = cfg.data
    settings = _role_settings(cfg, slot)
    if slot.role in ("judge", "recognizer"):
        module = pipe._build_recognizer(settings)
        net = slot_net(slot, settings.variant)
    else:
        from slimface.families import get_family

        fam = get_family(str(slot.family))

        def teacher() -> "nn.Module":
            return fam.build_generator(resolution=d.resolution, channels=d.channels,
                                       width_mult=settings.width_mult, separable=False, sub=None)

        if slot.role == "teacher generator":
            module = teacher()
        elif slot.part == "generator":  # mobile teacher or supernet: the run's supernet (its conv types)
            module = pipe._supernet(str(slot.family)).cpu()
        elif slot.part == "mappers":  # student channels -> teacher channels, per tapped layer
            from slimface.compress.distill import Mapper

            module = Mapper(pipe._supernet(str(slot.family)).cpu(), teacher(), list(fam.student_spec.distill))
        else:
            module = fam.build_discriminator(resolution=d.resolution, channels=d.channels,
                                             width_mult=settings.width_mult)
        net = slot_net(slot)
    return module, arch_fingerprint(net, d.resolution, d.channels, settings.width_mult, module_shapes(module))


def slot_net(slot: Slot, variant: str | None = None) -> str:
    """The ``net`` of an architecture fingerprint: a recognizer's variant, the family for a teacher's
    networks and the discriminators, ``<family> student`` for a mobile teacher's generator and a
    supernet, ``<family> mappers`` for a supernet's distillation mappers."""
    if slot.role in ("judge", "recognizer"):
        return str(variant)
    if slot.part in ("generator", "mappers") and slot.kind != "teacher":
        return f"{slot.family} {'student' if slot.part == 'generator' else 'mappers'}"
    return str(slot.family)


# ----------------------------------------------------------------------------------------- files
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(weights: str | Path) -> dict[str, Any]:
    """``weights/manifest.json``; a missing or broken one is a one-line CheckpointError."""
    path = Path(weights) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no shipped weights: {path} does not exist; pack them with `slimface weights pack "
                              "--run RUN --out DIR`, set `weights:` to that folder, or set the *.pretrained "
                              "switches to false to train in this run") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable manifest ({exc}); restore it from git") from exc
    if (not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA
            or not isinstance(manifest.get("files"), dict)):
        raise CheckpointError(f"{path} is not a {SCHEMA} manifest; restore it from git or re-pack the weights")
    return manifest


def manifest_entry(manifest: Mapping[str, Any], slot: Slot, weights: str | Path) -> dict[str, Any]:
    entry = manifest["files"].get(slot.file)
    if not isinstance(entry, dict):
        raise CheckpointError(f"{Path(weights) / MANIFEST} has no {slot.label} ({slot.file}); set "
                              f"{slot.switch}=false to train it in this run, or pack a run that trained it")
    return entry


def quantize_int8(w: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Symmetric int8 per slice of the first dimension (a conv's output channels; a transposed conv's
    input channels): ``w ~ q * scale``, |error| <= scale / 2 with ``scale = max|slice| / 127``. Half the
    bytes of fp16, and not lossless: a network stored so is measured again before it ships. An all-zero
    slice keeps scale 1."""
    import torch

    w = w.detach().float()
    peak = w.abs().flatten(1).amax(1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize(tensors: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """A stored file's tensors with every int8 weight and its :data:`Q8_SCALE` entry made one fp32 tensor
    again (the state dict the network was packed from, up to rounding)."""
    import torch

    out = {}
    for k, v in tensors.items():
        if k.endswith(Q8_SCALE):
            continue
        scale = tensors.get(k + Q8_SCALE)
        if scale is not None:
            v = v.to(torch.float32) * scale.to(torch.float32).view(-1, *[1] * (v.dim() - 1))
        out[k] = v
    return out


def _tensors_from(data: bytes) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load

    return dequantize(load(data))


def _first_difference(ours: Mapping[str, Any], theirs: Mapping[str, Any], order: Sequence[str],
                      prefix: str = "") -> tuple[str, Any, Any] | None:
    keys = [k for k in order if k in ours or k in theirs]
    keys += sorted((set(ours) | set(theirs)) - set(keys) - {"fingerprint"})
    for k in keys:
        a, b = ours.get(k), theirs.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, order, f"{prefix}{k}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{k}", b, a
    return None


_ARCH_ORDER = ("net", "resolution", "channels", "width_mult", "state", "tensors")
_DATA_ORDER = ("dataset", "generator", "version", "render_version", "seed", "subjects", "train_subjects",
               "resolution", "illuminations", "pitch", "gray", "split", "val_subjects", "identities", "max_abs_yaw",
               "extra_identities", "extra_offset")


def _fix(slot: Slot, where: str) -> str:
    return (f"set {slot.switch}=false to train it in this run, or use the settings it was trained with "
            f"({Path(where).parent / MANIFEST})")


def check_data(entry: Mapping[str, Any], slot: Slot, data: Mapping[str, Any], where: str) -> None:
    """Refuse a manifest entry trained on other data than this run's (checked before the architecture:
    other data usually mean other shapes too, and the data are the cause)."""
    diff = _first_difference(dict(data), dict(entry.get("data") or {}), _DATA_ORDER)
    if diff:
        name, theirs, ours = diff
        raise CheckpointError(f"shipped {slot.label} {where}: trained on other data: {name} is {theirs!r} there, "
                              f"this run's data has {ours!r}; {_fix(slot, where)}")


def check_arch(entry: Mapping[str, Any], slot: Slot, arch: Mapping[str, Any], where: str) -> None:
    """Refuse a manifest entry built for another architecture than the network this run builds."""
    diff = _first_difference(dict(arch), dict(entry.get("arch") or {}), _ARCH_ORDER)
    if diff:
        name, theirs, ours = diff
        what = ("its layers (state-dict keys/shapes) differ from the network this slimface builds"
                if name in ("state", "tensors") else f"{name} is {theirs!r} there, this run's config has {ours!r}")
        raise CheckpointError(f"shipped {slot.label} {where}: another architecture: {what}; {_fix(slot, where)}")


def check_against(pipe: "Pipeline", entry: Mapping[str, Any], slot: Slot, where: str) -> "nn.Module":
    """Data, then architecture, of a manifest entry against ``pipe``'s config; the (untrained) network."""
    check_data(entry, slot, expected_data(pipe.cfg, slot), where)
    module, arch = expected(pipe, slot)
    check_arch(entry, slot, arch, where)
    return module


def load_file_checked(weights: str | Path, entry: Mapping[str, Any],
                      slot: Slot) -> tuple[dict[str, "torch.Tensor"], str]:
    """The tensors of a shipped file (floats cast back to fp32) after checking its size, sha256 and
    stored layers against the manifest; and its sha256."""
    import torch

    path = Path(weights) / slot.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"shipped {slot.label} {path} is missing (listed in {MANIFEST}); restore it from "
                              f"git or set {slot.switch}=false") from None
    sha = sha256_bytes(data)
    if len(data) != entry.get("size") or sha != entry.get("sha256"):
        raise CheckpointError(f"shipped {slot.label} {path}: checksum mismatch (sha256 {sha[:12]}…, the manifest "
                              f"says {str(entry.get('sha256'))[:12]}…): the file is damaged or was replaced; restore "
                              f"it from git, re-pack, or set {slot.switch}=false")
    try:
        tensors = _tensors_from(data)
    except Exception as exc:  # noqa: BLE001 - any decode failure is a broken file
        raise CheckpointError(f"shipped {slot.label} {path} is not a readable safetensors file ({exc})") from exc
    if state_signature({k: list(v.shape) for k, v in tensors.items()}) != (entry.get("arch") or {}).get("state"):
        raise CheckpointError(f"shipped {slot.label} {path}: its layers do not match the architecture its manifest "
                              "entry names; re-pack the weights")
    return {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in tensors.items()}, sha


# -------------------------------------------------------------------------------------- install
def manifest_digest(weights: str | Path) -> str:
    try:
        return sha256_bytes((Path(weights) / MANIFEST).read_bytes())
    except OSError:
        return "missing"


def stage_key_part(cfg: Any, stage: str) -> str | None:
    """What a stage that uses shipped weights depends on (for its stage key): the manifest's sha256 of
    each file it installs (16 hex digits each, joined by ``+``). None when the stage trains."""
    slots = slots_of(stage)
    if not slots or not slots[0].switched_on(cfg):
        return None
    return files_digest(cfg, stage)


def files_digest(cfg: Any, stage: str) -> str:
    """The manifest's sha256 of each shipped file of ``stage`` (16 hex digits each, joined by ``+``)."""
    slots = slots_of(stage)
    weights = Path(getattr(cfg, "weights", "weights"))
    try:
        files = json.loads((weights / MANIFEST).read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return "unreadable manifest"
    return "+".join(str((files.get(s.file) or {}).get("sha256", "missing"))[:16] for s in slots)


def verified(pipe: "Pipeline", stage: str) -> list[tuple[Slot, "nn.Module", dict[str, Any]]]:
    """Each shipped network of ``stage``, checked against this run's config (data, architecture,
    checksum) and loaded (fp32): its slot, the network and its record (file, sha256, dtype)."""
    weights = Path(pipe.cfg.weights)
    manifest = read_manifest(weights)
    out = []
    for slot in slots_of(stage):
        entry = manifest_entry(manifest, slot, weights)
        module = check_against(pipe, entry, slot, str(weights / slot.file))
        state, sha = load_file_checked(weights, entry, slot)
        module.load_state_dict(state)
        out.append((slot, module, {"file": str(weights / slot.file), "sha256": sha, "dtype": entry.get("dtype")}))
    return out


def install(pipe: "Pipeline", stage: str, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Verify the shipped files of ``stage`` against this run's config and write them (fp32) where the
    stage would have written its own; returns the stage's outputs (``origin: shipped``)."""
    from slimface.train.checkpoint import save_weights

    files: dict[str, Any] = {}
    for slot, module, record in verified(pipe, stage):
        save_weights(module, slot.run_path(pipe.out))
        files[slot.role] = record
        say(f"[{stage}] {slot.label}: shipped {record['file']} (sha256 {record['sha256'][:12]}, "
            f"{record['dtype'] or 'float32'}), verified; not trained in this run")
    weights = Path(pipe.cfg.weights)
    return {"origin": "shipped", "manifest": str(weights / MANIFEST), "manifest_sha256": manifest_digest(weights),
            "files": files}


def origin_text(outputs: Mapping[str, Any] | None, trained_file: str | None, kind: str = "teacher") -> str:
    """Where a family's network came from, for the report: the shipped file + manifest, or this run.
    ``kind``: the stage kind that made it (teacher, mobile or supernet)."""
    outputs = outputs or {}
    if outputs.get("origin") == "shipped":
        g = (outputs.get("files") or {}).get(f"{kind} generator") or {}
        return (f"shipped `{g.get('file')}` (sha256 `{str(g.get('sha256'))[:12]}`, "
                f"manifest `{outputs.get('manifest')}` "
                f"sha256 `{str(outputs.get('manifest_sha256'))[:12]}`)")
    if outputs.get("source"):
        return f"given file `{outputs['source']}`"
    start = ((outputs.get("init") or {}).get(f"{kind} generator") or {}).get("file")
    return ("trained in this run" + (f" from shipped `{start}`" if start else "")
            + (f": `{trained_file}`" if trained_file else ""))


# ----------------------------------------------------------------------------------------- pack
def verify(weights: str | Path, pipe: "Pipeline | None" = None, say: Callable[[str], None] = print) -> int:
    """Check every file of ``weights`` against its manifest (size, sha256, layers, dtype, total size)
    and, with ``pipe``, against that run's config (architecture + data); one line per file. Raises a
    CheckpointError naming the first problem and how many there are; returns the number of files."""
    from safetensors import safe_open

    weights = Path(weights)
    manifest = read_manifest(weights)
    problems: list[str] = []
    total = 0
    for fname, entry in sorted(manifest["files"].items()):
        slot = Slot(str(entry.get("role")), entry.get("family"))
        if slot.role not in ROLES or slot.file != fname:
            problems.append(f"{fname}: role {slot.role!r} / family {slot.family!r} do not name this file")
            say(f"  FAIL {fname}: {problems[-1]}")
            continue
        try:
            tensors, _ = load_file_checked(weights, entry, slot)
            with safe_open(str(weights / fname), framework="pt") as f:
                stored = {f.get_slice(k).get_dtype() for k in f.keys()}
                meta = json.loads((f.metadata() or {}).get("slimface") or "{}")
            want = {"float16": {"F16"}, "int8": {"F16", "F32"}}.get(str(entry.get("dtype")), {"F32"})
            floats = {t for t in stored if t.startswith(("F", "BF"))}
            if (floats and not floats <= want) or (entry.get("dtype") == "int8") != ("I8" in stored):
                raise CheckpointError(f"{fname}: stored as {sorted(stored)}, the manifest says {entry.get('dtype')}")
            if meta.get("role") not in (None, slot.role):
                raise CheckpointError(f"{fname}: the file says role {meta.get('role')!r}, "
                                      f"the manifest {slot.role!r}")
            if pipe is not None and slot.stage in pipe.stages():  # the networks this config builds
                check_against(pipe, entry, slot, str(weights / fname))
        except CheckpointError as exc:
            problems.append(str(exc))
            say(f"  FAIL {fname}: {exc}")
            continue
        total += int(entry["size"])
        say(f"  ok   {fname}: {slot.label}, {entry['size'] / 1e6:.2f} MB {entry.get('dtype')}, sha256 "
            f"{entry['sha256'][:12]}, {len(tensors)} tensors, arch {entry['arch'].get('state')}, data "
            f"{((entry.get('data') or {}).get('dataset') or {}).get('fingerprint')}")
    listed = set(manifest["files"])
    for extra in sorted(p.name for p in weights.glob("*.safetensors") if p.name not in listed):
        say(f"  note {extra}: not in {MANIFEST}; no run loads it")
    if manifest.get("total_bytes") != sum(int(e.get("size", 0)) for e in manifest["files"].values()):
        problems.append(f"{MANIFEST}: total_bytes does not add up; re-pack")
    if sum(int(e.get("size", 0)) for e in manifest["files"].values()) > MAX_TOTAL_BYTES:
        problems.append(f"the files weigh more than {MAX_TOTAL_BYTES / 1e6:.0f} MB together; re-pack with --fp16 "
                        "or --int8")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) above)" if len(problems) > 1 else ""
        raise CheckpointError(problems[0] + more)
    say(f"{weights}: {len(listed)} files verified, {total / 1e6:.2f} MB of {MAX_TOTAL_BYTES / 1e6:.0f} MB")
    return len(listed)


__all__ = [
    "MANIFEST", "MAX_TOTAL_BYTES", "Q8_SCALE", "ROLES", "SCHEMA", "Slot", "arch_fingerprint", "check_against",
    "check_arch", "check_data", "data_of", "dataset_fingerprint", "dequantize", "expected", "expected_data",
    "install", "load_file_checked", "manifest_digest", "manifest_entry", "origin_text", "quantize_int8",
    "read_manifest", "slot_net", "slots_of", "stage_key_part", "state_signature", "verify",
]
