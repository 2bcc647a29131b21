"""Training stage for an identity judge (LightCNN) on the training subjects.

When no official LightCNN checkpoint is at hand (or to fit a small judge to synthetic faces), the
project trains its own: plain softmax cross-entropy over subject ids, as in the LightCNN paper.
The generic ``Trainer`` drives this task; the task only knows how to take one step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from slimface.errors import ConfigError
from slimface.models.recognizer import LightCNNRecognizer
from slimface.train.schedule import linear_decay


class RecognizerTask:
    """One-step cross-entropy training of a :class:`LightCNNRecognizer` with a classifier head.

    ``batch`` must hold ``image`` ``(B, C, H, W)`` in [-1, 1] and ``label`` (int64 class indices in
    ``[0, num_classes)``). ``optimizer="sgd"`` follows the LightCNN recipe (momentum 0.9, weight decay
    1e-4); ``"adam"`` converges faster on small synthetic sets. With ``total_steps`` the learning rate
    stays constant for the first ``decay_start`` fraction of the run, then decays linearly to zero (the
    project's usual schedule); the task steps its scheduler itself, as the Trainer expects.
    """

    def __init__(
        self,
        model: LightCNNRecognizer,
        lr: float = 1e-3,
        optimizer: Literal["sgd", "adam"] = "adam",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        grad_clip: float | None = None,
        total_steps: int | None = None,
        decay_start: float = 0.5,
    ) -> None:
        if model.net.fc2 is None:
            raise ConfigError("the recognizer to train has no classifier; build it with num_classes > 0")
        if lr <= 0:
            raise ConfigError(f"recognizer lr {lr} must be > 0")
        params = list(model.parameters())
        opt: torch.optim.Optimizer
        if optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ConfigError(f"recognizer optimizer {optimizer!r} is unknown; use 'sgd' or 'adam'")
        self.num_classes = model.net.num_classes
        self.grad_clip = grad_clip
        self.nets: dict[str, torch.nn.Module] = {"recognizer": model}
        self.optimizers: dict[str, torch.optim.Optimizer] = {"recognizer": opt}
        self.schedulers: dict[str, Any] = {}
        if total_steps is not None:
            if total_steps < 1 or not 0 <= decay_start < 1:
                raise ConfigError(f"recognizer total_steps {total_steps} must be >= 1 and decay_start "
                                  f"{decay_start} in [0, 1)")
            self.schedulers["recognizer"] = torch.optim.lr_scheduler.LambdaLR(
                opt, linear_decay(total_steps, total_steps - int(decay_start * total_steps)))
        net = model.net
        self.fingerprint = f"recognizer {net.variant}@{net.input_size} w{net.width_mult:g} c{net.num_classes}"

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        """Cross-entropy on the logits, backward, one optimiser step; returns loss and batch accuracy."""
        net = self.nets["recognizer"]
        opt = self.optimizers["recognizer"]
        images, labels = batch["image"], batch["label"].long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{int(labels.min())}, "
                             f"{int(labels.max())}]")
        net.train()
        logits, _ = net(images)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
        opt.step()
        for sched in self.schedulers.values():
            sched.step()
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc)}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        """The judge's own view of the batch (gray, resized) mapped back to [-1, 1], for grids."""
        net = self.nets["recognizer"]
        inner: Any = getattr(net, "module", net)  # DDP-wrapped or not
        return inner.preprocess(batch["image"]) * 2 - 1

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
