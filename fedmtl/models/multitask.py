"""Hard parameter sharing: one shared trunk, one head per task.

Parameter names say what is shared: ``trunk.*`` is shared by every task, ``heads.<task>.*`` belongs to
one task. Strategies rely on these prefixes (see :func:`is_trunk_key` and :func:`head_task`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fedmtl.models.trunks import Trunk
from fedmtl.tasks import TaskSpec

TRUNK_PREFIX = "trunk."
HEADS_PREFIX = "heads."


def is_trunk_key(key: str) -> bool:
    return key.startswith(TRUNK_PREFIX)


def head_task(key: str) -> str | None:
    """The task a ``heads.<task>.*`` parameter belongs to, else None."""
    if not key.startswith(HEADS_PREFIX):
        return None
    return key[len(HEADS_PREFIX) :].split(".", 1)[0]


def make_head(in_features: int, task: TaskSpec, hidden: int = 0) -> nn.Module:
    """``Linear`` to the task's outputs, or ``Linear -> ReLU -> Linear`` when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(in_features, task.output_size))
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, task.output_size)
    )


class MultiTaskModel(nn.Module):
    """``heads[t](trunk(x))`` for each task t; the trunk runs once per batch."""

    def __init__(self, trunk: Trunk, tasks: Iterable[TaskSpec], head_hidden: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.tasks = {task.name: task for task in tasks}
        self.heads = nn.ModuleDict(
            {
                name: make_head(trunk.out_features, task, head_hidden)
                for name, task in self.tasks.items()
            }
        )

    def forward(
        self, x: torch.Tensor, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        names = self.tasks if tasks is None else tasks
        return {name: self.heads[name](features) for name in names}

    def exchanged_keys(self) -> list[str]:
        """The state entries that travel between server and silos: floating-point parameters and
        buffers. Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local."""
        return [k for k, v in self.state_dict().items() if v.is_floating_point()]

    def trunk_keys(self) -> list[str]:
        return [k for k in self.state_dict() if is_trunk_key(k)]

    def head_keys(self, task: str) -> list[str]:
        return [k for k in self.state_dict() if head_task(k) == task]
