"""Task assignment: which tasks each silo labels.

The assignment is decided once the split has given every silo its rows (and each silo has cut
its train and test rows). A plug-in is one of two kinds:

- a function ``(task_names, num_silos, params, rng) -> tasks per silo``: a list of ``num_silos``
  lists, each holding distinct task names in the order of ``task_names``, decided from the task
  names alone. It draws all its randomness from ``rng``, so it is deterministic for a seed. Every
  silo must get a task (else a :class:`ConfigError`).
- a function ``(task_names, labelled, params) -> [SiloTasks, ...]`` wrapped by
  :func:`from_labels`, decided from the labels the silos' training rows carry: ``labelled[s, t]``
  is the number of silo ``s``'s training rows labelled for task ``task_names[t]`` (before
  ``missing_labels`` hides any). Each :class:`SiloTasks` lists the silo's tasks and the tasks it
  was denied with their counts (recorded in the manifest as the silo's ``dropped_tasks``). A
  silo given no task is left out of the federation (see :func:`partitions.build`).

Register one with ``@ASSIGNMENTS.register("name", params=ParamsDataclass)``;
``configs/partition/*.yaml`` choose it as ``assignment: {name: ..., <params>}``.
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


@dataclass(frozen=True)
class SiloTasks:
    """What an assignment decided from labels gives one silo: ``tasks`` (in dataset order) and
    ``dropped``, the tasks it was denied with its labelled training rows of each."""

    tasks: list[str]
    dropped: dict[str, int] = field(default_factory=dict)


LabelRule = Callable[[list[str], np.ndarray, Any], list[SiloTasks]]


@dataclass(frozen=True)
class FromLabels:
    """An assignment decided from the labels the silos' training rows carry (made by
    :func:`from_labels`); calling it calls ``rule(task_names, labelled, params)``."""

    rule: LabelRule

    def __call__(self, task_names: list[str], labelled: np.ndarray, params: Any) -> list[SiloTasks]:
        return self.rule(task_names, labelled, params)


def from_labels(rule: LabelRule) -> FromLabels:
    """Mark ``rule`` as an assignment decided from the silos' labelled training rows."""
    return FromLabels(rule)


ASSIGNMENTS: Registry[AssignmentFn | FromLabels] = Registry(
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


@dataclass(frozen=True)
class LabelledParams:
    """``min_labelled``: the labelled training rows of a task a silo needs to hold it (below it,
    the task is dropped for that silo and the manifest records the silo's count)."""

    min_labelled: int = 1

    def __post_init__(self) -> None:
        int_at_least(self, "min_labelled", 1)


@ASSIGNMENTS.register("labelled", params=LabelledParams)
@from_labels
def assign_labelled(
    task_names: list[str], labelled: np.ndarray, params: LabelledParams
) -> list[SiloTasks]:
    """Each silo holds exactly the tasks it has labels for: silo s holds
    {t : labelled[s, t] >= min_labelled}, and every other task is dropped for it, recorded with
    labelled[s, t] (0 for a task it never labels). Draws nothing: natural silos that record
    different outcomes (an empty target cell is unlabelled) give different task subsets.

    A task that no silo holds is a :class:`ConfigError` on ``partition.assignment.min_labelled``;
    a silo that holds no task is left out of the federation by :func:`partitions.build`.
    """
    counts = np.asarray(labelled, dtype=np.int64)
    held = counts >= params.min_labelled
    orphans = [t for j, t in enumerate(task_names) if not held[:, j].any()]
    if orphans:
        most = {t: int(counts[:, task_names.index(t)].max(initial=0)) for t in orphans}
        kept = [t for t in task_names if t not in orphans]
        leave_out = f"leave them out (dataset.tasks={kept})" if kept else ""
        lowest = min(most.values())
        if lowest >= 1:
            fix = f"lower partition.assignment.min_labelled to {lowest} or less"
            fix += f", or {leave_out}." if kept else "."
        else:
            fix = "no silo has a single labelled training row of some of them: "
            fix += f"{leave_out}." if kept else "label some rows of the target columns."
        raise ConfigError(
            "partition.assignment.min_labelled",
            f"is {params.min_labelled}, but no silo has that many labelled training rows of "
            f"tasks {orphans} (the most any silo has: {most}).",
            fix,
        )
    return [
        SiloTasks(
            tasks=[t for j, t in enumerate(task_names) if held[s, j]],
            dropped={t: int(counts[s, j]) for j, t in enumerate(task_names) if not held[s, j]},
        )
        for s in range(counts.shape[0])
    ]
