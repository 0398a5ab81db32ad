"""Gradient-balancing weightings for the trunk update: a registry of :class:`Weighting` classes.

Each weighting maps the per-task update matrix J (T x d) to weights w (T,) and the direction
d = J^T w (see :mod:`strategies.balancing.weighting` for the rules every one of them keeps: input checks,
single task, all-zero J, scale, determinism). Registered names, with their parameter dataclasses:

- From the Gramian G = J J^T: ``mean`` (equal weighting, also the loss-based "EW"), ``sum``,
  ``mgda``, ``pcgrad``, ``gradvac``, ``imtl_g``, ``cagrad``, ``nash_mtl``, ``aligned_mtl``,
  ``upgrad``, ``dualproj``, ``fairgrad`` (``mean`` and ``sum`` need no Gramian).
- From per-task losses: ``dwa``, ``famo`` (``needs_losses``) and ``rlw`` (random, needs neither).

Build one with :func:`build_weighting` (validated parameters; errors name the config key) or make
a stateless one-shot call with :func:`combine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from torch import Tensor

from fedmtl.core.registry import NoParams, PluginConfig, Registry
from strategies.balancing.aligned_mtl import AlignedMTL, AlignedMTLParams
from strategies.balancing.cagrad import CAGrad, CAGradParams
from strategies.balancing.dual_cone import DualConeParams, DualProj, UPGrad
from strategies.balancing.dwa import DWA, DWAParams
from strategies.balancing.fairgrad import FairGrad, FairGradParams
from strategies.balancing.famo import FAMO, FAMOParams
from strategies.balancing.gradvac import GradVac, GradVacParams
from strategies.balancing.imtl_g import IMTLG
from strategies.balancing.mgda import MGDA, MGDAParams
from strategies.balancing.nash_mtl import NashMTL, NashMTLParams
from strategies.balancing.pcgrad import PCGrad
from strategies.balancing.rlw import RLW
from strategies.balancing.simple import Mean, Sum
from strategies.balancing.weighting import GramianWeighting, Weighting

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting", entry_points="fedmtl.weightings")
_ENTRIES: list[tuple[type[Weighting], type]] = [
    (Mean, NoParams),
    (Sum, NoParams),
    (MGDA, MGDAParams),
    (PCGrad, NoParams),
    (GradVac, GradVacParams),
    (IMTLG, NoParams),
    (CAGrad, CAGradParams),
    (NashMTL, NashMTLParams),
    (AlignedMTL, AlignedMTLParams),
    (UPGrad, DualConeParams),
    (DualProj, DualConeParams),
    (FairGrad, FairGradParams),
    (DWA, DWAParams),
    (RLW, NoParams),
    (FAMO, FAMOParams),
]
for _cls, _params in _ENTRIES:
    WEIGHTINGS.register(_cls.name, params=_params)(_cls)

WEIGHTING_PARAMS: tuple[type, ...] = tuple(
    dict.fromkeys(p for _, p in _ENTRIES if p is not NoParams)
)
"""The parameter dataclasses of the shipped weightings."""

WeightingChoice = Annotated[PluginConfig, WEIGHTINGS]
"""A config field naming a weighting: ``upgrad`` or ``{name: cagrad, c: 0.4}``."""


def build_weighting(
    name: str, params: Mapping[str, Any] | None = None, seed: int = 0, key: str = "weighting"
) -> Weighting:
    """The weighting ``name`` with validated ``params``; a bad name or value is a ConfigError
    naming ``key.name`` or ``key.<field>`` (e.g. ``strategy.params.c``)."""
    values = WEIGHTINGS.parse(name, params or {}, key)
    return WEIGHTINGS.get(name).factory(values, seed=seed)


def weighting_from(choice: PluginConfig, seed: int = 0) -> Weighting:
    """The weighting a :data:`WeightingChoice` names, with its (already checked) parameters."""
    return WEIGHTINGS.get(choice.name).factory(choice.params, seed=seed)


def combine(name: str, J: Tensor, **params: Any) -> tuple[Tensor, Tensor]:
    """One stateless call: (d, w) for J (T x d) with weighting ``name`` and its ``params``.

    Besides the method's own parameters (``combine("cagrad", J, c=0.5)``), ``losses=`` (the
    per-task losses), ``tasks=`` (global task ids) and ``seed=`` are accepted.
    """
    losses = params.pop("losses", None)
    tasks = params.pop("tasks", None)
    seed = params.pop("seed", 0)
    return build_weighting(name, params, seed=seed)(J, losses=losses, tasks=tasks)


__all__ = [
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "RLW",
    "WEIGHTINGS",
    "AlignedMTL",
    "CAGrad",
    "DualProj",
    "FairGrad",
    "GradVac",
    "GramianWeighting",
    "Mean",
    "NashMTL",
    "PCGrad",
    "Sum",
    "UPGrad",
    "Weighting",
    "WeightingChoice",
    "build_weighting",
    "combine",
    "weighting_from",
]
