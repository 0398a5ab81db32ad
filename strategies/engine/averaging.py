"""Task-aware averaging (FedAvg's rule), the aggregation most methods start from.

Trunk: Delta = sum_s w_s Delta theta_s / sum_s w_s over the round's silos, with w_s = n_s (the
silo's training examples, ``silo_weighting: examples``) or w_s = 1 (``uniform``, FMTL-Bench's
unweighted mean), applied by the server optimizer; heads per task over their holders
(:class:`~strategies.engine.TrunkAndHeads`). Methods that change only what silos do (a proximal
term, heads or personal models kept on the silo) build on :class:`Averaging` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from strategies.engine.aggregation import weighted_mean_delta
from strategies.engine.method import Round, TrunkAndHeads, TrunkStep
from strategies.engine.model import GlobalModel
from strategies.engine.params import MethodParams
from strategies.engine.replies import ClientUpdate
from strategies.engine.sums import SumRule

SiloWeighting = Literal["examples", "uniform"]


@dataclass(frozen=True)
class AveragingParams(MethodParams):
    """The common parameters plus how silos are weighted in the trunk average."""

    renamed_keys: ClassVar[dict[str, str]] = {"weighting": "silo_weighting"}

    silo_weighting: SiloWeighting = "examples"


def silo_weights(updates: Sequence[ClientUpdate], rule: SiloWeighting) -> list[float]:
    """w_s = n_s (``examples``) or 1 (``uniform``) for each update."""
    if rule == "uniform":
        return [1.0] * len(updates)
    return [float(u.num_examples) for u in updates]


A = TypeVar("A", bound=AveragingParams)


class Averaging(TrunkAndHeads[A]):
    """Trunk: the silos' trunk updates averaged with weights w_s; heads per task over holders."""

    def secure_sums(self, server_round: int) -> SumRule:
        """Weighted means only: the trunk by w_s, each head by n_{s,t}."""
        uniform = self.params.silo_weighting == "uniform"
        return SumRule("uniform" if uniform else "examples")

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        weights = silo_weights(updates, self.params.silo_weighting)
        trunk = list(model.trunk())
        return TrunkStep(weighted_mean_delta(updates, trunk, weights, self.average))
