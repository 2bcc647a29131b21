"""Fine-tune the chosen sub-network with the same objective as supernet training.

Design choice (the simplest correct one): fine-tuning runs on the *supernet* with the chosen config
fixed at every step, i.e. :class:`OFATask` whose sampler always returns that config. The loss, the
teacher-initialised D, the mappers (sliced to the active student channels by the same ``set_widths``)
and checkpoints are exactly those of supernet training, and gradients only reach the kept slices, so
the fine-tuned sub-network is then materialised with :func:`slimface.compress.export.extract_subnet`.
The cost is memory for the unused supernet channels, which is small next to the teacher.
Because one config is trained throughout, BN running statistics become that sub-network's own.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from slimface.compress.ofa import Batch, OFAConfig, OFATask
from slimface.compress.space import Config, ConfigSpace


class FinetuneTask(OFATask):
    """:class:`OFATask` training one fixed sub-network ``config`` (a dict or its encoded string);
    the same as ``OFATask(..., fixed_config=config)``."""

    def __init__(
        self,
        family: Any,
        supernet: nn.Module,
        teacher: nn.Module,
        teacher_disc: nn.Module,
        config: Mapping[str, int] | str,
        train_config: OFAConfig | None = None,
        space: ConfigSpace | None = None,
        recognizer: nn.Module | None = None,
        val_batches: Sequence[Batch] | None = None,
        bn_batches: Sequence[Batch] | None = None,
    ) -> None:
        super().__init__(family, supernet, teacher, teacher_disc, train_config, space, recognizer,
                         val_batches, bn_batches, fixed_config=config)
        assert self.fixed is not None
        self.config: Config = dict(self.fixed)


__all__ = ["FinetuneTask"]
