"""Sample split: which samples each silo holds.

A plug-in has the signature ``(dataset, num_silos, params, seed) -> indices per silo``: a list of
``num_silos`` 1-D int64 arrays of sample indices, pairwise disjoint, each non-empty. It is
deterministic for a seed. Register one with ``@SPLITS.register("name", params=ParamsDataclass)``;
``configs/partition/*.yaml`` choose it as ``split: {name: ..., <params>}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmtl.errors import ConfigError
from fedmtl.registry import NoParams, Registry

if TYPE_CHECKING:
    from fedmtl.data.base import MultiTaskDataset

SplitFn = Callable[["MultiTaskDataset", int, Any, int], list[np.ndarray]]
SPLITS: Registry[SplitFn] = Registry("partition.split")


def check_enough_samples(num_samples: int, num_silos: int) -> None:
    """A :class:`ConfigError` on ``partition.num_silos`` when some silo would get no sample."""
    if num_silos > num_samples:
        raise ConfigError(
            "partition.num_silos",
            f"{num_silos} silos for only {num_samples} samples: some silo would hold no sample.",
            f"use at most {num_samples} silos, or a larger dataset.",
        )


@SPLITS.register("iid", params=NoParams)
def split_iid(
    dataset: MultiTaskDataset, num_silos: int, params: NoParams, seed: int
) -> list[np.ndarray]:
    """Uniformly random silos of near-equal size (sizes differ by at most one); all samples used.

    The indices are shuffled with ``seed`` and then sharded contiguously by flwr-datasets'
    ``IidPartitioner`` (which itself does not shuffle).
    """
    check_enough_samples(dataset.num_samples, num_silos)
    # Imported here: flwr-datasets (and Hugging Face datasets) take seconds to import.
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    permuted = np.random.default_rng(seed).permutation(dataset.num_samples)
    partitioner = IidPartitioner(num_partitions=num_silos)
    partitioner.dataset = datasets.Dataset.from_dict({"index": permuted})
    return [
        np.asarray(partitioner.load_partition(s).with_format("numpy")["index"], dtype=np.int64)
        for s in range(num_silos)
    ]
