"""FAMO: fast adaptive multitask optimisation, one logit update per server round."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedmtl.core.checks import non_negative, positive
from strategies.balancing.weighting import F64, Weighting, by_task, from_task_keys


@dataclass(frozen=True)
class FAMOParams:
    """Logit step ``lr`` (beta in the paper) and weight ``decay`` (gamma)."""

    lr: float = 0.025
    decay: float = 1e-3

    def __post_init__(self) -> None:
        positive(self, "lr")
        non_negative(self, "decay")


class FAMO(Weighting):
    """FAMO (Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization"), Algorithm 1, called
    once per round with the current global model's per-task losses L (> 0).

    State per global task id: a logit xi_t (0 when first seen), and the previous call's losses.
    Each call, over the tasks S present now and in the previous call:
      delta = log L_prev - log L_now (the decrease the last step achieved, on S),
      z_S = softmax(xi_S),  xi_S <- xi_S - lr (J_softmax(xi_S)^T delta + decay xi_S),
    with J_softmax^T delta = z_S * (delta - z_S . delta). A task whose loss fell less than the
    z-weighted average gains logit. Then, over the tasks present now,
      z = softmax(xi),  w_t = (z_t / L_t) / sum_j (z_j / L_j)
    (the gradient weights of FAMO's loss sum_t z_t log L_t / c, c = sum_j z_j / L_j; sum w = 1).

    Differences from the official code (Cranial-XIX/FAMO), all documented choices: the code steps
    xi with Adam (lr 0.025, weight_decay gamma = 0.01 by default) where we use the paper's plain
    step with decay 1e-3 (set ``decay: 0.01`` for the code's value); the code subtracts known
    minimum losses (default 0) and adds 1e-8 to L, which we replace by requiring L > 0; the code
    updates after every optimiser step, we once per server round (the step between two calls is
    the round's aggregated update).
    """

    name = "famo"
    needs_losses = True
    stateful = True
    uses_gramian = False

    def __init__(self, params: FAMOParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._logits: dict[int, float] = {}
        self._previous: dict[int, float] = {}
        self._weights: dict[int, float] = {}

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        assert losses is not None
        now = dict(zip(tasks, losses.tolist(), strict=True))
        self._step_logits([t for t in tasks if t in self._previous], now)
        xi = torch.tensor([self._logits.setdefault(t, 0.0) for t in tasks], dtype=F64)
        z = torch.softmax(xi, dim=0)
        w = z / losses
        w = w / w.sum()
        self._previous = now
        self._weights = dict(zip(tasks, z.tolist(), strict=True))
        return w

    def _step_logits(self, common: list[int], now: dict[int, float]) -> None:
        if not common:
            return
        xi = torch.tensor([self._logits[t] for t in common], dtype=F64)
        before = torch.tensor([self._previous[t] for t in common], dtype=F64)
        after = torch.tensor([now[t] for t in common], dtype=F64)
        delta = before.log() - after.log()
        z = torch.softmax(xi, dim=0)
        grad = z * (delta - (z * delta).sum())
        xi = xi - self.params.lr * (grad + self.params.decay * xi)
        self._logits.update(zip(common, xi.tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "logits": by_task(self._logits),
            "previous_losses": by_task(self._previous),
            "z": by_task(self._weights),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self._logits = from_task_keys(state["logits"])
        self._previous = from_task_keys(state["previous_losses"])
        self._weights = from_task_keys(state["z"])
