"""Server strategies: a registry of :class:`TaskAwareStrategy` subclasses.

A strategy is registered with its parameter dataclass (a :class:`SamplingParams` subclass) and built as
``cls(params, tasks, train, seed, observers)``. ``configs/strategy/<name>.yaml`` mirrors each entry.
"""

from __future__ import annotations

from fedmtl.registry import Registry
from strategies.base import (
    ClientUpdate,
    RoundObserver,
    RoundRecord,
    SamplingParams,
    TaskAwareStrategy,
)
from strategies.fedavg import FedAvg, FedAvgParams

STRATEGIES: Registry[type[TaskAwareStrategy]] = Registry("strategy")
STRATEGIES.register("fedavg", params=FedAvgParams)(FedAvg)

__all__ = [
    "STRATEGIES",
    "ClientUpdate",
    "FedAvg",
    "RoundObserver",
    "RoundRecord",
    "SamplingParams",
    "TaskAwareStrategy",
]
