"""``ditto`` (Li et al., ICML 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization").

The global model is trained and averaged as FedAvg. Besides, each silo keeps a personal model v_s
(the received global model before its first round) trained after the global update on
f_s(v) + (lambda/2) ||v - w||^2, w the received global model, for the same local epochs (its own
batch order). Reported: v_s on the silo's test split, and the global model on the global test
set. The personal model is node state, saved with the silo's checkpoint files. The paper's grid
for lambda: 0.01 to 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmtl.core.checks import non_negative
from fedmtl.core.records import Arrays, EvaluateReply, EvaluateRequest, TrainReply, TrainRequest
from fedmtl.core.training import Proximal, evaluate
from strategies.engine import (
    Averaging,
    AveragingParams,
    SiloMethod,
    SiloTask,
    SiloTools,
    tensors,
    train_received,
)


@dataclass(frozen=True)
class DittoParams(AveragingParams):
    """FedAvg's parameters plus ``lam``, the pull of each personal model towards the global one."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "lam")


@dataclass(frozen=True)
class DittoSiloParams:
    lam: float = 0.1


class DittoSilo(SiloMethod):
    """The global update as FedAvg's, then the personal model's steps (module docstring)."""

    Params = DittoSiloParams
    params: DittoSiloParams

    def phases(self, request: TrainRequest) -> dict[str, int]:
        epochs = request.train.local_epochs  # the global update, then the personal model
        return {"local-epochs": epochs, "personal-epochs": epochs}

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        reply = train_received(tools, received, request)
        keys = tools.load_personal(fallback=received)
        pull = Proximal(self.params.lam, tensors(received))
        tools.train(request, proximal=pull, seed=tools.seed + 1)
        tools.keep(keys)
        return reply

    def evaluate(
        self, tools: SiloTools, received: Arrays, request: EvaluateRequest
    ) -> EvaluateReply:
        tools.load(received)
        tools.load_personal(fallback=received)
        return EvaluateReply(evaluate(tools.model, tools.data))


class Ditto(Averaging[DittoParams]):
    """FedAvg for the global model; each silo keeps a personal model pulled towards it."""

    silo = DittoSilo

    def silo_task(self, server_round: int) -> SiloTask:
        return SiloTask(params={"lam": self.params.lam})
