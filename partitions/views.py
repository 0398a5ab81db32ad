"""What a silo trains and evaluates on, and the global held-out test set, as ``LocalData``.

The one place where a partition turns into tensors: the silo's rows and task columns, its hidden
training labels switched off in the mask, and its feature skew applied to the inputs. The
ClientApp, the statistics and the tests all go through here.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from fedmtl.core.data import LocalData, MultiTaskDataset, local_view
from partitions.feature_skew import FEATURE_SKEWS
from partitions.manifest import Partition

_STREAMS = {"train": 0, "test": 1}


def silo_data(
    dataset: MultiTaskDataset,
    partition: Partition,
    silo_id: int,
    split: Literal["train", "test"],
) -> LocalData:
    """Silo ``silo_id``'s ``split`` rows, restricted to its tasks, with its hidden labels masked
    out and its feature skew applied."""
    silo = partition.silos[silo_id]
    view = local_view(dataset, silo.indices(split), silo.tasks)
    skew = FEATURE_SKEWS.get(partition.feature_skew, "partition.feature_skew.name").factory
    return dataclasses.replace(
        view,
        inputs=skew.apply(view.inputs, silo.feature_skew, _STREAMS[split]),
        mask=silo.label_mask(dataset, split),
    )


def global_test_data(dataset: MultiTaskDataset, partition: Partition) -> LocalData:
    """The global held-out test set with every task (no feature skew; labels as in the dataset)."""
    return local_view(dataset, partition.global_test_indices, dataset.task_names)
