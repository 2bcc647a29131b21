"""Deterministic, resumable, rank-sharded batch sampler.

Every epoch has one global permutation of the dataset, drawn from ``(seed, epoch)`` only, cut into
global batches of ``batch_size`` (the last partial batch is dropped so every step sees a full batch).
Under DDP each rank takes a disjoint, contiguous slice of every global batch, so the union over ranks
is exactly the batch a single process would see. The position (epoch, batch index) is the whole state:
saving it in a checkpoint lets a resumed run continue mid-epoch with the very next batch, and because
the position counts *global* batches a run may even resume with a different number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from slimface.errors import DataError


class ResumableSampler:
    """Yields per-rank lists of dataset indices; ``epoch``/``index`` is the next batch to consume."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("invalid batch_size/rank/world_size")
        if batch_size % world_size:
            raise ValueError("batch_size must be divisible by world_size")
        if n < batch_size:
            raise DataError(
                f"dataset has {n} samples, fewer than one batch of {batch_size}; "
                "lower train.batch_size or add data"
            )
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.local_batch = batch_size // world_size
        self.batches_per_epoch = n // batch_size
        self.epoch = 0
        self.index = 0
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The global order of epoch ``epoch`` (cached; depends on (seed, epoch) only)."""
        if epoch != self._perm_epoch or self._perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63 - 1))
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
            self._perm_epoch = epoch
        return self._perm

    def indices_at(self, epoch: int, index: int) -> list[int]:
        """This rank's indices of global batch ``index`` in ``epoch``."""
        perm = self.permutation(epoch)
        start = index * self.batch_size + self.rank * self.local_batch
        return perm[start : start + self.local_batch].tolist()

    def advance(self) -> None:
        """Mark the current batch consumed."""
        self.index += 1
        if self.index >= self.batches_per_epoch:
            self.index = 0
            self.epoch += 1

    def next_indices(self) -> list[int]:
        """The current batch's indices for this rank; advances the position."""
        out = self.indices_at(self.epoch, self.index)
        self.advance()
        return out

    def iter_from_position(self) -> Iterator[list[int]]:
        """Endless batches from the current position without moving it (for a prefetching loader)."""
        epoch, index = self.epoch, self.index
        while True:
            yield self.indices_at(epoch, index)
            index += 1
            if index >= self.batches_per_epoch:
                index, epoch = 0, epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "n": self.n,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore the position; False (and start the next epoch fresh) if the data/batch changed."""
        same = (
            int(state.get("n", -1)) == self.n
            and int(state.get("batch_size", -1)) == self.batch_size
            and int(state.get("seed", self.seed)) == self.seed
            and bool(state.get("shuffle", self.shuffle)) == self.shuffle
        )
        self.epoch = int(state.get("epoch", 0))
        if same:
            self.index = int(state.get("index", 0))
        else:
            self.epoch += 1 if int(state.get("index", 0)) else 0
            self.index = 0
        return same


class _BatchIndexStream:
    """Endless batch sampler for ``DataLoader(batch_sampler=...)`` starting at the sampler's position."""

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.iter_from_position()


__all__ = ["ResumableSampler"]
