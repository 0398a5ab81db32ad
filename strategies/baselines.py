"""Federated and personalised baselines whose rule lives mostly on the silos (the silo side is
:mod:`fedmtl.app.silo`), each one config switch (``strategy=<name>``):

- ``local`` (no communication): each silo trains a model of its own, alone, from the seeded
  initial model; nothing is sent either way. Reported on each silo's test split.
- ``single_task`` (the reference of Delta_MTL): one FedAvg federation per task. The model has one
  trunk per task (``trunks.<task>.*``); a silo trains the trunks and heads of its tasks, each on
  its own task's loss, and the server averages each task's trunk and head over the silos that
  hold it, weighted by n_{s,t}: theta_t <- theta_t + sum_s n_{s,t} Delta_{s,t} / sum_s n_{s,t}.
- ``fedprox`` (Li et al., MLSys 2020): silos minimise f_s(w) + (mu/2) ||w - w_global||^2 during
  their local steps; the server averages as FedAvg.
- ``fedper`` (Arivazhagan et al. 2019): the heads stay on the silos; the trunk is averaged as
  FedAvg (weighted by n_s); silos train trunk and heads jointly.
- ``fedrep`` (Collins et al., ICML 2021): as FedPer, but each round a silo first trains its heads
  for ``head_epochs`` epochs with the trunk frozen, then the trunk for ``train.local_epochs``
  with its heads frozen; only the trunk is sent and averaged.
- ``ditto`` (Li et al., ICML 2021): the global model is trained and averaged as FedAvg; besides,
  each silo keeps a personal model v_s trained on f_s(v) + (lambda/2) ||v - w_global||^2 for the
  same local epochs. Reported: v_s on the silo's test split (and the global model on the global
  test set).

State on silos (node state, ``context.state``; see :mod:`fedmtl.app.silo`): ``local``'s models,
``fedper``'s and ``fedrep``'s heads, ``ditto``'s personal models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from fedmtl.core.checks import int_at_least, non_negative
from fedmtl.core.models import is_trunk_key
from fedmtl.core.records import Arrays, PersonalMode, SiloInfo, TrainRequest
from fedmtl.core.rounds import RoundObserver
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from strategies.aggregation import weighted_mean_delta
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.fedavg import FedAvg, FedAvgParams
from strategies.replies import ClientUpdate


class Local(TaskAwareStrategy):
    """Each silo trains alone (module docstring); the server only schedules rounds."""

    shares_heads = False

    def personal_mode(self) -> PersonalMode:
        return "model"

    @property
    def has_global_model(self) -> bool:
        return False

    def arrays_for(self, arrays: Arrays, silo: SiloInfo) -> Arrays:
        return {}

    def apply_updates(
        self, server_round: int, arrays: Arrays, updates: list[ClientUpdate]
    ) -> tuple[Arrays, dict[str, float]]:
        return arrays, {}  # nothing travels, nothing to aggregate

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        return TrunkStep(None)


class SingleTask(TaskAwareStrategy):
    """One FedAvg federation per task: one trunk per task, averaged over the task's holders."""

    def __init__(
        self,
        params: StrategyParams,
        tasks: Iterable[TaskSpec],
        train: TrainConfig,
        seed: int = 0,
        observers: Iterable[RoundObserver] = (),
    ) -> None:
        super().__init__(params, tasks, train, seed, observers)
        self.model_groups = {task: (task,) for task in self.tasks}

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        delta: Arrays = {}
        for task in self.tasks:
            keys = [k for k in trunk if self.serves(k, task)]
            holders = [u for u in updates if u.task_examples.get(task, 0) > 0]
            if not holders:
                continue
            weights = [float(u.task_examples[task]) for u in holders]
            delta.update(weighted_mean_delta(holders, keys, weights, self.combine) or {})
        return TrunkStep(delta or None)


@dataclass(frozen=True)
class FedProxParams(FedAvgParams):
    """FedAvg's parameters plus the proximal coefficient ``mu`` (the paper's grid: 0.001 to 1)."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "mu")


class FedProx(FedAvg):
    """FedAvg whose silos add (mu/2) ||w - w_global||^2 to their objective."""

    params: FedProxParams

    def train_request(self, server_round: int) -> TrainRequest:
        return dataclasses.replace(super().train_request(server_round), proximal_mu=self.params.mu)


class FedPer(FedAvg):
    """Heads on the silos, the trunk averaged as FedAvg (module docstring)."""

    shares_heads = False

    def personal_mode(self) -> PersonalMode:
        return "heads"

    @property
    def has_global_model(self) -> bool:
        return False

    def arrays_for(self, arrays: Arrays, silo: SiloInfo) -> Arrays:
        return {k: v for k, v in arrays.items() if is_trunk_key(k)}


@dataclass(frozen=True)
class FedRepParams(FedAvgParams):
    """FedAvg's parameters plus the epochs each silo spends on its heads, with the trunk frozen,
    before it trains the trunk (the paper uses 10 head epochs per trunk epoch)."""

    head_epochs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        int_at_least(self, "head_epochs", 1)


class FedRep(FedPer):
    """FedPer with FedRep's schedule: heads first (trunk frozen), then the trunk (heads frozen)."""

    params: FedRepParams

    def train_request(self, server_round: int) -> TrainRequest:
        request = super().train_request(server_round)
        return dataclasses.replace(request, head_epochs=self.params.head_epochs)


@dataclass(frozen=True)
class DittoParams(FedAvgParams):
    """FedAvg's parameters plus ``lam``, the pull of each personal model towards the global one
    (the paper's grid: 0.01 to 2)."""

    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "lam")


class Ditto(FedAvg):
    """FedAvg for the global model; each silo keeps a personal model pulled towards it."""

    params: DittoParams

    def personal_mode(self) -> PersonalMode:
        return "ditto"

    def train_request(self, server_round: int) -> TrainRequest:
        request = super().train_request(server_round)
        return dataclasses.replace(request, personal_lambda=self.params.lam)
