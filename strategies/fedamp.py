"""``fedamp`` (Huang et al., AAAI 2021, "Personalized Cross-Silo Federated Learning on Non-IID
Data"): silo i receives the cloud model u_i = xi_ii m_i + sum_{j != i} xi_ij m_j, with
attention xi_ij = alpha a_ij / sum_{k != i} a_ik, a_ij = exp(-||m_i - m_j||^2 / sigma) over the
trunks (a decreasing function of the distance: similar silos weigh more) and xi_ii = 1 - alpha,
over the silos the server has sent a model so far (every silo after round 1 when all are
sampled); a head of task t mixes the heads of t's holders the same way (its own head alone when
it is the only holder). The silo trains on f_s(w) + (lambda/2) ||w - u_i||^2 and its new model is
m_i = u_i + Delta_i. ``sigma`` null: the median squared distance between the silos' trunks.

Each silo has a model at the server (:class:`strategies.engine.PerSiloModels`): it receives its own
payload, trains it and sends the delta; there is no single global model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from fedmtl.core.checks import non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import Arrays
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    PerSiloModels,
    ProximalSilo,
    SiloTask,
    trunk_vector,
)


@dataclass(frozen=True)
class FedAMPParams(MethodParams):
    """``alpha``: the weight of the other silos in a cloud model (1 - alpha stays with the silo);
    ``sigma``: the distance scale of the attention (null: the median squared distance between the
    silos' trunks); ``lam``: the proximal pull of local training towards the cloud model."""

    alpha: float = 0.5
    sigma: float | None = None
    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "alpha", "lam")
        if self.alpha > 1:
            raise ConfigError("alpha", f"must be in [0, 1], got {self.alpha}.", "use e.g. 0.5.")
        if self.sigma is not None:
            positive(self, "sigma")


class FedAMP(PerSiloModels[FedAMPParams]):
    """Attentive message passing: each silo trains from its cloud model (module docstring)."""

    silo = ProximalSilo
    individual = "each silo's cloud model mixes the other silos' models by their pairwise distances"

    def silo_task(self, server_round: int) -> SiloTask:
        return SiloTask(params={"mu": self.params.lam})

    def attention(self, silo_id: int, model: GlobalModel) -> dict[int, float]:
        """a_ij = exp(-||m_i - m_j||^2 / sigma) for the other silos j with a model (their
        trunks: the arrays ``model``'s roles call shared)."""
        own = trunk_vector(self.models[silo_id], model)
        others = {j: trunk_vector(m, model) for j, m in self.models.items() if j != silo_id}
        distances = {j: float(np.sum((own - v) ** 2)) for j, v in others.items()}
        sigma = self.sigma(model)
        return {j: float(np.exp(-d / sigma)) for j, d in distances.items()}

    def sigma(self, model: GlobalModel) -> float:
        if self.params.sigma is not None:
            return self.params.sigma
        vectors = [trunk_vector(m, model) for m in self.models.values()]
        squared = [
            float(np.sum((a - b) ** 2)) for i, a in enumerate(vectors) for b in vectors[i + 1 :]
        ]
        positive_ones = [d for d in squared if d > 0]
        return statistics.median(positive_ones) if positive_ones else 1.0

    def train_payload(self, silo_id: int, own: Arrays, model: GlobalModel) -> Arrays:
        attention = self.attention(silo_id, model)
        cloud: Arrays = {}
        for key, value in own.items():
            holders = [j for j in attention if key in self.models[j]]  # silos with this array
            total = sum(attention[j] for j in holders)
            if not holders or total <= 0:
                cloud[key] = value.copy()
                continue
            alpha = self.params.alpha
            mixed = (1.0 - alpha) * value.astype(np.float64)
            for j in holders:
                mixed += alpha * attention[j] / total * self.models[j][key]
            cloud[key] = mixed.astype(value.dtype)
        return cloud

    def absorb(
        self,
        server_round: int,
        model: GlobalModel,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        for silo_id, arrays in trained.items():  # m_i = u_i + Delta_i
            self.models[silo_id] = arrays
        return dict(model.arrays)
