"""Multi-task models and the roles of their parameters (:class:`MultiTaskModel`, :class:`Role`).

A model is a trunk (:class:`Trunk`, a plug-in of :data:`fedmtl.trunks.TRUNKS`) and one head per
task. The trunk gives every task its features: one feature vector that every task reads (hard
parameter sharing: ``mlp``, ``cnn``, ``resnet``), or one per task (:class:`TaskTrunk`: mixtures of
experts, per-task attention, cross-stitch networks). Parameter names say where a parameter sits:

- ``trunk.*``: the trunk (the default model);
- ``trunks.<group>.*``: the trunk of one task group (a grouped model, see :class:`MultiTaskModel`'s
  ``groups``), a copy of the trunk restricted to the group's tasks;
- ``heads.<task>.*``: one task's head, reading its task's features.

**Roles.** What aggregation does with a parameter is its :class:`Role`, declared by the model
(:meth:`MultiTaskModel.roles`, from :meth:`Trunk.roles` for the trunk's parameters):

- ``shared``: used by every task; averaged over every silo by the method's trunk rule (FedAvg,
  balancing over per-task shares, ...);
- ``group`` (of group g): used by the tasks of g only (a grouped model's trunks); the method's
  trunk rule over the silos holding a task of g;
- ``task`` (of task t): used by task t only (its head, its gate, its attention module, its own
  experts); averaged over the silos holding t, weighted by their labelled examples of t;
- ``local``: never leaves the silo; each silo keeps its own value across rounds.

A role is a statement about the forward graph: a ``task`` parameter of t receives no gradient from
another task's loss, a ``group`` parameter none from a task outside its group
(:func:`fedmtl.testing.check_trunk_roles` checks this with autograd for every registered trunk).
The engine, local training (which parameters a silo trains and splits per task), the vectorized
runtime and the silos' kept state read roles only, never names, so an architecture needs no change
outside its own module. Hard sharing is the case "trunk shared, heads per task".
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fedmtl.core.tasks import TaskSpec

TRUNK_PREFIX = "trunk."
GROUP_TRUNKS_PREFIX = "trunks."
HEADS_PREFIX = "heads."

RoleKind = Literal["shared", "group", "task", "local"]


@dataclass(frozen=True)
class Role:
    """What aggregation does with one parameter (module docstring): ``kind`` and ``owner`` (the
    task of a ``task`` role, the group of a ``group`` role, empty otherwise)."""

    kind: RoleKind
    owner: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("shared", "group", "task", "local"):
            raise ValueError(f"unknown role kind {self.kind!r}")
        if (self.kind in ("group", "task")) != bool(self.owner):
            raise ValueError(f"a {self.kind} role {'needs' if not self.owner else 'has no'} owner")

    @property
    def is_shared(self) -> bool:
        """Shared by several tasks (all, or a group's): the method's trunk rule aggregates it."""
        return self.kind in ("shared", "group")

    def used_by(self, task: str, groups: Mapping[str, Sequence[str]] | None = None) -> bool:
        """Whether ``task``'s output depends on a parameter of this role (``groups``: the group
        -> tasks mapping a ``group`` role refers to)."""
        if self.kind == "shared":
            return True
        if self.kind == "task":
            return self.owner == task
        if self.kind == "group":
            return groups is not None and task in groups.get(self.owner, ())
        return False

    def __str__(self) -> str:
        return f"{self.kind}:{self.owner}" if self.owner else self.kind


SHARED = Role("shared")
LOCAL = Role("local")


def task_role(task: str) -> Role:
    """The role of a parameter only ``task`` uses."""
    return Role("task", task)


def group_role(group: str) -> Role:
    """The role of a parameter only the tasks of ``group`` use."""
    return Role("group", group)


Roles = Mapping[str, Role]
"""State key -> its role."""


class Trunk(nn.Module):
    """The shared layers of a model (registered in :data:`fedmtl.trunks.TRUNKS`): maps an input of
    the dataset's ``input_shape`` to a feature vector of size ``out_features`` that every task's
    head reads (hard parameter sharing). Every parameter is ``shared`` unless :meth:`roles` says
    otherwise."""

    out_features: int

    def task_features(self, x: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each of ``tasks``'s features (default: the one feature vector, computed once)."""
        features = self(x)
        return dict.fromkeys(tasks, features)

    def roles(self) -> dict[str, Role]:
        """State key (relative to the trunk) -> its role (default: every entry ``shared``)."""
        return dict.fromkeys(self.state_dict(), SHARED)

    def for_tasks(self, tasks: Sequence[str]) -> Trunk:
        """A copy serving ``tasks`` only (a task group's trunk): default, a plain copy."""
        return copy.deepcopy(self)


class TaskTrunk(Trunk):
    """A trunk that gives each task features of its own (soft parameter sharing), built with the
    model's task names: ``factory(input_shape, params, tasks, outputs=None)``. ``tasks`` sizes the
    architecture (one expert set, attention module or column per task); ``outputs`` (default:
    ``tasks``) are the tasks it gives features to, and only their ``task`` parameters exist.

    Subclasses implement :meth:`task_features` and :meth:`roles`, and key every parameter of one
    task by the task's name, so that :meth:`for_tasks` (the trunk of a task group: the same
    architecture with fewer ``outputs``) keeps every parameter that is not ``task``, and the
    ``task`` parameters of the group's tasks, under the same names."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        params: Any,
        tasks: Sequence[str],
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.params = params
        self.task_names = tuple(tasks)
        self.outputs = tuple(self.task_names if outputs is None else outputs)
        unknown = [t for t in self.outputs if t not in self.task_names]
        if unknown:
            raise ValueError(f"outputs {unknown} are not tasks of the trunk")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.task_features(x, self.outputs)

    def for_tasks(self, tasks: Sequence[str]) -> Trunk:
        with torch.random.fork_rng(devices=[]):
            subset = type(self)(self.input_shape, self.params, self.task_names, outputs=tasks)
        state = self.state_dict()
        subset.load_state_dict({k: state[k] for k in subset.state_dict()})
        return subset


def is_trunk_key(key: str) -> bool:
    """Whether ``key`` is a parameter of a trunk (the single trunk or a group's), by its name."""
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


def hard_sharing_roles(keys: Iterable[str]) -> dict[str, Role]:
    """The roles of a hard-sharing model's keys, from their names: ``trunk.*`` shared,
    ``trunks.<g>.*`` of group g, ``heads.<t>.*`` of task t (a model whose trunk has parameters of
    other roles declares them: :meth:`MultiTaskModel.roles`)."""
    roles: dict[str, Role] = {}
    for key in keys:
        group, task = trunk_group(key), head_task(key)
        if group is not None:
            roles[key] = group_role(group)
        elif task is not None:
            roles[key] = task_role(task)
        elif key.startswith(TRUNK_PREFIX):
            roles[key] = SHARED
        else:
            raise ValueError(f"{key!r} is neither a trunk's nor a head's parameter")
    return roles


def grouped_key(key: str, role: Role, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The keys of a grouped model that ``key`` (of the one-trunk model, with ``role``) becomes:
    a shared trunk parameter one copy per group, a trunk parameter of task t one key in t's group,
    anything else (heads) itself."""
    if not key.startswith(TRUNK_PREFIX):
        return [key]
    if role.kind == "task":
        owner = [g for g, members in groups.items() if role.owner in members]
        return [group_trunk_key(g, key) for g in owner]
    return [group_trunk_key(g, key) for g in groups]


def make_head(in_features: int, task: TaskSpec, hidden: int = 0) -> nn.Module:
    """``Linear`` to the task's outputs, or ``Linear -> ReLU -> Linear`` when ``hidden`` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Linear(in_features, task.output_size))
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, task.output_size)
    )


class MultiTaskModel(nn.Module):
    """``heads[t](features_t(x))`` for each task t, with ``features_t`` the trunk's features of
    t (:meth:`Trunk.task_features`; each trunk runs once per batch).

    Without ``groups`` every task reads ``trunk``. With ``groups`` (group name -> its tasks, a
    partition of the tasks) each group gets its own copy of ``trunk`` restricted to its tasks
    (``trunks.<group>``, :meth:`Trunk.for_tasks`), and a task's head reads its group's trunk.
    """

    trunk: Trunk

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
            self.trunks = nn.ModuleDict({g: trunk.for_tasks(ts) for g, ts in self.groups.items()})
        self.heads = nn.ModuleDict(
            {
                name: make_head(trunk.out_features, task, head_hidden)
                for name, task in self.tasks.items()
            }
        )
        self._roles: dict[str, Role] | None = None

    def forward(
        self, x: torch.Tensor, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        names = list(self.tasks if tasks is None else tasks)
        if self.groups is None:
            features = self.trunk.task_features(x, names)
        else:
            features = {}
            by_group: dict[str, list[str]] = {}
            for name in names:
                by_group.setdefault(self.task_group[name], []).append(name)
            for group, members in by_group.items():
                features.update(self.group_trunk(group).task_features(x, members))
        return {name: self.heads[name](features[name]) for name in names}

    def group_trunk(self, group: str) -> Trunk:
        """The trunk of task group ``group`` (a grouped model)."""
        trunk = self.trunks[group]
        assert isinstance(trunk, Trunk)
        return trunk

    # ------------------------------------------------------------------------------- roles
    def roles(self) -> dict[str, Role]:
        """State key -> its role (module docstring): the trunk's declared roles (a group's trunk:
        its shared parameters are the group's), every head parameter its task's."""
        if self._roles is None:
            roles: dict[str, Role] = {}
            if self.groups is None:
                roles.update({TRUNK_PREFIX + k: r for k, r in self.trunk.roles().items()})
            else:
                for group in self.trunks:
                    for key, role in self.group_trunk(group).roles().items():
                        kind = group_role(group) if role == SHARED else role
                        roles[f"{GROUP_TRUNKS_PREFIX}{group}.{key}"] = kind
            for task, head in self.heads.items():
                roles.update(
                    {f"{HEADS_PREFIX}{task}.{k}": task_role(task) for k in head.state_dict()}
                )
            missing = set(self.state_dict()) - set(roles)
            if missing:
                raise ValueError(f"the trunk declares no role for {sorted(missing)}")
            self._roles = roles
        return self._roles

    def shared_parameters(self, tasks: Iterable[str]) -> dict[str, nn.Parameter]:
        """State key -> parameter of the shared parameters ``tasks`` use (roles ``shared``, and
        ``group`` of their groups): the trunk(s) of hard sharing."""
        roles = self.roles()
        if self.groups is None:
            return {
                TRUNK_PREFIX + n: p
                for n, p in self.trunk.named_parameters()
                if roles[TRUNK_PREFIX + n] == SHARED
            }
        used = dict.fromkeys(self.task_group[t] for t in tasks)
        return {
            f"{GROUP_TRUNKS_PREFIX}{g}.{n}": p
            for g in used
            for n, p in self.trunks[g].named_parameters()
            if roles[f"{GROUP_TRUNKS_PREFIX}{g}.{n}"].is_shared
        }

    def task_parameters(self, task: str) -> dict[str, nn.Parameter]:
        """State key -> parameter of the parameters only ``task`` uses (role ``task``): its
        trunk parameters (gates, attention modules, own experts), then its head."""
        roles = self.roles()
        own = task_role(task)
        return {n: p for n, p in self.named_parameters() if roles[n] == own}

    def local_parameters(self) -> dict[str, nn.Parameter]:
        """State key -> parameter of the parameters of role ``local`` (each silo keeps its own;
        they train with the rest)."""
        roles = self.roles()
        return {n: p for n, p in self.named_parameters() if roles[n] == LOCAL}

    def exchanged_keys(self) -> list[str]:
        """The state entries that travel between server and silos: floating-point parameters and
        buffers of every role but ``local``. Integer buffers (e.g. BatchNorm's
        ``num_batches_tracked``) stay on the silo too."""
        roles = self.roles()
        return [
            k for k, v in self.state_dict().items() if v.is_floating_point() and roles[k] != LOCAL
        ]

    def local_keys(self) -> list[str]:
        """The state entries of role ``local`` (each silo keeps its own)."""
        return [k for k, r in self.roles().items() if r == LOCAL]

    def trunk_keys(self) -> list[str]:
        """The keys of the shared parameters (roles ``shared`` and ``group``)."""
        return [k for k, r in self.roles().items() if r.is_shared]

    def head_keys(self, task: str) -> list[str]:
        """The keys of ``task``'s own parameters (role ``task``: its head and trunk parts)."""
        own = task_role(task)
        return [k for k, r in self.roles().items() if r == own]


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
