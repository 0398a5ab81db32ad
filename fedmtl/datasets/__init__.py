"""Datasets: a registry of builders, each returning a :class:`~fedmtl.core.data.MultiTaskDataset`
or, for tables, a :class:`~fedmtl.datasets.table.TableSource` whose encoding is fitted later on
the training rows.

A builder has the signature ``(params, seed) -> MultiTaskDataset | TableSource`` and is registered
here with its parameter dataclass. ``configs/dataset/<name>.yaml`` holds ``name`` and values for
those parameters, plus the common key ``tasks`` (a subset of the dataset's tasks, or null for all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry
from fedmtl.datasets.celeba import CelebAParams, build_celeba
from fedmtl.datasets.digits import DigitsPairParams, DigitsParams, build_digits, build_digits_pair
from fedmtl.datasets.mmoe_synthetic import MMoESyntheticParams, build_mmoe_synthetic
from fedmtl.datasets.multimnist import MultiMNISTParams, build_multimnist
from fedmtl.datasets.randhie import build_randhie
from fedmtl.datasets.rdata import MaxRowsParams
from fedmtl.datasets.star import build_star
from fedmtl.datasets.synthetic import SyntheticParams, build_synthetic
from fedmtl.datasets.table import TableParams, TableSource, build_table
from fedmtl.datasets.tv16 import TV16Params, build_tv16

Source = MultiTaskDataset | TableSource
DatasetBuilder = Callable[[Any, int], Source]
DATASETS: Registry[DatasetBuilder] = Registry("dataset", entry_points="fedmtl.datasets")
DATASETS.register("celeba", params=CelebAParams)(build_celeba)
DATASETS.register("digits", params=DigitsParams)(build_digits)
DATASETS.register("digits_pair", params=DigitsPairParams)(build_digits_pair)
DATASETS.register("multimnist", params=MultiMNISTParams)(build_multimnist)
DATASETS.register("mmoe_synthetic", params=MMoESyntheticParams)(build_mmoe_synthetic)
DATASETS.register("synthetic", params=SyntheticParams)(build_synthetic)
DATASETS.register("table", params=TableParams)(build_table)
DATASETS.register("star", params=MaxRowsParams)(build_star)
DATASETS.register("tv16", params=TV16Params)(build_tv16)
DATASETS.register("randhie", params=MaxRowsParams)(build_randhie)


def build_source(name: str, params: Any, seed: int) -> Source:
    """What dataset ``name``'s builder returns: a dataset, or a table still to be fitted."""
    return DATASETS.get(name).factory(params, seed)


def materialise(
    source: Source, fit_rows: np.ndarray | None, tasks: list[str] | None = None
) -> MultiTaskDataset:
    """The dataset of ``source`` with only ``tasks`` (all when None), in that order. A table's
    encoding is fitted on ``fit_rows`` (its training rows), which it needs."""
    if isinstance(source, TableSource):
        if fit_rows is None:
            raise ValueError(f"table dataset {source.name!r} needs the training rows to fit on")
        dataset = source.to_dataset(fit_rows)
    else:
        dataset = source
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
                f"unknown task '{task}' for dataset '{dataset.name}'.",
                f"choose from {dataset.task_names}.",
            )
    if len(set(tasks)) != len(tasks):
        raise ConfigError("dataset.tasks", f"lists a task twice: {tasks}.", "list each task once.")
    return dataset.select_tasks(tasks)


def build_dataset(
    name: str, params: Any, seed: int, tasks: list[str] | None = None
) -> MultiTaskDataset:
    """Build dataset ``name`` and keep only ``tasks`` (all when None). Tables are fitted on their
    training rows, which only an experiment knows: build them with
    :func:`fedmtl.app.run.experiment.build_data`."""
    return materialise(build_source(name, params, seed), None, tasks)


__all__ = [
    "DATASETS",
    "MultiTaskDataset",
    "Source",
    "TableSource",
    "build_dataset",
    "build_source",
    "materialise",
]
