"""Aligned-MTL: align the principal components of the task updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from strategies.balancing.weighting import GramianWeighting


@dataclass(frozen=True)
class AlignedMTLParams:
    """Which eigenvalue sets the scale of the balanced system (``min`` as in the paper)."""

    scale: Literal["min", "median", "rmse"] = "min"


class AlignedMTL(GramianWeighting):
    """Aligned-MTL (Senushkin et al. 2023, "Independent Component Alignment for Multi-Task
    Learning"), Algorithm 1 with equal preferences p = 1/T.

    G = V L V^T (eigh, eigenvalues above a rank tolerance), B = sqrt(s) V L^{-1/2} V^T with s the
    smallest (``min``), median or mean (``rmse``) kept eigenvalue; w = B p. The balanced rows
    all have the same norm and are orthogonal; torchjd's ``AlignedMTLWeighting``. Scale invariant.
    """

    name = "aligned_mtl"

    def __init__(self, params: AlignedMTLParams, seed: int = 0) -> None:
        from torchjd.aggregation import AlignedMTLWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._solver = AlignedMTLWeighting(scale_mode=params.scale)

    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        return self._solver(G)
