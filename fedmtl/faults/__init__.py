"""Fault injection: silos that misbehave on purpose, for measuring robust aggregation.

:data:`FAULTS` is the registry (config group ``fault``, entry-point group ``fedmtl.faults``): a
member is a :class:`Fault` subclass, built with its parameter dataclass (a
:class:`FaultParams`: ``fraction`` of the silos, plus its own). ``fault=none`` (the default) is
an honest federation. Shipped: ``scale``, ``sign_flip``, ``noise``, ``label_flip``, ``stale``
(:mod:`fedmtl.faults.attacks` has their math and papers).

The faulty silos (:func:`faulty_silos`) are drawn from the run's seed; each applies the fault on
its own side (:mod:`fedmtl.app.silo`) on the ``inprocess``, ``vectorized`` and ``simulation``
runtimes. A deployment refuses a run config that injects faults: they belong in simulations.
"""

from __future__ import annotations

from typing import Any

from fedmtl.core.registry import NoParams, Registry
from fedmtl.faults.attacks import (
    LabelFlip,
    Noise,
    NoiseParams,
    Scale,
    ScaleParams,
    SignFlip,
    SignFlipParams,
    Stale,
)
from fedmtl.faults.base import (
    Fault,
    FaultContext,
    FaultParams,
    Update,
    faulty_count,
    faulty_silos,
    round_rng,
    same_layout,
)

NONE = "none"
"""The fault of an honest federation (the default)."""


def _check(name: str, factory: Any, params: type) -> None:
    """A member is a :class:`Fault` subclass; its parameters (but ``none``'s) a FaultParams."""
    if not (isinstance(factory, type) and issubclass(factory, Fault)):
        raise TypeError(f"fault {name!r}: {factory!r} is not a Fault subclass")
    if name != NONE and not issubclass(params, FaultParams):
        raise TypeError(f"fault {name!r}: its parameters must derive from FaultParams")


FAULTS: Registry[type[Fault]] = Registry("fault", entry_points="fedmtl.faults", check=_check)
FAULTS.register(NONE, params=NoParams)(Fault)
FAULTS.register("scale", params=ScaleParams)(Scale)
FAULTS.register("sign_flip", params=SignFlipParams)(SignFlip)
FAULTS.register("noise", params=NoiseParams)(Noise)
FAULTS.register("label_flip", params=FaultParams)(LabelFlip)
FAULTS.register("stale", params=FaultParams)(Stale)


def silos_of(name: str, params: Any, num_silos: int, seed: int) -> list[int]:
    """The faulty silos of fault ``name`` with ``params`` in a run of ``num_silos`` silos."""
    if name == NONE:
        return []
    return faulty_silos(params.fraction, num_silos, seed)


def build_fault(name: str, params: Any) -> Fault:
    """Fault ``name`` with its parameters."""
    return FAULTS.get(name).factory(params)


__all__ = [
    "FAULTS",
    "NONE",
    "Fault",
    "FaultContext",
    "FaultParams",
    "Update",
    "build_fault",
    "faulty_count",
    "faulty_silos",
    "round_rng",
    "same_layout",
    "silos_of",
]
