"""Datasets: a registry of builders that each return a :class:`MultiTaskDataset`.

A builder has the signature ``(params, seed) -> MultiTaskDataset`` and is registered with its parameter
dataclass: ``@DATASETS.register("digits", params=DigitsParams)``. ``configs/dataset/<name>.yaml`` holds
``name`` and values for those parameters, plus the common key ``tasks`` (a subset of the dataset's
tasks, or null for all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedmtl.data.base import MultiTaskDataset
from fedmtl.errors import ConfigError
from fedmtl.registry import Registry

DatasetBuilder = Callable[[Any, int], MultiTaskDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def build_dataset(
    name: str, params: Any, seed: int, tasks: list[str] | None = None
) -> MultiTaskDataset:
    """Build dataset ``name`` and keep only ``tasks`` (all when None), in that order."""
    dataset = DATASETS.get(name).factory(params, seed)
    if tasks is None:
        return dataset
    if not tasks:
        raise ConfigError(
            "dataset.tasks", "is empty.", "list at least one task or use null for all."
        )
    for task in tasks:
        if task not in dataset.task_names:
            raise ConfigError(
                "dataset.tasks",
                f"unknown task '{task}' for dataset '{name}'.",
                f"choose from {dataset.task_names}.",
            )
    if len(set(tasks)) != len(tasks):
        raise ConfigError("dataset.tasks", f"lists a task twice: {tasks}.", "list each task once.")
    return dataset.select_tasks(tasks)


# Registration happens on import of each dataset module.
from fedmtl.data import digits, synthetic  # noqa: E402, F401

__all__ = ["DATASETS", "MultiTaskDataset", "build_dataset"]
