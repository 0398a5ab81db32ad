"""Build an experiment's pieces from its config: dataset, partition, model.

Each process (the ServerApp, every Ray worker, the in-process runtime) builds them once per config
and reuses them across rounds and virtual clients (:func:`cached_experiment`). The partition is a
deterministic function of the config and seed, so every process agrees on every silo.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmtl.config import ExperimentConfig, parse
from fedmtl.data import MultiTaskDataset, build_dataset
from fedmtl.errors import ConfigError
from fedmtl.models import MultiTaskModel, build_model
from partitions import Partition
from partitions import make as make_partition

CONFIG_KEY = "fedmtl-config"
"""The run-config key that carries the composed experiment config (JSON) to both apps."""


@dataclass(frozen=True)
class Experiment:
    """An experiment's config with its dataset and partition, built and checked."""

    config: ExperimentConfig
    dataset: MultiTaskDataset
    partition: Partition

    def new_model(self, groups: Mapping[str, Sequence[str]] | None = None) -> MultiTaskModel:
        """A fresh model initialised from the seed: identical in every process. With ``groups``
        (group -> tasks) it has one trunk per group (see :class:`MultiTaskModel`)."""
        return build_model(
            self.config.model,
            self.dataset.input_shape,
            self.dataset.tasks,
            self.config.seed,
            groups=groups,
        )


def build_data(config: ExperimentConfig) -> tuple[MultiTaskDataset, Partition]:
    """The dataset and its partition (built, or read from ``partition.path``); ConfigErrors only."""
    dataset = build_dataset(
        config.dataset.name, config.dataset.params, config.seed, config.dataset.tasks
    )
    return dataset, make_partition(dataset, config.partition, config.seed)


def prepare(config: ExperimentConfig) -> Experiment:
    """Build and cross-check the dataset, partition and model; every error is a ConfigError.

    Called before any training starts, so that a bad config fails in seconds.
    """
    dataset, partition = build_data(config)
    experiment = Experiment(config=config, dataset=dataset, partition=partition)
    experiment.new_model()  # the model must fit the dataset's inputs (e.g. cnn needs images)
    config.strategy.params.check_experiment(dataset.task_names, config.num_rounds)
    # Simulated runtimes start one node per silo: waiting for more would only time out.
    min_available = config.strategy.params.min_available_nodes
    num_silos = partition.num_silos
    if min_available > num_silos:
        raise ConfigError(
            "strategy.min_available_nodes",
            f"is {min_available} but the partition has only {num_silos} silos.",
            "lower it or raise partition.num_silos.",
        )
    return experiment


@functools.lru_cache(maxsize=4)
def cached_experiment(config_json: str) -> Experiment:
    """The experiment for a JSON config, built once per process."""
    return prepare(parse(json.loads(config_json)))


def config_json_from(run_config: Mapping[str, Any], default: str | None) -> str:
    """The experiment config JSON from a Flower run config, else ``default``."""
    value = run_config.get(CONFIG_KEY, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            CONFIG_KEY,
            "no experiment config reached this app.",
            f"start runs with `fedmtl run`, or set run config '{CONFIG_KEY}' to the config JSON.",
        )
    return value
