"""Datasets: a registry of builders that each return a :class:`~fedmtl.core.data.MultiTaskDataset`.

A builder has the signature ``(params, seed) -> MultiTaskDataset`` and is registered here with its
parameter dataclass. ``configs/dataset/<name>.yaml`` holds ``name`` and values for those parameters,
plus the common key ``tasks`` (a subset of the dataset's tasks, or null for all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry
from fedmtl.datasets.digits import DigitsPairParams, DigitsParams, build_digits, build_digits_pair
from fedmtl.datasets.synthetic import SyntheticParams, build_synthetic

DatasetBuilder = Callable[[Any, int], MultiTaskDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
DATASETS.register("digits", params=DigitsParams)(build_digits)
DATASETS.register("digits_pair", params=DigitsPairParams)(build_digits_pair)
DATASETS.register("synthetic", params=SyntheticParams)(build_synthetic)


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


__all__ = ["DATASETS", "MultiTaskDataset", "build_dataset"]
