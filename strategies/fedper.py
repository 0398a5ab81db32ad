"""Heads kept on the silos, the trunk averaged as FedAvg: ``fedper`` and ``fedrep``.

- ``fedper`` (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): each
  silo keeps its tasks' own parameters (role ``task``: heads, and the gates, attention modules or
  task experts of a soft-sharing trunk; the seeded initial ones before its first round) and
  receives the shared parameters (the trunk) only; it trains both jointly and sends the trunk's
  update, which the server averages as FedAvg (weighted by n_s). Reported: each silo's trunk with
  its own heads on its test split (there is no global model to evaluate on a global test set).
- ``fedrep`` (Collins et al., ICML 2021, "Exploiting Shared Representations for Personalized
  Federated Learning"): as FedPer, but each round a silo first trains its heads for ``head_epochs``
  epochs with the trunk frozen, then the trunk for ``train.local_epochs`` with its heads frozen
  (the paper uses 10 head epochs per trunk epoch).

The heads are node state (the silo's personal arrays), saved with the silo's checkpoint files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedmtl.core.checks import int_at_least
from fedmtl.core.records import (
    Arrays,
    EvaluateReply,
    EvaluateRequest,
    SiloInfo,
    TrainReply,
    TrainRequest,
)
from fedmtl.core.training import TrainResult, evaluate, train_local
from strategies.engine import (
    Averaging,
    AveragingParams,
    GlobalModel,
    Purpose,
    SiloMethod,
    SiloTask,
    SiloTools,
    train_reply,
)


@dataclass(frozen=True)
class KeptHeadsParams:
    """``head_epochs``: epochs on the heads alone (trunk frozen) before the trunk trains with the
    heads frozen; 0 trains both jointly."""

    head_epochs: int = 0


class KeptHeadsSilo(SiloMethod):
    """The silo keeps its tasks' heads; it trains them with the received trunk (module
    docstring) and sends the trunk's update."""

    Params = KeptHeadsParams
    params: KeptHeadsParams

    def phases(self, request: TrainRequest) -> dict[str, int]:
        return {"local-epochs": request.train.local_epochs, "head-epochs": self.params.head_epochs}

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        tools.load(received)
        tools.load_personal(heads_only=True)
        before = tools.losses_before(request)
        if self.params.head_epochs > 0:
            with tools.seeded() as generator:
                heads = train_local(
                    tools.model,
                    tools.data,
                    request.train,
                    generator,
                    parts="heads",
                    epochs=self.params.head_epochs,
                )
                body = train_local(tools.model, tools.data, request.train, generator, parts="trunk")
            result = TrainResult(heads.steps + body.steps, body.mean_loss)
        else:
            result = tools.train(request)
        trained = tools.arrays(list(received))
        tools.keep(tools.own_keys(heads_only=True))
        return train_reply(tools.data, received, trained, result, before, request.update_dtype)

    def evaluate(
        self, tools: SiloTools, received: Arrays, request: EvaluateRequest
    ) -> EvaluateReply:
        tools.load(received)
        tools.load_personal(heads_only=True)
        return EvaluateReply(evaluate(tools.model, tools.data))


class FedPer(Averaging[AveragingParams]):
    """Heads on the silos, the trunk averaged as FedAvg."""

    silo = KeptHeadsSilo
    shares_heads: ClassVar[bool] = False
    global_model: ClassVar[bool] = False

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        return model.trunk()


@dataclass(frozen=True)
class FedRepParams(AveragingParams):
    """FedAvg's parameters plus the epochs each silo spends on its heads, with the trunk frozen,
    before it trains the trunk."""

    head_epochs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        int_at_least(self, "head_epochs", 1)


class FedRep(FedPer):
    """FedPer with FedRep's schedule: heads first (trunk frozen), then the trunk (heads frozen)."""

    params: FedRepParams

    def silo_task(self, server_round: int) -> SiloTask:
        return SiloTask(params={"head_epochs": self.params.head_epochs})
