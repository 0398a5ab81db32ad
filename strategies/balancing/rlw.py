"""RLW: random loss weighting."""

from __future__ import annotations

import torch
from torch import Tensor

from strategies.balancing.linalg import seeded_cpu_rng
from strategies.balancing.weighting import F64, Weighting


class RLW(Weighting):
    """Random Loss Weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning"), Algorithm 2: w = softmax(eps), eps ~ N(0, I_T), drawn
    afresh at each call (torchjd's ``RandomWeighting``) from a seed derived from (seed, call
    number). Uses neither J's values nor losses; weights sum to 1.
    """

    name = "rlw"
    randomised = True
    uses_gramian = False

    def __init__(self, params: object, seed: int = 0) -> None:
        from torchjd.aggregation import RandomWeighting  # noqa: PLC0415 - heavy (torchjd imports cvxpy), only when the method is built

        super().__init__(params, seed)
        self._sampler = RandomWeighting()

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        with seeded_cpu_rng(self._call_seed()):
            return self._sampler(torch.zeros(rows, 1, dtype=F64))
