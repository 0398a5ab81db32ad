"""DWA: weights from the rate at which each task's loss has been falling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedmtl.core.checks import positive
from strategies.balancing.weighting import F64, Weighting, by_task, from_task_keys


@dataclass(frozen=True)
class DWAParams:
    """Softmax ``temperature`` (2.0 in the paper)."""

    temperature: float = 2.0

    def __post_init__(self) -> None:
        positive(self, "temperature")


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
    Attention"), Eq. 7.

    w_t = T exp(r_t / temp) / sum_j exp(r_j / temp),  r_t = L_t(k-1) / L_t(k-2),
    with T the number of rows of this call. As in the paper the weights of step k use the losses of
    the two steps before it: the losses passed to a call are recorded and first used by the next
    call. History is kept per global task id (its last two observed losses), so a task that missed
    a round uses its own last two observations, and a task with fewer than two gets r_t = 1; hence
    w = 1 for the first two calls. Needs ``losses`` > 0; does not use J (d = J^T w).
    """

    name = "dwa"
    needs_losses = True
    stateful = True
    uses_gramian = False

    def __init__(self, params: DWAParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._history: dict[int, list[float]] = {}  # task id -> last two losses, oldest first

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        assert losses is not None
        ratios = torch.tensor(
            [h[1] / h[0] if len(h := self._history.get(t, [])) == 2 else 1.0 for t in tasks],
            dtype=F64,
        )
        w = rows * torch.softmax(ratios / self.params.temperature, dim=0)
        for t, loss in zip(tasks, losses.tolist(), strict=True):
            self._history[t] = [*self._history.get(t, [])[-1:], loss]
        return w

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "history": by_task(self._history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        self._history = {
            t: [float(v) for v in h] for t, h in from_task_keys(state["history"]).items()
        }
