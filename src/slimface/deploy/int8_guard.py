"""int8 that is never silently wrong: settings chosen for the CPU, and a check against fp32.

Why: ONNX Runtime's x86 u8s8 int8 convs multiply uint8 activations by int8 weights with
``vpmaddubsw``, which adds two products into a *saturating* int16. CPUs with VNNI (AVX512-VNNI,
AVX-VNNI, AMX) use ``vpdpbusd`` (int32 sums) instead, so a model that is fine where it was quantized can
collapse on an AVX2-only CPU. ORT's documentation advises 7-bit weights (``reduce_range``) or u8u8
there; with 7-bit weights two products stay below 2^15, so nothing saturates.

What: :func:`choose_settings` picks the weight range for the CPU it runs on; :func:`attach_check`
stores a few calibration inputs and their fp32 outputs in the int8 model's metadata, with the
settings and the CPU; :func:`verify_session` runs the int8 model on them (after quantizing, and
whenever :class:`~slimface.deploy.runtime.OnnxFrontalizer` loads an int8 model, possibly on another
CPU) and raises :class:`~slimface.errors.Int8RefusedError` when its PSNR against fp32 falls below
``MIN_PSNR_DB``.
"""

from __future__ import annotations

import base64
import io
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from slimface.errors import Int8RefusedError

__all__ = [
    "MIN_PSNR_DB",
    "MIN_COSINE",
    "VNNI_FLAGS",
    "Int8Settings",
    "cpu_name",
    "cpu_features",
    "cpu_arch",
    "cpu_has_vnni",
    "choose_settings",
    "attach_check",
    "compare",
    "verify_session",
    "verify_loaded",
    "refusal_note",
    "write_refusal",
    "int8_summary",
]

#: int8 outputs whose PSNR against fp32 (data range 1, as evaluate.quality) is below this are refused.
#: Saturated u8s8 convs land far below it; per-tensor 8-bit activations in a full-resolution output
#: stage land just below it and already cost several points of rank-1
#: (docs/experiments/2026-12-05-student-on-the-shipped-teacher.md, "Fine-tune length").
MIN_PSNR_DB = 28.0
#: with a recognizer: mean cosine between the embeddings of int8 and fp32 outputs must reach this
#: (identity is what rank-1 reads; the same note sets the level).
MIN_COSINE = 0.96
#: /proc/cpuinfo flags of the int8 dot-product instructions that do not saturate.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8")
CHECK_KEY = "int8_check"        # metadata: base64 npz of check inputs + fp32 outputs
SETTINGS_KEY = "int8_settings"  # metadata: JSON of Int8Settings
_CHECK_SAMPLES = 4


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; ('', {}) where there is none (macOS, Windows)."""
    name, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "", flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not name and key in ("model name", "cpu model", "processor") and not value.strip().isdigit():
            name = value.strip()
        elif not flags and key in ("flags", "features"):  # x86 "flags", ARM "Features"
            flags = frozenset(value.split())
    return name or platform.processor() or "", flags


def cpu_name() -> str:
    """The CPU's model name (lscpu's 'Model name'), for tables and error messages."""
    return _cpuinfo()[0] or platform.machine() or "unknown CPU"


def cpu_arch() -> str:
    """``x86_64`` / ``aarch64`` / ... (platform.machine(), normalised)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags (lower case); tests monkeypatch this to force a CPU."""
    return _cpuinfo()[1]


def cpu_has_vnni(features: frozenset[str] | None = None) -> bool:
    """Whether x86 int8 dot products run without int16 saturation (any of ``VNNI_FLAGS``)."""
    feats = cpu_features() if features is None else features
    return any(f in feats for f in VNNI_FLAGS)


def _feature_text(features: frozenset[str], arch: str) -> str:
    """What about this CPU matters for int8, in words (goes into errors and metadata)."""
    if arch != "x86_64":
        return f"{arch} CPU"
    have = [f for f in VNNI_FLAGS if f in features]
    if have:
        return "x86 with " + "/".join(f.upper().replace("_", "-") for f in have)
    simd = "AVX-512" if "avx512f" in features else ("AVX2" if "avx2" in features else "no AVX2")
    return f"x86 {simd} without VNNI (avx512_vnni/avx_vnni absent from /proc/cpuinfo)"


@dataclass(frozen=True)
class Int8Settings:
    """How to quantize for one CPU, and why (recorded in the model's metadata)."""

    activation_type: str   # "QUInt8"
    weight_type: str       # "QInt8" (u8s8) or "QUInt8" (u8u8)
    reduce_range: bool     # 7-bit weights
    reason: str
    cpu: str
    cpu_features: str      # _feature_text of the CPU it was chosen for

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        kind = "u8s8" if self.weight_type == "QInt8" else "u8u8"
        return kind + (" reduce-range (7-bit weights)" if self.reduce_range else "")


def choose_settings(features: frozenset[str] | None = None, arch: str | None = None) -> Int8Settings:
    """Quantization settings for the CPU it runs on (or for ``features``/``arch``).

    x86 with VNNI: u8s8, full 8-bit weights (no saturation). x86 without VNNI: u8s8 with 7-bit
    weights (``reduce_range``), which ORT advises and which keeps ``vpmaddubsw`` sums in int16 at
    u8s8 speed. ARM64: u8s8 full range (its int8 kernels widen before adding). Anything else, or an
    x86 whose flags cannot be read: 7-bit weights, the safe choice.
    """
    feats = cpu_features() if features is None else frozenset(features)
    arch = cpu_arch() if arch is None else arch
    text = _feature_text(feats, arch)
    if arch == "x86_64" and feats and cpu_has_vnni(feats):
        return Int8Settings("QUInt8", "QInt8", False, "VNNI int8 dot products do not saturate", cpu_name(), text)
    if arch == "x86_64" and feats:
        return Int8Settings("QUInt8", "QInt8", True,
                            "no VNNI: u8s8 convs saturate int16 sums; 7-bit weights keep them exact",
                            cpu_name(), text)
    if arch == "aarch64":
        return Int8Settings("QUInt8", "QInt8", False, "ARM64 int8 kernels do not saturate", cpu_name(), text)
    return Int8Settings("QUInt8", "QInt8", True, f"unknown int8 kernels on {text}: 7-bit weights to be safe",
                        cpu_name(), text)


# ----------------------------------------------------------------------------- the check data
def _pack(arrays: Mapping[str, np.ndarray]) -> str:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unpack(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text.encode("ascii"))), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def attach_check(meta: dict[str, str], feeds: Sequence[Mapping[str, np.ndarray]], fp32_outputs: Sequence[np.ndarray],
                 settings: Int8Settings, samples: int = _CHECK_SAMPLES) -> None:
    """Put ``samples`` evenly spread check inputs, their fp32 outputs (float16) and the settings into
    ``meta`` (the model's ``slimface.*`` metadata), so any later load can re-check the model."""
    idx = np.unique(np.linspace(0, len(feeds) - 1, min(samples, len(feeds))).round().astype(int))
    arrays: dict[str, np.ndarray] = {"output": np.concatenate([fp32_outputs[i] for i in idx]).astype(np.float16)}
    for name in feeds[0]:
        arrays["in." + name] = np.concatenate([np.asarray(feeds[i][name], dtype=np.float32) for i in idx])
    meta[CHECK_KEY] = _pack(arrays)
    meta[SETTINGS_KEY] = json.dumps(settings.as_dict(), sort_keys=True)


def compare(int8: np.ndarray, fp32: np.ndarray) -> dict[str, float]:
    """PSNR (dB, data range 1 like evaluate.quality; images in [-1, 1]), max and mean abs diff."""
    d = int8.astype(np.float64) - fp32.astype(np.float64)
    mse01 = float(np.mean(d * d)) / 4.0
    psnr = float("inf") if mse01 == 0 else 10.0 * float(np.log10(1.0 / mse01))
    return {"psnr_db": psnr, "max_abs_diff": float(np.abs(d).max()), "mean_abs_diff": float(np.abs(d).mean())}


def _cosine(recognizer: Any, a: np.ndarray, b: np.ndarray) -> float:
    import torch

    param = next(iter(recognizer.parameters()), None) if hasattr(recognizer, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")  # the run's recognizer may sit on a GPU
    with torch.no_grad():
        ea = recognizer.embed(torch.from_numpy(np.clip(a, -1, 1).astype(np.float32)).to(device))
        eb = recognizer.embed(torch.from_numpy(np.clip(b, -1, 1).astype(np.float32)).to(device))
        return float(torch.nn.functional.cosine_similarity(ea, eb, dim=1).mean())


def _refuse(what: str, stats: Mapping[str, float], why: str, settings: Mapping[str, Any] | None) -> Int8RefusedError:
    here = _feature_text(cpu_features(), cpu_arch())
    made = ""
    if settings:
        made = f"; quantized {('u8u8' if settings.get('weight_type') == 'QUInt8' else 'u8s8')}" + (
            " 7-bit" if settings.get("reduce_range") else " 8-bit") + f" on {settings.get('cpu', '?')}"
    fix = ("re-quantize on this machine (slimface run --only export --force)" if settings and not
           settings.get("reduce_range") and not cpu_has_vnni() and cpu_arch() == "x86_64"
           else "use the fp32 model.onnx")
    return Int8RefusedError(
        f"int8 refused on this CPU ({cpu_name()}, {here}): {what}: {why}, mean abs diff "
        f"{stats['mean_abs_diff']:.3f} vs fp32 on its calibration profiles{made}; {fix}"
    )


def verify_session(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: Mapping[str, np.ndarray],
                   reference: np.ndarray, what: str, settings: Mapping[str, Any] | None = None,
                   recognizer: Any = None, min_psnr: float = MIN_PSNR_DB,
                   min_cosine: float = MIN_COSINE) -> dict[str, float]:
    """Run the int8 model (``run(feeds) -> output``) one sample at a time on ``inputs`` and compare
    with the fp32 ``reference``; raise :class:`Int8RefusedError` below the thresholds, else return
    the figures (``psnr_db``, ``max_abs_diff``, ``mean_abs_diff``, ``cosine`` with a recognizer)."""
    n = len(reference)
    outs = [run({k: np.ascontiguousarray(v[i : i + 1]) for k, v in inputs.items()}) for i in range(n)]
    got = np.concatenate(outs)
    stats = compare(got, reference)
    if not stats["psnr_db"] >= min_psnr:
        raise _refuse(what, stats, f"PSNR {stats['psnr_db']:.1f} dB < {min_psnr:g} dB", settings)
    if recognizer is not None:
        stats["cosine"] = _cosine(recognizer, got, reference.astype(np.float32))
        if not stats["cosine"] >= min_cosine:
            raise _refuse(what, stats, f"identity embedding cosine {stats['cosine']:.3f} < {min_cosine:g} "
                                       f"(PSNR {stats['psnr_db']:.1f} dB)", settings)
    return stats


def verify_loaded(session: Any, metadata: Mapping[str, str], what: str,
                  min_psnr: float = MIN_PSNR_DB) -> dict[str, float] | None:
    """The load-time guard for an ORT ``session`` of an int8 model (``metadata``: its custom map).

    Re-runs the check stored by :func:`attach_check`. An int8 model without one (quantized by an
    older slimface) is refused only where it can saturate: full-range weights on an x86 CPU without
    VNNI. Returns the figures, or None when there was nothing to check.
    """
    quant = metadata.get("slimface.quantization", "")
    if not quant.startswith("int8"):
        return None
    settings: dict[str, Any] | None = None
    if f"slimface.{SETTINGS_KEY}" in metadata:
        try:
            settings = json.loads(metadata[f"slimface.{SETTINGS_KEY}"])
        except json.JSONDecodeError:
            settings = None
    packed = metadata.get(f"slimface.{CHECK_KEY}")
    if not packed:
        if cpu_arch() == "x86_64" and not cpu_has_vnni() and not (settings or {}).get("reduce_range"):
            raise Int8RefusedError(
                f"int8 refused on this CPU ({cpu_name()}, {_feature_text(cpu_features(), cpu_arch())}): "
                f"{what}: its 8-bit u8s8 convs can saturate here and the model carries no fp32 check; "
                "re-quantize on this machine (slimface run --only export --force) or use the fp32 model.onnx"
            )
        return None
    try:
        arrays = _unpack(packed)
    except (ValueError, OSError):
        raise Int8RefusedError(f"int8 refused: {what}: corrupt int8 check data in its metadata; re-quantize it") from None
    inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
    names = [i.name for i in session.get_inputs()]
    out_name = session.get_outputs()[0].name
    feeds = {k: v for k, v in inputs.items() if k in names}
    return verify_session(lambda f: session.run([out_name], f)[0], feeds, arrays["output"], what, settings,
                          min_psnr=min_psnr)


# ----------------------------------------------------------------------------- refusal notes
def _note_path(int8_path: str | Path) -> Path:
    p = Path(int8_path)
    return p.with_name(p.name + ".refused")


def write_refusal(int8_path: str | Path, reason: str) -> Path:
    """Leave ``<int8_path>.refused`` (one line: why) where an int8 model was refused, so later stages
    and reports say so instead of evaluating nothing or an older file."""
    from slimface.fileio import atomic_write

    return atomic_write(_note_path(int8_path), reason.strip().splitlines()[0] + "\n")


def clear_refusal(int8_path: str | Path) -> None:
    _note_path(int8_path).unlink(missing_ok=True)


def refusal_note(int8_path: str | Path) -> str | None:
    """Why the int8 model at ``int8_path`` was refused when it was made, or None."""
    note = _note_path(int8_path)
    return note.read_text().strip() if note.is_file() else None


def int8_summary(int8_path: str | Path) -> str:
    """One line on what runs in int8 in the model at ``int8_path`` (or why there is none), for reports."""
    path = Path(int8_path)
    if not path.is_file():
        why = refusal_note(path)
        return why if why else "no int8 model"
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    try:
        ops = json.loads(meta.get("slimface.int8_ops", "{}"))
        settings = json.loads(meta.get(f"slimface.{SETTINGS_KEY}", "{}"))
        kept = json.loads(meta.get("slimface.int8_fp32_nodes", "[]"))
    except json.JSONDecodeError:
        return "int8 model without readable slimface metadata"

    def counts(d: Mapping[str, int]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(d.items())) or "none"

    kind = ("u8u8" if settings.get("weight_type") == "QUInt8" else "u8s8") + (
        " 7-bit weights" if settings.get("reduce_range") else " 8-bit weights")
    line = f"int8 ops: {counts(ops.get('int8', {}))}; fp32 compute ops: {counts(ops.get('fp32', {}))}"
    if kept:
        line += f" ({len(kept)} convs kept fp32 where the latency table says int8 is slower)"
    if settings:
        line += f"; {kind}, quantized on {settings.get('cpu', '?')}"
    if "psnr_db" in ops:
        line += f"; PSNR vs fp32 {ops['psnr_db']:.1f} dB"
    return line
