"""CR-GAN's student: what compression may slim, and which layers it distils."""

from __future__ import annotations

from slimface.families.base import StudentSpec

#: Every trunk and inner width of encoder and generator may shrink to a quarter: at 128x128 the
#: smallest separable student runs >= 10x fewer MACs than the teacher (tests/test_crgan.py).
STUDENT_SPEC = StudentSpec(
    prunable={
        "encoder.stem": (0.25, 1.0),
        "encoder.down.*": (0.25, 1.0),
        "generator.fc": (0.25, 1.0),
        "generator.up.*": (0.25, 1.0),
    },
    distill=["encoder.down.s4", "generator.up.s8", "generator.up.s16", "generator.up.s32",
             "generator.up.s64"],
)

__all__ = ["STUDENT_SPEC"]
