"""Experiment assembly: the one place where a config meets the plug-ins.

:func:`prepare` builds and cross-checks an experiment's dataset, partition and model, and the
:class:`Experiment` it returns wires the plug-ins for both apps: the ServerApp gets its method, its
engine and the global test set from it, the ClientApp a silo's data view.

Each process (the ServerApp, every Ray worker, the in-process runtime) builds an experiment once per
config and reuses it across rounds and virtual clients (:func:`cached_experiment`). The partition is
a deterministic function of the config and seed, so every process agrees on every silo. On the
simulation runtime the workers adopt the driver's experiment instead (:func:`adopt`, fetched from
Ray's object store once per worker process).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedmtl.app.run.config import parse
from fedmtl.app.run.resources import check_data_memory, check_run_memory, check_silos_fit_rows
from fedmtl.core.data import LocalData, MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import SiloInfo
from fedmtl.core.schema import ExperimentConfig, PartitionFile, PartitionLocal
from fedmtl.datasets import TableSource, build_source, materialise
from fedmtl.faults import Fault, build_fault, silos_of
from fedmtl.trunks import build_model
from partitions import Partition, hold_out
from partitions import build as build_partition
from partitions.views import global_test_data, silo_data
from strategies import METHODS
from strategies.engine import (
    SYSTEMS,
    Engine,
    Method,
    MethodSetup,
    PrivacyParams,
    RecordLedger,
    RunContext,
    SystemParams,
    VirtualClock,
    adaptive_noise,
    private_aggregation,
    refusal,
    silo_dp_sgd,
    silo_noise,
)

CONFIG_KEY = "fedmtl-config"
"""The run-config key that carries the composed experiment config (JSON) to both apps."""


@dataclass(frozen=True)
class Experiment:
    """An experiment's config with its dataset and partition, built and checked."""

    config: ExperimentConfig
    dataset: MultiTaskDataset
    partition: Partition

    @property
    def num_silos(self) -> int:
        """The silos the run expects: a local partition's configured number (the silos bring
        their own rows), else the partition's."""
        part = self.config.partition
        return part.num_silos if isinstance(part, PartitionLocal) else self.partition.num_silos

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

    def new_method(self) -> Method[Any]:
        """The configured method's server half, in its initial state."""
        cfg = self.config
        setup = MethodSetup(tuple(self.dataset.tasks), cfg.train, cfg.seed)
        return METHODS.get(cfg.strategy.name).factory(cfg.strategy.params, setup)

    def new_engine(self, context: RunContext) -> Engine:
        """An engine running the configured method in ``context``."""
        cfg = self.config
        privacy = cfg.privacy.params
        private = private_aggregation(privacy, cfg.num_rounds, self.num_silos, cfg.seed)
        ledger = (
            RecordLedger(privacy, cfg.train, cfg.num_rounds) if privacy.dp == "record" else None
        )
        method = self.new_method()
        clock = self.new_clock()
        params = cfg.strategy.params
        return Engine(cfg.strategy.name, method, params, context, private, ledger, clock)

    def new_clock(self) -> VirtualClock:
        """The run's virtual clock (config group ``system``), at time 0; its trace file read."""
        cfg = self.config
        build = SYSTEMS.get(cfg.system.name).factory
        clock: VirtualClock = build(cfg.system.params, cfg.seed, self.num_silos)
        return clock

    @property
    def method_label(self) -> str:
        """The name results report for the configured method (``summary.json``'s ``strategy``)."""
        return str(self.config.strategy.params.label(self.config.strategy.name))

    @functools.cached_property
    def faulty_silos(self) -> tuple[int, ...]:
        """The silos the configured fault turns faulty (:mod:`fedmtl.faults`; none when honest)."""
        fault = self.config.fault
        return tuple(silos_of(fault.name, fault.params, self.num_silos, self.config.seed))

    def silo_fault(self, silo_id: int) -> Fault | None:
        """The fault silo ``silo_id`` applies, or None for an honest silo."""
        if silo_id not in self.faulty_silos:
            return None
        return build_fault(self.config.fault.name, self.config.fault.params)

    def fault_summary(self) -> dict[str, Any] | None:
        """``summary.json``'s ``fault``: the fault, its parameters and the faulty silos (null
        when honest)."""
        if not self.faulty_silos and self.config.fault.name == "none":
            return None
        return {**self.config.fault.to_dict(), "silos": list(self.faulty_silos)}

    def silo_data(self, silo_id: int, split: Literal["train", "test"]) -> LocalData:
        """Silo ``silo_id``'s rows of ``split`` as it trains or evaluates on them (its tasks, its
        hidden labels masked, its feature skew applied)."""
        return silo_data(self.dataset, self.partition, silo_id, split)

    def global_test_data(self) -> LocalData:
        """The partition's global held-out test set, every task."""
        return global_test_data(self.dataset, self.partition)

    def silo_info(self, silo_id: int) -> SiloInfo:
        """What the node holding silo ``silo_id`` tells the server about it."""
        silo = self.partition.silos[silo_id]
        return SiloInfo(
            silo_id=silo_id,
            tasks=silo.tasks,
            num_train=silo.num_train,
            num_test=silo.num_test,
            train_per_task=silo.labelled_counts(self.dataset, "train"),
            test_per_task=silo.labelled_counts(self.dataset, "test"),
        )


def build_data(config: ExperimentConfig) -> tuple[MultiTaskDataset, Partition]:
    """The dataset and its partition (built, or read from ``partition.path``); ConfigErrors only.

    Under a leakage rule (grouped rows, the dataset's own held-out rows, or a table whose encoding
    is fitted on training rows) train and test are decided for the whole dataset first
    (:func:`partitions.hold_out`), a table is fitted on the training rows, and then the silos are
    cut. A partition read from a manifest gives the training rows itself."""
    check_data_memory(config)  # from the config alone, before anything is built
    source = build_source(config.dataset.name, config.dataset.params, config.seed)
    tasks = config.dataset.tasks
    part = config.partition
    if isinstance(part, PartitionLocal):
        return _local_data(config, source)
    if isinstance(source, TableSource) and source.num_samples == 0:
        raise ConfigError(
            "dataset.path",
            "is required: only partition=local runs without rows (the silos hold them).",
            "set dataset.path=FILE, or use partition=local in a deployment.",
        )
    if isinstance(part, PartitionFile):
        partition = Partition.load(part.path)
        dataset = materialise(source, partition.train_rows(), tasks)
        partition.validate_against(dataset, key="partition.path")
        return dataset, partition
    held_out = hold_out(
        source.num_samples,
        source.natural_ids,
        source.group_column,
        source.heldout,
        part.test_fraction,
        part.global_test_fraction,
        config.seed,
        fitted=isinstance(source, TableSource),
        validation_fraction=part.validation_fraction,
    )
    dataset = materialise(source, None if held_out is None else held_out.train_rows(), tasks)
    check_silos_fit_rows(config, dataset.num_samples)
    return dataset, build_partition(dataset, part, config.seed, held_out)


def _local_data(
    config: ExperimentConfig, source: MultiTaskDataset | TableSource
) -> tuple[MultiTaskDataset, Partition]:
    """``partition=local``: the silos hold the rows, so here the dataset has none (its tasks and
    input shape come from the shared feature schema) and the partition has no silos."""
    if not (isinstance(source, TableSource) and source.num_samples == 0 and source.schema):
        raise ConfigError(
            "partition",
            "is local (each silo brings its own rows), which needs dataset=table with a shared "
            "schema and no dataset.path.",
            "set dataset=table dataset.schema=SCHEMA.json and leave dataset.path null.",
        )
    dataset = materialise(source, np.zeros(0, np.int64), config.dataset.tasks)
    partition = Partition(
        dataset=dataset.name, seed=config.seed, task_names=tuple(dataset.task_names), silos=()
    )
    return dataset, partition


def is_local(config: ExperimentConfig) -> bool:
    """Whether the silos bring their own rows (``partition=local``)."""
    return isinstance(config.partition, PartitionLocal)


def named_files(config: ExperimentConfig) -> list[str]:
    """The config keys that name a file to read (a table, a schema file, a partition manifest).

    A ClientApp never opens a file that the server's run config names: a silo's files come from
    its own node config (:mod:`fedmtl.app.silo.node`)."""
    keys = [
        f"dataset.{name}"
        for name in ("path", "schema")
        if isinstance(getattr(config.dataset.params, name, None), str)
    ]
    if isinstance(config.partition, PartitionFile):
        keys.append("partition.path")
    return keys


def prepare(config: ExperimentConfig) -> Experiment:
    """Build and cross-check the dataset, partition and model; every error is a ConfigError.

    Called before any training starts, so that a bad config fails in seconds.
    """
    dataset, partition = build_data(config)
    experiment = Experiment(config=config, dataset=dataset, partition=partition)
    check_strategy(config, dataset.task_names, experiment.num_silos)
    method = experiment.new_method()  # a method may refuse the experiment when it is built
    check_run_memory(config, dataset, experiment.num_silos, method.initial_groups())
    experiment.new_model()  # the model must fit the dataset's inputs (e.g. cnn needs images)
    rows = [silo.num_train for silo in partition.silos]
    check_privacy(config, method, experiment.num_silos, rows)
    check_system(config, experiment.num_silos)
    experiment.new_clock()  # a missing or malformed trace file fails here
    return experiment


def check_system(config: ExperimentConfig, num_silos: int) -> None:
    """A system other than the ideal one needs rounds the clock can time: not SecAgg+'s stages;
    buffered aggregation needs no privacy mode (their sums and noise are per round) and a buffer
    the federation can fill."""
    system: SystemParams = config.system.params
    if system.mode == "buffered" and config.privacy.params.mode != "none":
        raise ConfigError(
            "system.mode",
            f"is 'buffered', which aggregates updates sent at different rounds, but "
            f"privacy={config.privacy.name} sums and noises each round's updates together.",
            "use system.mode=sync with a privacy mode, or privacy=none.",
        )
    if system.mode == "buffered" and (system.buffer_size or 0) > num_silos:
        raise ConfigError(
            "system.buffer_size",
            f"is {system.buffer_size}, more updates than the run's {num_silos} silos can send.",
            f"use at most {num_silos}.",
        )
    if config.privacy.params.secure and system != SystemParams():
        raise ConfigError(
            "system",
            f"'{config.system.name}' needs rounds timed by the virtual clock, but SecAgg+ "
            "(privacy.secure_aggregation) exchanges its own stages, which the clock does not time.",
            "use system=ideal with secure aggregation, or privacy=none or dp_silo.",
        )


def check_privacy(
    config: ExperimentConfig, method: Method[Any], num_silos: int, silo_rows: Sequence[int] = ()
) -> None:
    """The privacy mode against the method and the federation (:func:`strategies.engine.refusal`);
    with record-level DP, ``silo_rows`` (the silos' training rows) calibrate DP-SGD's noise."""
    privacy: PrivacyParams = config.privacy.params
    privacy.check_silos(num_silos)
    label = str(config.strategy.params.label(config.strategy.name))
    refused = refusal(label, method, config.strategy.params, privacy)
    if refused is not None:
        raise refused
    rows = [count for count in silo_rows if count > 0]
    if privacy.dp == "record" and rows:  # an impossible target fails here (the smallest silo's
        silo_dp_sgd(privacy, config.train, config.num_rounds, min(rows))  # rate is the highest)
    if privacy.dp == "silo":  # an impossible target or count noise fails here
        sigma, _ = silo_noise(privacy, config.num_rounds, num_silos)
        params = config.strategy.params
        sampled = max(
            min(params.min_train_nodes, num_silos), round(params.fraction_train * num_silos)
        )
        adaptive_noise(privacy, sigma, sampled)


def check_strategy(config: ExperimentConfig, task_names: Sequence[str], num_silos: int) -> None:
    """The strategy's own checks against the dataset's tasks and the number of silos."""
    config.strategy.params.check_experiment(task_names, config.num_rounds)
    # The run has num_silos silos (a simulation starts one node per silo): waiting for more
    # would only time out, and asking for more replies than silos is a mistake in the config.
    params = config.strategy.params
    for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
        value = getattr(params, name)
        if value > num_silos:
            raise ConfigError(
                f"strategy.{name}",
                f"is {value} but the partition has only {num_silos} silos.",
                "lower it, or use more silos (partition.num_silos; null with natural_id: one "
                "per id).",
            )


_ADOPTED: dict[str, Experiment] = {}


def cached_experiment(config_json: str) -> Experiment:
    """The experiment for a JSON config, built once per process (or adopted, :func:`adopt`)."""
    adopted = _ADOPTED.get(config_json)
    return adopted if adopted is not None else _built_experiment(config_json)


@functools.lru_cache(maxsize=4)
def _built_experiment(config_json: str) -> Experiment:
    return prepare(parse(json.loads(config_json)))


def adopt(config_json: str, experiment: Experiment) -> None:
    """Use ``experiment`` (built by another process from the same config, e.g. the simulation's
    driver) for ``config_json`` in this process instead of building it again."""
    if config_json not in _ADOPTED:
        if experiment.config.to_json() != config_json:
            raise ValueError("the experiment adopted was built from another config")
        _ADOPTED[config_json] = experiment


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
