"""Judges: recognizers that only *measure* identity, never shape what they measure.

A generator trained against a recognizer's features learns to satisfy that network (the horizontal
stripes of an identity-loss-heavy teacher move its features without looking like a face), so a rank-1
read from the same network flatters it. slimface therefore keeps two roles apart:

* the **loss recognizer** — identity-preserving losses, PIM's joint recognizer, distillation and the
  search metric. Its rank-1 is reported too, marked as seen in training;
* the **judges** — a LightCNN trained separately (its own seed, architecture and identities) and
  dlib's ResNet descriptor (trained on real faces). Every headline figure is read from them.

A :class:`Judge` is not an ``nn.Module``: it cannot be handed to an optimiser, its ``embed`` runs under
``no_grad`` (no gradient can flow from it into a generator), and :func:`refuse_judge` — called where
training tasks freeze their recognizers, by the Trainer and by the search metric — raises
:class:`JudgeNotForTraining` for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class JudgeNotForTraining(TypeError):
    """A judge was passed where a training loss, task or search metric wanted a recognizer."""


@dataclass(frozen=True)
class JudgeInfo:
    """What a report says about a judge: its name, what it is, and whether training saw it."""

    name: str
    kind: str  # "lightcnn29v2 w0.25", "dlib resnet", ...
    source: str  # where its weights came from (a file, "trained in this run", a package)
    identities: str  # which training identities it learned ("second_half", "real faces", ...)
    seen_in_training: bool = False


class Judge:
    """A frozen recognizer in the judging role: ``embed`` only, no gradients, never trainable."""

    def __init__(self, recognizer: Any, info: JudgeInfo) -> None:
        if isinstance(recognizer, Judge):
            recognizer = recognizer._recognizer
        if isinstance(recognizer, torch.nn.Module):
            recognizer.eval()
            for p in recognizer.parameters():
                p.requires_grad_(False)
        self._recognizer = recognizer
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    def embed(self, images: Tensor) -> Tensor:
        """Unit-norm descriptors of ``images`` ((B, C, H, W) in [-1, 1]); never differentiable."""
        images = images.detach()
        if isinstance(self._recognizer, torch.nn.Module):
            param = next(self._recognizer.parameters(), None)
            if param is not None:
                images = images.to(param.device)
        with torch.no_grad():
            return self._recognizer.embed(images)

    def to(self, device: torch.device | str) -> "Judge":
        if isinstance(self._recognizer, torch.nn.Module):
            self._recognizer.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """A copy of the judge's weights (to prove they never change); empty for a non-torch judge."""
        if isinstance(self._recognizer, torch.nn.Module):
            return {k: v.detach().clone() for k, v in self._recognizer.state_dict().items()}
        return {}

    def parameters(self) -> Any:
        raise JudgeNotForTraining(f"judge {self.name!r} has no trainable parameters: judges only measure")

    def __repr__(self) -> str:
        return f"Judge({self.info.name!r}, {self.info.kind}, identities={self.info.identities})"


def refuse_judge(obj: Any, where: str) -> None:
    """Raise :class:`JudgeNotForTraining` if ``obj`` is a judge (``where`` names the caller)."""
    if isinstance(obj, Judge):
        raise JudgeNotForTraining(
            f"{where} was given the judge {obj.name!r}; judges never take part in training, distillation or "
            "search — pass the loss recognizer instead"
        )


__all__ = ["Judge", "JudgeInfo", "JudgeNotForTraining", "refuse_judge"]
