"""FMTL-Bench's server-side conflict-averse baselines (FMTL-Bench, arXiv 2402.12876): PCGrad and
CAGrad applied to the silos' *joint* trunk updates, one row per silo, not per task.

With Delta_s the trunk update of silo s (S silos this round), J = [Delta_1; ...; Delta_S]:
- ``fmtlbench_pcgrad``: each Delta_s projected off every Delta_r it conflicts with (PCGrad, Yu et
  al. 2020), then the *mean* of the projected rows, so that without conflicts the step equals
  FMTL-Bench's unweighted FedAvg.
- ``fmtlbench_cagrad``: CAGrad (Liu et al. 2021) over the rows with c = 0.4 and the 1/(1 + c^2)
  rescale, as FMTL-Bench and FedHCA2 use; its g0 is already the mean of the rows.
Silos send joint updates (no extra upload); heads are averaged per task
(:class:`strategies.engine.TrunkAndHeads`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from fedmtl.core.checks import non_negative
from strategies.balancing import build_weighting
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    MethodSetup,
    Round,
    TrunkAndHeads,
    TrunkStep,
    silo_rows,
    unflatten,
)


@dataclass(frozen=True)
class FmtlBenchCAGradParams(MethodParams):
    """The common strategy parameters plus CAGrad's conflict-aversion radius ``c``."""

    c: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "c")


P = TypeVar("P", bound=MethodParams)


class ClientRowsBalancing(TrunkAndHeads[P]):
    """Trunk: a balancing method over the silos' joint updates (rows = silos)."""

    weighting_name: ClassVar[str]
    mean_of_rows: ClassVar[bool] = False

    def __init__(self, params: P, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.weighting = build_weighting(
            self.weighting_name, self.method_params(), seed=setup.seed, key="strategy"
        )

    def method_params(self) -> dict[str, object]:
        return {}

    def secure_sums(self, server_round: int) -> str:
        return "its balancing weighs each silo's own joint update (one row per silo)"

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        trunk = model.trunk()
        rows = silo_rows(updates, list(trunk))
        direction, _ = self.weighting(rows, None, [u.silo.silo_id for u in updates])
        if self.mean_of_rows:
            direction = direction / len(updates)
        return TrunkStep(unflatten(direction, trunk))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.weighting.load_state_dict(state["weighting"])


class FmtlBenchPCGrad(ClientRowsBalancing[MethodParams]):
    """PCGrad over the silos' joint trunk updates, averaged (see the module docstring)."""

    weighting_name = "pcgrad"
    mean_of_rows = True


class FmtlBenchCAGrad(ClientRowsBalancing[FmtlBenchCAGradParams]):
    """CAGrad (c, 1/(1+c^2) rescale) over the silos' joint trunk updates."""

    weighting_name = "cagrad"

    def method_params(self) -> dict[str, object]:
        return {"c": self.params.c, "rescale": True}
