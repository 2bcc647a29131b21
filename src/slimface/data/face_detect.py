"""Find a face and its 5 landmarks in a photo, from frontal to 90 deg, with what pip installs.

Detectors, tried in a fixed order (:data:`DEFAULT_CHAIN`); the first that finds a face wins:

1. ``hog`` -- dlib's HOG frontal face detector (fast; its five filters cover frontal and turned
   faces to roughly 45-60 deg yaw; the filter that fired says which way the face looks);
2. ``cnn`` -- dlib's CNN (MMOD) face detector, ``mmod_human_face_detector.dat`` of the
   face_recognition_models package (slow on a CPU, ~1-2 s a photo; finds profiles that HOG misses).

Both run offline; nothing is downloaded. Landmarks come from dlib's 68-point predictor (same
package) in the detected box, converted to slimface's 5 points by :func:`ibug68_to_ours`. The
68-point model is trained on faces up to ~45 deg: on a strong profile its visible eye and mouth
corner stay usable but its nose and hidden eye do not. So when the face is a profile (found only
by ``cnn``, or ``hog``'s points fit a template beyond :data:`~slimface.data.pose.HIDDEN_FROM_YAW`)
the other points come from the pose template fitted to the visible eye and mouth corner
(:func:`slimface.data.pose.complete_profile`): the hidden eye sits where the training crops put
it. Which way a ``cnn`` face looks is asked of HOG's side filters at a low threshold
(:func:`probe_facing`).

OpenCV's bundled profile Haar cascade was measured and left out: the opencv-python-headless 5.x
wheels no longer ship the cascades, and on the photos tried (benchmarks/detect_faces.py) the 4.x
cascade fired on a frontal face and on both mirror images of one profile, so it gives neither the
side nor landmarks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from slimface.data.landmarks import face_recognition_models_dir
from slimface.data.pose import HIDDEN_FROM_YAW, PROFILE_YAW, complete_profile, estimate_yaw
from slimface.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_CHAIN",
    "Detection",
    "FaceFit",
    "HogDetector",
    "CnnDetector",
    "build_chain",
    "detect_first",
    "ibug68_to_ours",
    "fit_landmarks",
    "find_face",
]

Box = tuple[float, float, float, float]  # left, top, right, bottom in photo pixels

#: The fallback order: fast HOG first, the CNN only for what it misses.
DEFAULT_CHAIN: tuple[str, ...] = ("hog", "cnn")
#: HOG sub-detector index -> where the face looks (0 front, 1/2 turned, 3/4 front rotated in plane).
HOG_FACING = {0: "frontal", 1: "left", 2: "right", 3: "frontal", 4: "frontal"}
#: A HOG side filter (trained on ~45 deg faces) that fires below this score is taken as a profile
#: beyond its range: on rendered heads it scored 0.76-1.7 at 30-45 deg and 0.0-0.25 at 60-90 deg.
WEAK_SIDE_SCORE = 0.5


@dataclass
class Detection:
    """One face box. ``facing``: where the nose points in the image (``frontal``, ``left``,
    ``right``) or None when the detector cannot tell."""

    box: Box
    score: float
    detector: str
    facing: str | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


@dataclass
class FaceFit:
    """The landmarks used for one photo and how they were found."""

    landmarks: np.ndarray  # (5, 2) photo pixels, DESIGN.md order
    yaw: float  # estimated, deg (positive: nose to the image right)
    method: str  # detector name, "fiducials", ...
    detection: Detection | None = None
    faces: int = 1
    profile: bool = False  # hidden points placed by the template
    tried: list[str] = field(default_factory=list)


class Detector(Protocol):
    """``name`` and ``__call__(rgb uint8 (H, W, 3)) -> detections`` (boxes in that image's pixels)."""

    name: str

    def __call__(self, rgb: np.ndarray) -> list[Detection]: ...


def _resized(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                     Image.BILINEAR))
    return np.ascontiguousarray(rgb, dtype=np.uint8), scale


def _dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise DataError("dlib is not installed; pip install dlib-bin (or give landmarks in a file)") from None
    return dlib


def _model_file(name: str) -> str:
    path = face_recognition_models_dir() / name
    if not path.is_file():
        raise DataError(f"dlib model {path} is missing; reinstall face-recognition-models")
    return str(path)


@functools.lru_cache(maxsize=1)
def _hog() -> Any:
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _cnn() -> Any:
    return _dlib().cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat"))


@functools.lru_cache(maxsize=1)
def _predictor68() -> Any:
    return _dlib().shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))


class HogDetector:
    """dlib HOG; photos are shrunk to ``max_side`` and small ones up-sampled once."""

    name = "hog"

    def __init__(self, max_side: int = 1024, threshold: float = 0.0) -> None:
        self.max_side, self.threshold = max_side, threshold

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        img, s = _resized(rgb, self.max_side)
        up = 1 if max(img.shape[:2]) < 800 else 0
        rects, scores, idx = _hog().run(img, up, self.threshold)
        return [Detection((r.left() / s, r.top() / s, (r.right() + 1) / s, (r.bottom() + 1) / s), float(sc),
                          self.name, HOG_FACING.get(int(i))) for r, sc, i in zip(rects, scores, idx)]


class CnnDetector:
    """dlib MMOD CNN; photos are shrunk to ``max_side`` (its cost grows with the pixel count) and
    small ones up-sampled once."""

    name = "cnn"

    def __init__(self, max_side: int = 640) -> None:
        self.max_side = max_side

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        img, s = _resized(rgb, self.max_side)
        up = 1 if max(img.shape[:2]) < 400 else 0
        return [Detection((d.rect.left() / s, d.rect.top() / s, (d.rect.right() + 1) / s, (d.rect.bottom() + 1) / s),
                          float(d.confidence), self.name) for d in _cnn()(img, up)]


DETECTORS: dict[str, Callable[[], Detector]] = {"hog": HogDetector, "cnn": CnnDetector}


def build_chain(names: Sequence[str] = DEFAULT_CHAIN) -> list[Detector]:
    """Detectors by name, in the order given (ConfigError for an unknown name)."""
    out = []
    for n in names:
        if n not in DETECTORS:
            raise ConfigError(f"detector {n!r} is unknown; use some of {', '.join(DETECTORS)} (in fallback order)")
        out.append(DETECTORS[n]())
    return out


def detect_first(rgb: np.ndarray, chain: Sequence[Detector]) -> tuple[Detection | None, int, list[str]]:
    """Run the chain in order until a detector finds a face: (largest face or None, faces found by
    that detector, names of the detectors tried)."""
    tried: list[str] = []
    for det in chain:
        tried.append(det.name)
        found = det(rgb)
        if found:
            return max(found, key=lambda d: d.area), len(found), tried
    return None, 0, tried


# ----------------------------------------------------------------------------- landmarks


def ibug68_to_ours(points: np.ndarray) -> np.ndarray:
    """iBUG 68 points -> ours: eye centres (36-41 = the subject's right eye, 42-47), nose tip 30,
    mouth corners 48 and 54 (DESIGN.md order; exact for near-frontal faces)."""
    p = np.asarray(points, dtype=np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def predict68(rgb: np.ndarray, box: Box) -> np.ndarray:
    """dlib's 68 points (photo pixels) inside ``box``."""
    dlib = _dlib()
    img, s = _resized(rgb, 1600)
    rect = dlib.rectangle(int(round(box[0] * s)), int(round(box[1] * s)),
                          int(round(box[2] * s)) - 1, int(round(box[3] * s)) - 1)
    shape = _predictor68()(img, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64) / s


def probe_facing(rgb: np.ndarray, box: Box, margin: float = 0.5) -> str | None:
    """Which way a face in ``box`` looks, asked of HOG's filters at a low threshold on the box's
    neighbourhood scaled to ~160 px: ``left``/``right`` when a side filter scores within
    ``margin`` of the best frontal one (a face HOG missed is more likely turned), ``frontal``
    otherwise, None when no filter responds at all."""
    h, w = rgb.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1])
    x0, y0 = int(max(0, cx - side)), int(max(0, cy - side))
    x1, y1 = int(min(w, cx + side)), int(min(h, cy + side))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    k = 160.0 / side
    crop = crop.resize((max(1, round(crop.width * k)), max(1, round(crop.height * k))), Image.BILINEAR)
    _, scores, idx = _hog().run(np.ascontiguousarray(np.asarray(crop)), 0, -1.5)
    best: dict[str, float] = {}
    for sc, i in zip(scores, idx):
        f = HOG_FACING.get(int(i), "frontal")
        best[f] = max(best.get(f, -np.inf), float(sc))
    sides = {k: v for k, v in best.items() if k in ("left", "right")}
    if not best:
        return None
    if sides and max(sides.values()) >= best.get("frontal", -np.inf) - margin:
        return max(sides, key=sides.get)  # type: ignore[arg-type]
    return "frontal"


def fit_landmarks(points68: np.ndarray, facing: str | None, strong: bool) -> tuple[np.ndarray, float, bool]:
    """68 points -> (our 5 landmarks, yaw, profile?) given where the face looks.

    ``strong``: the face is a profile (only a profile-capable detector found it): its yaw is taken
    as :data:`PROFILE_YAW` on the side it looks to. Another turned face gets its yaw from the
    template fit on that side. From :data:`HIDDEN_FROM_YAW` on, the landmarks are rebuilt from the
    visible eye and mouth corner: the eye group and corner on the side the face looks to.
    """
    lm = ibug68_to_ours(points68)
    sign = {"left": -1, "right": 1}.get(facing or "", 0)
    yaw = estimate_yaw(lm, sign)
    if sign == 0:
        return lm, yaw, False
    if strong:  # the 68 points of a profile say little about its yaw: take the typical one
        yaw = sign * PROFILE_YAW
    if abs(yaw) < HIDDEN_FROM_YAW:
        return lm, yaw, False
    p = np.asarray(points68, dtype=np.float64)
    eyes = [p[36:42].mean(0), p[42:48].mean(0)]
    eye = max(eyes, key=lambda e: sign * e[0])
    corner = max((p[48], p[54]), key=lambda c: sign * c[0])
    return complete_profile(eye, corner, yaw), yaw, True


def find_face(
    rgb: np.ndarray,
    chain: Sequence[Detector] | None = None,
    predictor: Callable[[np.ndarray, Box], np.ndarray] | None = None,
    facing_probe: Callable[[np.ndarray, Box], str | None] | None = None,
) -> FaceFit | None:
    """Detect (first detector of ``chain`` that finds a face; largest face) and fit 5 landmarks;
    None when no detector finds a face. ``predictor``/``facing_probe`` default to
    :func:`predict68` / :func:`probe_facing`."""
    chain = build_chain() if chain is None else chain
    det, n, tried = detect_first(rgb, chain)
    if det is None:
        return None
    return landmarks_in_box(rgb, det, predictor, facing_probe, faces=n, tried=tried)


def landmarks_in_box(
    rgb: np.ndarray,
    det: Detection,
    predictor: Callable[[np.ndarray, Box], np.ndarray] | None = None,
    facing_probe: Callable[[np.ndarray, Box], str | None] | None = None,
    faces: int = 1,
    tried: list[str] | None = None,
    strong: bool | None = None,
) -> FaceFit:
    """5 landmarks of the face in ``det.box``. ``strong`` marks a profile; by default when HOG
    missed the face (another detector found it) or only a HOG side filter found it weakly
    (score below :data:`WEAK_SIDE_SCORE`)."""
    predictor = predictor or predict68  # looked up at call time (tests swap the module attributes)
    facing_probe = facing_probe or probe_facing
    facing = det.facing if det.facing is not None else facing_probe(rgb, det.box)
    if strong is None:
        strong = det.detector != "hog" or (det.facing in ("left", "right") and det.score < WEAK_SIDE_SCORE)
    lm, yaw, profile = fit_landmarks(predictor(rgb, det.box), facing, strong and facing in ("left", "right"))
    return FaceFit(lm, yaw, det.detector, det, faces, profile, list(tried or [det.detector]))
