"""PCGrad: project each update off the updates it conflicts with, in a random order."""

from __future__ import annotations

from torch import Tensor

from strategies.balancing.linalg import seeded_cpu_rng
from strategies.balancing.weighting import GramianWeighting


class PCGrad(GramianWeighting):
    """PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"), Algorithm 1.

    For each task i, g_i^PC starts at g_i and, over the other tasks j in a random order,
    g_i^PC <- g_i^PC - (g_i^PC . g_j / |g_j|^2) g_j whenever g_i^PC . g_j < 0; d = SUM_i g_i^PC.
    Computed on the Gramian (torchjd's ``PCGradWeighting``): w_j collects the coefficient of g_j.
    Scale invariant. The order is drawn from (seed, call number), so with T > 2 a permutation of
    the rows permutes w only in distribution; with T = 2 the order does not matter.
    """

    name = "pcgrad"
    randomised = True

    def __init__(self, params: object, seed: int = 0) -> None:
        from torchjd.aggregation import PCGradWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = PCGradWeighting()

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        with seeded_cpu_rng(self._call_seed()):
            return self._solver(G)
