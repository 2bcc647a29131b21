"""Multi-process training on ``torch.distributed`` (launched with ``torchrun``).

Conventions every stage follows (see also :class:`slimface.train.loop.Trainer`):

* **Launch**: ``torchrun --nproc_per_node N -m slimface ...``. :func:`init_distributed` reads the
  torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and
  picks ``nccl`` on CUDA, ``gloo`` on CPU. Without those variables everything here degrades to
  single-process no-ops, so the same code runs both ways.
* **Batch size**: ``TrainConfig.batch_size`` is the *global* batch; each rank gets
  ``batch_size // world_size`` samples (a disjoint slice of the same global batch), so changing the
  number of processes does not change the optimisation (up to float rounding) and a run can be resumed
  with a different process count.
* **Wrapping**: the Trainer wraps every net with trainable parameters in
  ``DistributedDataParallel`` and puts the wrapper back into ``task.nets``; tasks must call nets via
  ``self.nets[name]`` and use :func:`slimface.nn.modes.unwrap` to reach attributes of the inner module. Forward hooks
  registered on the inner module (or its submodules) keep firing, because DDP calls the inner module's
  ``__call__`` (unlike the old DataParallel, which runs replicas).
* **GAN steps**: calling a wrapped D several times before one backward is fine. Do **not** toggle
  ``requires_grad`` on a wrapped net to freeze it for the G step (DDP registers its gradient hooks once);
  detach the inputs or zero D's gradients before its own step instead. A task names the nets whose
  trainable parameters may get no gradient in a step (e.g. a supernet that runs a sub-network, or a
  head the objective skips) in its ``unused_parameters``; the Trainer wraps those with
  ``find_unused_parameters=True`` and the others with DDP's faster default, which raises a clear
  error if a parameter goes unused.
* **Shared randomness**: per-rank global RNGs differ (seeded ``seed + rank``), so anything drawn from
  them (data augmentation in a dataset) differs from a 1-process run. Choices that must be identical
  on every rank (a supernet's channel configuration, a random loss weight) come from
  :func:`shared_generator(seed, step)`, which is seeded from ``(seed, step)`` only.
* **Per-sample randomness** (GAN noise z, random target views, gradient-penalty interpolation
  weights, dropout masks): anything random with a batch dimension is drawn with :class:`StepRandom`
  -- from a generator seeded by ``(seed, step, stream)``, for the whole *global* batch, then cut to
  this rank's rows ``[rank * b, (rank + 1) * b)`` (:func:`shard_rows`). The sampler gives rank r
  exactly those rows of the global batch (in the same order), so sample i sees the same noise however
  many processes run, and a run with N processes follows the 1-process trajectory up to float
  rounding.
* **BatchNorm**: under DDP the Trainer switches on ``sync_stats`` of every module that has that
  attribute (:class:`~slimface.nn.super_layers.SuperBatchNorm2d`): batch statistics are then
  all-reduced over ranks (with gradients), i.e. computed on the global batch. Work that runs on one
  rank only (sample grids, ``on_eval``) runs with it switched off (:func:`sync_stats`).
* **Rank 0 only**: logging, checkpoints, sample grids and ``on_eval`` run on rank 0; the other ranks
  wait at a barrier.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from slimface.errors import ConfigError
from slimface.nn.modes import unwrap


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; fix the launcher") from exc


def is_dist() -> bool:
    """True inside an initialised multi-process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_dist() else 0


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs, checkpoints and writes samples."""
    return rank() == 0


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else CPU: build task nets on this device."""
    if torch.cuda.is_available():
        return torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group if the environment asks for one (idempotent).

    Returns this process's :class:`DistInfo`; with no ``WORLD_SIZE`` (or ``WORLD_SIZE=1``) nothing is
    initialised and the info describes a single process.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world > 1 and not is_dist():
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(
                    f"WORLD_SIZE={world} but {var} is not set; launch with torchrun --nproc_per_node N"
                )
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        dist.init_process_group(
            backend=backend or ("nccl" if use_cuda else "gloo"),
            init_method="env://",
            timeout=timedelta(seconds=timeout_s),
        )
    return DistInfo(rank(), world_size(), local_rank(), default_device())


def cleanup() -> None:
    """Leave the process group (call once at program exit)."""
    if is_dist():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL collectives need CUDA tensors; gloo uses CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is True on any rank (e.g. 'a stop signal arrived'), agreed by all ranks."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_across_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (keys missing on some ranks are averaged where present)."""
    if not is_dist():
        return dict(metrics)
    gathered = all_gather_object(dict(metrics))
    keys = list(dict.fromkeys(k for m in gathered for k in m))  # rank 0's order first
    return {
        k: sum(float(m[k]) for m in gathered if k in m) / sum(1 for m in gathered if k in m)
        for k in keys
    }


def shared_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from ``(seed, step)`` only: identical random draws on every rank."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7_919 + 0x5EED) % (2**63 - 1))
    return g


def shard_rows(t: Tensor, local_batch: int | None = None) -> Tensor:
    """This rank's rows ``[rank * b, (rank + 1) * b)`` of a tensor holding the global batch in dim 0.

    ``b`` is ``local_batch`` or ``len(t) // world_size``; this is the slice of every global batch that
    :class:`~slimface.train.sampler.ResumableSampler` hands rank r, so per-sample values line up.
    """
    n = world_size()
    b = t.shape[0] // n if local_batch is None else int(local_batch)
    if b * n != t.shape[0]:
        raise ValueError(f"global batch of {t.shape[0]} rows does not split into {n} ranks of {b}")
    return t.narrow(0, rank() * b, b)


class StepRandom:
    """Per-sample random draws of one training step that do not depend on the number of processes.

    Every draw is made for the global batch (``local_batch * world_size`` rows) from one CPU generator
    seeded by ``(seed, step, stream)`` and then cut to this rank's rows (:func:`shard_rows`); the
    result moves to ``device``. Draws are consumed in call order, which is the same on every rank
    (SPMD), so a task may make several draws per step. ``stream`` keeps independent uses (a task's
    noise vs. a supernet's configuration from :func:`shared_generator`) from sharing numbers.
    Drawing on the CPU makes the numbers identical on CPU and CUDA runs.
    """

    def __init__(self, seed: int, step: int, local_batch: int, device: torch.device | str = "cpu",
                 stream: str = "samples") -> None:
        if local_batch < 1:
            raise ValueError(f"local_batch must be >= 1, got {local_batch}")
        self.local_batch = int(local_batch)
        self.global_batch = self.local_batch * world_size()
        self.device = torch.device(device)
        salt = zlib.crc32(stream.encode())
        self.generator = torch.Generator().manual_seed(
            (int(seed) * 1_000_003 + int(step) * 7_919 + salt * 104_729 + 0xD1CE) % (2**63 - 1)
        )

    def _out(self, t: Tensor, dtype: torch.dtype | None) -> Tensor:
        t = shard_rows(t, self.local_batch)
        return t.to(device=self.device, dtype=dtype or t.dtype)

    def randn(self, *shape_per_sample: int, dtype: torch.dtype | None = None) -> Tensor:
        """Standard normal ``(b, *shape_per_sample)``."""
        return self._out(torch.randn(self.global_batch, *shape_per_sample, generator=self.generator), dtype)

    def rand(self, *shape_per_sample: int, dtype: torch.dtype | None = None) -> Tensor:
        """Uniform [0, 1) ``(b, *shape_per_sample)``."""
        return self._out(torch.rand(self.global_batch, *shape_per_sample, generator=self.generator), dtype)

    def randint(self, high: int, *shape_per_sample: int) -> Tensor:
        """Integers in [0, high) of shape ``(b, *shape_per_sample)`` (int64)."""
        t = torch.randint(0, int(high), (self.global_batch, *shape_per_sample), generator=self.generator)
        return self._out(t, None)


def global_randn(shape_per_sample: Sequence[int], local_batch: int, step: int, seed: int,
                 device: torch.device | str = "cpu", stream: str = "samples") -> Tensor:
    """One standard-normal draw of :class:`StepRandom` (this rank's rows of the global batch)."""
    return StepRandom(seed, step, local_batch, device, stream).randn(*shape_per_sample)


def set_sync_stats(modules: Sequence[nn.Module] | dict[str, nn.Module], enabled: bool) -> list[tuple[nn.Module, bool]]:
    """Set ``sync_stats`` on every submodule that has it (cross-rank BatchNorm statistics).

    Returns ``(module, previous value)`` pairs so a caller can restore them. Generic: any module with
    a boolean ``sync_stats`` attribute takes part.
    """
    nets = modules.values() if isinstance(modules, dict) else modules
    changed: list[tuple[nn.Module, bool]] = []
    seen: set[int] = set()
    for net in nets:
        for m in unwrap(net).modules():
            if id(m) in seen or not isinstance(getattr(m, "sync_stats", None), bool):
                continue
            seen.add(id(m))
            changed.append((m, bool(m.sync_stats)))  # type: ignore[attr-defined]
            m.sync_stats = enabled  # type: ignore[attr-defined]
    return changed


def restore_sync_stats(changed: Sequence[tuple[nn.Module, bool]]) -> None:
    for m, was in changed:
        m.sync_stats = was  # type: ignore[attr-defined]


@contextmanager
def sync_stats(modules: Sequence[nn.Module] | dict[str, nn.Module], enabled: bool) -> Iterator[None]:
    """``sync_stats`` set to ``enabled`` on every module that supports it, restored on exit."""
    changed = set_sync_stats(modules, enabled)
    try:
        yield
    finally:
        restore_sync_stats(changed)


def has_trainable_params(net: nn.Module) -> bool:
    return any(p.requires_grad for p in net.parameters())


def wrap_ddp(net: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``net`` in DDP if we are distributed and it has trainable parameters, else return it."""
    if not is_dist() or isinstance(net, DistributedDataParallel) or not has_trainable_params(net):
        return net
    device = next(net.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        net, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup",
    "is_dist",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "default_device",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "any_rank",
    "mean_across_ranks",
    "shared_generator",
    "shard_rows",
    "StepRandom",
    "global_randn",
    "set_sync_stats",
    "restore_sync_stats",
    "sync_stats",
    "has_trainable_params",
    "wrap_ddp",
    
]
