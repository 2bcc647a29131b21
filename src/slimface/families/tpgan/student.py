"""TP-GAN's student: what compression may slim, and which layers it distils (PIM shares both)."""

from __future__ import annotations

from slimface.families.base import StudentSpec

#: Every trunk, inner (mid) width, noise map, local level and the decoder fc may shrink to 1/16 of
#: its width (multiples of 8, so 64-wide layers stop at 8); image outputs, the 2C input and the
#: 256-d identity feature stay fixed. Smallest separable student at 128: see tests/test_tpgan_pim.py.
PRUNABLE: dict[str, tuple[float, float]] = {
    "encoder.*": (0.0625, 1.0),
    "decoder.*": (0.0625, 1.0),
    "local.*": (0.0625, 1.0),
}
DISTILL = ["encoder.s8", "decoder.s16.up", "decoder.s32.up", "decoder.s64.up", "decoder.s128.up",
           "decoder.s128.conv1"]

STUDENT_SPEC = StudentSpec(prunable=dict(PRUNABLE), distill=list(DISTILL))

__all__ = ["PRUNABLE", "DISTILL", "STUDENT_SPEC"]
