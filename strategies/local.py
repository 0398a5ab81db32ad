"""``local``: no communication. Each silo trains a model of its own, alone, from the seeded initial
model, for the same rounds and local steps as the federated methods; nothing is sent either way.
Reported on each silo's test split. The model is node state, saved with the silo's checkpoint
files. The reference every federated method must beat on a silo's own data."""

from __future__ import annotations

from typing import ClassVar

from fedmtl.core.records import (
    Arrays,
    EvaluateReply,
    EvaluateRequest,
    SiloInfo,
    TrainReply,
    TrainRequest,
)
from fedmtl.core.training import evaluate
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    Method,
    MethodParams,
    Purpose,
    Round,
    RoundResult,
    SiloMethod,
    SiloTools,
    train_reply,
)


class LocalSilo(SiloMethod):
    """Trains the silo's own model, kept in its node state; receives and sends no arrays."""

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        keys = tools.load_personal()
        before = tools.losses_before(request)
        result = tools.train(request)
        tools.keep(keys)
        return train_reply(tools.data, {}, {}, result, before, request.update_dtype)

    def evaluate(
        self, tools: SiloTools, received: Arrays, request: EvaluateRequest
    ) -> EvaluateReply:
        tools.load_personal()
        return EvaluateReply(evaluate(tools.model, tools.data))


class Local(Method[MethodParams]):
    """Each silo trains alone (module docstring); the server only schedules rounds."""

    silo = LocalSilo
    global_model: ClassVar[bool] = False

    def secure_sums(self, server_round: int) -> str:
        return "nothing leaves the silos: there is no aggregate to protect"

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        return {}

    def aggregate(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> RoundResult:
        return RoundResult(model)  # nothing travels, nothing to aggregate
