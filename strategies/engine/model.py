"""The server's global model between rounds: its arrays, the roles of their parameters and, for a
grouped model, its task groups.

Every array has a role (:class:`fedmtl.core.models.Role`, declared by the model): ``shared`` by
every task, of a task ``group``, of one ``task``, or ``local`` (never on the server). The roles
and groups travel with the arrays because they give the model its structure: which arrays a silo
receives (the shared ones its tasks use and its tasks' own), which shares of its update it sends,
and how each array is aggregated (shared: the method's trunk rule; task: over the task's holders).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from fedmtl.core.models import (
    Role,
    Roles,
    group_role,
    grouped_key,
    hard_sharing_roles,
    task_role,
    trunk_group,
)
from fedmtl.core.records import Arrays, Groups


@dataclass(frozen=True)
class GlobalModel:
    """The global arrays, the task groups of their trunks (None: one trunk) and each array's role
    (``roles``; omitted: read from the names of a hard-sharing model,
    :func:`fedmtl.core.models.hard_sharing_roles`)."""

    arrays: Arrays
    groups: Groups | None = None
    roles: Roles = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.roles:
            object.__setattr__(self, "roles", hard_sharing_roles(self.arrays))
        missing = [k for k in self.arrays if k not in self.roles]
        if missing:
            raise ValueError(f"arrays {missing[:3]} have no role")
        local = [k for k in self.arrays if self.roles[k].kind == "local"]
        if local:
            raise ValueError(f"arrays {local[:3]} are local: they never leave the silos")

    def role(self, key: str) -> Role:
        return self.roles[key]

    def serves(self, key: str, task: str) -> bool:
        """Whether array ``key`` is a shared parameter (role ``shared``, or ``group`` of the
        task's group) that task ``task`` uses."""
        role = self.roles[key]
        return role.is_shared and role.used_by(task, self.groups)

    def is_shared(self, key: str) -> bool:
        """Whether array ``key`` is shared by several tasks (the method's trunk rule)."""
        return self.roles[key].is_shared

    def trunk(self) -> Arrays:
        """Every shared array (roles ``shared`` and ``group``: the trunk, or every group's)."""
        return {k: v for k, v in self.arrays.items() if self.roles[k].is_shared}

    def task_keys(self, task: str) -> list[str]:
        """The keys of the arrays only ``task`` uses (its head, its gate, ...), in model order."""
        return [k for k in self.arrays if self.roles[k] == task_role(task)]

    def group_keys(self, group: str) -> list[str]:
        """The keys of the arrays of ``group``'s trunk (role ``group``), in model order."""
        return [k for k in self.arrays if self.roles[k] == group_role(group)]

    def keys_for(self, tasks: Iterable[str], heads: bool = True) -> list[str]:
        """The keys a silo holding ``tasks`` works with: the shared arrays its tasks use and, with
        ``heads``, its tasks' own arrays; in the model's order."""
        own = set(tasks)
        return [
            k
            for k in self.arrays
            if (heads and self.roles[k].kind == "task" and self.roles[k].owner in own)
            or any(self.serves(k, t) for t in own)
        ]

    def with_arrays(self, arrays: Arrays) -> GlobalModel:
        """The same structure with new arrays."""
        return GlobalModel(arrays, self.groups, self.roles)

    def grouped(self, groups: Groups) -> tuple[GlobalModel, dict[str, list[str]]]:
        """The model with one trunk per group (a one-trunk model's ``trunk.*`` arrays: a shared
        one copied into every group's trunk, one of task t moved into t's group's), and for each
        shared array the keys of its copies (to split a server optimizer's state the same way)."""
        if self.groups is not None:
            raise ValueError("the model is grouped already")
        arrays: Arrays = {}
        roles: dict[str, Role] = {}
        copies: dict[str, list[str]] = {}
        moved = {key: grouped_key(key, self.roles[key], groups) for key in self.arrays}
        for key in sorted(self.arrays, key=lambda k: moved[k] != [k]):  # stable: heads first
            role = self.roles[key]
            for new in moved[key]:
                group = trunk_group(new)
                arrays[new] = self.arrays[key] if new == key else self.arrays[key].copy()
                roles[new] = group_role(group) if group is not None and role.is_shared else role
            if role.is_shared:
                copies[key] = moved[key]
        return GlobalModel(arrays, dict(groups), roles), copies
