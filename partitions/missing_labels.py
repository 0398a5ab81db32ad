"""Labels missing at random inside silos: some training labels of a silo's tasks are withheld.

For silo s and each task t it holds, with rate r_t (``per_task[t]``, else ``rate``), exactly
``round(r_t * n_{s,t})`` of its n_{s,t} labelled training samples are chosen uniformly without
replacement and their label for t is hidden (the sample stays in the silo, unlabelled for t). The
hidden indices are stored in the manifest (``silos[i].hidden_labels``), so a rerun from file is
exact. Test splits keep their labels, so personal evaluation measures the same rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedmtl.core.errors import ConfigError
from partitions.manifest import Silo

if TYPE_CHECKING:
    from fedmtl.core.data import MultiTaskDataset
    from fedmtl.core.schema import MissingLabelsConfig


def hide_labels(
    dataset: MultiTaskDataset,
    silos: Sequence[Silo],
    cfg: MissingLabelsConfig,
    rng: np.random.Generator,
) -> list[Silo]:
    """The silos with ``hidden`` set by the rule of the module docstring (unchanged at rate 0)."""
    unknown = sorted(set(cfg.per_task) - set(dataset.task_names))
    if unknown:
        raise ConfigError(
            "partition.missing_labels.per_task",
            f"names tasks {unknown} that dataset '{dataset.name}' does not have.",
            f"use tasks from {dataset.task_names}.",
        )
    result = []
    for silo in silos:
        hidden = {}
        for position, task in enumerate(silo.tasks):
            rate = cfg.per_task.get(task, cfg.rate)
            if rate <= 0:
                continue
            labelled = silo.train_indices[silo.label_mask(dataset, "train")[:, position].numpy()]
            count = round(rate * len(labelled))
            hidden[task] = np.sort(rng.choice(labelled, size=count, replace=False))
        result.append(dataclasses.replace(silo, hidden=hidden))
    return result
