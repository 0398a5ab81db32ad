"""MGDA: the minimum-norm point of the convex hull of the task updates."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torchjd.aggregation import MGDAWeighting

from fedmtl.core.checks import int_at_least, positive
from strategies.balancing.base import GramianWeighting


@dataclass(frozen=True)
class MGDAParams:
    """Frank-Wolfe iterations and the step size below which it stops."""

    max_iters: int = 250
    tol: float = 1e-5

    def __post_init__(self) -> None:
        int_at_least(self, "max_iters", 1)
        positive(self, "tol")


class MGDA(GramianWeighting):
    """MGDA (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization").

    w = argmin_{w in simplex} w^T G w, d = J^T w: the minimum-norm element of the convex hull of
    the rows (Désidéri's common descent direction; d = 0 at a Pareto-stationary point). Solved by
    Frank-Wolfe (the paper's Algorithm 2, torchjd's ``MGDAWeighting``), which for two tasks lands
    on the closed form w_1 = clip((g_2.g_2 - g_1.g_2) / |g_1 - g_2|^2, 0, 1) in one step.
    Scale invariant. A zero row is the minimum-norm point: MGDA puts all weight on it and d = 0.
    Frank-Wolfe without away steps converges sublinearly for T > 2: at the default 250 steps
    |d|^2 can sit a few % above the exact minimum (raise ``max_iters`` / lower ``tol`` to tighten).
    With identical rows the minimiser is not unique (Frank-Wolfe picks one; d is the row).
    """

    name = "mgda"

    def __init__(self, params: MGDAParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._solver = MGDAWeighting(epsilon=params.tol, max_iters=params.max_iters)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)
