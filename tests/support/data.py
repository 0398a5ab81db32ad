"""Small data and models: :func:`make_dataset` (the one small-dataset factory), :func:`tiny_dataset`
(its 8-row case with a hand-written label mask), :func:`tiny_view`, :func:`small_model` (always
seeded), and :func:`assignment_params` (a registered assignment made feasible for a federation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedmtl.core.data import LocalData, MultiTaskDataset, local_view
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.trunks import MLPParams, build_model
from partitions import ASSIGNMENTS

TINY_TASKS = (TaskSpec.multiclass("a", 3), TaskSpec.binary("b"), TaskSpec.regression("c"))
# Rows 0..7; row 6 is labelled for no task.
TINY_MASK = torch.tensor(
    [
        [True, True, True],
        [True, False, True],
        [False, True, False],
        [True, True, False],
        [False, False, True],
        [True, True, True],
        [False, False, False],
        [False, True, True],
    ]
)


def make_dataset(
    num_samples: int = 200,
    num_tasks: int = 5,
    label_rate: float = 1.0,
    seed: int = 0,
    name: str = "tiny",
    tasks: Sequence[TaskSpec] | None = None,
    mask: torch.Tensor | None = None,
    input_dim: int = 4,
) -> MultiTaskDataset:
    """A random dataset drawn from its own generator (``seed``). Tasks: ``tasks``, else
    ``num_tasks`` of them, even ones multiclass (3 classes) and odd ones binary. Labelled: ``mask``,
    else each entry with probability ``label_rate``. A natural-id column ``site`` with 12 ids."""
    gen = torch.Generator().manual_seed(seed)
    if tasks is None:
        tasks = [
            TaskSpec.multiclass(f"t{i}", 3) if i % 2 == 0 else TaskSpec.binary(f"t{i}")
            for i in range(num_tasks)
        ]
    targets = {}
    for task in tasks:
        if task.kind == "regression":
            targets[task.name] = torch.randn(num_samples, generator=gen)
        else:
            classes = torch.randint(0, task.num_classes or 2, (num_samples,), generator=gen)
            targets[task.name] = classes.to(task.target_dtype)
    if mask is None:
        mask = torch.rand(num_samples, len(tasks), generator=gen) < label_rate
    return MultiTaskDataset(
        name=name,
        inputs=torch.randn(num_samples, input_dim, generator=gen),
        tasks=tuple(tasks),
        targets=targets,
        mask=mask.clone(),
        natural_ids={"site": np.arange(num_samples) % 12},
    )


def tiny_dataset(seed: int = 0) -> MultiTaskDataset:
    """8 rows of 5 inputs, tasks a (3 classes), b (binary) and c (regression), :data:`TINY_MASK`."""
    return make_dataset(8, tasks=TINY_TASKS, mask=TINY_MASK, input_dim=5, seed=seed)


def tiny_view() -> LocalData:
    """All of :func:`tiny_dataset` as one silo's data."""
    return local_view(tiny_dataset(), np.arange(8), ["a", "b", "c"])


def small_model(
    input_shape: tuple[int, ...],
    tasks: Sequence[TaskSpec],
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> MultiTaskModel:
    """An MLP trunk (16, 8) with one head per task, initialised from ``seed`` (never from the
    global RNG); with ``groups``, one trunk per group."""
    cfg = ModelConfig(name="mlp", params=MLPParams(hidden=[16, 8]))
    return build_model(cfg, input_shape, tasks, seed=seed, groups=groups)


def assignment_params(name: str, task_names: list[str], num_silos: int) -> Any:
    """Default parameters of assignment ``name``, made feasible for this federation."""
    values: dict[str, Any] = {}
    if name == "random_k":
        values = {"k": min(2, len(task_names))}
    if name == "explicit":  # silo i labels task i mod T and every task j with j mod S = i
        values = {
            "tasks": [
                [
                    t
                    for j, t in enumerate(task_names)
                    if j % num_silos == i or j == i % len(task_names)
                ]
                for i in range(num_silos)
            ]
        }
    return ASSIGNMENTS.parse(name, values, "partition.assignment")
