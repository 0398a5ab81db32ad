"""Nash-MTL: the Nash bargaining solution of the tasks, with a norm clip."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from fedmtl.core.checks import int_at_least, non_negative
from strategies.balancing.linalg import square_factor
from strategies.balancing.weighting import GramianWeighting, by_task, from_task_keys

if TYPE_CHECKING:
    from torchjd.aggregation._nash_mtl import _NashMTLWeighting


@dataclass(frozen=True)
class NashMTLParams:
    """``max_norm`` of d (0 disables the clip) and the convex-concave ``iterations``."""

    max_norm: float = 1.0
    iterations: int = 20

    def __post_init__(self) -> None:
        non_negative(self, "max_norm")
        int_at_least(self, "iterations", 1)


class NashMTL(GramianWeighting):
    """Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"), Algorithm 1.

    alpha > 0 with (G alpha)_i = 1 / alpha_i, by a sequence of convex problems (cvxpy/ECOS,
    torchjd's ``NashMTL`` weighting adapted from the official code, at most ``iterations`` of
    them); w = alpha, then w <- w max_norm / |d| when |d| = sqrt(w^T G w) > max_norm.

    torchjd's version takes J; it is given a T x T factor M of G_n = G / trace G (M M^T = G_n), so
    J is never copied and the solver always sees a well-scaled problem (ECOS fails on the tiny
    Gramians of federated updates). The solution maps back exactly: alpha(G) = alpha(G_n) /
    sqrt(trace G).

    Scale: J -> s J gives w -> w / s and leaves d unchanged. At the exact solution
    |d|^2 = alpha^T G alpha = T, so before the clip |d| = sqrt(T) whatever the size of the updates,
    and with the default max_norm = 1 every step has |d| = 1: choose the server learning rate
    with that in mind. State (warm start): the last alpha(G_n) of each global task id (1 for a
    task not seen yet) starts the next solve of a round that includes it. When G has no Nash
    solution (a zero row, rows g and -g) ECOS fails and the warm start is kept (then clipped).
    """

    name = "nash_mtl"
    stateful = True

    def __init__(self, params: NashMTLParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._solvers: dict[int, _NashMTLWeighting] = {}  # one compiled problem per row count
        self._alpha: dict[int, float] = {}

    def _solver(self, rows: int) -> _NashMTLWeighting:
        from torchjd.aggregation._nash_mtl import _NashMTLWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        if rows not in self._solvers:
            self._solvers[rows] = _NashMTLWeighting(
                n_tasks=rows,
                max_norm=0.0,
                update_weights_every=1,
                optim_niter=self.params.iterations,
            )
        return self._solvers[rows]

    def _rescale(self, w: Tensor, G: Tensor, trace: float) -> Tensor:
        w = w / trace**0.5
        norm = float(w @ G @ w) ** 0.5
        if self.params.max_norm > 0 and norm > self.params.max_norm:
            w = w * (self.params.max_norm / norm)
        return w

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        solver = self._solver(len(tasks))
        solver.prvs_alpha = np.array([self._alpha.get(t, 1.0) for t in tasks], dtype=np.float64)
        # cvxpy warns at every solve that torchjd's problem is not DPP, and divides by zero on the
        # degenerate Gramians that have no Nash solution (a zero row, rows g and -g).
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.filterwarnings("ignore", message=".*not DPP.*", category=UserWarning)
            alpha = solver(square_factor(G))
        for t, a in zip(tasks, alpha.tolist(), strict=True):
            self._alpha[t] = float(a)
        return alpha

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "alpha": by_task(self._alpha)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self._alpha = from_task_keys(state["alpha"])
