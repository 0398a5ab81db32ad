"""IMTL-G: the direction with equal projections on every unit task update."""

from __future__ import annotations

from torch import Tensor

from strategies.balancing.weighting import GramianWeighting


class IMTLG(GramianWeighting):
    """IMTL-G (Liu et al. 2021, "Towards Impartial Multi-task Learning"), gradient part.

    d = J^T w has the same projection on every unit row g_t / |g_t|. In torchjd's generalisation
    (Quinton & Rey 2024, for linearly dependent rows): w = v / sum(v), v = pinv(G) (|g_1|, ...,
    |g_T|); w = 0 when sum(v) vanishes (e.g. rows g and -g: no direction helps both; d = 0).
    Scale invariant. A zero row gets weight 0.
    """

    name = "imtl_g"

    def __init__(self, params: object, seed: int = 0) -> None:
        from torchjd.aggregation import IMTLGWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = IMTLGWeighting()

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)
