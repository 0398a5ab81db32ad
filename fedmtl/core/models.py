"""Hard parameter sharing: shared trunk(s), one head per task (:class:`MultiTaskModel`).

Parameter names say what is shared (strategies rely on these prefixes, see :func:`is_trunk_key`,
:func:`trunk_group` and :func:`head_task`):
- ``trunk.*``: the one trunk every task shares (the default model);
- ``trunks.<group>.*``: the trunk of one task group (a grouped model, see :class:`MultiTaskModel`'s
  ``groups``), shared by that group's tasks only;
- ``heads.<task>.*``: one task's head, attached to the trunk of the task's group.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from fedmtl.core.tasks import TaskSpec

TRUNK_PREFIX = "trunk."
GROUP_TRUNKS_PREFIX = "trunks."
HEADS_PREFIX = "heads."


class Trunk(nn.Module):
    """The shared layers of a model (registered in :data:`fedmtl.trunks.TRUNKS`): maps an input of
    the dataset's ``input_shape`` to a feature vector of size ``out_features``."""

    out_features: int


def is_trunk_key(key: str) -> bool:
    """Whether ``key`` belongs to a shared trunk: the single trunk or a group's trunk."""
    return key.startswith((TRUNK_PREFIX, GROUP_TRUNKS_PREFIX))


def trunk_group(key: str) -> str | None:
    """The group whose trunk holds ``trunks.<group>.*``, else None."""
    if not key.startswith(GROUP_TRUNKS_PREFIX):
        return None
    return key[len(GROUP_TRUNKS_PREFIX) :].split(".", 1)[0]


def group_trunk_key(group: str, trunk_key: str) -> str:
    """``trunk.<param>`` of the single trunk -> ``trunks.<group>.<param>`` of a group's copy."""
    if not trunk_key.startswith(TRUNK_PREFIX):
        raise ValueError(f"{trunk_key!r} is not a key of the single trunk")
    return f"{GROUP_TRUNKS_PREFIX}{group}.{trunk_key[len(TRUNK_PREFIX) :]}"


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
    """``heads[t](trunk_of(t)(x))`` for each task t; each trunk runs once per batch.

    Without ``groups`` every task shares ``trunk``. With ``groups`` (group name -> its tasks, a
    partition of the tasks) each group gets its own copy of ``trunk`` (``trunks.<group>``), and a
    task's head reads the features of its group's trunk.
    """

    def __init__(
        self,
        trunk: Trunk,
        tasks: Iterable[TaskSpec],
        head_hidden: int = 0,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self.tasks = {task.name: task for task in tasks}
        self.groups = None if groups is None else {g: tuple(ts) for g, ts in groups.items()}
        self.task_group: dict[str, str] = {}
        if self.groups is None:
            self.trunk = trunk
        else:
            self.task_group = _task_groups(self.groups, list(self.tasks))
            self.trunks = nn.ModuleDict({g: copy.deepcopy(trunk) for g in self.groups})
        self.heads = nn.ModuleDict(
            {
                name: make_head(trunk.out_features, task, head_hidden)
                for name, task in self.tasks.items()
            }
        )

    def forward(
        self, x: torch.Tensor, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        names = list(self.tasks if tasks is None else tasks)
        if self.groups is None:
            features = self.trunk(x)
            return {name: self.heads[name](features) for name in names}
        by_group = {g: self.trunks[g](x) for g in dict.fromkeys(self.task_group[n] for n in names)}
        return {name: self.heads[name](by_group[self.task_group[name]]) for name in names}

    def shared_parameters(self, tasks: Iterable[str]) -> dict[str, nn.Parameter]:
        """State key -> parameter of the trunk(s) that ``tasks`` use (the shared parameters)."""
        if self.groups is None:
            return {f"trunk.{n}": p for n, p in self.trunk.named_parameters()}
        used = dict.fromkeys(self.task_group[t] for t in tasks)
        return {
            f"{GROUP_TRUNKS_PREFIX}{g}.{n}": p
            for g in used
            for n, p in self.trunks[g].named_parameters()
        }

    def exchanged_keys(self) -> list[str]:
        """The state entries that travel between server and silos: floating-point parameters and
        buffers. Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local."""
        return [k for k, v in self.state_dict().items() if v.is_floating_point()]

    def trunk_keys(self) -> list[str]:
        return [k for k in self.state_dict() if is_trunk_key(k)]

    def head_keys(self, task: str) -> list[str]:
        return [k for k in self.state_dict() if head_task(k) == task]


def _task_groups(groups: Mapping[str, Sequence[str]], tasks: list[str]) -> dict[str, str]:
    """Task -> its group; ``groups`` must partition ``tasks`` (ValueError otherwise)."""
    owner: dict[str, str] = {}
    for group, members in groups.items():
        if not members:
            raise ValueError(f"group {group!r} is empty")
        if "." in group:
            raise ValueError(f"group name {group!r} must not contain '.'")
        for task in members:
            if task not in tasks:
                raise ValueError(f"group {group!r} holds unknown task {task!r}")
            if task in owner:
                raise ValueError(f"task {task!r} is in groups {owner[task]!r} and {group!r}")
            owner[task] = group
    missing = [t for t in tasks if t not in owner]
    if missing:
        raise ValueError(f"tasks {missing} are in no group")
    return owner
