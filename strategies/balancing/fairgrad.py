"""FairGrad: alpha-fair allocation of the update among the tasks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedmtl.core.checks import positive
from fedmtl.core.errors import ConfigError
from strategies.balancing.weighting import GramianWeighting


@dataclass(frozen=True)
class FairGradParams:
    """Fairness ``alpha`` (> 0; 1 is proportional fairness) and the solver's ``max_iters``."""

    alpha: float = 1.0
    max_iters: int | None = None

    def __post_init__(self) -> None:
        positive(self, "alpha")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError("max_iters", f"must be >= 1 or null, got {self.max_iters!r}.")


class FairGrad(GramianWeighting):
    """FairGrad (Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning"), Eq. 4.

    w > 0 with G w = w^(-1/alpha), by least squares (torchjd's ``FairGradWeighting``, scipy, as in
    the official code); d = J^T w. Solved on G_n = G / trace G and mapped back exactly:
    w(G) = trace(G)^(-alpha/(alpha+1)) w(G_n), which is better conditioned than solving on a tiny
    or huge G.

    Scale: J -> s J multiplies w by s^(-2 alpha/(alpha+1)) (1/s for alpha = 1, where d is then
    unchanged). A zero row has no finite solution; the solver stops at a large finite weight for
    it, which does not change d.
    """

    name = "fairgrad"

    def __init__(self, params: FairGradParams, seed: int = 0) -> None:
        from torchjd.aggregation import FairGradWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = FairGradWeighting(alpha=params.alpha, max_iters=params.max_iters)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)

    def _rescale(self, w: Tensor, G: Tensor, trace: float) -> Tensor:
        alpha = self.params.alpha
        return w * trace ** (-alpha / (alpha + 1.0))
