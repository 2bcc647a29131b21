"""PyTorch datasets over :class:`FaceRecord` lists, and a deterministic DataLoader factory.

Images become float32 (C, H, W) tensors in [-1, 1] at ``resolution``; landmarks are scaled
from the file's pixel grid to ``resolution`` (x * R / width, y * R / height; the canonical
TP-GAN landmarks are used where a record has none). Full image decoding happens here, lazily:
a file that fails to decode follows ``policy`` - "stop" raises DataError naming it, "skip"
logs it once, remembers it and serves the next good item instead (so batches keep their size).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slimface.data.images import open_image, pil_to_array
from slimface.data.records import FaceRecord, Policy, canonical_landmarks, subject_sort_key
from slimface.errors import DataError

log = logging.getLogger("slimface.data")


def subject_labels(records: Sequence[FaceRecord]) -> dict[str, int]:
    """Subject id -> class index in numeric-aware sorted order (stable across runs)."""
    return {s: i for i, s in enumerate(sorted({r.subject for r in records}, key=subject_sort_key))}


class _ImageCache:
    """Decodes records to tensors at a fixed resolution; optional in-memory cache; bad-file policy."""

    def __init__(self, resolution: int, channels: int, cache: bool, policy: Policy) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if policy not in ("skip", "stop"):
            raise ValueError(f"policy must be 'skip' or 'stop', got {policy!r}")
        self.resolution = resolution
        self.channels = channels
        self.cache = cache
        self.policy = policy
        self._store: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}
        self.bad: set[str] = set()

    def load(self, rec: FaceRecord) -> tuple[torch.Tensor, tuple[int, int]]:
        """(image tensor (C,R,R), native (width, height)); DataError if unreadable."""
        key = str(rec.path)
        hit = self._store.get(key)
        if hit is not None:
            return hit
        img = open_image(rec.path)
        size = img.size
        arr = pil_to_array(img, self.resolution, self.channels, name=key)
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if self.cache:
            self._store[key] = (t, size)
        return t, size

    def landmarks(self, rec: FaceRecord, size: tuple[int, int]) -> torch.Tensor:
        """Record landmarks scaled to the output resolution (canonical ones if it has none)."""
        if rec.landmarks is None:
            return torch.from_numpy(canonical_landmarks(self.resolution))
        w, h = size
        scale = np.array([self.resolution / w, self.resolution / h], dtype=np.float32)
        return torch.from_numpy((np.asarray(rec.landmarks, dtype=np.float32) * scale).astype(np.float32))


class _PolicyDataset(Dataset):
    """Applies the bad-file policy around ``_item`` (skip = serve the next good index)."""

    _images: _ImageCache

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _item(self, i: int) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        for k in range(n):
            j = (i + k) % n
            try:
                return self._item(j)
            except DataError as e:
                if self._images.policy == "stop":
                    raise
                msg = str(e)
                if msg not in self._images.bad:
                    self._images.bad.add(msg)
                    log.warning("skipping unreadable item %d: %s", j, msg)
        raise DataError(f"every item of this dataset failed to load ({len(self._images.bad)} bad files, e.g. {next(iter(self._images.bad), '?')})")

    @property
    def skipped(self) -> int:
        """Number of distinct bad-file messages seen so far (this process / worker)."""
        return len(self._images.bad)

    def _setup(self, records: Sequence[FaceRecord], resolution: int, channels: int,
               subject_to_label: dict[str, int] | None, cache: bool, policy: Policy) -> None:
        """Labels (checked to cover every subject), the image cache and the output size."""
        self.subject_to_label = subject_to_label or subject_labels(records)
        missing = {r.subject for r in records} - set(self.subject_to_label)
        if missing:
            raise DataError(f"subject(s) {sorted(missing)[:3]} have no class label in subject_to_label; build it from the same index")
        self._images = _ImageCache(resolution, channels, cache, policy)
        self.resolution = resolution
        self.channels = channels


class PairDataset(_PolicyDataset):
    """(profile, frontal) pairs for frontalization training.

    Items: ``profile``, ``frontal`` (float32 (C,R,R) in [-1,1]), ``landmarks`` and
    ``frontal_landmarks`` ((5,2) float32 at resolution R), ``yaw``/``pitch`` (float32 scalars,
    degrees, of the profile), ``subject`` (int64 class index), ``index`` (int64).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[FaceRecord, FaceRecord]],
        resolution: int,
        channels: int = 3,
        subject_to_label: dict[str, int] | None = None,
        *,
        cache: bool = False,
        policy: Policy = "skip",
    ) -> None:
        self.pairs = list(pairs)
        if not self.pairs:
            raise DataError("no training pairs: the dataset has no profile image with a matching frontal image; check the data")
        self._setup([p for p, _ in self.pairs], resolution, channels, subject_to_label, cache, policy)

    def __len__(self) -> int:
        return len(self.pairs)

    def _item(self, i: int) -> dict[str, Any]:
        prof, front = self.pairs[i]
        x, xs = self._images.load(prof)
        y, ys = self._images.load(front)
        return {
            "profile": x,
            "frontal": y,
            "landmarks": self._images.landmarks(prof, xs),
            "frontal_landmarks": self._images.landmarks(front, ys),
            "yaw": torch.tensor(float(prof.yaw), dtype=torch.float32),
            "pitch": torch.tensor(float(prof.pitch), dtype=torch.float32),
            "subject": torch.tensor(self.subject_to_label[prof.subject], dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }


class ImageDataset(_PolicyDataset):
    """Single images with identity labels (recognizer training / evaluation probes).

    Items: ``image`` (float32 (C,R,R) in [-1,1]), ``label`` (int64), ``landmarks`` ((5,2) at R),
    ``yaw``, ``pitch`` (float32), ``index`` (int64).
    """

    def __init__(
        self,
        records: Sequence[FaceRecord],
        resolution: int,
        channels: int = 3,
        subject_to_label: dict[str, int] | None = None,
        *,
        cache: bool = False,
        policy: Policy = "skip",
    ) -> None:
        self.records = list(records)
        if not self.records:
            raise DataError("no images to load: the record list is empty; check the dataset and filters")
        self._setup(self.records, resolution, channels, subject_to_label, cache, policy)

    def __len__(self) -> int:
        return len(self.records)

    def _item(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        x, size = self._images.load(r)
        return {
            "image": x,
            "label": torch.tensor(self.subject_to_label[r.subject], dtype=torch.int64),
            "landmarks": self._images.landmarks(r, size),
            "yaw": torch.tensor(float(r.yaw), dtype=torch.float32),
            "pitch": torch.tensor(float(r.pitch), dtype=torch.float32),
            "index": torch.tensor(i, dtype=torch.int64),
        }


def _seed_worker(worker_id: int) -> None:
    """Seed numpy/python in each worker from torch's per-worker seed (itself from the generator)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader whose order depends only on ``seed`` (own torch.Generator, seeded workers)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=g,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
