"""FMTL-Bench's server-side conflict-averse baselines (FMTL-Bench, arXiv 2402.12876): PCGrad and
CAGrad applied to the silos' *joint* trunk updates, one row per silo, not per task.

With Delta_s the trunk update of silo s (S silos this round), J = [Delta_1; ...; Delta_S]:
- ``fmtlbench_pcgrad``: each Delta_s projected off every Delta_r it conflicts with (PCGrad, Yu et
  al. 2020), then the *mean* of the projected rows, so that without conflicts the step equals
  FMTL-Bench's unweighted FedAvg.
- ``fmtlbench_cagrad``: CAGrad (Liu et al. 2021) over the rows with c = 0.4 and the 1/(1 + c^2)
  rescale, as FMTL-Bench and FedHCA2 use; its g0 is already the mean of the rows.
Silos send joint updates (no extra upload); heads are averaged per task (base class).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedmtl.core.checks import non_negative
from fedmtl.core.records import Arrays
from strategies.aggregation import flatten, unflatten
from strategies.balancing import Weighting, build_weighting
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.replies import ClientUpdate


@dataclass(frozen=True)
class FmtlBenchCAGradParams(StrategyParams):
    """The common strategy parameters plus CAGrad's conflict-aversion radius ``c``."""

    c: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "c")


class ClientRowsBalancing(TaskAwareStrategy):
    """Trunk: a balancing method over the silos' joint updates (rows = silos)."""

    weighting_name: ClassVar[str]
    mean_of_rows: ClassVar[bool] = False

    @functools.cached_property
    def weighting(self) -> Weighting:
        """Built once, on first use: its state (if any) lives across rounds."""
        return build_weighting(
            self.weighting_name, self.method_params(), seed=self.seed, key="strategy"
        )

    def method_params(self) -> dict[str, object]:
        return {}

    def stateful_parts(self) -> dict[str, Weighting]:
        return {"weighting": self.weighting}

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        keys = list(trunk)
        rows = torch.stack([flatten(u.deltas, keys).to(torch.float64) for u in updates])
        direction, _ = self.weighting(rows, None, [u.silo.silo_id for u in updates])
        if self.mean_of_rows:
            direction = direction / len(updates)
        return TrunkStep(unflatten(direction, trunk))


class FmtlBenchPCGrad(ClientRowsBalancing):
    """PCGrad over the silos' joint trunk updates, averaged (see the module docstring)."""

    weighting_name = "pcgrad"
    mean_of_rows = True


class FmtlBenchCAGrad(ClientRowsBalancing):
    """CAGrad (c, 1/(1+c^2) rescale) over the silos' joint trunk updates."""

    weighting_name = "cagrad"
    params: FmtlBenchCAGradParams

    def method_params(self) -> dict[str, object]:
        return {"c": self.params.c, "rescale": True}
