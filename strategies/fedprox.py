"""``fedprox`` (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks").

Silos minimise f_s(w) + (mu/2) ||w - w_global||^2 during their local steps, w_global the model they
received; the server averages as FedAvg (:class:`strategies.engine.Averaging`). mu = 0 is FedAvg.
The paper's grid for mu: 0.001 to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmtl.core.checks import non_negative
from strategies.engine import Averaging, AveragingParams, ProximalSilo, SiloTask


@dataclass(frozen=True)
class FedProxParams(AveragingParams):
    """FedAvg's parameters plus the proximal coefficient ``mu``."""

    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "mu")


class FedProx(Averaging[FedProxParams]):
    """FedAvg whose silos add (mu/2) ||w - w_global||^2 to their objective."""

    silo = ProximalSilo

    def silo_task(self, server_round: int) -> SiloTask:
        return SiloTask(params={"mu": self.params.mu})
