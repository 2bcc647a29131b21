"""dlib's pretrained ResNet face descriptor as an independent identity judge.

A real, externally trained recognizer (99.38% on LFW) that works offline: the model files ship with
the ``face_recognition_models`` package. It gives rank-1 numbers that our own LightCNN training
cannot bias. It is not differentiable, so it is for evaluation only.

Alignment policy for ``embed`` (inputs are already roughly aligned face crops):

1. run dlib's HOG frontal face detector (``upsample`` times up-sampled, since crops are small);
2. if a face is found, fit the 5-point shape predictor to the largest detection and let dlib align it
   exactly as ``dlib.get_face_chip`` does (150×150, padding 0.25) before the descriptor;
3. otherwise — or always, with ``detect=False`` — treat the whole crop as the chip: resize it to
   150×150 and compute the descriptor on it directly.

``last_detected`` records which path each image of the latest call took, so an evaluation can report
how often the detector fired. Gray inputs are replicated to three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slimface.errors import ConfigError
from slimface.models.recognizer_base import Recognizer, check_images

CHIP_SIZE = 150
_MODEL_FILES = {
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "shape5": "shape_predictor_5_face_landmarks.dat",
}


def face_models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package, checked to hold
    the descriptor and landmark model files."""
    from slimface.data.landmarks import face_recognition_models_dir
    from slimface.errors import DataError

    try:
        folder = face_recognition_models_dir()
    except DataError as exc:
        raise ConfigError(f"the dlib recognizer needs models: {exc}") from None
    missing = [f for f in _MODEL_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder} lacks {', '.join(missing)}; reinstall face-recognition-models")
    return folder


def to_uint8_hwc(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> contiguous ``(H, W, 3)`` uint8 RGB for dlib."""
    x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return np.ascontiguousarray(x.permute(1, 2, 0).cpu().numpy())


class DlibRecognizer(Recognizer):
    """dlib ResNet descriptor (128-d, L2-normalised); see the module doc for the alignment policy."""

    embedding_dim = 128
    differentiable = False

    def __init__(self, detect: bool = True, upsample: int = 1, models_dir: str | Path | None = None) -> None:
        super().__init__()
        try:
            import dlib
        except ImportError:  # pragma: no cover - dlib-bin is a declared dependency
            raise ConfigError("the dlib recognizer needs dlib; install it with pip install dlib-bin") from None
        if upsample < 0:
            raise ConfigError(f"dlib upsample {upsample} must be >= 0")
        folder = Path(models_dir) if models_dir is not None else face_models_dir()
        for f in _MODEL_FILES.values():
            if not (folder / f).is_file():
                raise ConfigError(f"dlib model file {folder / f} is missing; point models_dir at a folder holding it")
        self._dlib = dlib
        self.detect = detect
        self.upsample = upsample
        self.encoder = dlib.face_recognition_model_v1(str(folder / _MODEL_FILES["descriptor"]))
        self.shape_predictor = dlib.shape_predictor(str(folder / _MODEL_FILES["shape5"]))
        self.detector = dlib.get_frontal_face_detector()
        self.last_detected: list[bool] = []

    def _describe(self, img: np.ndarray, chip_fallback: Tensor) -> tuple[np.ndarray, bool]:
        if self.detect:
            faces = self.detector(img, self.upsample)
            if len(faces):
                face = max(faces, key=lambda r: r.width() * r.height())
                shape = self.shape_predictor(img, face)
                return np.asarray(self.encoder.compute_face_descriptor(img, shape)), True
        chip = to_uint8_hwc(chip_fallback)
        return np.asarray(self.encoder.compute_face_descriptor(chip)), False

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """``(B, 1|3, H, W)`` in [-1, 1] -> ``(B, 128)`` unit-norm descriptors (on the input's device)."""
        check_images(images)
        chips = images.detach().float().cpu()
        if chips.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
            chips = F.interpolate(chips, size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False,
                                  antialias=chips.shape[-1] > CHIP_SIZE)
        out = np.zeros((images.shape[0], self.embedding_dim), dtype=np.float32)
        self.last_detected = []
        for i in range(images.shape[0]):
            desc, found = self._describe(to_uint8_hwc(images[i].cpu()), chips[i])
            out[i] = desc
            self.last_detected.append(found)
        return F.normalize(torch.from_numpy(out), dim=1).to(images.device)

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)
