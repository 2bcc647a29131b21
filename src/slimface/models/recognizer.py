"""The recognizers slimface builds by name (LightCNN variants, dlib's ResNet) behind one interface.

The interface (:class:`~slimface.models.recognizer_base.Recognizer`: ``embed(images in [-1, 1]) ->
unit-norm descriptors``, with its own grayscale conversion and resizing) lives in
:mod:`slimface.models.recognizer_base`, which the dlib module implements too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.errors import ConfigError
from slimface.models.lightcnn import (
    VARIANTS,
    LightCNN,
    Variant,
    checkpoint_num_classes,
    load_lightcnn_state,
    read_state_dict,
)
from slimface.models.recognizer_base import Recognizer, resize_square, to_gray01

RECOGNIZERS: tuple[str, ...] = (*VARIANTS, "dlib")
_LIGHTCNN_ONLY = ("input_size", "width_mult", "num_classes", "channels", "feature_dim")

class LightCNNRecognizer(Recognizer):
    """A LightCNN judge. ``forward(images)`` returns ``(logits, feature)`` for training;
    ``embed`` the L2-normalised feature. Input conversion (gray, resize, [0, 1]) is differentiable,
    so the same object serves as TP-GAN's identity-preserving loss network."""

    differentiable = True

    def __init__(
        self,
        variant: Variant = "lightcnn29v2",
        input_size: int = 128,
        width_mult: float = 1.0,
        num_classes: int = 0,
        feature_dim: int = 256,
        channels: int = 3,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"recognizer channels {channels} must be 1 (gray) or 3 (RGB)")
        # ``channels`` only documents what the caller feeds: conversion to gray happens per batch.
        self.channels = channels
        self.net = LightCNN(variant, num_classes=num_classes, input_size=input_size, width_mult=width_mult,
                            feature_dim=feature_dim)
        self.variant = variant
        self.input_size = input_size
        self.embedding_dim = feature_dim

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] RGB/gray at any size -> the net's ``(B, 1, S, S)`` gray in [0, 1]."""
        return resize_square(to_gray01(images), self.input_size)

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        return self.net(self.preprocess(images))

    def features(self, images: Tensor) -> Tensor:
        """Unnormalised identity features (what TP-GAN's identity loss compares)."""
        return self.net.feature(self.preprocess(images))

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.features(images), dim=1)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        variant: Variant = "lightcnn29v2",
        num_classes: int | None = None,
        input_size: int = 128,
        width_mult: float = 1.0,
        channels: int = 3,
    ) -> LightCNNRecognizer:
        """Load an official-format LightCNN checkpoint (safe ``weights_only`` read; see
        :func:`slimface.models.lightcnn.load_lightcnn_checkpoint`)."""
        state = read_state_dict(path)
        n = checkpoint_num_classes(state) if num_classes is None else num_classes
        rec = cls(variant, input_size=input_size, width_mult=width_mult, num_classes=n, channels=channels)
        load_lightcnn_state(rec.net, state, source=str(path))
        return rec


class EnsembleRecognizer(Recognizer):
    """Several recognizers read as one loss recognizer (``recognizer.members``): an identity term
    against them all keeps what the networks agree on rather than what one of them alone reads, the
    way an attack on an ensemble transfers to networks it never saw.

    ``embed`` joins the members' unit descriptors scaled by 1/sqrt(n): unit-norm again, and its cosine
    is the members' mean cosine. ``loss_embed`` joins them unscaled, so an L1 identity term is the
    members' mean term, at the scale of one network's (the identity weight keeps its meaning)."""

    differentiable = True

    def __init__(self, members: list[Recognizer]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble recognizer needs at least one member")
        self.members = nn.ModuleList(members)
        self.embedding_dim = sum(int(m.embedding_dim) for m in members)

    def loss_embed(self, images: Tensor) -> Tensor:
        return torch.cat([m.embed(images) for m in self.members], dim=1)

    def embed(self, images: Tensor) -> Tensor:
        return self.loss_embed(images) / math.sqrt(len(self.members))


def build_recognizer(name: str, checkpoint: str | Path | None = None, **kw: Any) -> Recognizer:
    """Build a judge by name: ``lightcnn9``, ``lightcnn29``, ``lightcnn29v2`` or ``dlib``.

    For LightCNN, ``checkpoint`` loads official-format weights and ``kw`` go to
    :class:`LightCNNRecognizer`; for ``dlib`` they go to ``DlibRecognizer``, except the LightCNN
    shape settings (``input_size``, ``width_mult``, ``num_classes``, ``channels``, ``feature_dim``),
    which callers pass generically and which have no meaning for dlib's fixed pretrained model.
    """
    if name in VARIANTS:
        if checkpoint is not None:
            return LightCNNRecognizer.from_checkpoint(checkpoint, variant=name, **kw)  # type: ignore[arg-type]
        return LightCNNRecognizer(name, **kw)  # type: ignore[arg-type]
    if name == "dlib":
        if checkpoint is not None:
            raise ConfigError("the dlib recognizer uses its packaged model; drop the checkpoint setting")
        from slimface.models.dlib_recognizer import DlibRecognizer

        for key in _LIGHTCNN_ONLY:
            kw.pop(key, None)
        return DlibRecognizer(**kw)
    raise ConfigError(f"recognizer {name!r} is unknown; use one of {', '.join(RECOGNIZERS)}")
