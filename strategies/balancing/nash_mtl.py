"""Nash-MTL: the Nash bargaining solution of the tasks, with a norm clip."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor
from torchjd.aggregation._nash_mtl import _NashMTLWeighting

from fedmtl.checks import int_at_least, non_negative
from strategies.balancing.base import GramianWeighting
from strategies.balancing.linalg import square_factor


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

    alpha > 0 with (G_n alpha)_i = 1 / alpha_i, G_n = G / ||G||_F, by a sequence of convex
    problems (cvxpy/ECOS, torchjd's ``NashMTL`` weighting adapted from the official code, up to
    ``iterations`` of them); w = alpha, then w <- w max_norm / |d| when |d| = sqrt(w^T G w) >
    max_norm. torchjd's version only takes J; it is given a T x T factor M of G (M M^T = G), which
    has the same Gramian, so J is never copied.

    Scale: the solve sees G_n, so without the clip w is unchanged by a positive scale of J and
    |d| = sqrt(T ||G||_F) grows with it; once |d| > max_norm, |d| = max_norm and w shrinks as 1/s.
    State (warm start): the last alpha of each global task id (1 for a task not seen yet) starts
    the next solve of a round that includes it.
    """

    name = "nash_mtl"
    stateful = True
    scale_invariant = False

    def __init__(self, params: NashMTLParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._solvers: dict[int, _NashMTLWeighting] = {}  # one compiled problem per row count
        self._alpha: dict[int, float] = {}

    def _solver(self, rows: int) -> _NashMTLWeighting:
        if rows not in self._solvers:
            self._solvers[rows] = _NashMTLWeighting(
                n_tasks=rows,
                max_norm=self.params.max_norm,
                update_weights_every=1,
                optim_niter=self.params.iterations,
            )
        return self._solvers[rows]

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        solver = self._solver(len(tasks))
        solver.prvs_alpha = np.array([self._alpha.get(t, 1.0) for t in tasks], dtype=np.float64)
        with warnings.catch_warnings():  # torchjd's problem is not DPP: cvxpy says so each solve
            warnings.filterwarnings("ignore", message=".*not DPP.*", category=UserWarning)
            w = solver(square_factor(G))
        for t, a in zip(tasks, np.asarray(solver.prvs_alpha, dtype=np.float64), strict=True):
            self._alpha[t] = float(a)
        return w

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": {str(t): a for t, a in sorted(self._alpha.items())}}
