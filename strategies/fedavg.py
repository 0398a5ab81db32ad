"""Task-aware FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"), with heads averaged per task.

Trunk:  Delta = sum_s w_s Delta theta_s / sum_s w_s,  w_s = n_s (the silo's training examples,
``weighting: examples``) or w_s = 1 (``weighting: uniform``, FMTL-Bench's unweighted mean); the
server optimizer applies Delta (plain: theta <- theta + Delta; FedAvgM, FedAdam, FedYogi otherwise).
Heads:  per task over the silos that hold it, weighted by that task's examples (see the base class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from strategies.base import Arrays, ClientUpdate, StrategyParams, TaskAwareStrategy


@dataclass(frozen=True)
class FedAvgParams(StrategyParams):
    """The common strategy parameters plus how silos are weighted in the trunk average."""

    weighting: Literal["examples", "uniform"] = "examples"


def weighted_mean_delta(
    updates: list[ClientUpdate], keys: list[str], weights: list[float]
) -> Arrays | None:
    """sum_s w_s Delta_s[k] / sum_s w_s for each key; None when the weights sum to zero."""
    total = float(sum(weights))
    if total <= 0:
        return None
    return {
        k: sum(
            (w / total * u.deltas[k] for u, w in zip(updates, weights, strict=True)),
            start=np.zeros_like(updates[0].deltas[k]),
        )
        for k in keys
    }


class FedAvg(TaskAwareStrategy):
    """Trunk: weighted average of the silos' trunk updates; heads: per task over holders."""

    params: FedAvgParams

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> Arrays | None:
        if self.params.weighting == "uniform":
            weights = [1.0] * len(updates)
        else:
            weights = [float(u.num_examples) for u in updates]
        return weighted_mean_delta(updates, list(trunk), weights)
