"""The one training loop every slimface stage uses (recognizer, teacher GANs, supernet, fine-tune).

A stage is a :class:`TrainTask`: it owns its nets, optimisers and schedulers and does its own
forward/backward/optimiser steps in ``train_step`` (a GAN steps D and G separately). The
:class:`Trainer` owns everything around that: deterministic seeding, a resumable rank-sharded sampler,
DDP wrapping, progress/scalar logs, sample grids, atomic checkpoints, resume that loses nothing, and
clean stops on SIGINT/SIGTERM. It knows nothing about GANs or faces.

Guarantees:

* Rerunning the same command after a crash (even SIGKILL) resumes from the newest usable checkpoint in
  ``out_dir/checkpoints``. With ``deterministic=True`` on CPU and ``num_workers=0`` the final weights are
  bit-identical to an uninterrupted run: nets, optimisers, schedulers, the sampler position (mid-epoch
  too), every RNG (python, numpy, torch, CUDA; per rank) and the task's ``extra_state()`` are restored.
  With ``TrainConfig.key`` set, only checkpoints made under that key are resumed; others move aside to
  ``checkpoints.stale-<key>/`` and training starts from step 0 (one line says why).
  Sample grids and evaluation run inside :func:`~slimface.train.checkpoint.preserve_rng`, so how often
  they run never changes the training trajectory.
* SIGINT/SIGTERM: the current step finishes, a checkpoint is saved, and :class:`TrainingInterrupted`
  (a ``SystemExit`` with code 130/143) is raised. A second signal stops at once.
* ``batch_size`` is the global batch; under DDP each rank gets ``batch_size // world_size`` (it must
  divide: losses that average over the local batch are only equal to the 1-process average when every
  rank holds the same number of samples). Under DDP every module with a ``sync_stats`` attribute
  (synchronised BatchNorm) is switched to cross-rank batch statistics for the run, and a task that
  draws per-sample noise with :class:`~slimface.train.distributed.StepRandom` follows the 1-process
  trajectory with the same global batch (see distributed.py).

Layout of ``out_dir``: ``checkpoints/ckpt_XXXXXX.pt`` (+ ``.sha256``), ``scalars.jsonl``,
``samples/step_XXXXXX.png``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from slimface.config import to_dict
from slimface.errors import CheckpointError, ConfigError
from slimface.models.judge import refuse_judge
from slimface.nn.modes import unwrap
from slimface.train import distributed as D
from slimface.train.checkpoint import (
    SUFFIX_SHA,
    capture_rng,
    check_fingerprint,
    list_checkpoints,
    load_checked,
    load_latest,
    preserve_rng,
    restore_rng,
    save_checkpoint,
    set_aside,
)
from slimface.train.config import TrainConfig
from slimface.train.logging import Progress, ScalarWriter, format_log_line, save_grid
from slimface.train.sampler import ResumableSampler, _BatchIndexStream

log = logging.getLogger("slimface.train")

CHECKPOINT_FORMAT = "slimface-train"
CHECKPOINT_VERSION = 1


@runtime_checkable
class TrainTask(Protocol):
    """What a stage provides to the Trainer.

    Required: ``nets``, ``optimizers``, ``schedulers`` (may be ``{}``) and ``train_step``, which does its
    own forward/backward/optimiser (and scheduler) steps and calls nets only via ``self.nets[name]``
    (the Trainer may replace entries with DDP wrappers). Optional, looked up with ``getattr``:

    * ``fingerprint: str`` -- architecture/resolution tag (``"tpgan@64 w0.25"``); a checkpoint written
      with another fingerprint is refused. Defaults to the task's class name.
    * ``sample(batch) -> Tensor`` -- ``(B, C, H, W)`` images in [-1, 1] for the sample grid.
    * ``extra_state() -> dict`` / ``load_extra_state(d)`` -- anything else to checkpoint (tensors and
      plain types only), e.g. a supernet's configuration RNG. A task that is not an ``nn.Module`` may
      spell these ``state_dict()`` / ``load_state_dict(d)`` instead.
    * ``on_eval(step) -> dict[str, float]`` -- evaluation metrics (rank 0 only, no_grad, eval mode).
    * ``converged(metrics) -> bool`` -- asked after each evaluation with the latest metrics (``eval/``
      keys): True ends training there, checkpointed, as if ``steps`` were reached (a resumed run whose
      checkpoint is converged trains no further).
    * ``frozen_nets: dict[str, nn.Module]`` -- nets the step runs but does not train (a distillation
      teacher, a recognizer): they follow the loop's memory format (``channels_last``) with ``nets``.
    * ``unused_parameters: Collection[str]`` -- names of ``nets`` in which a step may leave some trainable
      parameters without a gradient (a supernet's sub-network, a head the objective does not use):
      under DDP the Trainer wraps exactly those with ``find_unused_parameters=True`` (the others keep
      DDP's faster default, which raises a clear error if a parameter goes unused).
    """

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]: ...


class TrainingInterrupted(SystemExit):
    """Raised after a SIGINT/SIGTERM stop was checkpointed; exit code 128 + signal (130/143)."""

    def __init__(self, signum: int, step: int, path: Path | None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.step = step
        self.path = path


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker: derive python/numpy seeds from the per-worker torch seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a batch; with ``channels_last`` its image tensors (4-D floating) become NHWC too, since a
    conv whose weight and input disagree in layout is slower than either layout alone."""
    if isinstance(obj, Tensor):
        obj = obj.to(device, non_blocking=device.type == "cuda")
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, channels_last) for v in obj)
    return obj


def _set_memory_format(nets: dict[str, nn.Module], channels_last: bool) -> None:
    """In place (the parameter objects, and so the optimisers' references, stay the same)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for net in nets.values():
        unwrap(net).to(memory_format=fmt)


@contextmanager
def _eval_mode(nets: dict[str, nn.Module]) -> Iterator[None]:
    """Put nets in eval mode and restore every submodule's own flag afterwards (frozen parts stay)."""
    modes = [(m, m.training) for net in nets.values() for m in net.modules()]
    for net in nets.values():
        net.eval()
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


class Trainer:
    """Run a :class:`TrainTask` on a map-style dataset according to a :class:`TrainConfig`."""

    def __init__(
        self,
        task: TrainTask,
        dataset: Any,
        cfg: TrainConfig,
        collate: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        cfg.validate()
        for attr in ("nets", "optimizers", "train_step"):
            if not hasattr(task, attr):
                raise TypeError(f"{type(task).__name__} is not a TrainTask: it has no {attr!r}")
        for name, value in vars(task).items():  # judges only measure: no task may hold one
            refuse_judge(value, f"training task {type(task).__name__}.{name}")
        self.task = task
        self.dataset = dataset
        self.cfg = cfg
        self.collate = collate or default_collate
        self.ckpt_dir = cfg.out_dir / "checkpoints"
        self.samples_dir = cfg.out_dir / "samples"
        self.scalars = ScalarWriter(cfg.out_dir / "scalars.jsonl")
        self.step = 0  # completed steps
        self.last_metrics: dict[str, float] = {}
        self.resumed_from: Path | None = None
        self._stop_signal: int | None = None
        self._sample_batch: Any = None
        self._progress: Progress | None = None

    # ------------------------------------------------------------------ small helpers
    @property
    def fingerprint(self) -> str:
        return str(getattr(self.task, "fingerprint", None) or type(self.task).__name__)

    @property
    def schedulers(self) -> dict[str, Any]:
        return dict(getattr(self.task, "schedulers", None) or {})

    @property
    def device(self) -> torch.device:
        """Where batches go: the device of the task's first parameter (CPU if it has none)."""
        for net in self.task.nets.values():
            for p in net.parameters():
                return p.device
        return torch.device("cpu")

    def _extra_state_fns(self) -> tuple[Callable[[], Any] | None, Callable[[Any], Any] | None]:
        """``extra_state``/``load_extra_state``; else a non-Module task's ``state_dict``/``load_state_dict``
        (the older spelling in DESIGN.md), so extra state is never silently dropped."""
        save = getattr(self.task, "extra_state", None)
        load = getattr(self.task, "load_extra_state", None)
        if not callable(save) and not callable(load) and not isinstance(self.task, nn.Module):
            save = getattr(self.task, "state_dict", None)
            load = getattr(self.task, "load_state_dict", None)
        return (save if callable(save) else None), (load if callable(load) else None)

    def step_rng(self, step: int, device: torch.device | str = "cpu") -> torch.Generator:
        """Generator seeded from (seed, step): identical on every rank (see distributed.py)."""
        return D.shared_generator(self.cfg.seed, step, device)

    def _line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.line(text)
        elif D.is_main():
            print(text, flush=True)

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict[str, float]:
        """Train to ``cfg.steps`` (resuming if possible); return the final metrics."""
        cfg = self.cfg
        info = D.init_distributed()
        if cfg.batch_size % info.world_size:
            raise ConfigError(
                f"train.batch_size {cfg.batch_size} is not divisible by the {info.world_size} "
                "processes; batch_size is the global batch, pick a multiple"
            )
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed + info.rank)
        sampler = ResumableSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, info.rank, info.world_size
        )
        old_handlers = self._install_signal_handlers()
        sync_changed: list[tuple[nn.Module, bool]] = []
        try:
            if D.is_main():
                cfg.out_dir.mkdir(parents=True, exist_ok=True)
            D.barrier()
            self._resume(sampler, info)
            self._progress = Progress(cfg.steps, self.step, enabled=D.is_main(), bar=cfg.progress)
            if self.step >= cfg.steps:
                self._line(f"already at step {self.step} >= steps {cfg.steps}; nothing to train")
                return {"step": float(self.step), **self.last_metrics}
            if self.step and self._converged():
                self._line(f"converged at step {self.step} (checkpoint); nothing to train")
                return {"step": float(self.step), **self.last_metrics}
            if info.world_size > 1:
                sync_changed = D.set_sync_stats(self.task.nets, True)
            if cfg.channels_last:
                _set_memory_format(self._all_nets(), True)
            self._wrap_nets()
            self._loop(sampler, info)
            return {"step": float(self.step), **self.last_metrics}
        finally:
            self._unwrap_nets()
            if cfg.channels_last:
                _set_memory_format(self._all_nets(), False)
            D.restore_sync_stats(sync_changed)
            if self._progress is not None:
                self._progress.close()
            self._restore_signal_handlers(old_handlers)
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn

    def _loop(self, sampler: ResumableSampler, info: D.DistInfo) -> None:
        cfg = self.cfg
        device = self.device
        next_batch, close = self._batch_source(sampler, device)
        sums: dict[str, float] = {}
        count = 0
        t0 = time.perf_counter()
        window_steps = 0
        try:
            while self.step < cfg.steps:
                batch = next_batch()
                out = self.task.train_step(batch, self.step)
                self.step += 1
                done = self.step
                for k, v in (out or {}).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                window_steps += 1
                if self._progress is not None:
                    self._progress.update()
                final = done == cfg.steps
                if done % cfg.log_every == 0 or final:
                    avg = D.mean_across_ranks({k: v / max(count, 1) for k, v in sums.items()})
                    elapsed = time.perf_counter() - t0
                    it_s = window_steps / elapsed if elapsed > 0 else None
                    self._log_train(done, avg, it_s)
                    sums, count, window_steps, t0 = {}, 0, 0, time.perf_counter()
                converged = False
                if (cfg.eval_every and done % cfg.eval_every == 0) or final:
                    self._evaluate(done)
                    converged = not final and self._converged()
                    if converged:
                        self._line(f"converged at step {done} of {cfg.steps}: stopping early")
                        final = True
                if cfg.sample_period and (done % cfg.sample_period == 0 or final):
                    self._write_samples(done)
                stop = D.any_rank(self._stop_signal is not None)
                if stop or final or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
                    path = self._save(sampler, info)
                    if stop and not final:
                        signum = self._stop_signal or signal.SIGTERM
                        name = signal.Signals(signum).name
                        self._line(f"stopped by {name} at step {done}; checkpoint {path}")
                        raise TrainingInterrupted(int(signum), done, path)
                if converged:
                    break
        finally:
            close()

    # ------------------------------------------------------------------ data
    def _batch_source(
        self, sampler: ResumableSampler, device: torch.device
    ) -> tuple[Callable[[], Any], Callable[[], None]]:
        """``(next_batch, close)``: in-process loading, or a DataLoader with workers."""
        if self.cfg.num_workers == 0:

            def next_batch() -> Any:
                idx = sampler.next_indices()
                return _to_device(self.collate([self.dataset[i] for i in idx]), device, self.cfg.channels_last)

            return next_batch, lambda: None
        g = torch.Generator().manual_seed(
            (self.cfg.seed * 1_000_003 + D.rank() * 10_007 + self.step) % (2**63 - 1)
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=_BatchIndexStream(sampler),
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_seed_worker,
            generator=g,
        )
        it = iter(loader)

        def next_batch_workers() -> Any:
            b = next(it)
            sampler.advance()  # position = batches consumed, not prefetched
            return _to_device(b, device, self.cfg.channels_last)

        def close() -> None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()

        return next_batch_workers, close

    def _get_sample_batch(self) -> Any:
        if self._sample_batch is None:
            k = min(self.cfg.sample_count, len(self.dataset))
            self._sample_batch = _to_device(
                self.collate([self.dataset[i] for i in range(k)]), self.device
            )
        return self._sample_batch

    def _all_nets(self) -> dict[str, nn.Module]:
        frozen = getattr(self.task, "frozen_nets", None) or {}
        return {**{f"frozen.{k}": v for k, v in frozen.items()}, **self.task.nets}

    # ------------------------------------------------------------------ DDP
    def _wrap_nets(self) -> None:
        if not D.is_dist():
            return
        unused = set(getattr(self.task, "unused_parameters", ()) or ())
        unknown = sorted(unused - set(self.task.nets))
        if unknown:
            raise TypeError(f"{type(self.task).__name__}.unused_parameters names {unknown[0]!r}, which is not "
                            f"one of its nets ({', '.join(self.task.nets)})")
        for name, net in list(self.task.nets.items()):
            self.task.nets[name] = D.wrap_ddp(net, find_unused_parameters=name in unused)

    def _unwrap_nets(self) -> None:
        for name, net in list(self.task.nets.items()):
            self.task.nets[name] = unwrap(net)

    @contextmanager
    def _plain_nets(self) -> Iterator[None]:
        """Unwrapped nets (no DDP collectives, no synchronised BN statistics) in eval mode, no grad,
        RNG untouched: for rank-0 work (a BN recalibration in ``on_eval`` runs in train mode and must
        not wait for the other ranks)."""
        saved = dict(self.task.nets)
        self._unwrap_nets()
        try:
            with preserve_rng(), torch.no_grad(), _eval_mode(self.task.nets), \
                    D.sync_stats(self.task.nets, False):
                yield
        finally:
            self.task.nets.update(saved)

    # ------------------------------------------------------------------ logging / eval / samples
    def _log_train(self, done: int, avg: dict[str, float], it_s: float | None) -> None:
        self.last_metrics = {k: v for k, v in self.last_metrics.items() if k.startswith("eval/")}
        self.last_metrics.update(avg)
        if not D.is_main():
            return
        lrs = {
            f"lr/{name}": float(opt.param_groups[0]["lr"])
            for name, opt in self.task.optimizers.items()
            if opt.param_groups
        }
        extra = {"it_s": it_s} if it_s is not None else {}
        self.scalars.write(done, {**avg, **lrs, **extra})
        self._line(format_log_line(done, self.cfg.steps, avg, it_s))
        bad = [k for k, v in avg.items() if not math.isfinite(v)]
        if bad:
            self._line(f"warning: non-finite {', '.join(bad)} at step {done}")

    def _evaluate(self, done: int) -> None:
        on_eval = getattr(self.task, "on_eval", None)
        if not callable(on_eval):
            return
        metrics: dict[str, float] = {}
        if D.is_main():
            with self._plain_nets():
                metrics = {f"eval/{k}": float(v) for k, v in (on_eval(done) or {}).items()}
            self.scalars.write(done, metrics)
            if metrics:
                self._line(format_log_line(done, self.cfg.steps, metrics, None))
        metrics = D.broadcast_object(metrics)
        self.last_metrics.update(metrics)
        D.barrier()

    def _converged(self) -> bool:
        """The task's ``converged(metrics)`` on the latest metrics (same answer on every rank: the
        evaluation metrics are broadcast); a task without it trains to ``steps``."""
        converged = getattr(self.task, "converged", None)
        return bool(callable(converged) and converged(self.last_metrics))

    def _write_samples(self, done: int) -> None:
        sample = getattr(self.task, "sample", None)
        if not callable(sample):
            return
        if D.is_main():
            with self._plain_nets():
                images = sample(self._get_sample_batch())
            save_grid(images, self.samples_dir / f"step_{done:06d}.png")
        D.barrier()

    # ------------------------------------------------------------------ checkpoints
    def _state(self, sampler: ResumableSampler, rng_all: list[Any]) -> dict[str, Any]:
        extra_fn, _ = self._extra_state_fns()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "fingerprint": self.fingerprint,
            "nets": {n: unwrap(net).state_dict() for n, net in self.task.nets.items()},
            "optimizers": {n: o.state_dict() for n, o in self.task.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "sampler": sampler.state_dict(),
            "rng": rng_all,
            "extra": extra_fn() if extra_fn is not None else {},
            "metrics": dict(self.last_metrics),
            "world_size": D.world_size(),
            "config": to_dict(self.cfg),
            "key": self.cfg.key,
        }

    def _save(self, sampler: ResumableSampler, info: D.DistInfo) -> Path | None:
        rng_all = D.all_gather_object(capture_rng())  # every rank's streams
        path = None
        if D.is_main():
            path = save_checkpoint(
                self.ckpt_dir, self.step, self._state(sampler, rng_all), self.cfg.keep_last
            )
        D.barrier()
        return path

    def _resume(self, sampler: ResumableSampler, info: D.DistInfo) -> None:
        cfg = self.cfg
        found_path: str | None = None
        state: dict[str, Any] | None = None
        if D.is_main():
            existing = list_checkpoints(self.ckpt_dir)
            if existing and not cfg.resume:
                raise CheckpointError(
                    f"{self.ckpt_dir} already holds checkpoints (latest step {existing[-1][0]}) and "
                    "resume is off; use another --out, delete them, or resume"
                )
            found = load_latest(self.ckpt_dir) if cfg.resume else None
            if found is not None and cfg.key and found[0].get("key") != cfg.key:
                self._set_aside(str(found[0].get("key") or "unkeyed"))
                found = None
            if found is not None:
                state, p = found
                found_path = str(p)
                # newer checkpoints that failed to load would be picked again next time: set aside
                for s, q in existing:
                    if s > int(state["step"]):
                        q.replace(q.with_name(q.name + ".corrupt"))
                        Path(str(q) + SUFFIX_SHA).unlink(missing_ok=True)
                        log.warning("moved unusable checkpoint %s aside (.corrupt)", q)
        found_path = D.broadcast_object(found_path)
        if found_path is None:
            if D.is_main():
                self.scalars.truncate_after(0)
            return
        if state is None:
            state = load_checked(found_path)
        self._apply_state(state, Path(found_path), sampler, info)
        if D.is_main():
            self.scalars.truncate_after(self.step)
            self._line(f"resumed from {found_path} at step {self.step}")

    def _set_aside(self, old_key: str) -> None:
        """Checkpoints (and their scalar log) made from other inputs: moved, not deleted, and said why."""
        cfg = self.cfg
        moved = set_aside(self.ckpt_dir, old_key)
        scalars = cfg.out_dir / "scalars.jsonl"
        if scalars.is_file():
            scalars.replace(moved / scalars.name)
        reason = cfg.key_reason or f"checkpoints were made under key {old_key}, this run is {cfg.key}"
        self._line(f"{reason}: {cfg.out_dir.name} restarts from step 0 (old checkpoints moved to {moved})")

    def _apply_state(
        self, state: dict[str, Any], path: Path, sampler: ResumableSampler, info: D.DistInfo
    ) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a slimface training checkpoint; use another --out or delete it"
            )
        check_fingerprint(state, self.fingerprint, path)

        def load_into(kind: str, objs: dict[str, Any]) -> None:
            saved = state.get(kind, {})
            for name, obj in objs.items():
                if name not in saved:
                    raise CheckpointError(
                        f"checkpoint {path} has no {kind[:-1]} {name!r}; use another --out or delete it"
                    )
                try:
                    target = unwrap(obj) if isinstance(obj, nn.Module) else obj
                    target.load_state_dict(saved[name])
                except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                    raise CheckpointError(
                        f"checkpoint {path}: {kind[:-1]} {name!r} does not fit this run ({first}); "
                        "use another --out or delete it"
                    ) from exc

        load_into("nets", self.task.nets)
        load_into("optimizers", self.task.optimizers)
        load_into("schedulers", self.schedulers)
        _, load_extra = self._extra_state_fns()
        if load_extra is not None:
            load_extra(state.get("extra", {}))
        if not sampler.load_state_dict(state.get("sampler", {})):
            self._line(
                f"warning: dataset size or batch size changed since {path.name}; "
                f"continuing with a fresh epoch {sampler.epoch}"
            )
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            restore_rng(rngs[info.rank])
        else:
            seed_everything(self.cfg.seed + info.rank + 7919 * int(state["step"]))
            self._line(
                f"note: {path.name} was written by {len(rngs)} process(es), this run has "
                f"{info.world_size}; RNG streams reseeded (the run is no longer bit-reproducible)"
            )
        self.step = int(state["step"])
        self.last_metrics = {k: float(v) for k, v in (state.get("metrics") or {}).items()}
        self.resumed_from = path

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        self._stop_signal = None
        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                break
        return old

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            try:
                signal.signal(sig, handler)
            except ValueError:
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # second signal: stop now, without a checkpoint
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self._stop_signal = signum
        if D.is_main():
            name = signal.Signals(signum).name
            print(
                f"received {name}: finishing step {self.step + 1} and saving a checkpoint "
                "(send it again to stop at once)",
                flush=True,
            )


__all__ = ["TrainConfig", "TrainTask", "Trainer", "TrainingInterrupted", "seed_everything"]
