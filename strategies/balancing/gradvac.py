"""GradVac: PCGrad towards an EMA target cosine similarity per task pair."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from fedmtl.core.checks import non_negative
from fedmtl.core.errors import ConfigError
from strategies.balancing.linalg import seeded_cpu_rng
from strategies.balancing.weighting import F64, GramianWeighting


@dataclass(frozen=True)
class GradVacParams:
    """EMA rate ``beta`` of the target cosines (in [0, 1]) and the denominators' ``eps``."""

    beta: float = 0.5
    eps: float = 1e-8

    def __post_init__(self) -> None:
        non_negative(self, "beta", "eps")
        if self.beta > 1.0:
            raise ConfigError("beta", f"must be in [0, 1], got {self.beta!r}.", "use e.g. 0.5.")


class GradVac(GramianWeighting):
    """GradVac (Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models").

    For each task i and the other tasks j in a random order, with phi_ij the cosine of g_i^PC and
    g_j and phi^_ij its target: if phi_ij < phi^_ij,
    g_i^PC += |g_i^PC| (phi^_ij sqrt(1 - phi_ij^2) - phi_ij sqrt(1 - phi^_ij^2))
    / (|g_j| sqrt(1 - phi^_ij^2)) g_j; then phi^_ij <- (1 - beta) phi^_ij + beta phi_ij.
    d = sum_i g_i^PC. Targets start at 0, so the first call is PCGrad. torchjd's
    ``GradVacWeighting`` does the arithmetic on G / trace G (scale invariant).

    State: phi^_ij keyed by the *global* task ids (i, j), so a round with a subset of the tasks
    reads and updates only their pairs. Order randomness as in PCGrad (seeded per call).
    """

    name = "gradvac"
    stateful = True
    randomised = True

    def __init__(self, params: GradVacParams, seed: int = 0) -> None:
        from torchjd.aggregation import GradVacWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = GradVacWeighting(beta=params.beta, eps=params.eps)
        self._targets: dict[tuple[int, int], float] = {}

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        rows = len(tasks)
        phi = torch.tensor(
            [[self._targets.get((i, j), 0.0) for j in tasks] for i in tasks], dtype=F64
        )
        # torchjd keeps its targets by row position: load ours for these rows, read them back.
        self._solver._phi_t = phi  # type: ignore[assignment]
        self._solver._state_key = (rows, F64)
        with seeded_cpu_rng(self._call_seed()):
            w = self._solver(G)
        updated = cast(Tensor, self._solver._phi_t)
        for a, i in enumerate(tasks):
            for b, j in enumerate(tasks):
                if a != b:
                    self._targets[(i, j)] = float(updated[a, b])
        return w

    def state_dict(self) -> dict[str, Any]:
        targets = [[i, j, phi] for (i, j), phi in sorted(self._targets.items())]
        return {"calls": self.calls, "targets": targets}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self._targets = {(int(i), int(j)): float(phi) for i, j, phi in state["targets"]}
