"""Fixed weightings: the mean (equal weighting, "EW") and the sum of the task updates."""

from __future__ import annotations

import torch
from torch import Tensor

from strategies.balancing.weighting import F64, Weighting, mean_weights


class Mean(Weighting):
    """Equal weighting (EW, linear scalarisation with equal weights): w_t = 1/T, d = mean of rows.

    This is the loss-based baseline "EW" as well: equal loss weights give equal update weights.
    """

    name = "mean"
    uses_gramian = False

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        return mean_weights(rows)


class Sum(Weighting):
    """Sum of the rows: w_t = 1, d = sum_t g_t (T times the mean's step)."""

    name = "sum"
    uses_gramian = False

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        return torch.ones(rows, dtype=F64)
