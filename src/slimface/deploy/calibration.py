"""Calibration feeds for int8 quantization of an architecture with random weights (latency tables,
``slimface bench --runtimes``); a trained model calibrates on real batches
(:func:`slimface.deploy.quantize.calibration_from_batches`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_calibration(example_inputs: tuple, n: int = 8, seed: int = 0,
                       jitter_px: float = 1.0) -> list[dict[str, Any]]:
    """``n`` batch-1 feeds for int8 calibration of a random-weight architecture.

    Images are uniform in [-1, 1] (the generators' input range; with random weights, face-like
    content would not make the activation ranges any more representative), landmarks are the
    canonical ones of ``example_inputs`` moved by up to ``jitter_px`` pixels, so the landmark-driven
    crops see more than one position.
    """
    image = example_inputs[0]
    lm = example_inputs[1] if len(example_inputs) > 1 else None
    rng = np.random.default_rng(seed)
    shape = (1, *tuple(image.shape[1:]))
    feeds: list[dict[str, Any]] = []
    for _ in range(max(1, n)):
        feed: dict[str, Any] = {"image": rng.uniform(-1.0, 1.0, shape).astype(np.float32)}
        if lm is not None:
            base = lm[:1].detach().cpu().numpy().astype(np.float32)
            feed["landmarks"] = (base + rng.uniform(-jitter_px, jitter_px, base.shape)).astype(np.float32)
        feeds.append(feed)
    return feeds


__all__ = ["random_calibration"]
