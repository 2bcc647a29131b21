"""LightCNN identity networks (Wu et al.), layer-for-layer compatible with the public release.

The three variants follow the official ``light_cnn.py`` (AlfredXiangWu/LightCNN) exactly — module
names, layer order, pooling — so the official ``LightCNN_29Layers_V2_checkpoint.pth.tar`` loads
strictly after its ``module.`` prefix is stripped:

- ``lightcnn9``    = ``network_9layers``  (``features.*`` Sequential, MFM ``fc1``, ``fc2`` classifier)
- ``lightcnn29``   = ``network_29layers`` (resblocks, MFM ``fc``, ``fc2``)
- ``lightcnn29v2`` = ``network_29layers_v2`` (max+avg pooling, plain ``fc`` to 256, ``fc2`` no bias)

Input is ``(B, 1, S, S)`` grayscale in [0, 1]; the official size is S = 128. ``input_size`` (any
multiple of 16) and ``width_mult`` (scales every conv width) exist so that small judges can be trained
on CPU; the first fc then takes ``(S/16)^2 * C_last`` inputs. The 256-d feature is returned *before*
dropout so it is deterministic in train and eval mode alike.

Checkpoints are read with ``torch.load(weights_only=True)`` only: a file that needs arbitrary
unpickling is refused rather than executed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.errors import CheckpointError, ConfigError
from slimface.fileio import safe_load

Variant = Literal["lightcnn9", "lightcnn29", "lightcnn29v2"]
VARIANTS: tuple[str, ...] = ("lightcnn9", "lightcnn29", "lightcnn29v2")
#: Residual blocks per stage in both 29-layer variants.
RESBLOCKS_29: tuple[int, int, int, int] = (1, 2, 3, 4)
#: Number of identities of the official v2 checkpoint (MS-Celeb-1M clean list).
OFFICIAL_V2_CLASSES = 80013


class MFM(nn.Module):
    """Max-Feature-Map: a conv (or linear) layer with 2·out outputs, then the max of the two halves.

    MFM is LightCNN's activation: a competitive, learned feature selection that halves the
    channels. The parameter name ``filter`` matches the official checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.filter: nn.Module
        if linear:
            self.filter = nn.Linear(in_channels, 2 * out_channels)
        else:
            self.filter = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.filter(x), self.out_channels, dim=1)
        return torch.maximum(a, b)


class Group(nn.Module):
    """1×1 MFM (same channels) followed by a k×k MFM: the official ``group`` unit."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv_a = MFM(in_channels, in_channels, 1, 1, 0)
        self.conv = MFM(in_channels, out_channels, kernel_size, 1, padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.conv_a(x))


class ResBlock(nn.Module):
    """Two 3×3 MFM convs plus identity shortcut (no normalisation, as in the official code)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MFM(channels, channels, 3, 1, 1)
        self.conv2 = MFM(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + x


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


def _max_avg_pool(x: Tensor) -> Tensor:
    """v2 pooling: the sum of 2×2 max and average pooling."""
    return F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)


class LightCNN(nn.Module):
    """One of the three official LightCNN variants.

    ``forward(x)`` takes ``(B, 1, S, S)`` in [0, 1] and returns ``(logits, feature)``; ``logits`` is
    ``None`` when ``num_classes == 0`` (a feature extractor without classifier).
    """

    def __init__(
        self,
        variant: Variant = "lightcnn29v2",
        num_classes: int = OFFICIAL_V2_CLASSES,
        input_size: int = 128,
        width_mult: float = 1.0,
        feature_dim: int = 256,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"LightCNN variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        if input_size < 16 or input_size % 16:
            raise ConfigError(f"LightCNN input_size {input_size} must be a positive multiple of 16 (e.g. 64 or 128)")
        if not 0 < width_mult <= 4:
            raise ConfigError(f"LightCNN width_mult {width_mult} must be in (0, 4]")
        if num_classes < 0 or feature_dim < 1:
            raise ConfigError(f"LightCNN num_classes {num_classes} must be >= 0 and feature_dim {feature_dim} >= 1")
        self.variant = variant
        self.input_size = input_size
        self.width_mult = width_mult
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        c1, c2, c3, c4 = (_scaled(c, width_mult) for c in (48, 96, 192, 128))
        flat = (input_size // 16) ** 2 * c4

        if variant == "lightcnn9":
            self.features = nn.Sequential(
                MFM(1, c1, 5, 1, 2),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                Group(c1, c2),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                Group(c2, c3),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                Group(c3, c4),
                Group(c4, c4),
                nn.MaxPool2d(2, 2, ceil_mode=True),
            )
            self.fc1 = MFM(flat, feature_dim, linear=True)
            self.fc2 = nn.Linear(feature_dim, num_classes) if num_classes else None
            return

        self.conv1 = MFM(1, c1, 5, 1, 2)
        self.block1 = nn.Sequential(*(ResBlock(c1) for _ in range(RESBLOCKS_29[0])))
        self.group1 = Group(c1, c2)
        self.block2 = nn.Sequential(*(ResBlock(c2) for _ in range(RESBLOCKS_29[1])))
        self.group2 = Group(c2, c3)
        self.block3 = nn.Sequential(*(ResBlock(c3) for _ in range(RESBLOCKS_29[2])))
        self.group3 = Group(c3, c4)
        self.block4 = nn.Sequential(*(ResBlock(c4) for _ in range(RESBLOCKS_29[3])))
        self.group4 = Group(c4, c4)
        self.fc: nn.Module
        if variant == "lightcnn29":
            self.fc = MFM(flat, feature_dim, linear=True)
            self.fc2 = nn.Linear(feature_dim, num_classes) if num_classes else None
        else:
            self.fc = nn.Linear(flat, feature_dim)
            self.fc2 = nn.Linear(feature_dim, num_classes, bias=False) if num_classes else None

    def trunk(self, x: Tensor) -> Tensor:
        """Conv trunk: ``(B, 1, S, S)`` -> ``(B, C_last, S/16, S/16)``."""
        if self.variant == "lightcnn9":
            return self.features(x)
        pool = _max_avg_pool if self.variant == "lightcnn29v2" else _ceil_max_pool
        x = pool(self.conv1(x))
        x = pool(self.group1(self.block1(x)))
        x = pool(self.group2(self.block2(x)))
        x = self.group4(self.block4(self.group3(self.block3(x))))
        return pool(x)

    def feature(self, x: Tensor) -> Tensor:
        """The (unnormalised) identity feature, ``(B, feature_dim)``."""
        self._check_input(x)
        flat = self.trunk(x).flatten(1)
        return self.fc1(flat) if self.variant == "lightcnn9" else self.fc(flat)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        feat = self.feature(x)
        if self.fc2 is None:
            return None, feat
        return self.fc2(F.dropout(feat, training=self.training)), feat

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise ValueError(
                f"LightCNN expects (B, 1, {self.input_size}, {self.input_size}) input, got {tuple(x.shape)}"
            )

    def backbone_parameters(self) -> int:
        """Parameter count without the classifier (the figure quoted for LightCNN models)."""
        head = sum(p.numel() for p in self.fc2.parameters()) if self.fc2 is not None else 0
        return sum(p.numel() for p in self.parameters()) - head


def _ceil_max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _classifier_keys(variant: str) -> tuple[str, ...]:
    return ("fc2.weight",) if variant == "lightcnn29v2" else ("fc2.weight", "fc2.bias")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a LightCNN state dict safely (:func:`~slimface.fileio.safe_load`), unwrapping
    ``state_dict`` and stripping the ``module.`` prefix that ``DataParallel`` leaves in the official
    checkpoints."""
    obj: Mapping = safe_load(path, what="LightCNN checkpoint")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} holds no LightCNN state dict (expected a dict of tensors, or one under 'state_dict')"
        )
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def load_lightcnn_state(model: LightCNN, state: Mapping[str, Tensor], source: str = "checkpoint") -> bool:
    """Load ``state`` into ``model``: the backbone strictly, the classifier only if its shape matches.

    Returns whether the classifier was loaded. A key that is missing, unexpected or of another shape
    raises :class:`CheckpointError` naming the first such key (in the model's own order).
    """
    cls_keys = set(_classifier_keys(model.variant))
    expected = {k: v for k, v in model.state_dict().items() if k not in cls_keys}
    given = {k: v for k, v in state.items() if not k.startswith("fc2.")}
    for key, ref in expected.items():
        if key not in given:
            raise CheckpointError(
                f"{source} does not fit {model.variant}: key {key!r} is missing "
                f"(is it a checkpoint of another LightCNN variant?)"
            )
        if tuple(given[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source} does not fit {model.variant} (input_size={model.input_size}, "
                f"width_mult={model.width_mult}): key {key!r} has shape {tuple(given[key].shape)}, "
                f"expected {tuple(ref.shape)}"
            )
    extra = [k for k in given if k not in expected]
    if extra:
        raise CheckpointError(
            f"{source} does not fit {model.variant}: unexpected key {extra[0]!r} "
            f"(is it a checkpoint of another LightCNN variant?)"
        )
    with torch.no_grad():
        own = model.state_dict()
        for key in expected:
            own[key].copy_(given[key].to(own[key].dtype))
        loaded_cls = model.fc2 is not None and all(
            k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in cls_keys
        ) and not any(k.startswith("fc2.") and k not in cls_keys for k in state)
        if loaded_cls:
            for key in cls_keys:
                own[key].copy_(state[key].to(own[key].dtype))
    return bool(loaded_cls)


def checkpoint_num_classes(state: Mapping[str, Tensor]) -> int:
    """Number of classes of the checkpoint's classifier (0 when it has none)."""
    w = state.get("fc2.weight")
    return int(w.shape[0]) if isinstance(w, Tensor) and w.dim() == 2 else 0


def load_lightcnn_checkpoint(
    path: str | Path,
    variant: Variant = "lightcnn29v2",
    num_classes: int | None = None,
    input_size: int = 128,
    width_mult: float = 1.0,
) -> LightCNN:
    """Build a :class:`LightCNN` of ``variant`` and fill it from an official-format checkpoint.

    ``num_classes=None`` takes the classifier size from the checkpoint (0 if it has none); any other
    value builds a classifier of that size that is loaded only when the checkpoint's matches.
    """
    state = read_state_dict(path)
    n = checkpoint_num_classes(state) if num_classes is None else num_classes
    model = LightCNN(variant, num_classes=n, input_size=input_size, width_mult=width_mult)
    load_lightcnn_state(model, state, source=str(path))
    return model
