"""Model families: one package per teacher (``tpgan``, ``pim``, ``crgan``), each holding its model,
its teacher objective and its student spec, behind the :class:`Family` protocol; one registry."""

from slimface.families.base import Family, GanMode, StudentSpec
from slimface.families.registry import (
    build_generator,
    family_names,
    generator_from_arch,
    get_family,
    register_family,
)

__all__ = ["Family", "GanMode", "StudentSpec", "build_generator", "family_names", "generator_from_arch",
           "get_family", "register_family"]
