"""What the bench stage consumes: the ``bench:`` section of a run config (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class BenchConfig:
    """Latency and memory of teacher vs compressed student (Table 4), at the run's size and full size."""

    warmup: int = 100
    runs: int = 100
    threads: Optional[int] = None
    full_size: bool = True  # also time the 128x128 official-width teacher vs its compressed arch
    full_size_warmup: int = 3
    full_size_runs: int = 10


__all__ = ["BenchConfig"]
