"""Server strategies: a registry of :class:`TaskAwareStrategy` subclasses.

A strategy is registered with its parameter dataclass (a :class:`StrategyParams` subclass) and built as
``cls(params, tasks, train, seed, observers)``. ``configs/strategy/<name>.yaml`` mirrors each entry.

- ``fedavg``: task-aware FedAvg (:mod:`strategies.fedavg`).
- one strategy per balancing method of :data:`strategies.balancing.WEIGHTINGS` (``mgda``,
  ``pcgrad``, ...): per-task trunk updates combined by that method (:mod:`strategies.balanced`).
- ``fmtlbench_pcgrad``, ``fmtlbench_cagrad``: FMTL-Bench's baselines over per-silo updates
  (:mod:`strategies.fmtlbench`).
- ``grouping``: federated task grouping, one trunk per group (:mod:`strategies.grouping`).
- baselines: ``local``, ``single_task``, ``fedprox``, ``fedper``, ``fedrep``, ``ditto``
  (:mod:`strategies.baselines`); ``fedamp``, ``matfl``, ``fedhca2``, whose server keeps one
  model per silo (:mod:`strategies.per_silo`).

Shared pieces: reply checks (:mod:`strategies.replies`), aggregation math
(:mod:`strategies.aggregation`), server optimizers (:mod:`strategies.server_opt`).
"""

from __future__ import annotations

from fedmtl.core.registry import Registry
from strategies.balanced import BALANCED_STRATEGIES, Balanced, BalancedParams
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.baselines import (
    Ditto,
    DittoParams,
    FedPer,
    FedProx,
    FedProxParams,
    FedRep,
    FedRepParams,
    Local,
    SingleTask,
)
from strategies.fedavg import FedAvg, FedAvgParams
from strategies.fmtlbench import FmtlBenchCAGrad, FmtlBenchCAGradParams, FmtlBenchPCGrad
from strategies.grouping import Grouping, GroupingParams
from strategies.per_silo import FedAMP, FedAMPParams, FedHCA2, FedHCA2Params, MaTFL, MaTFLParams
from strategies.replies import ClientUpdate

STRATEGIES: Registry[type[TaskAwareStrategy]] = Registry("strategy")
STRATEGIES.register("fedavg", params=FedAvgParams)(FedAvg)
for _cls, _params in BALANCED_STRATEGIES:
    STRATEGIES.register(_cls.weighting_name, params=_params)(_cls)
STRATEGIES.register("fmtlbench_pcgrad", params=StrategyParams)(FmtlBenchPCGrad)
STRATEGIES.register("fmtlbench_cagrad", params=FmtlBenchCAGradParams)(FmtlBenchCAGrad)
STRATEGIES.register("grouping", params=GroupingParams)(Grouping)
STRATEGIES.register("local", params=StrategyParams)(Local)
STRATEGIES.register("single_task", params=StrategyParams)(SingleTask)
STRATEGIES.register("fedprox", params=FedProxParams)(FedProx)
STRATEGIES.register("fedper", params=FedAvgParams)(FedPer)
STRATEGIES.register("fedrep", params=FedRepParams)(FedRep)
STRATEGIES.register("ditto", params=DittoParams)(Ditto)
STRATEGIES.register("fedamp", params=FedAMPParams)(FedAMP)
STRATEGIES.register("matfl", params=MaTFLParams)(MaTFL)
STRATEGIES.register("fedhca2", params=FedHCA2Params)(FedHCA2)

__all__ = [
    "STRATEGIES",
    "Balanced",
    "BalancedParams",
    "ClientUpdate",
    "FedAvg",
    "StrategyParams",
    "TaskAwareStrategy",
    "TrunkStep",
]
