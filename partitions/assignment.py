"""Task assignment: which tasks each silo labels.

A plug-in has the signature ``(task_names, num_silos, params, rng) -> tasks per silo``: a list of
``num_silos`` lists, each holding distinct task names in the order of ``task_names``. It draws all
its randomness from ``rng``, so it is deterministic for a seed. Register one with
``@ASSIGNMENTS.register("name", params=ParamsDataclass)``; ``configs/partition/*.yaml`` choose it as
``assignment: {name: ..., <params>}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmtl.core.checks import fraction, int_at_least, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import NoParams, Registry

AssignmentFn = Callable[[list[str], int, Any, np.random.Generator], list[list[str]]]
ASSIGNMENTS: Registry[AssignmentFn] = Registry(
    "partition.assignment", entry_points="fedmtl.assignments"
)


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

    Coverage holds by construction (:func:`deal_k`). Needs ``1 <= k <= T`` and
    ``num_silos * k >= T``; otherwise a :class:`ConfigError` before any draw.
    """
    _check_random_k(len(task_names), num_silos, params.k)
    return deal_k(task_names, list(task_names), num_silos, params.k, rng)


def deal_k(
    task_names: list[str], required: list[str], num_silos: int, k: int, rng: np.random.Generator
) -> list[list[str]]:
    """``num_silos`` sets of ``k`` distinct tasks that together hold every task of ``required``.

    The required tasks, shuffled, are dealt round-robin over the silos in a shuffled order (so
    each silo gets at most ``ceil(len(required) / num_silos) <= k`` of them), then each silo is
    filled up to ``k`` distinct tasks drawn uniformly from those it lacks. The caller checks
    ``num_silos * k >= len(required)``.
    """
    held: list[set[str]] = [set() for _ in range(num_silos)]
    silo_order = rng.permutation(num_silos)
    for position, task in enumerate(rng.permutation(required).tolist()):
        held[silo_order[position % num_silos]].add(task)
    for tasks in held:
        missing = [t for t in task_names if t not in tasks]
        extra = rng.choice(len(missing), size=k - len(tasks), replace=False)
        tasks.update(missing[i] for i in extra)
    return [in_dataset_order(task_names, tasks) for tasks in held]


def _check_random_k(num_tasks: int, num_silos: int, k: int) -> None:
    _check_k_at_most(k, num_tasks)
    if num_silos * k < num_tasks:
        raise ConfigError(
            "partition.num_silos",
            f"{num_silos} silos x k={k} tasks each cover at most {num_silos * k} of the "
            f"{num_tasks} tasks, so some task would have no silo.",
            f"use num_silos >= {-(-num_tasks // k)} or k >= {-(-num_tasks // num_silos)}.",
        )


def _check_k_at_most(k: int, num_tasks: int) -> None:
    if k > num_tasks:
        raise ConfigError(
            "partition.assignment.k",
            f"is {k} but the dataset has only {num_tasks} tasks.",
            f"set k to at most the number of tasks ({num_tasks}).",
        )


@dataclass(frozen=True)
class DisjointParams:
    """``block_size``: tasks per block (null: ``ceil(T / num_silos)``, so that every silo can get
    a block); ``extra``: tasks from outside its block that each silo also holds (0: none, the
    blocks stay disjoint)."""

    block_size: int | None = None
    extra: int = 0

    def __post_init__(self) -> None:
        if self.block_size is not None:
            int_at_least(self, "block_size", 1)
        int_at_least(self, "extra", 0)


@ASSIGNMENTS.register("disjoint", params=DisjointParams)
def assign_disjoint(
    task_names: list[str], num_silos: int, params: DisjointParams, rng: np.random.Generator
) -> list[list[str]]:
    """One block of tasks per silo: no two silos of different blocks share a task (``extra = 0``).

    The tasks, in dataset order, are cut into ``B = ceil(T / b)`` contiguous blocks of ``b``
    tasks (the last may be smaller), ``b = block_size`` or ``ceil(T / num_silos)``; silo ``i``
    holds block ``i mod B``. With ``num_silos >= T`` and the default, each silo holds one task
    (FMTL-Bench's single-task silos). Needs ``num_silos >= B``. Draws nothing from ``rng``.

    With ``extra = e > 0`` each silo also holds ``e`` tasks from outside its block, taken in turn:
    the r-th silo of a block (silo ``i = block + r B``) adds the outside tasks (in dataset order)
    at positions ``r e .. r e + e - 1``, modulo their number. Once every block has at least
    ``ceil((T - b) / e)`` silos, each task is held with every other task by some silo (with 6 tasks,
    ``block_size=2``, ``extra=1`` and 12 silos: each block's pair on 4 silos, each pair of tasks
    from different blocks on 2). Needs ``e <= T - b``; a larger ``e`` is a :class:`ConfigError`.
    """
    del rng  # deterministic
    num_tasks = len(task_names)
    size = params.block_size or -(-num_tasks // num_silos)
    blocks = [task_names[start : start + size] for start in range(0, num_tasks, size)]
    if len(blocks) > num_silos:
        raise ConfigError(
            "partition.assignment.block_size",
            f"is {size}: {len(blocks)} blocks of the {num_tasks} tasks for {num_silos} silos, "
            "so some task would have no silo.",
            f"use block_size >= {-(-num_tasks // num_silos)} (or null), or more silos.",
        )
    outside_a_block = num_tasks - len(blocks[0])  # the first block is a largest one
    if params.extra > outside_a_block:
        raise ConfigError(
            "partition.assignment.extra",
            f"is {params.extra}, but a block of {len(blocks[0])} tasks has only "
            f"{outside_a_block} tasks outside it.",
            f"use extra <= {outside_a_block}, or smaller blocks.",
        )
    held = []
    for silo in range(num_silos):
        block = blocks[silo % len(blocks)]
        outside = [t for t in task_names if t not in block]
        start = (silo // len(blocks)) * params.extra
        visiting = {outside[(start + j) % len(outside)] for j in range(params.extra)}
        held.append(in_dataset_order(task_names, set(block) | visiting))
    return held


@dataclass(frozen=True)
class DirichletTasksParams:
    """``alpha``: concentration of each silo's task mixture; ``min_share``: the smallest share of
    the mixture for which a silo labels a task."""

    alpha: float = 0.5
    min_share: float = 0.1

    def __post_init__(self) -> None:
        positive(self, "alpha")
        fraction(self, "min_share", allow_one=True)


@ASSIGNMENTS.register("dirichlet", params=DirichletTasksParams)
def assign_dirichlet(
    task_names: list[str], num_silos: int, params: DirichletTasksParams, rng: np.random.Generator
) -> list[list[str]]:
    """Each silo's task mixture pi_s ~ Dir(alpha 1_T); silo s labels {t : pi_{s,t} >= min_share}
    and always its largest-share task.

    Small alpha gives near single-task silos, large alpha silos that label every task (when
    ``min_share <= 1/T``). A task no silo labels goes to the silo with its largest share, so every
    task is held (ties go to the lower silo id).
    """
    shares = rng.dirichlet(np.full(len(task_names), params.alpha), size=num_silos)
    held = shares >= params.min_share
    held[np.arange(num_silos), shares.argmax(axis=1)] = True
    for t in np.flatnonzero(~held.any(axis=0)):
        held[shares[:, t].argmax(), t] = True
    return [[t for j, t in enumerate(task_names) if held[s, j]] for s in range(num_silos)]


@dataclass(frozen=True)
class ExplicitParams:
    """``tasks``: for each silo (in id order), the list of task names it labels."""

    tasks: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError(
                "tasks", "is empty.", "list the tasks of each silo, e.g. [[digit], [parity, ink]]."
            )


@ASSIGNMENTS.register("explicit", params=ExplicitParams)
def assign_explicit(
    task_names: list[str], num_silos: int, params: ExplicitParams, rng: np.random.Generator
) -> list[list[str]]:
    """Silo ``i`` labels exactly ``tasks[i]`` (put in dataset order); draws nothing."""
    del rng  # deterministic
    key = "partition.assignment.tasks"
    if len(params.tasks) != num_silos:
        raise ConfigError(
            key,
            f"lists {len(params.tasks)} silos but partition.num_silos is {num_silos}.",
            f"give one task list per silo, or set partition.num_silos={len(params.tasks)}.",
        )
    for silo_id, tasks in enumerate(params.tasks):
        unknown = [t for t in tasks if t not in task_names]
        if unknown or len(set(tasks)) != len(tasks):
            raise ConfigError(
                f"{key}[{silo_id}]",
                f"{tasks} has unknown or repeated tasks.",
                f"use distinct tasks from {task_names}.",
            )
    return [in_dataset_order(task_names, set(tasks)) for tasks in params.tasks]


@dataclass(frozen=True)
class MixedParams:
    """``single_task_fraction``: share of silos that label one task; ``k``: tasks of each other
    silo (null: all)."""

    single_task_fraction: float = 0.5
    k: int | None = None

    def __post_init__(self) -> None:
        fraction(self, "single_task_fraction", allow_one=True)
        if self.k is not None:
            int_at_least(self, "k", 1)


@ASSIGNMENTS.register("mixed", params=MixedParams)
def assign_mixed(
    task_names: list[str], num_silos: int, params: MixedParams, rng: np.random.Generator
) -> list[list[str]]:
    """Single-task and multi-task silos side by side (FMTL-Bench's mixed scenario).

    The first ``m = round(single_task_fraction * num_silos)`` silos are single-task: they are
    dealt the tasks of a random permutation in turn (silo i gets task ``perm[i mod T]``). The
    other silos each hold ``k`` tasks (all when ``k`` is null), with the tasks no single-task
    silo holds dealt to them first (:func:`deal_k`), so every task is held.
    """
    num_tasks = len(task_names)
    k = num_tasks if params.k is None else params.k
    _check_k_at_most(k, num_tasks)
    num_single = round(params.single_task_fraction * num_silos)
    order = rng.permutation(task_names).tolist()
    single = [[order[i % num_tasks]] for i in range(num_single)]
    uncovered = [t for t in task_names if t not in order[:num_single]]
    num_multi = num_silos - num_single
    if num_multi * k < len(uncovered):
        raise ConfigError(
            "partition.assignment.single_task_fraction",
            f"leaves {num_multi} multi-task silos with k={k} for {len(uncovered)} tasks that no "
            "single-task silo holds.",
            "lower single_task_fraction, raise k, or use more silos.",
        )
    multi = deal_k(task_names, uncovered, num_multi, k, rng) if num_multi else []
    return [in_dataset_order(task_names, set(tasks)) for tasks in single] + multi
