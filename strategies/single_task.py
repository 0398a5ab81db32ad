"""``single_task``: one FedAvg federation per task, the reference of Delta_MTL.

The model has one trunk per task (``trunks.<task>.*``); a silo trains the trunks and heads of its
tasks, each on its own task's loss (a task's head reads only its own trunk), and the server
averages each task's trunk and head over the silos that hold it, weighted by n_{s,t}:
theta_t <- theta_t + sum_s n_{s,t} Delta_{s,t} / sum_s n_{s,t}.
"""

from __future__ import annotations

from fedmtl.core.records import Arrays, Groups
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    Round,
    SumRule,
    TrunkAndHeads,
    TrunkStep,
    weighted_mean_delta,
)


class SingleTask(TrunkAndHeads[MethodParams]):
    """One FedAvg federation per task: one trunk per task, averaged over the task's holders."""

    def secure_sums(self, server_round: int) -> SumRule:
        """Each task's trunk and head: means over its holders weighted by n_{s,t}."""
        return SumRule("served")

    def initial_groups(self) -> Groups:
        return {task: (task,) for task in self.tasks}

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        trunk = model.trunk()
        delta: Arrays = {}
        for task in self.tasks:
            keys = [k for k in trunk if model.serves(k, task)]
            holders = [u for u in updates if u.task_examples.get(task, 0) > 0]
            if not holders:
                continue
            weights = [float(u.task_examples[task]) for u in holders]
            delta.update(weighted_mean_delta(holders, keys, weights, self.average) or {})
        return TrunkStep(delta or None)
