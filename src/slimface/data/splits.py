"""The splits of one run's data, as every stage uses them (built by the data stage from a FaceIndex)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from slimface.data.records import identity_subset

T = TypeVar("T")


def spread(items: Sequence[T], n: int) -> list[T]:
    """``n`` items evenly spaced over ``items`` (all of them when there are fewer), in order.

    Pairs are listed identity by identity, so the first ``n`` would score a sub-network on two or
    three faces; a sample spread over the list sees every identity, yaw and illumination."""
    size = len(items)
    if n >= size:
        return list(items)
    return [items[i * size // n] for i in range(max(0, n))]


@dataclass
class DataBundle:
    """The splits every stage uses: training pairs (minus validation identities), validation pairs
    (held-out training identities, for search), test probes and gallery (test identities)."""

    train_pairs: list
    val_pairs: list
    test_pairs: list
    gallery: list
    fit_records: list  # every image of the training identities (minus validation ones)
    subject_labels: dict[str, int]
    has_pitch: bool
    skipped: int = 0  # bad files the loader skipped (policy "skip")

    def recognition_records(self, max_abs_yaw: int, identities: str) -> list:
        """Near-frontal, pitch-0 images of the chosen identity subset: what a recognizer trains on."""
        keep = set(identity_subset(sorted({r.subject for r in self.fit_records}), identities))
        return [r for r in self.fit_records if r.subject in keep and abs(r.yaw) <= max_abs_yaw and r.pitch == 0]


__all__ = ["DataBundle", "spread"]
