"""Data types: the multi-task dataset every dataset builder returns, and one silo's view of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmtl.core.tasks import TaskSpec


@dataclass(frozen=True)
class Footprint:
    """The size of a dataset, told by its parameters before it is built, for the memory estimate
    that runs before anything is built (:mod:`fedmtl.app.run.resources`).

    A dataset's parameter dataclass declares it with a method ``footprint(self) -> Footprint``
    (optional: a dataset without one is measured once built). ``rows``, ``input_size`` (the
    product of the input shape) and ``num_tasks`` size the dataset's tensors (:attr:`nbytes`);
    ``building``: the bytes its builder holds besides them while it builds (temporaries);
    ``key``: the config key that drives the size most (what an error names)."""

    rows: int
    input_size: int
    num_tasks: int
    building: int = 0
    key: str = "dataset"

    @property
    def nbytes(self) -> int:
        """Float32 inputs, and per task a label column (8 bytes at most) and a mask column."""
        return self.rows * (4 * self.input_size + 9 * self.num_tasks)


@dataclass
class MultiTaskDataset:
    """Inputs with one label column per task and a per-sample task-label mask.

    ``inputs``: (N, *input_shape) float32. ``targets[task]``: (N,) long (multiclass) or float32
    (binary, regression); the value of an unlabelled entry is arbitrary. ``mask``: (N, T) bool,
    ``mask[i, t]`` is True when sample i carries a label for task ``tasks[t]``. ``info`` holds metadata
    written to the run summary (for ``synthetic``: ``planted_groups``). ``natural_ids`` maps an id
    column (writer, school, ...) to an (N,) array, for natural-id partitions.

    Leakage rules, for datasets whose rows are not independent (see :mod:`partitions.heldout`):
    ``group_column`` names a natural-id column whose rows must stay on one side of every train/test
    split (a student seen in several grades, a person over several years); ``heldout`` (N,) bool
    marks the rows the dataset itself reserves for testing (e.g. composites of held-out digits).
    With either, train and test are decided for the whole dataset before silos are cut.
    """

    name: str
    inputs: torch.Tensor
    tasks: tuple[TaskSpec, ...]
    targets: dict[str, torch.Tensor]
    mask: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    natural_ids: dict[str, np.ndarray] = field(default_factory=dict)
    group_column: str | None = None
    heldout: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: duplicate task names {names}")
        if set(self.targets) != set(names):
            raise ValueError(
                f"dataset {self.name!r}: targets {sorted(self.targets)} != tasks {names}"
            )
        for task in self.tasks:
            column = self.targets[task.name]
            if column.shape != (n,) or column.dtype != task.target_dtype:
                raise ValueError(
                    f"dataset {self.name!r}: targets[{task.name!r}] must be ({n},) {task.target_dtype}"
                )
        if self.mask.shape != (n, len(self.tasks)) or self.mask.dtype != torch.bool:
            raise ValueError(f"dataset {self.name!r}: mask must be ({n}, {len(self.tasks)}) bool")
        for id_column, ids in self.natural_ids.items():
            if len(ids) != n:
                raise ValueError(
                    f"dataset {self.name!r}: natural id {id_column!r} must have {n} rows"
                )
        check_leakage_rule(self.name, n, self.natural_ids, self.group_column, self.heldout)

    @property
    def num_samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        return self.tasks[self.task_names.index(name)]

    def select_tasks(self, names: Sequence[str]) -> MultiTaskDataset:
        """The same samples with only the tasks ``names``, in that order."""
        positions = [self.task_names.index(n) for n in names]
        return MultiTaskDataset(
            name=self.name,
            inputs=self.inputs,
            tasks=tuple(self.tasks[p] for p in positions),
            targets={n: self.targets[n] for n in names},
            mask=self.mask[:, positions],
            info=self.info,
            natural_ids=self.natural_ids,
            group_column=self.group_column,
            heldout=self.heldout,
        )

    def chance_levels(self) -> dict[str, float]:
        """Per task, the primary metric of the best constant predictor over the labelled samples."""
        return {
            task.name: task.chance_level(self.targets[task.name][self.mask[:, t]])
            for t, task in enumerate(self.tasks)
        }


def check_leakage_rule(
    name: str,
    num_rows: int,
    natural_ids: dict[str, np.ndarray],
    group_column: str | None,
    heldout: np.ndarray | None,
) -> None:
    """A dataset's leakage rule is consistent: the group column is one of its natural ids, the
    held-out mask is (N,) bool, and no group has rows on both sides of it."""
    if group_column is not None and group_column not in natural_ids:
        raise ValueError(f"dataset {name!r}: group column {group_column!r} is no natural id")
    if heldout is None:
        return
    if heldout.shape != (num_rows,) or heldout.dtype != np.bool_:
        raise ValueError(f"dataset {name!r}: heldout must be ({num_rows},) bool")
    if group_column is not None:
        groups = natural_ids[group_column]
        if np.intersect1d(groups[heldout], groups[~heldout]).size:
            raise ValueError(f"dataset {name!r}: a {group_column} has held-out and other rows")


@dataclass(frozen=True)
class LocalData:
    """The rows of a dataset that one silo holds, restricted to the silo's tasks."""

    inputs: torch.Tensor
    targets: dict[str, torch.Tensor]
    mask: torch.Tensor
    tasks: tuple[TaskSpec, ...]

    @property
    def num_samples(self) -> int:
        return int(self.inputs.shape[0])

    def labelled_counts(self) -> dict[str, int]:
        return {t.name: int(self.mask[:, i].sum()) for i, t in enumerate(self.tasks)}

    def to(self, device: torch.device) -> LocalData:
        return LocalData(
            inputs=self.inputs.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
            mask=self.mask.to(device),
            tasks=self.tasks,
        )


def local_view(dataset: MultiTaskDataset, indices: np.ndarray, tasks: Sequence[str]) -> LocalData:
    """The rows ``indices`` of ``dataset`` with the label columns of ``tasks`` only."""
    rows = torch.from_numpy(np.array(indices, dtype=np.int64))
    positions = [dataset.task_names.index(t) for t in tasks]
    return LocalData(
        inputs=dataset.inputs[rows],
        targets={t: dataset.targets[t][rows] for t in tasks},
        mask=dataset.mask[rows][:, positions],
        tasks=tuple(dataset.tasks[p] for p in positions),
    )
