"""UPGrad and DualProj: projections onto the dual cone of the task updates {x : J x >= 0}."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedmtl.core.checks import non_negative
from strategies.balancing.weighting import GramianWeighting


@dataclass(frozen=True)
class DualConeParams:
    """torchjd's QP settings: ``norm_eps`` (Gramian normalisation) and ``reg_eps`` (ridge)."""

    norm_eps: float = 1e-4
    reg_eps: float = 1e-4

    def __post_init__(self) -> None:
        non_negative(self, "norm_eps", "reg_eps")


class UPGrad(GramianWeighting):
    """UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization").

    d = (1/T) sum_i pi(g_i), pi the projection onto the dual cone {x : J x >= 0}; the weights of
    pi(J^T u) solve the QP min_v v^T G v s.t. v >= u (quadprog, torchjd's ``UPGradWeighting``),
    on G / trace G plus ``reg_eps`` I. The ridge shifts w slightly: on the reference J the exact
    QP gives w = [10/9, 15/19] and torchjd (and this class) [1.1109, 0.7894]. Scale invariant.
    """

    name = "upgrad"

    def __init__(self, params: DualConeParams, seed: int = 0) -> None:
        from torchjd.aggregation import UPGradWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built
        from torchjd.linalg import QuadprogProjector  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        projector = QuadprogProjector(norm_eps=params.norm_eps, reg_eps=params.reg_eps)
        self._solver = UPGradWeighting(projector=projector)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)


class DualProj(GramianWeighting):
    """DualProj (the projection of GEM, Lopez-Paz & Ranzato 2017, Eq. 11; named in Quinton & Rey
    2024): the mean row projected onto the dual cone {x : J x >= 0}, d = pi(J^T 1/T).

    Weights from the QP min_v v^T G v s.t. v >= 1/T (torchjd's ``DualProjWeighting``, quadprog,
    ``reg_eps`` ridge on G / trace G). Scale invariant.
    """

    name = "dualproj"

    def __init__(self, params: DualConeParams, seed: int = 0) -> None:
        from torchjd.aggregation import DualProjWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built
        from torchjd.linalg import QuadprogProjector  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        projector = QuadprogProjector(norm_eps=params.norm_eps, reg_eps=params.reg_eps)
        self._solver = DualProjWeighting(projector=projector)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)
