"""How a generator runs in PyTorch fp32 when deployed: the three modes a benchmark can time.

- ``eager``: the eval-mode copy with batch norms folded into their convs
  (:func:`slimface.nn.fold.inference_copy`), NCHW tensors: what every latency figure used before.
- ``channels_last``: the same copy with its weights and every 4-d input in channels-last (NHWC)
  memory. oneDNN's depthwise convs run on NCHW tensors through a slow path; in NHWC they are
  vectorised over channels, which is where a separable student spends its conv time.
- ``compiled``: ``channels_last`` + ``torch.compile`` (Inductor, weights frozen as constants), which
  fuses the element-wise work around the convs (activations, residual adds, concatenations): at full
  resolution those ops cost a student about as much as its teacher, so they cap the speed-up of
  eager PyTorch. Needs a C++ compiler for Inductor's CPU kernels; compiling takes minutes at full size.

Every mode is checked once against the eager copy on the example inputs (max abs difference), so a
mode that changes outputs is refused instead of timed.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from slimface.errors import ConfigError
from slimface.nn.fold import inference_copy

TORCH_MODES = ("eager", "channels_last", "compiled")
#: largest output change a mode may make against the eager copy, relative to the output's magnitude
MAX_REL_DIFF = 1e-4


@dataclass
class Prepared:
    """A model ready to time: ``fn(*inputs)`` runs it in ``mode``; ``module`` is its eager, folded copy
    (for memory and counts)."""

    fn: Callable[..., Any]
    module: nn.Module
    mode: str
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


def _channels_last(x: Any) -> Any:
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def check_mode(mode: str) -> None:
    if mode not in TORCH_MODES:
        raise ConfigError(f"torch mode {mode!r}: use one of {', '.join(TORCH_MODES)}")


def compiler_available() -> bool:
    """Whether Inductor can build CPU kernels here (it calls a C++ compiler)."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def prepare(model: nn.Module, example_inputs: tuple, mode: str = "eager", fold_bn: bool = True) -> Prepared:
    """``model`` (left untouched) as deployed in ``mode``; the inputs keep their NCHW layout for the
    caller (a channels-last mode converts them inside the call, and that conversion is timed too)."""
    check_mode(mode)
    module, folded = inference_copy(model, example_inputs, fold_bn)
    info: dict[str, Any] = {"folded_batchnorms": folded}
    if mode == "eager":
        return Prepared(module, module, mode, info)
    if mode == "compiled" and not compiler_available():
        raise ConfigError("torch mode 'compiled' needs a C++ compiler (g++ or clang++) for torch.compile's CPU "
                          "kernels; install one, or time --torch-mode channels_last")
    net = copy.deepcopy(module).to(memory_format=torch.channels_last)
    run: Callable[..., Any] = net
    building: Any = contextlib.nullcontext()
    if mode == "compiled":
        import torch._inductor.config as inductor

        run = torch.compile(net)
        building = inductor.patch(freezing=True)  # weights as constants: the fusions need them fixed
    fn = lambda *xs: run(*(_channels_last(x) for x in xs))  # noqa: E731
    start = time.perf_counter()
    with torch.inference_mode():
        ref = _first(module(*example_inputs))
        with building:
            out = _first(fn(*example_inputs))  # compiled: the first call builds the kernels
    info["prepare_s"] = time.perf_counter() - start
    diff = float((out.float() - ref.float()).abs().max())
    info["max_abs_diff_vs_eager"] = diff
    if diff > MAX_REL_DIFF * max(1.0, float(ref.abs().max())):
        raise RuntimeError(f"torch mode {mode} changes the outputs by {diff:.2e} against eager; not timed")
    return Prepared(fn, module, mode, info)


__all__ = ["MAX_REL_DIFF", "Prepared", "TORCH_MODES", "check_mode", "compiler_available", "prepare"]
