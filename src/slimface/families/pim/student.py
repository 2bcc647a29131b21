"""PIM's student: TP-GAN's spec (same module and group names, see :mod:`slimface.families.pim.model`)."""

from __future__ import annotations

from slimface.families.tpgan.student import STUDENT_SPEC

__all__ = ["STUDENT_SPEC"]
