"""Procedural 3D heads rendered by sphere tracing a signed-distance function (numpy only).

Why a renderer at all: slimface must run end to end without downloadable face data, and the
frontalization task needs *real* pose effects (self-occlusion, a nose in silhouette, one eye at
profile) and *real* identity (shape + colour that a recognizer can learn). Each identity is one
seeded parameter set (:class:`FaceParams`); its head is a smooth union of implicit primitives
(cranium, face, jaw, cheeks, brow ridge, nose, lips, ears, neck, eyelids, eyeballs, hair), ray-cast
with perspective so occlusion is exact. Geometry (normals, albedo, ambient occlusion, landmarks) is
computed once per identity x pose (:func:`render_geometry`); each illumination is then a few
array operations (:func:`shade`).

Conventions (model frame): x to the image right at yaw 0, y up, z towards the camera; eyes at
y ~ 0.05, interocular distance ~ 0.62. Positive yaw turns the nose towards the image right (larger
x); positive pitch turns it up. The head rotates about a fixed vertical axis through the head
(x = 0, z = ``AXIS_Z``), like Multi-PIE's camera ring, and the image-plane scale/offset is fixed
per identity from its frontal pose (eyes/nose/mouth at the TP-GAN centres) and never re-fitted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

#: float64 geometry and shading: float32 results differ by one grey level between numpy's SIMD paths
#: (AVX-512 vs AVX2), so the same seed rendered other bytes on other CPUs
F = np.float64

#: Version of the rendered pixels: bump it with any change that alters an image (geometry, shading,
#: nuisance, quantisation), so data fingerprints (slimface.data.synth.data_fingerprint) and the shipped
#: weights trained on the old images (weights/manifest.json) no longer match the new data.
RENDER_VERSION = 2

# --------------------------------------------------------------------------------------------
# Constants: canonical landmarks, illumination table, camera
# --------------------------------------------------------------------------------------------

#: TP-GAN patch centres at 128x128 as (x, y): left eye, right eye, nose tip, mouth centre.
CANON_128 = np.array([[44.0, 41.0], [86.0, 41.0], [64.0, 65.0], [65.0, 89.0]])
#: Mouth corners at 128x128 (DESIGN.md).
CANON_MOUTH_CORNERS_128 = np.array([[50.0, 89.0], [80.0, 89.0]])

CAM_DIST = 8.0  # camera distance from the rotation axis (model units; head height ~2.1)
AXIS_Z = 0.35  # the vertical rotation axis sits this far in front of the head centre
BACKGROUND = np.array([0.47, 0.48, 0.50], dtype=F)

#: Multi-PIE illumination code -> (azimuth deg, elevation deg, directional strength).
#: Azimuth > 0 lights from the image right; 07 is the frontal flash used by the gallery;
#: 00 is ambient light only. 01..13 sweep the horizon left to right, 14..19 sit above/below.
ILLUMINATION_TABLE: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.0, 0.0),
    **{c: ((c - 7) * 15.0, 10.0, 0.85) for c in range(1, 14)},
    14: (-60.0, 35.0, 0.85),
    15: (-20.0, 40.0, 0.85),
    16: (20.0, 40.0, 0.85),
    17: (60.0, 35.0, 0.85),
    18: (0.0, 60.0, 0.85),
    19: (0.0, -30.0, 0.8),
}
#: The order in which K illuminations are picked: 07 first, then left/right/above pairs.
ILLUMINATION_ORDER = (7, 4, 10, 1, 13, 18, 5, 9, 2, 12, 16, 15, 6, 8, 3, 11, 14, 17, 19, 0)
FRONTAL_ILLUMINATION = 7

# part labels in the geometry buffer
BG, SKIN, HAIR, EYE_L, EYE_R = 0, 1, 2, 3, 4

# --------------------------------------------------------------------------------------------
# Identity parameters
# --------------------------------------------------------------------------------------------

_SKIN_TONES = np.array(
    [[0.96, 0.80, 0.69], [0.90, 0.72, 0.58], [0.80, 0.60, 0.45], [0.66, 0.46, 0.32],
     [0.50, 0.34, 0.24], [0.36, 0.24, 0.17]]
)
_HAIR_COLOURS = np.array(
    [[0.07, 0.06, 0.06], [0.20, 0.13, 0.08], [0.38, 0.25, 0.14], [0.72, 0.58, 0.36],
     [0.55, 0.25, 0.10], [0.62, 0.62, 0.62], [0.12, 0.10, 0.09]]
)
_IRIS_COLOURS = np.array(
    [[0.30, 0.18, 0.09], [0.15, 0.09, 0.05], [0.30, 0.45, 0.65], [0.30, 0.48, 0.30],
     [0.45, 0.35, 0.18], [0.45, 0.50, 0.55]]
)


@dataclass(frozen=True)
class FaceParams:
    """One identity: shape in model units (mean values noted), colours as RGB in [0, 1]."""

    head_w: float = 0.72  # cranium half-width
    head_h: float = 0.92  # cranium half-height
    head_d: float = 0.88  # cranium half-depth
    face_w: float = 0.60  # mid-face half-width
    jaw_w: float = 0.44  # jaw half-width
    jaw_h: float = 0.30  # jaw half-height
    chin: float = 0.13  # chin ball radius
    cheek: float = 0.24  # cheek ball radius
    eye_x: float = 0.31  # eye centre |x|
    eye_y: float = 0.05
    eye_r: float = 0.115  # eyeball radius
    eye_open: float = 0.055  # half opening of the lids at the eye centre
    brow_y: float = 0.20  # eyebrow height above the eye centre line (absolute y offset)
    brow_thick: float = 0.035
    brow_arch: float = 0.03
    brow_ridge: float = 0.09
    nose_len: float = 0.32  # eye line to nose tip (y)
    nose_w: float = 0.095  # ala offset |x|
    nose_proj: float = 0.25  # tip protrusion in front of the face
    nose_r: float = 0.075  # tip radius
    mouth_y: float = 0.74  # eye line to mouth centre (y)
    mouth_w: float = 0.215  # mouth half-width
    lip_up: float = 0.045
    lip_lo: float = 0.055
    ear_r: float = 0.21  # ear half-height
    ear_out: float = 0.06  # how far ears stick out
    ear_y: float = -0.06
    skin: tuple[float, float, float] = (0.9, 0.72, 0.58)
    lip: tuple[float, float, float] = (0.75, 0.42, 0.40)
    iris: tuple[float, float, float] = (0.3, 0.18, 0.09)
    hair: tuple[float, float, float] = (0.2, 0.13, 0.08)
    hair_style: int = 0  # 0 short, 1 medium (covers ears), 2 long, 3 buzz, 4 fringe
    hair_thick: float = 0.09
    hair_line: float = 0.58  # front hairline y
    recede: float = 0.1  # temples: hairline rises by recede * x^2
    beard: float = 0.0  # 0 none .. 1 full
    blush: float = 0.1

    def vector(self) -> np.ndarray:
        """The parameters as one flat float vector (for hashing/inspection)."""
        out: list[float] = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out.extend(v if isinstance(v, tuple) else [float(v)])
        return np.asarray(out, dtype=np.float64)


def _mix(rng: np.random.Generator, table: np.ndarray, spread: float) -> tuple[float, float, float]:
    """A colour between two neighbouring table entries plus a little noise."""
    i = rng.integers(0, len(table))
    j = min(len(table) - 1, max(0, i + rng.choice([-1, 1])))
    t = rng.uniform(0, 0.5)
    c = (1 - t) * table[i] + t * table[j] + rng.normal(0, spread, 3)
    return tuple(float(v) for v in np.clip(c, 0.02, 0.98))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> FaceParams:
    """Draw one identity; variations are large enough for a small CNN to tell 200 apart."""
    u = rng.uniform
    m = FaceParams()
    g = lambda mean, rel: float(mean * (1.0 + rng.normal(0, rel)))  # noqa: E731
    skin = _mix(rng, _SKIN_TONES, 0.02)
    style = int(rng.choice(5, p=[0.3, 0.2, 0.2, 0.12, 0.18]))
    hair_line = {0: u(0.5, 0.62), 1: u(0.45, 0.58), 2: u(0.45, 0.6), 3: u(0.5, 0.72),
                 4: u(0.30, 0.38)}[style]
    lip = np.clip(np.array(skin) * np.array([0.85, 0.55, 0.58]) + rng.normal(0, 0.03, 3), 0, 1)
    return FaceParams(
        head_w=g(m.head_w, 0.05), head_h=g(m.head_h, 0.04), head_d=g(m.head_d, 0.05),
        face_w=g(m.face_w, 0.06), jaw_w=g(m.jaw_w, 0.12), jaw_h=g(m.jaw_h, 0.12),
        chin=g(m.chin, 0.15), cheek=g(m.cheek, 0.12),
        eye_x=g(m.eye_x, 0.05), eye_y=m.eye_y, eye_r=g(m.eye_r, 0.05),
        eye_open=float(np.clip(g(m.eye_open, 0.18), 0.03, 0.08)),
        brow_y=g(m.brow_y, 0.10), brow_thick=g(m.brow_thick, 0.3), brow_arch=u(-0.01, 0.05),
        brow_ridge=g(m.brow_ridge, 0.2),
        nose_len=g(m.nose_len, 0.05), nose_w=g(m.nose_w, 0.15), nose_proj=g(m.nose_proj, 0.18),
        nose_r=g(m.nose_r, 0.15),
        mouth_y=g(m.mouth_y, 0.04), mouth_w=g(m.mouth_w, 0.10),
        lip_up=g(m.lip_up, 0.25), lip_lo=g(m.lip_lo, 0.25),
        ear_r=g(m.ear_r, 0.10), ear_out=g(m.ear_out, 0.35), ear_y=m.ear_y + rng.normal(0, 0.03),
        skin=skin, lip=tuple(float(v) for v in lip),  # type: ignore[arg-type]
        iris=_mix(rng, _IRIS_COLOURS, 0.03), hair=_mix(rng, _HAIR_COLOURS, 0.02),
        hair_style=style, hair_thick=u(0.05, 0.16) if style != 3 else u(0.015, 0.03),
        hair_line=hair_line, recede=u(-0.3, 0.6),
        beard=float(u(0.3, 1.0)) if rng.uniform() < 0.22 else 0.0, blush=u(0.0, 0.25),
    )


# --------------------------------------------------------------------------------------------
# Signed distance primitives (x, y, z are 1-D float32 arrays)
# --------------------------------------------------------------------------------------------


def _ellipsoid(x, y, z, c, r):
    """Approximate distance to an axis-aligned ellipsoid (IQ's formula)."""
    ix, iy, iz = 1.0 / r[0], 1.0 / r[1], 1.0 / r[2]
    px, py, pz = (x - c[0]) * ix, (y - c[1]) * iy, (z - c[2]) * iz
    k0 = np.sqrt(px * px + py * py + pz * pz)
    qx, qy, qz = px * ix, py * iy, pz * iz
    k1 = np.sqrt(qx * qx + qy * qy + qz * qz)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _clip(a, lo, hi):
    """np.clip without its Python-level overhead (hot path)."""
    return np.minimum(np.maximum(a, lo), hi)


def _sphere(x, y, z, c, r):
    return np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - r


def _capsule(x, y, z, a, b, ra, rb):
    """Distance to a segment a-b with radius going linearly ra -> rb (a cone-ish capsule)."""
    ab = np.subtract(b, a)
    ab2 = float(ab @ ab)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    h = _clip((px * ab[0] + py * ab[1] + pz * ab[2]) / ab2, 0.0, 1.0)
    dx, dy, dz = px - ab[0] * h, py - ab[1] * h, pz - ab[2] * h
    return np.sqrt(dx * dx + dy * dy + dz * dz) - (ra + (rb - ra) * h)


def _smin(a, b, k):
    h = _clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


class Head:
    """The implicit surface of one identity, with derived landmark anchors (model frame)."""

    def __init__(self, p: FaceParams) -> None:
        self.p = p
        ey = p.eye_y
        self.eye_c = [(-p.eye_x, ey, 0.60), (p.eye_x, ey, 0.60)]
        self.face_front = 0.74  # z of the face surface around the eyes
        self.nose_tip = (0.0, ey - p.nose_len, self.face_front + p.nose_proj - p.nose_r)
        self.mouth_y = ey - p.mouth_y
        self.lip_z = 0.71
        self.ramp = 0.03 if p.hair_style == 4 else 0.14
        # hairline height as a function of z: nape (back), over the ears (side), forehead
        back = {0: -0.3, 1: -0.55, 2: -0.9, 3: -0.25, 4: -0.4}[p.hair_style]
        side = {0: 0.14, 1: -0.05, 2: -0.25, 3: 0.16, 4: 0.08}[p.hair_style]
        self.hl_z = np.array([-1.5, -0.35, 0.0, 0.32, 0.5, 1.5])
        self.hl_y = np.array([back, back + 0.1, side, side + 0.05, p.hair_line, p.hair_line])
        self.hl_zm = 0.5 * (self.hl_z[1:] + self.hl_z[:-1])
        self.hl_slope = np.diff(self.hl_y) / np.diff(self.hl_z)

    # ---- components ------------------------------------------------------------------------
    def skin(self, x, y, z):
        p = self.p
        d = _ellipsoid(x, y, z, (0.0, 0.15, -0.1), (p.head_w, p.head_h, p.head_d))
        d = _smin(d, _ellipsoid(x, y, z, (0.0, -0.28, 0.12), (p.face_w, 0.78, 0.66)), 0.18)
        jaw = _ellipsoid(x, y, z, (0.0, self.mouth_y - 0.05, 0.2), (p.jaw_w, p.jaw_h, 0.48))
        d = _smin(d, jaw, 0.15)
        d = _smin(d, _sphere(x, y, z, (0.0, self.mouth_y - 0.26, 0.52), p.chin), 0.12)
        ax = np.abs(x)
        d = _smin(d, _sphere(ax, y, z, (0.33, p.eye_y - 0.30, 0.44), p.cheek), 0.2)
        brow = _ellipsoid(x, y, z, (0.0, p.eye_y + p.brow_y + 0.02, 0.62),
                          (0.48, 0.09, p.brow_ridge + 0.06))
        d = _smin(d, brow, 0.08)
        # eye sockets carved out so the eyeballs can show
        socket = _ellipsoid(ax, y, z, (p.eye_x, p.eye_y, 0.74), (0.17, 0.12, 0.12))
        d = _smax(d, -socket, 0.04)
        # nose: bridge + tip + alae
        tip = self.nose_tip
        bridge = _capsule(x, y, z, (0.0, p.eye_y - 0.02, 0.74), tip, 0.035, p.nose_r * 0.85)
        nose = _smin(bridge, _sphere(x, y, z, tip, p.nose_r), 0.05)
        ala = _sphere(ax, y, z, (p.nose_w, tip[1] + 0.03, tip[2] - 0.16), 0.06)
        nose = _smin(nose, ala, 0.05)
        d = _smin(d, nose, 0.05)
        # lips
        my, lz = self.mouth_y, self.lip_z
        up = _ellipsoid(x, y, z, (0.0, my + p.lip_up * 0.9, lz), (p.mouth_w, p.lip_up, 0.07))
        lo = _ellipsoid(x, y, z, (0.0, my - p.lip_lo * 0.9, lz - 0.01), (p.mouth_w * 0.88, p.lip_lo, 0.07))
        d = _smin(d, np.minimum(up, lo), 0.03)
        # ears
        ear = _ellipsoid(ax, y, z, (p.head_w - 0.02 + p.ear_out, p.ear_y, -0.08),
                         (0.05, p.ear_r, 0.12))
        concha = _ellipsoid(ax, y, z, (p.head_w + 0.02 + p.ear_out, p.ear_y - 0.03, -0.06),
                            (0.04, p.ear_r * 0.55, 0.075))
        ear = _smax(ear, -concha, 0.02)
        d = _smin(d, ear, 0.05)
        # neck
        d = _smin(d, _capsule(x, y, z, (0.0, -0.6, -0.18), (0.0, -3.0, -0.25), 0.36, 0.42), 0.15)
        # eyelids: a shell slightly larger than the eyeball, cut open around the eye centre
        lid_s = _sphere(ax, y, z, (p.eye_x, p.eye_y, 0.60), p.eye_r + 0.012)
        opening = p.eye_open - np.abs(y - p.eye_y - 0.008) - (ax - p.eye_x) ** 2 * 4.0
        lids = np.maximum(lid_s, opening)
        return np.minimum(d, lids)

    def eyes(self, x, y, z):
        p = self.p
        return _sphere(np.abs(x), y, z, (p.eye_x, p.eye_y, 0.60), p.eye_r)

    def hair(self, x, y, z):
        p = self.p
        line = np.interp(z, self.hl_z, self.hl_y).astype(F) + p.recede * x * x
        slope = np.abs(np.interp(z, self.hl_zm, self.hl_slope)).astype(F)  # steep sideburns
        ramp = _clip((y - line) / (self.ramp * (1.0 + slope)), 0.0, 1.0)
        d = _ellipsoid(x, y, z, (0.0, 0.15, -0.1), (p.head_w, p.head_h, p.head_d))
        d = d - p.hair_thick * ramp * (1.0 + 0.4 * _clip(y - 0.3, 0, 1)) - 0.004
        d = np.maximum(d, (line - y) * 0.5) * 0.8
        if p.hair_style == 2:
            hang = _ellipsoid(x, y, z, (0.0, -0.55, -0.35), (p.head_w + 0.1, 0.95, 0.5))
            hang = np.maximum(hang, z - 0.05 * (1.0 - np.abs(x)))
            d = _smin(d, hang, 0.1)
        return d

    def sdf(self, x, y, z):
        return np.minimum(np.minimum(self.skin(x, y, z), self.eyes(x, y, z)), self.hair(x, y, z))

    # ---- materials -------------------------------------------------------------------------
    def parts(self, x, y, z) -> np.ndarray:
        s, e, h = self.skin(x, y, z), self.eyes(x, y, z), self.hair(x, y, z)
        lab = np.full(x.shape, SKIN, dtype=np.int8)
        eye = (e < s) & (e < h)
        lab[eye] = np.where(x[eye] < 0, EYE_L, EYE_R)
        lab[(h <= s) & (h <= e)] = HAIR
        return lab

    def albedo(self, x, y, z, lab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-point albedo (N,3), specular strength and shininess."""
        p = self.p
        n = x.shape[0]
        alb = np.empty((n, 3), dtype=F)
        spec = np.full(n, 0.10, dtype=F)
        shin = np.full(n, 12.0, dtype=F)
        ax = np.abs(x)
        skin = np.asarray(p.skin, dtype=F)
        base = np.broadcast_to(skin, (n, 3)).copy()
        # blush on the cheeks
        cheek = np.exp(-(((ax - 0.34) / 0.12) ** 2 + ((y - p.eye_y + 0.27) / 0.1) ** 2))
        base *= (1.0 - p.blush * 0.3 * cheek)[:, None] * np.array([0.0, 1.0, 1.0], F) + np.array(
            [1.0, 0.0, 0.0], F)
        # lips
        my, lz = self.mouth_y, self.lip_z
        up = _ellipsoid(x, y, z, (0.0, my + p.lip_up * 0.9, lz), (p.mouth_w, p.lip_up, 0.07))
        lo = _ellipsoid(x, y, z, (0.0, my - p.lip_lo * 0.9, lz - 0.01), (p.mouth_w * 0.88, p.lip_lo, 0.07))
        wl = np.clip(1.0 - np.minimum(up, lo) / 0.02, 0.0, 1.0) * (z > 0.5)
        mouth_line = np.exp(-(((y - my) / 0.008) ** 2)) * (ax < p.mouth_w * 0.95) * (z > 0.6)
        base = base * (1 - wl[:, None]) + np.asarray(p.lip, F) * wl[:, None]
        base *= (1.0 - 0.75 * mouth_line)[:, None]
        spec = np.where(wl > 0.5, 0.25, spec)
        # nostrils
        tip = self.nose_tip
        nostril = np.exp(-(((ax - 0.045) / 0.03) ** 2 + ((y - tip[1] + 0.06) / 0.022) ** 2)) * (z > 0.7)
        base *= (1.0 - 0.7 * nostril)[:, None]
        # eyebrows (hair colour), arched band above each eye
        hair_c = np.asarray(p.hair, F)
        u = (ax - p.eye_x - 0.02) / 0.17
        by = p.eye_y + p.brow_y + p.brow_arch * (1 - u * u) - 0.03 * u
        thick = p.brow_thick * (1.0 - 0.45 * np.clip(u, 0, 1))
        wb = np.clip(1.0 - np.abs(y - by) / thick, 0, 1) * (np.abs(u) < 1.05) * (z > 0.45)
        wb = np.clip(wb * 1.6, 0, 0.92)
        base = base * (1 - wb[:, None]) + hair_c * wb[:, None]
        # lash line: dark rim where the lids meet the eyeball
        lid_edge = np.abs(np.abs(y - p.eye_y - 0.008) + (ax - p.eye_x) ** 2 * 4.0 - p.eye_open)
        near_eye = _sphere(ax, y, z, (p.eye_x, p.eye_y, 0.60), p.eye_r + 0.012)
        lash = np.exp(-((lid_edge / 0.012) ** 2)) * (np.abs(near_eye) < 0.02) * (y > p.eye_y - 0.02)
        base *= (1.0 - 0.8 * lash)[:, None]
        # beard / stubble on the lower face
        if p.beard > 0:
            below = np.clip((my + 0.02 - y) / 0.05, 0, 1) * np.clip((y - my + 0.5) / 0.08, 0, 1)
            mous = np.clip(1 - np.abs(y - my - 0.075) / 0.03, 0, 1) * (ax < p.mouth_w + 0.03)
            side = np.clip((y - my + 0.45) / 0.1, 0, 1) * np.clip((my + 0.3 - y) / 0.1, 0, 1)
            front = np.clip((z - 0.05) / 0.2, 0, 1)
            grain = 0.8 + 0.2 * np.sin(97.0 * x + 61.0 * y) * np.sin(83.0 * z - 47.0 * y)
            wbd = np.clip(below + mous + side * 0.8, 0, 1) * front * (1 - wl) * p.beard * 0.85 * grain
            base = base * (1 - wbd[:, None]) + hair_c * wbd[:, None]
        alb[:] = base
        # hair with strands
        hm = lab == HAIR
        if hm.any():
            ang = np.arctan2(x[hm], z[hm] + 0.1)
            streak = 0.9 + 0.1 * np.sin(60.0 * ang + 11.0 * y[hm]) * np.sin(17.0 * ang + 5.0 * y[hm])
            alb[hm] = hair_c * streak[:, None]
            spec[hm] = 0.12
            shin[hm] = 8.0
        # eyes: sclera, iris, pupil
        em = (lab == EYE_L) | (lab == EYE_R)
        if em.any():
            cz = (z[em] - 0.60) / p.eye_r
            col = np.broadcast_to(np.array([0.92, 0.90, 0.87], F), (int(em.sum()), 3)).copy()
            iris = cz > 0.86
            ring = (cz > 0.86) & (cz < 0.89)
            col[iris] = np.asarray(p.iris, F)
            col[ring] *= 0.55
            col[cz > 0.965] = 0.03
            alb[em] = col
            spec[em] = 0.6
            shin[em] = 60.0
        return alb, spec, shin


# --------------------------------------------------------------------------------------------
# Cameras and ray casting
# --------------------------------------------------------------------------------------------


def rotation(yaw: float, pitch: float) -> np.ndarray:
    """Model -> world rotation: yaw about the vertical axis, then pitch about the x axis."""
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    return rx @ ry


def _to_world(pts: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64) - np.array([0.0, 0.0, AXIS_Z])
    return pts @ rotation(yaw, pitch).T


def _project_unit(world: np.ndarray) -> np.ndarray:
    """Perspective projection with unit scale (image y down)."""
    w = CAM_DIST - world[:, 2]
    return np.stack([world[:, 0] / w, -world[:, 1] / w], axis=1)


def march(head: Head, o: np.ndarray, d: np.ndarray, t0: np.ndarray, t1: np.ndarray, eps: float,
          steps: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Sphere-trace rays o + t d (model frame) in [t0, t1]; returns (hit mask, t)."""
    n = o.shape[0]
    t = t0.astype(F).copy()
    hit = np.zeros(n, dtype=bool)
    active = np.nonzero(t1 > t0)[0]
    for _ in range(steps):
        if active.size == 0:
            break
        ta = t[active]
        px = o[active, 0] + d[active, 0] * ta
        py = o[active, 1] + d[active, 1] * ta
        pz = o[active, 2] + d[active, 2] * ta
        dist = head.sdf(px, py, pz)
        done = dist < eps
        hit[active[done]] = True
        ta = ta + 0.9 * dist
        t[active] = ta
        keep = ~done & (ta < t1[active])
        active = active[keep]
    return hit, t


def _box_interval(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray / bounding-box slab test in the model frame."""
    lo = np.array([-1.15, -3.2, -1.25], dtype=F)
    hi = np.array([1.15, 1.35, 1.25], dtype=F)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)
        ta, tb = (lo - o) * inv, (hi - o) * inv
    tmin = np.maximum(np.minimum(ta, tb).max(axis=1), 0.0)
    tmax = np.maximum(ta, tb).min(axis=1)
    # tighter: union of a bounding ellipsoid (head, hair, ears, nose) and a neck cylinder
    inv_r = 1.0 / np.array([1.15, 1.6, 1.45])
    oe, de = (o - np.array([0.0, -0.05, 0.0])) * inv_r, d * inv_r
    t_in, t_out = _quadratic_interval((de * de).sum(1), 2 * (oe * de).sum(1), (oe * oe).sum(1) - 1)
    oc = o[:, [0, 2]] - np.array([0.0, -0.2])
    dc = d[:, [0, 2]]
    c_in, c_out = _quadratic_interval((dc * dc).sum(1), 2 * (oc * dc).sum(1),
                                      (oc * oc).sum(1) - 0.62**2)
    t_in, t_out = np.minimum(t_in, c_in), np.maximum(t_out, c_out)
    return np.maximum(tmin, t_in).astype(F), np.minimum(tmax, t_out).astype(F)


def _quadratic_interval(a, b, c):
    """Entry/exit t of a ray with a quadric (t_in = +inf, t_out = -inf where it misses)."""
    disc = b * b - 4 * a * c
    ok = (disc > 0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    a2 = np.where(ok, 2 * a, 1.0)
    t_in = np.where(ok, (-b - sq) / a2, np.inf)
    t_out = np.where(ok, (-b + sq) / a2, -np.inf)
    return t_in, t_out


@dataclass
class Geometry:
    """Everything about one identity x pose that does not depend on the light."""

    resolution: int
    mask: np.ndarray  # (H, W) bool
    part: np.ndarray  # (H, W) int8 labels BG/SKIN/HAIR/EYE_L/EYE_R
    depth: np.ndarray  # (H, W) float32 distance along the ray (inf = background)
    normal: np.ndarray  # (N, 3) world-frame unit normals of the hit pixels
    view: np.ndarray  # (N, 3) world-frame unit vectors towards the camera
    albedo: np.ndarray  # (N, 3)
    ao: np.ndarray  # (N,)
    spec: np.ndarray  # (N,)
    shin: np.ndarray  # (N,)
    landmarks: np.ndarray  # (5, 2) pixel (x, y)


class Identity:
    """A head plus its fixed image-plane alignment (from the frontal pose)."""

    def __init__(self, params: FaceParams) -> None:
        self.params = params
        self.head = Head(params)
        self.lm3d = self._landmarks_3d()
        q = _project_unit(_to_world(self.lm3d, 0.0, 0.0))
        # frontal alignment points: eyes, nose tip, mouth centre (mean of the corners' midpoint)
        src = np.stack([q[0], q[1], q[2], self._mouth_centre_unit()])
        w = np.array([1.5, 1.5, 1.0, 1.0])
        sm = (w[:, None] * src).sum(0) / w.sum()
        cm = (w[:, None] * CANON_128).sum(0) / w.sum()
        self.scale = float((w * ((src - sm) * (CANON_128 - cm)).sum(1)).sum()
                           / (w * ((src - sm) ** 2).sum(1)).sum())
        self.offset = cm - self.scale * sm  # at 128 px

    def _surface_z(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """z of the first surface hit by rays travelling along -z at (x, y) (model frame)."""
        n = len(xs)
        o = np.stack([xs, ys, np.full(n, 2.0)], 1).astype(F)
        d = np.tile(np.array([0, 0, -1], F), (n, 1))
        hit, t = march(self.head, o, d, np.zeros(n, F), np.full(n, 4.0, F), 1e-4, 200)
        return (2.0 - t).astype(np.float64)

    def _landmarks_3d(self) -> np.ndarray:
        p, h = self.params, self.head
        ys = h.nose_tip[1] + np.linspace(-0.06, 0.06, 13)
        zs = self._surface_z(np.zeros_like(ys), ys)
        k = int(np.argmax(zs))
        mx = p.mouth_w * 0.92
        xs = np.array([-p.eye_x, p.eye_x, -mx, mx, 0.0])
        yl = np.array([p.eye_y, p.eye_y, h.mouth_y, h.mouth_y, h.mouth_y])
        z = self._surface_z(xs, yl)
        self._mouth_c = np.array([0.0, h.mouth_y, z[4]])
        return np.array([
            [xs[0], yl[0], z[0]], [xs[1], yl[1], z[1]], [0.0, ys[k], zs[k]],
            [xs[2], yl[2], z[2]], [xs[3], yl[3], z[3]],
        ])

    def _mouth_centre_unit(self) -> np.ndarray:
        return _project_unit(_to_world(self._mouth_c[None], 0.0, 0.0))[0]

    def landmarks(self, yaw: float, pitch: float, resolution: int) -> np.ndarray:
        """(5, 2) pixel landmarks at this pose, projected even where self-occluded."""
        q = _project_unit(_to_world(self.lm3d, yaw, pitch))
        return (self.scale * q + self.offset) * (resolution / 128.0)

    def geometry(self, yaw: float, pitch: float, resolution: int) -> Geometry:
        """Ray-cast the head at one pose: depth, parts, normals, albedo, AO, landmarks."""
        res = resolution
        k = res / 128.0
        v, u = np.mgrid[0:res, 0:res].astype(np.float64)
        a = (u.ravel() / k - self.offset[0]) / self.scale
        b = -(v.ravel() / k - self.offset[1]) / self.scale
        dw = np.stack([a, b, -np.ones_like(a)], 1)
        dw /= np.linalg.norm(dw, axis=1, keepdims=True)
        rot = rotation(yaw, pitch)
        dm = (dw @ rot).astype(F)  # world -> model: R^T d  (row vectors: d @ R)
        om = (np.array([0.0, 0.0, CAM_DIST]) @ rot + np.array([0.0, 0.0, AXIS_Z])).astype(F)
        o = np.broadcast_to(om, dm.shape)
        t0, t1 = _box_interval(o, dm)
        pix_world = 1.0 / (self.scale * k) * CAM_DIST  # one pixel at the head, model units
        hit, t = march(self.head, o, dm, t0, t1, eps=0.25 * pix_world)
        idx = np.nonzero(hit)[0]
        th = t[idx]
        x = om[0] + dm[idx, 0] * th
        y = om[1] + dm[idx, 1] * th
        z = om[2] + dm[idx, 2] * th
        h = self.head
        # tetrahedral normals
        e = F(0.6 * pix_world)
        ks = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], F)
        nrm = np.zeros((idx.size, 3), F)
        for kk in ks:
            dd = h.sdf(x + kk[0] * e, y + kk[1] * e, z + kk[2] * e)
            nrm += kk[None, :] * dd[:, None]
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-8)
        # ambient occlusion from two samples along the normal
        occ = np.zeros(idx.size, F)
        for hs, wgt in ((0.04, 1.0), (0.12, 0.5)):
            dd = h.sdf(x + nrm[:, 0] * hs, y + nrm[:, 1] * hs, z + nrm[:, 2] * hs)
            occ += wgt * np.clip(hs - dd, 0, None) / hs
        ao = np.clip(1.0 - 0.6 * occ, 0.25, 1.0)
        lab = h.parts(x, y, z)
        alb, spec, shin = h.albedo(x, y, z, lab)
        n_world = (nrm @ rot.T.astype(F)).astype(F)
        v_world = (-dw[idx]).astype(F)
        mask = hit.reshape(res, res)
        part = np.zeros(res * res, np.int8)
        part[idx] = lab
        depth = np.full(res * res, np.inf, F)
        depth[idx] = th
        return Geometry(res, mask, part.reshape(res, res), depth.reshape(res, res), n_world,
                        v_world, alb, ao, spec, shin, self.landmarks(yaw, pitch, res))


def light_direction(code: int) -> np.ndarray:
    """World-frame unit vector towards the light of a Multi-PIE illumination code."""
    az, el, _ = ILLUMINATION_TABLE[code]
    a, e = math.radians(az), math.radians(el)
    return np.array([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)], F)


def shade(geo: Geometry, code: int, brightness: float = 1.0,
          tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Lambert + ambient (+ a little Blinn specular) for one illumination -> (H, W, 3) uint8."""
    _, _, strength = ILLUMINATION_TABLE[code]
    ambient = 0.42 if strength > 0 else 0.85
    ldir = light_direction(code)
    ndl = np.clip(geo.normal @ ldir, 0.0, None)
    hv = geo.view + ldir[None, :]
    hv /= np.maximum(np.linalg.norm(hv, axis=1, keepdims=True), 1e-8)
    spec = geo.spec * np.clip((geo.normal * hv).sum(1), 0, None) ** geo.shin * (ndl > 0) * strength
    diffuse = ambient * geo.ao + strength * ndl * (0.5 + 0.5 * geo.ao)
    col = geo.albedo * diffuse[:, None] + spec[:, None]
    res = geo.resolution
    img = np.broadcast_to(BACKGROUND, (res * res, 3)).copy()
    img[geo.mask.ravel()] = col
    img = img * (np.asarray(tint, F) * brightness)
    return (np.clip(img, 0.0, 1.0) ** (1 / 1.15) * 255.0 + 0.5).astype(np.uint8).reshape(res, res, 3)


def to_gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, (H, W, 1) uint8 (the same weights PIL uses for mode 'L')."""
    g = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return (g + 0.5).astype(np.uint8)[..., None]


def render_face(params: FaceParams, yaw: float, pitch: float = 0.0, illumination: int = 7,
                resolution: int = 128, gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3 or 1) uint8 and its (5, 2) landmarks; no per-image nuisance."""
    geo = Identity(params).geometry(yaw, pitch, resolution)
    img = shade(geo, illumination)
    return (to_gray(img) if gray else img), geo.landmarks
