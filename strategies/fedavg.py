"""Task-aware FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"), with heads averaged per task.

Trunk:  Delta = sum_s w_s Delta theta_s / sum_s w_s,  w_s = n_s (the silo's training examples,
``silo_weighting: examples``) or w_s = 1 (``silo_weighting: uniform``, FMTL-Bench's unweighted
mean); the server optimizer applies Delta (plain: theta <- theta + Delta; FedAvgM, FedAdam, FedYogi
otherwise). Heads: per task over the silos that hold it, weighted by that task's examples (see the
base class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from fedmtl.core.records import Arrays
from strategies.aggregation import weighted_mean_delta
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.replies import ClientUpdate


@dataclass(frozen=True)
class FedAvgParams(StrategyParams):
    """The common strategy parameters plus how silos are weighted in the trunk average."""

    renamed_keys: ClassVar[dict[str, str]] = {"weighting": "silo_weighting"}

    silo_weighting: Literal["examples", "uniform"] = "examples"


class FedAvg(TaskAwareStrategy):
    """Trunk: weighted average of the silos' trunk updates; heads: per task over holders."""

    params: FedAvgParams

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        if self.params.silo_weighting == "uniform":
            weights = [1.0] * len(updates)
        else:
            weights = [float(u.num_examples) for u in updates]
        return TrunkStep(weighted_mean_delta(updates, list(trunk), weights, self.combine))
