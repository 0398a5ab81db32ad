"""The engine that runs any FMTL method, and the public API methods are written against.

The engine (:class:`Engine`) does what every method needs: the roster (silo discovery, seeded
sampling), dispatch (each silo's message: the arrays the method gives it and the round's request),
intake (reply checks, example counts fixed at discovery, norm bounds, robust averaging, pooled
evaluation; under a privacy mode, task-aware sums: secure aggregation and DP noise), the round loop (retries, bytes, history, evaluation schedule, checkpoint state), the virtual clock
(:mod:`strategies.engine.system`: availability, simulated time, deadline and stragglers) and
the adapter to Flower's ``Strategy`` (:class:`FlowerStrategy`). It imports no method.

A method (one module, registered in :data:`strategies.METHODS`) is a parameter dataclass (a
:class:`MethodParams`), a server half (a :class:`Method`, or a :class:`TrunkAndHeads` for the
usual trunk-plus-per-task-heads aggregation) and a silo half (a :class:`SiloMethod`, trained with
:class:`SiloTools`). Methods, shipped or from another package, import this module and nothing else
of the engine; an import-linter contract checks the shipped ones.
"""

from strategies.engine.accounting import silo_dp_sgd
from strategies.engine.aggregation import (
    aggregate_heads,
    flatten,
    mean_train_loss,
    per_task_rows,
    silo_rows,
    unflatten,
    weighted_mean_delta,
)
from strategies.engine.averaging import (
    Averaging,
    AveragingParams,
    SiloWeighting,
    silo_weights,
)
from strategies.engine.context import GlobalEvaluation, RoundEnd, RunContext
from strategies.engine.dispatch import Dispatch
from strategies.engine.flower import FlowerStrategy
from strategies.engine.intake import Evaluation, Intake
from strategies.engine.loop import Engine
from strategies.engine.method import (
    Method,
    MethodSetup,
    Purpose,
    Round,
    RoundResult,
    SiloTask,
    TrunkAndHeads,
    TrunkStep,
)
from strategies.engine.model import GlobalModel
from strategies.engine.params import DEFENCES, MethodParams
from strategies.engine.per_silo import PerSiloModels, trunk_vector
from strategies.engine.privacy import PRIVACY, PrivacyParams, refusal
from strategies.engine.replies import ClientUpdate, ReplyError, RunStopped
from strategies.engine.robust import Averager, NormRule, RobustRule, weighted_mean
from strategies.engine.server_opt import ServerOptimizer, ServerOptParams
from strategies.engine.silo import (
    ProximalParams,
    ProximalSilo,
    SiloMethod,
    SiloTools,
    round_seed,
    tensors,
    train_received,
    train_reply,
)
from strategies.engine.summed import (
    PrivateAggregation,
    RecordLedger,
    adaptive_noise,
    private_aggregation,
    silo_noise,
)
from strategies.engine.sums import SumRule
from strategies.engine.system import SYSTEMS, SystemParams, VirtualClock

__all__ = [
    "DEFENCES",
    "PRIVACY",
    "SYSTEMS",
    "Averager",
    "Averaging",
    "AveragingParams",
    "ClientUpdate",
    "Dispatch",
    "Engine",
    "Evaluation",
    "FlowerStrategy",
    "GlobalEvaluation",
    "GlobalModel",
    "Intake",
    "Method",
    "MethodParams",
    "MethodSetup",
    "NormRule",
    "PerSiloModels",
    "PrivacyParams",
    "PrivateAggregation",
    "ProximalParams",
    "ProximalSilo",
    "Purpose",
    "RecordLedger",
    "ReplyError",
    "RobustRule",
    "Round",
    "RoundEnd",
    "RoundResult",
    "RunContext",
    "RunStopped",
    "ServerOptParams",
    "ServerOptimizer",
    "SiloMethod",
    "SiloTask",
    "SiloTools",
    "SiloWeighting",
    "SumRule",
    "SystemParams",
    "TrunkAndHeads",
    "TrunkStep",
    "VirtualClock",
    "adaptive_noise",
    "aggregate_heads",
    "flatten",
    "mean_train_loss",
    "per_task_rows",
    "private_aggregation",
    "refusal",
    "round_seed",
    "silo_dp_sgd",
    "silo_noise",
    "silo_rows",
    "silo_weights",
    "tensors",
    "train_received",
    "train_reply",
    "trunk_vector",
    "unflatten",
    "weighted_mean",
    "weighted_mean_delta",
]
