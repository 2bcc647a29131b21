"""Where the 5 landmarks sit at each yaw in the training crops, and fitting photos to them.

Why: a profile photo must be aligned the way the training profiles were cropped, not squeezed onto
the frontal landmarks. The built-in training crops (:mod:`slimface.data.synth_render`) keep the
image-plane alignment of the frontal pose and turn the head about a vertical axis; their landmarks
are the 3-D points projected even where self-occluded, so at a profile the hidden eye lies just
behind the nose bridge, near the visible eye, and the hidden mouth corner behind the visible one.

:func:`pose_template` gives those positions at any yaw: the mean over :data:`TEMPLATE_IDENTITIES`
rendered identities at the rendered yaws (every 15 deg, interpolated linearly between), shifted
so that yaw 0 is exactly the canonical TP-GAN landmarks. Yaw follows the renderer: positive turns
the nose towards the image right. Landmark order is DESIGN.md's (``left_eye`` = the subject's
right eye, the smaller x in a frontal image), and stays anatomical under yaw: at positive yaw the
subject's left eye (index 1) and left mouth corner (index 4) turn away from the camera.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from slimface.data.records import CANONICAL_LANDMARKS_128
from slimface.errors import DataError

__all__ = [
    "TEMPLATE_YAWS",
    "PROFILE_YAW",
    "hidden_points",
    "visible_points",
    "pose_template",
    "point_weights",
    "weighted_similarity",
    "apply_similarity",
    "estimate_yaw",
    "complete_profile",
]

#: Yaws the template table is rendered at (deg).
TEMPLATE_YAWS: tuple[int, ...] = tuple(range(-90, 91, 15))
#: Identities averaged into the template (seed 0, subjects 1..N of the built-in renderer).
TEMPLATE_IDENTITIES = 24
#: The yaw assumed for a face only a profile-capable detector finds (HOG, good to ~60 deg, missed it).
PROFILE_YAW = 75.0
#: From this |yaw| on, the hidden eye and mouth corner are placed by the template, not measured.
HIDDEN_FROM_YAW = 60.0
#: Yaw grid (deg) that :func:`estimate_yaw` searches.
YAW_GRID = np.arange(-90.0, 90.1, 5.0)


def hidden_points(yaw: float) -> tuple[int, int]:
    """Indices (eye, mouth corner) that turn away from the camera at ``yaw`` (positive: 1 and 4)."""
    return (1, 4) if yaw >= 0 else (0, 3)


def visible_points(yaw: float) -> tuple[int, int]:
    """Indices (eye, mouth corner) that stay visible at ``yaw`` (positive: 0 and 3)."""
    return (0, 3) if yaw >= 0 else (1, 4)


@functools.lru_cache(maxsize=1)
def _template_table() -> np.ndarray:
    """(len(TEMPLATE_YAWS), 5, 2) mean rendered landmarks at 128 px, yaw 0 == canonical."""
    from slimface.data.synth import identity_params
    from slimface.data.synth_render import Identity

    ids = [Identity(identity_params(0, s)) for s in range(1, TEMPLATE_IDENTITIES + 1)]
    table = np.stack([np.mean([i.landmarks(float(y), 0.0, 128) for i in ids], axis=0) for y in TEMPLATE_YAWS])
    table = table - table[TEMPLATE_YAWS.index(0)] + CANONICAL_LANDMARKS_128.astype(np.float64)
    table.setflags(write=False)
    return table


def pose_template(yaw: float, resolution: int = 128) -> np.ndarray:
    """(5, 2) float64 landmarks of the training crop at ``yaw`` deg (clipped to +-90), ``resolution`` px."""
    table = _template_table()
    y = float(np.clip(yaw, TEMPLATE_YAWS[0], TEMPLATE_YAWS[-1]))
    pos = (y - TEMPLATE_YAWS[0]) / 15.0
    i = min(int(math.floor(pos)), len(TEMPLATE_YAWS) - 2)
    t = pos - i
    return ((1.0 - t) * table[i] + t * table[i + 1]) * (resolution / 128.0)


def point_weights(yaw: float) -> np.ndarray:
    """Fit weights: 1 for visible points, ``max(0, cos yaw)`` for the hidden eye and mouth corner
    (measured or guessed, they carry no information at a profile)."""
    w = np.ones(5)
    w[list(hidden_points(yaw))] = max(0.0, math.cos(math.radians(yaw)))
    return w


def weighted_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src`` onto ``dst``: a 2x3 matrix. DataError when the weighted points coincide."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    var_s = float(w @ (s0**2).sum(1))
    if var_s < 1e-12:
        raise DataError("landmarks coincide; cannot align the face")
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_similarity(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points with a 2x3 matrix."""
    return (m[:, :2] @ np.asarray(points, dtype=np.float64).T).T + m[:, 2]


def estimate_yaw(landmarks: np.ndarray, sign: int = 0) -> float:
    """The yaw (deg, on :data:`YAW_GRID`) whose template the 5 landmarks fit best (similarity, RMS
    in template pixels). ``sign`` +1 / -1 restricts the search to that side (e.g. a detector that
    said which way the face looks); 0 searches both."""
    lm = np.asarray(landmarks, dtype=np.float64)
    best, best_err = 0.0, math.inf
    for yaw in YAW_GRID:
        if sign * yaw < 0:
            continue
        tmpl = pose_template(float(yaw))
        try:
            m = weighted_similarity(lm, tmpl)
        except DataError:
            continue
        err = float(np.sqrt(((apply_similarity(m, lm) - tmpl) ** 2).sum(1).mean()))
        if err < best_err - 1e-9:
            best, best_err = float(yaw), err
    return best


def complete_profile(visible_eye: np.ndarray, visible_corner: np.ndarray, yaw: float) -> np.ndarray:
    """All 5 landmarks of a face at ``yaw`` from its visible eye and visible mouth corner: the
    template at that yaw moved onto those two points, so the nose and the hidden eye and corner
    sit where the training crops put them."""
    eye_i, corner_i = visible_points(yaw)
    tmpl = pose_template(yaw)
    m = weighted_similarity(tmpl[[eye_i, corner_i]], np.stack([visible_eye, visible_corner]))
    return apply_similarity(m, tmpl)
