"""The server's global model between rounds: its arrays and, for a grouped model, its task groups.

Parameter names say what they are (:mod:`fedmtl.core.models`): ``trunk.*`` the one trunk every task
shares, ``trunks.<group>.*`` the trunk of one task group, ``heads.<task>.*`` one task's head. The
groups travel with the arrays because they give the model its structure: which trunk serves which
task, and so which arrays a silo receives and which shares of its update it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fedmtl.core.models import head_task, is_trunk_key, trunk_group
from fedmtl.core.records import Arrays, Groups


@dataclass(frozen=True)
class GlobalModel:
    """The global arrays and the task groups of their trunks (None: one shared trunk)."""

    arrays: Arrays
    groups: Groups | None = None

    def serves(self, key: str, task: str) -> bool:
        """Whether array ``key`` is (part of) the trunk that task ``task`` uses."""
        group = trunk_group(key)
        if group is None:
            return is_trunk_key(key)
        return self.groups is not None and task in self.groups.get(group, ())

    def trunk(self) -> Arrays:
        """Every trunk array (the shared trunk, or every group's)."""
        return {k: v for k, v in self.arrays.items() if is_trunk_key(k)}

    def keys_for(self, tasks: Iterable[str], heads: bool = True) -> list[str]:
        """The keys a silo holding ``tasks`` works with: the trunk(s) its tasks use and, with
        ``heads``, those tasks' heads; in the model's order."""
        own = set(tasks)
        return [
            k
            for k in self.arrays
            if (heads and head_task(k) in own) or any(self.serves(k, t) for t in own)
        ]

    def with_arrays(self, arrays: Arrays) -> GlobalModel:
        """The same structure with new arrays."""
        return GlobalModel(arrays, self.groups)
