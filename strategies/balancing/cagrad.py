"""CAGrad: the best mean-descent direction inside a ball around the mean update."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedmtl.core.checks import booleans, non_negative
from strategies.balancing.weighting import GramianWeighting


@dataclass(frozen=True)
class CAGradParams:
    """Ball radius ``c``, LibMTL's ``rescale`` by 1/(1+c^2), torchjd's ``norm_eps``."""

    c: float = 0.5
    rescale: bool = False
    norm_eps: float = 1e-4

    def __post_init__(self) -> None:
        non_negative(self, "c", "norm_eps")
        booleans(self, "rescale")


class CAGrad(GramianWeighting):
    """CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    g_0 = mean row; w* = argmin_{w in simplex} g_w . g_0 + c |g_0| |g_w| (g_w = J^T w), solved as
    a conic program (torchjd's ``CAGradWeighting``, cvxpy/CLARABEL, on G / trace G);
    d = g_0 + c |g_0| / |g_w*| g_w*, i.e. w = 1/T + c |g_0| / |g_w*| w*. When |g_w*| < norm_eps
    (on the normalised Gramian) the point is treated as Pareto-stationary and w = 0, d = 0 (this
    happens when a row is zero or two rows are g and -g). ``rescale: true`` divides w by 1 + c^2 as
    LibMTL does (its default; FMTL-Bench and FedHCA2 use c = 0.4 with it); the paper's and
    torchjd's d is not rescaled (default). Scale invariant.
    """

    name = "cagrad"

    def __init__(self, params: CAGradParams, seed: int = 0) -> None:
        from torchjd.aggregation import CAGradWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = CAGradWeighting(c=params.c, norm_eps=params.norm_eps)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        w = self._solver(G)
        return w / (1.0 + self.params.c**2) if self.params.rescale else w
