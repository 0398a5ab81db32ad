"""Task assignment: which tasks each silo labels.

A plug-in has the signature ``(task_names, num_silos, params, rng) -> tasks per silo``: a list of
``num_silos`` lists, each holding distinct task names in the order of ``task_names``. It draws all
its randomness from ``rng``, so it is deterministic for a seed. Register one with
``@ASSIGNMENTS.register("name", params=ParamsDataclass)``; ``configs/partition/*.yaml`` choose it as
``assignment: {name: ..., <params>}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmtl.errors import ConfigError
from fedmtl.registry import NoParams, Registry

AssignmentFn = Callable[[list[str], int, Any, np.random.Generator], list[list[str]]]
ASSIGNMENTS: Registry[AssignmentFn] = Registry("partition.assignment")


def in_dataset_order(task_names: list[str], chosen: set[str]) -> list[str]:
    """The tasks of ``chosen``, in the order of ``task_names``."""
    return [t for t in task_names if t in chosen]


@ASSIGNMENTS.register("all", params=NoParams)
def assign_all(
    task_names: list[str], num_silos: int, params: NoParams, rng: np.random.Generator
) -> list[list[str]]:
    """Every silo holds every task (the classic multi-task federation)."""
    return [list(task_names) for _ in range(num_silos)]


@dataclass(frozen=True)
class RandomKParams:
    """``k``: the number of distinct tasks each silo labels."""

    k: int = 2

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(
                "k", f"must be >= 1, got {self.k}.", "give each silo at least 1 task."
            )


@ASSIGNMENTS.register("random_k", params=RandomKParams)
def assign_random_k(
    task_names: list[str], num_silos: int, params: RandomKParams, rng: np.random.Generator
) -> list[list[str]]:
    """Each silo holds ``k`` distinct random tasks, and every task is held by at least one silo.

    Coverage holds by construction: the tasks, shuffled, are dealt round-robin over the silos in a
    shuffled order (so each silo gets at most ``ceil(T / num_silos) <= k`` of them), then each silo
    is filled up to ``k`` distinct tasks drawn uniformly from those it lacks. Needs
    ``1 <= k <= T`` and ``num_silos * k >= T``; otherwise a :class:`ConfigError` before any draw.
    """
    _check_random_k(len(task_names), num_silos, params.k)
    held: list[set[str]] = [set() for _ in range(num_silos)]
    silo_order = rng.permutation(num_silos)
    for position, task in enumerate(rng.permutation(task_names).tolist()):
        held[silo_order[position % num_silos]].add(task)
    for tasks in held:
        missing = [t for t in task_names if t not in tasks]
        extra = rng.choice(len(missing), size=params.k - len(tasks), replace=False)
        tasks.update(missing[i] for i in extra)
    return [in_dataset_order(task_names, tasks) for tasks in held]


def _check_random_k(num_tasks: int, num_silos: int, k: int) -> None:
    if k < 1:
        raise ConfigError(
            "partition.assignment.k", f"must be >= 1, got {k}.", "give each silo at least 1 task."
        )
    if k > num_tasks:
        raise ConfigError(
            "partition.assignment.k",
            f"is {k} but the dataset has only {num_tasks} tasks.",
            f"set k to at most the number of tasks ({num_tasks}).",
        )
    if num_silos * k < num_tasks:
        raise ConfigError(
            "partition.num_silos",
            f"{num_silos} silos x k={k} tasks each cover at most {num_silos * k} of the "
            f"{num_tasks} tasks, so some task would have no silo.",
            f"use num_silos >= {-(-num_tasks // k)} or k >= {-(-num_tasks // num_silos)}.",
        )
