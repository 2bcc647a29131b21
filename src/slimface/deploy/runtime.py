"""One interface to run any exported generator: ``load_frontalizer(path)(images, landmarks)``.

Formats, tried in this order:
1. loaders registered with :func:`register_format` (e.g. the slimface export directory/file of
   state_dict + architecture JSON, plugged in by the module that defines that format); a slimface
   generator loaded this way gets its batch norms folded into its convs (:mod:`slimface.nn.fold`);
2. ``.onnx`` -> ONNX Runtime (fp32 and int8 models alike; both are plain ONNX; an int8 model is
   re-checked against the fp32 outputs it carries and refused where it breaks on this CPU,
   :mod:`slimface.deploy.int8_guard`);
3. ``.pt`` / ``.pth`` / ``.ts`` -> TorchScript (``torch.jit.load``).
Registered here: ``model.pt2`` (torch.export program) and the slimface export, given as its folder
or as its ``model.safetensors`` / ``arch.json`` file.
Resolution and channels come from the ONNX ``metadata_props`` / TorchScript extra file written by
:mod:`slimface.deploy.onnx_export`, else from the graph's static input shape, else ``None``.
A missing, corrupt or unrecognised file raises :class:`~slimface.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from slimface.errors import CheckpointError, ConfigError, DataError, Int8RefusedError

__all__ = [
    "Frontalizer",
    "OnnxFrontalizer",
    "TorchFrontalizer",
    "load_frontalizer",
    "check_onnx",
    "load_or_refusal",
    "register_format",
    "from_module",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_numpy(a: ArrayLike | None) -> np.ndarray | None:
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


class Frontalizer:
    """A loaded generator: ``__call__(images (B,C,H,W) in [-1,1], landmarks (B,5,2)) -> ndarray``.

    ``resolution``/``channels`` are the input size the model was exported for (None if unknown);
    ``kind`` names the backend (``onnx``, ``torchscript``, ``torch``, or a registered format).
    """

    kind = "abstract"

    def __init__(self, source: Path | None, resolution: int | None, channels: int | None) -> None:
        self.source = source
        self.resolution = resolution
        self.channels = channels

    def _check(self, images: np.ndarray, landmarks: np.ndarray | None) -> None:
        where = f" for {self.source}" if self.source else ""
        if images.ndim != 4:
            raise DataError(f"images must be (B,C,H,W), got shape {tuple(images.shape)}{where}")
        b, c, h, w = images.shape
        if self.channels is not None and c != self.channels:
            raise DataError(
                f"model{where} expects {self.channels} channels, got {c}; convert the images "
                f"({'grayscale' if self.channels == 1 else 'RGB'})"
            )
        if self.resolution is not None and (h, w) != (self.resolution, self.resolution):
            raise DataError(
                f"model{where} expects {self.resolution}x{self.resolution} images, got {h}x{w}; "
                "align/resize them to the training crop first"
            )
        if landmarks is not None and landmarks.shape != (b, 5, 2):
            raise DataError(f"landmarks must be (B,5,2) = ({b},5,2), got {tuple(landmarks.shape)}")

    def __call__(self, images: ArrayLike, landmarks: ArrayLike | None = None) -> np.ndarray:
        imgs = _as_numpy(images)
        lms = _as_numpy(landmarks)
        assert imgs is not None
        self._check(imgs, lms)
        return self._run(np.ascontiguousarray(imgs), None if lms is None else np.ascontiguousarray(lms))

    def _run(self, images: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, resolution={self.resolution}, channels={self.channels})"


class OnnxFrontalizer(Frontalizer):
    """ONNX Runtime session on CPU (or the given providers)."""

    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None,
                 verify_int8: bool = True) -> None:
        """``verify_int8``: re-check an int8 model against the fp32 outputs stored in it and refuse it
        (:class:`~slimface.errors.Int8RefusedError`) where its int8 kernels break it on this CPU."""
        import onnxruntime as ort

        from slimface.deploy.int8_guard import verify_loaded
        from slimface.deploy.quantize import session_kwargs

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=providers or ["CPUExecutionProvider"]
            )
            extra = session_kwargs(self.session.get_modelmeta().custom_metadata_map)
            if extra:  # an int8 model with nodes kept fp32 on purpose
                self.session = ort.InferenceSession(
                    str(path), opts, providers=providers or ["CPUExecutionProvider"], **extra
                )
        except Exception as e:  # ORT raises several pybind error types for bad files
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path}: not a loadable ONNX model ({msg[:160]}); re-export it with slimface"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.int8_check = verify_loaded(self.session, meta, str(path)) if verify_int8 else None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        shape = self.session.get_inputs()[0].shape
        res = meta.get("slimface.resolution")
        ch = meta.get("slimface.channels")
        resolution = int(res) if res else (shape[-1] if isinstance(shape[-1], int) else None)
        channels = int(ch) if ch else (shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None)
        self.metadata = dict(meta)
        super().__init__(path, resolution, channels)

    def _run(self, images: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        feeds: dict[str, np.ndarray] = {}
        for i, name in enumerate(self.input_names):
            if name == "image" or (i == 0 and name != "landmarks"):
                feeds[name] = images.astype(np.float32, copy=False)
            elif name == "landmarks":
                if landmarks is None:
                    raise DataError(f"model {self.source} needs landmarks (B,5,2); none were given")
                feeds[name] = landmarks.astype(np.float32, copy=False)
            else:
                raise CheckpointError(f"{self.source}: unexpected ONNX input {name!r}; re-export with slimface")
        return self.session.run([self.output_name], feeds)[0]


class TorchFrontalizer(Frontalizer):
    """A PyTorch module (TorchScript or eager) run under ``inference_mode``."""

    kind = "torch"

    def __init__(
        self,
        module: nn.Module,
        source: Path | None = None,
        resolution: int | None = None,
        channels: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        super().__init__(source, resolution, channels)

    def _run(self, images: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        x = torch.from_numpy(images).to(self.device)
        with torch.inference_mode():
            if landmarks is None:
                try:
                    y = self.module(x, None)
                except (RuntimeError, TypeError) as e:
                    first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
                    raise DataError(f"model {self.source or ''} needs landmarks (B,5,2) ({first})") from None
            else:
                y = self.module(x, torch.from_numpy(landmarks).to(self.device))
        return y.float().cpu().numpy()


class TorchScriptFrontalizer(TorchFrontalizer):
    kind = "torchscript"


Loader = Callable[[Path], Union[Frontalizer, nn.Module]]
_REGISTRY: list[tuple[Callable[[Path], bool], Loader, str]] = []


def register_format(match: str | Callable[[Path], bool], loader: Loader, name: str = "") -> None:
    """Plug in a loader for another export format; it is tried before the built-in ones.

    ``match``: a file suffix (``".slimface"``; a directory matches on its own suffix too) or a
    predicate ``Path -> bool``. ``loader(path)`` returns a :class:`Frontalizer` or an ``nn.Module``
    (wrapped as a :class:`TorchFrontalizer`; ``resolution``/``channels`` attributes of the module are
    used when present).
    """
    if isinstance(match, str):
        suffix = match.lower()

        def pred(p: Path, suffix: str = suffix) -> bool:
            return p.name.lower().endswith(suffix)

        matcher = pred
        label = name or suffix
    else:
        matcher = match
        label = name or getattr(match, "__name__", "custom")
    _REGISTRY.insert(0, (matcher, loader, label))


def from_module(
    module: nn.Module, resolution: int | None = None, channels: int | None = None, device: str = "cpu"
) -> TorchFrontalizer:
    """Wrap an in-memory generator (``forward(x, landmarks)``) in the Frontalizer interface."""
    resolution = resolution if resolution is not None else getattr(module, "resolution", None)
    channels = channels if channels is not None else getattr(module, "channels", None)
    return TorchFrontalizer(module, None, resolution, channels, device=device)


def _refuse_non_torchscript(path: Path) -> None:
    """Name what a non-TorchScript file is before torch sees it.

    A ``torch.save`` file (training checkpoint, state dict, pickled module) is a pickle, and
    unpickling can run arbitrary code, so it is never loaded for inference; random bytes get a plain
    'not a model' line instead of miniz's internal error text.
    """
    import zipfile

    hint = ("export the model first (slimface run --only export) and pass its model.onnx or TorchScript "
            "model.pt")
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
                return  # TorchScript archive: let torch.jit.load read it (no Python unpickling)
            if any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(
                    f"{path}: a torch.save pickle (checkpoint or state dict), not an exported model; slimface "
                    f"does not unpickle model files (that can run code); {hint}"
                )
            raise CheckpointError(f"{path}: a zip archive but not a TorchScript model; {hint}")
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot be read as a model ({e}); {hint}") from None
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path}: a raw pickle file, not an exported model; slimface does not unpickle model files "
            f"(that can run code); {hint}"
        )
    raise CheckpointError(f"{path}: not a TorchScript model (not a zip archive); {hint}")


def _load_torchscript(path: Path, device: str) -> TorchScriptFrontalizer:
    _refuse_non_torchscript(path)
    extra = {"slimface.json": ""}
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript but still loads it
            warnings.simplefilter("ignore", category=DeprecationWarning)
            mod = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a TorchScript model ({first}); give an .onnx or TorchScript export "
            "(a training checkpoint must be exported first)"
        ) from None
    meta: dict[str, Any] = {}
    if extra["slimface.json"]:
        try:
            meta = json.loads(extra["slimface.json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: corrupt slimface.json metadata; re-export the model") from None
    res = meta.get("resolution", getattr(mod, "resolution", None))
    ch = meta.get("channels", getattr(mod, "channels", None))
    return TorchScriptFrontalizer(
        mod, path, int(res) if res is not None else None, int(ch) if ch is not None else None, device
    )


class _Program(nn.Module):
    """An exported program behind the nn.Module interface: it was captured in eval mode and does
    not support ``train()``/``eval()``, so it is kept outside the module tree."""

    def __init__(self, program: Any, resolution: int | None, channels: int | None) -> None:
        super().__init__()
        object.__setattr__(self, "_program", program)
        self.resolution, self.channels = resolution, channels

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        return self._program(x, landmarks)


def _load_program(path: Path) -> nn.Module:
    """A ``torch.export`` program (``model.pt2``), as written by slimface's export step; its
    resolution/channels come from the ``arch.json`` beside it when there is one."""
    try:
        program = torch.export.load(str(path)).module()
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a program
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a torch.export program ({first}); re-export the model") from None
    arch: dict[str, Any] = {}
    if (path.parent / "arch.json").is_file():
        try:
            arch = json.loads((path.parent / "arch.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            arch = {}
    arch = arch.get("arch", arch)
    return _Program(program, arch.get("resolution"), arch.get("channels"))


def _load_slimface_export(path: Path) -> nn.Module:
    """A slimface export directory (``arch.json`` + ``model.safetensors``)."""
    from slimface.export_format import load_export

    return load_export(path).eval()


register_format(lambda p: p.suffix.lower() == ".pt2", _load_program, "torch.export program")
register_format(lambda p: p.is_dir() and (p / "arch.json").is_file(), _load_slimface_export, "slimface export")
register_format(  # the export's weights file (or its arch.json) given instead of its folder
    lambda p: p.is_file() and p.name.lower() in ("model.safetensors", "arch.json") and (p.parent / "arch.json").is_file()
    and (p.parent / "model.safetensors").is_file(),
    lambda p: _load_slimface_export(p.parent), "slimface export file",
)


#: ONNX Runtime's GPU execution providers, preferred first (TensorRT builds engines, CUDA runs the graph as is)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime providers for ``device``: the CPU one, or the GPU ones this ONNX Runtime build has
    (then the CPU one, for the nodes they do not take); a GPU asked of a CPU-only build is a one-line
    ConfigError."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    have = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in have]
    if not gpu:
        raise ConfigError(f"device {device}: this ONNX Runtime has no GPU execution provider (it has "
                          f"{', '.join(have)}); pip install onnxruntime-gpu, or time ONNX Runtime on the CPU")
    return [*gpu, "CPUExecutionProvider"]


def load_frontalizer(path: str | Path, device: str = "cpu", threads: int | None = None) -> Frontalizer:
    """Load an exported generator from ``path`` (see module docstring for the formats)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist; give the path of an exported model")
    for matcher, loader, label in _REGISTRY:
        if matcher(path):
            obj = loader(path)
            if isinstance(obj, Frontalizer):
                return obj
            if isinstance(obj, nn.Module):
                example = getattr(obj, "example_inputs", None)
                if callable(example):  # a slimface generator: fold its batch norms, as ONNX Runtime does
                    from slimface.nn.fold import fold_batchnorm

                    fold_batchnorm(obj.eval(), example())
                f = from_module(obj, device=device)
                f.source = path
                return f
            raise TypeError(f"loader {label!r} returned {type(obj).__name__}, not a Frontalizer/nn.Module")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory that no registered export format recognises")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxFrontalizer(path, threads=threads, providers=ort_providers(device))
    if suffix in (".pt", ".pth", ".ts", ".torchscript"):
        return _load_torchscript(path, device)
    if suffix == ".safetensors":
        raise CheckpointError(
            f"{path}: safetensors weights need the export's arch.json beside them (named model.safetensors); "
            "pass the export folder"
        )
    # Unknown suffix: sniff the content (ONNX protobuf vs TorchScript zip).
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return _load_torchscript(path, device)
    raise CheckpointError(
        f"{path}: unknown model format {suffix or '(no suffix)'}; expected .onnx or a TorchScript .pt"
    )


def check_onnx(model: nn.Module, path: str | Path, example_inputs: tuple) -> float:
    """Max abs difference between PyTorch (eval) and ONNX Runtime on ``example_inputs``."""
    model = model.eval()
    dev = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    with torch.inference_mode():
        ref = model(*(t.to(dev) for t in example_inputs)).float().cpu().numpy()
    front = load_frontalizer(path)
    lm = example_inputs[1] if len(example_inputs) > 1 else None
    got = front(example_inputs[0], lm)
    return float(np.max(np.abs(got - ref)))


def load_or_refusal(path: str | Path, threads: int | None = None) -> tuple[Any, str | None]:
    """``(frontalizer, None)`` for a model that loads, ``(None, reason)`` for an int8 model refused
    on this CPU (now, or when it was made: :func:`~slimface.deploy.int8_guard.refusal_note`), ``(None, None)`` when absent."""
    from slimface.deploy.int8_guard import refusal_note

    path = Path(path)
    if not path.is_file():
        return None, refusal_note(path)
    try:
        return load_frontalizer(path, threads=threads), None
    except Int8RefusedError as e:
        return None, str(e)
