"""Task-aware trunk aggregation with gradient balancing: one strategy per balancing method.

Let silo s hold tasks T_s with n_{s,t} labelled training examples of task t, and send (``per_task``
mode) its trunk update split per task, D_{s,t} (see :class:`fedmtl.core.training.TrunkAttribution`).
Each round, over the silos that replied:

    D_t = sum_{s holds t} n_{s,t} D_{s,t} / sum_{s holds t} n_{s,t}        (per-task update)
    J   = [D_t for the tasks t with at least one holder this round]         (T' x d, rows in task order)
    w   = weighting(J, L, tasks)                                            (strategies.balancing)
    Delta = J^T w                                                           (the combined trunk update)

and the server optimizer applies Delta (:mod:`strategies.server_opt`). L_t is task t's loss of the
round's global model, the n_{s,t}-weighted mean of the silos' ``loss-before`` reports (used by the
loss-based methods). Heads are averaged per task over their holders (base class).

``balancing`` chooses where the method runs:
- ``server`` (default): silos send per-task updates (upload x |T_s|), the server balances them.
- ``local``: every silo balances its own tasks' gradients at every local step and sends one joint
  update; the server averages them weighted by examples (FedAvg) - no extra upload.
- ``both``: silos balance locally and send per-task updates (their shares w_t g_t), the server
  balances again.

Degenerate rounds: a task no silo holds in the round has no row (its head and any weighting state
stay as they were); a round where no task has a holder keeps the trunk. With one task, w = [1].
Replies with NaN/Inf are rejected before aggregation (base class), so J is always finite.

Each strategy below is registered under its method's name (``strategy=mgda``, ...). Its parameter
dataclass has two bases: :class:`BalancedParams` and the method's own parameters (``strategy.c``
for CAGrad, ...), whose checks run too.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from fedmtl.core.records import Arrays, WeightingSpec
from fedmtl.core.training import UpdateMode
from strategies.aggregation import balanced_update, weighted_mean_delta
from strategies.balancing import (
    WEIGHTINGS,
    AlignedMTLParams,
    CAGradParams,
    DualConeParams,
    DWAParams,
    FairGradParams,
    FAMOParams,
    GradVacParams,
    MGDAParams,
    NashMTLParams,
    Weighting,
    build_weighting,
)
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.replies import ClientUpdate


@dataclass(frozen=True)
class BalancedParams(StrategyParams):
    """The common strategy parameters plus where the balancing method runs (``server``, ``local``,
    ``both``). A subclass that also derives from the method's parameter dataclass gets its fields
    and its checks."""

    balancing: Literal["server", "local", "both"] = "server"

    def __post_init__(self) -> None:
        super().__post_init__()
        for own in type(self).__bases__[1:]:  # the balancing method's parameters and checks
            own(**{f.name: getattr(self, f.name) for f in dataclasses.fields(own)})


class Balanced(TaskAwareStrategy):
    """Per-task trunk updates combined by the balancing method ``weighting_name``."""

    weighting_name: ClassVar[str]
    params: BalancedParams

    @functools.cached_property
    def method_params(self) -> dict[str, Any]:
        """The balancing method's own parameters (checked when the config was parsed)."""
        own = {f.name for f in dataclasses.fields(WEIGHTINGS.get(self.weighting_name).params)}
        return {k: v for k, v in dataclasses.asdict(self.params).items() if k in own}

    @functools.cached_property
    def weighting(self) -> Weighting:
        """The server's balancing method, built once: its state lives across rounds."""
        return build_weighting(
            self.weighting_name, self.method_params, seed=self.seed, key="strategy"
        )

    def stateful_parts(self) -> dict[str, Weighting]:
        return {"weighting": self.weighting}

    def update_mode(self) -> UpdateMode:
        return "joint" if self.params.balancing == "local" else "per_task"

    def local_weighting(self) -> WeightingSpec | None:
        if self.params.balancing == "server":
            return None
        return WeightingSpec(self.weighting_name, dict(self.method_params))

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        if self.params.balancing == "local":
            weights = [float(u.num_examples) for u in updates]
            return TrunkStep(weighted_mean_delta(updates, list(trunk), weights, self.combine))
        direction, task_weights = balanced_update(
            self.weighting,
            list(self.tasks),
            list(self.tasks),
            updates,
            trunk,
            server_round,
            self.combine,
        )
        return TrunkStep(direction, task_weights)


@dataclass(frozen=True)
class MGDAStrategyParams(BalancedParams, MGDAParams):
    """Parameters of strategy ``mgda``."""


@dataclass(frozen=True)
class GradVacStrategyParams(BalancedParams, GradVacParams):
    """Parameters of strategy ``gradvac``."""


@dataclass(frozen=True)
class CAGradStrategyParams(BalancedParams, CAGradParams):
    """Parameters of strategy ``cagrad``."""


@dataclass(frozen=True)
class NashMTLStrategyParams(BalancedParams, NashMTLParams):
    """Parameters of strategy ``nash_mtl``."""


@dataclass(frozen=True)
class AlignedMTLStrategyParams(BalancedParams, AlignedMTLParams):
    """Parameters of strategy ``aligned_mtl``."""


@dataclass(frozen=True)
class DualConeStrategyParams(BalancedParams, DualConeParams):
    """Parameters of strategies ``upgrad`` and ``dualproj``."""


@dataclass(frozen=True)
class FairGradStrategyParams(BalancedParams, FairGradParams):
    """Parameters of strategy ``fairgrad``."""


@dataclass(frozen=True)
class DWAStrategyParams(BalancedParams, DWAParams):
    """Parameters of strategy ``dwa``."""


@dataclass(frozen=True)
class FAMOStrategyParams(BalancedParams, FAMOParams):
    """Parameters of strategy ``famo``."""


class MeanStrategy(Balanced):
    """``mean``: w_t = 1/T, the mean of the per-task updates."""

    weighting_name = "mean"


class SumStrategy(Balanced):
    """``sum``: w_t = 1, the sum of the per-task updates."""

    weighting_name = "sum"


class MGDAStrategy(Balanced):
    """``mgda``: MGDA's minimum-norm point of the per-task updates (Sener & Koltun 2018)."""

    weighting_name = "mgda"
    params: MGDAStrategyParams


class PCGradStrategy(Balanced):
    """``pcgrad``: per-task updates projected off the ones they conflict with (Yu et al. 2020)."""

    weighting_name = "pcgrad"


class GradVacStrategy(Balanced):
    """``gradvac``: Gradient Vaccine's cosine targets (Wang et al. 2021)."""

    weighting_name = "gradvac"
    params: GradVacStrategyParams


class IMTLGStrategy(Balanced):
    """``imtl_g``: IMTL-G's equal projections (Liu et al. 2021)."""

    weighting_name = "imtl_g"


class CAGradStrategy(Balanced):
    """``cagrad``: CAGrad's conflict-averse update (Liu et al. 2021)."""

    weighting_name = "cagrad"
    params: CAGradStrategyParams


class NashMTLStrategy(Balanced):
    """``nash_mtl``: Nash-MTL's bargaining solution (Navon et al. 2022)."""

    weighting_name = "nash_mtl"
    params: NashMTLStrategyParams


class AlignedMTLStrategy(Balanced):
    """``aligned_mtl``: Aligned-MTL's stable principal directions (Senushkin et al. 2023)."""

    weighting_name = "aligned_mtl"
    params: AlignedMTLStrategyParams


class UPGradStrategy(Balanced):
    """``upgrad``: UPGrad's projections onto the dual cone (Quinton & Rey 2024)."""

    weighting_name = "upgrad"
    params: DualConeStrategyParams


class DualProjStrategy(Balanced):
    """``dualproj``: the mean update projected onto the dual cone."""

    weighting_name = "dualproj"
    params: DualConeStrategyParams


class FairGradStrategy(Balanced):
    """``fairgrad``: FairGrad's alpha-fair weights (Ban & Ji 2024)."""

    weighting_name = "fairgrad"
    params: FairGradStrategyParams


class DWAStrategy(Balanced):
    """``dwa``: Dynamic Weight Average over rounds (Liu et al. 2019)."""

    weighting_name = "dwa"
    params: DWAStrategyParams


class RLWStrategy(Balanced):
    """``rlw``: Random Loss Weighting (Lin et al. 2022)."""

    weighting_name = "rlw"


class FAMOStrategy(Balanced):
    """``famo``: FAMO's fast adaptive weights from the loss decrease (Liu et al. 2023)."""

    weighting_name = "famo"
    params: FAMOStrategyParams


BALANCED_STRATEGIES: list[tuple[type[Balanced], type[BalancedParams]]] = [
    (MeanStrategy, BalancedParams),
    (SumStrategy, BalancedParams),
    (MGDAStrategy, MGDAStrategyParams),
    (PCGradStrategy, BalancedParams),
    (GradVacStrategy, GradVacStrategyParams),
    (IMTLGStrategy, BalancedParams),
    (CAGradStrategy, CAGradStrategyParams),
    (NashMTLStrategy, NashMTLStrategyParams),
    (AlignedMTLStrategy, AlignedMTLStrategyParams),
    (UPGradStrategy, DualConeStrategyParams),
    (DualProjStrategy, DualConeStrategyParams),
    (FairGradStrategy, FairGradStrategyParams),
    (DWAStrategy, DWAStrategyParams),
    (RLWStrategy, BalancedParams),
    (FAMOStrategy, FAMOStrategyParams),
]
"""Every balancing strategy with its parameter dataclass, in the order of the method registry."""
