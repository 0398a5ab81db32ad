"""Server strategies: a registry of :class:`TaskAwareStrategy` subclasses.

A strategy is registered with its parameter dataclass (a :class:`StrategyParams` subclass) and built as
``cls(params, tasks, train, seed, observers)``. ``configs/strategy/<name>.yaml`` mirrors each entry.

- ``fedavg``: task-aware FedAvg (:mod:`strategies.fedavg`).
- one strategy per weighting of :data:`strategies.balancing.WEIGHTINGS` (``mgda``, ``pcgrad``, ...):
  per-task trunk updates combined by that weighting (:mod:`strategies.balanced`).
- ``fmtlbench_pcgrad``, ``fmtlbench_cagrad``: FMTL-Bench's baselines over per-silo updates
  (:mod:`strategies.fmtlbench`).
- ``grouping``: federated task grouping, one trunk per group (:mod:`strategies.grouping`).
"""

from __future__ import annotations

from fedmtl.registry import Registry
from strategies.balanced import Balanced, BalancedParams, strategy_class, strategy_params_class
from strategies.balancing import WEIGHTINGS
from strategies.base import (
    ClientUpdate,
    RoundObserver,
    RoundRecord,
    StrategyParams,
    TaskAwareStrategy,
)
from strategies.fedavg import FedAvg, FedAvgParams
from strategies.fmtlbench import FmtlBenchCAGrad, FmtlBenchCAGradParams, FmtlBenchPCGrad
from strategies.grouping import Grouping, GroupingParams

STRATEGIES: Registry[type[TaskAwareStrategy]] = Registry("strategy")
STRATEGIES.register("fedavg", params=FedAvgParams)(FedAvg)
for _name in WEIGHTINGS.names():
    STRATEGIES.register(_name, params=strategy_params_class(_name))(strategy_class(_name))
STRATEGIES.register("fmtlbench_pcgrad", params=StrategyParams)(FmtlBenchPCGrad)
STRATEGIES.register("fmtlbench_cagrad", params=FmtlBenchCAGradParams)(FmtlBenchCAGrad)
STRATEGIES.register("grouping", params=GroupingParams)(Grouping)

__all__ = [
    "STRATEGIES",
    "Balanced",
    "BalancedParams",
    "ClientUpdate",
    "FedAvg",
    "RoundObserver",
    "RoundRecord",
    "StrategyParams",
    "TaskAwareStrategy",
]
