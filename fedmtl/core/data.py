"""Data types: the multi-task dataset every dataset builder returns, and one silo's view of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmtl.core.tasks import TaskSpec


@dataclass
class MultiTaskDataset:
    """Inputs with one label column per task and a per-sample task-label mask.

    ``inputs``: (N, *input_shape) float32. ``targets[task]``: (N,) long (multiclass) or float32
    (binary, regression); the value of an unlabelled entry is arbitrary. ``mask``: (N, T) bool,
    ``mask[i, t]`` is True when sample i carries a label for task ``tasks[t]``. ``info`` holds metadata
    written to the run summary (for ``synthetic``: ``planted_groups``). ``natural_ids`` maps an id
    column (writer, school, ...) to an (N,) array, for natural-id partitions.
    """

    name: str
    inputs: torch.Tensor
    tasks: tuple[TaskSpec, ...]
    targets: dict[str, torch.Tensor]
    mask: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    natural_ids: dict[str, np.ndarray] = field(default_factory=dict)

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
        )

    def chance_levels(self) -> dict[str, float]:
        """Per task, the primary metric of the best constant predictor over the labelled samples."""
        return {
            task.name: task.chance_level(self.targets[task.name][self.mask[:, t]])
            for t, task in enumerate(self.tasks)
        }


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
