"""A silo's own side of a deployment: its SuperNode's node config, its rows and its limits.

A SuperNode's node config (``flower-supernode --node-config '...'``) says where the silo's rows come
from and how much work the server may ask of it. The server never names a file: a silo reads only
the files its own node config names.

=================== ==========================================================================
node config key     meaning
=================== ==========================================================================
``data-file``       the silo's own table on this node (``.csv`` or ``.parquet``), encoded with the
                    run's shared feature schema; needs a run with ``partition=local``
``silo-id``         with ``data-file``: the silo's id, unique in the federation (orders
                    aggregation, seeds its batches and its train/test cut)
``tasks``           with ``data-file``: the tasks it labels, comma-separated (default: the run's
                    tasks whose target column has a non-empty cell in its table)
``partition-id``    demos without ``data-file``: silo ``partition-id`` of the run's own partition of
                    a registry dataset, rebuilt from the seed (Flower's simulation sets it)
``max-local-epochs`` the most epochs of any local training pass one train message may ask for
                    (the local epochs, FedRep's head epochs, ...)
                    (default 50)
``max-local-steps`` the most optimizer steps one local training pass may take, whether the server
                    caps the steps or asks for whole epochs (default 50000)
``max-batch-size``  the largest batch size the server may ask for (default 4096)
``state-dir``       where the silo saves what it keeps between rounds (personal heads or models),
                    so that a resumed run finds it (default: memory only)
=================== ==========================================================================

The silo announces its tasks and example counts in its ``query`` reply; together with its rows they
are fixed for the run (:attr:`SiloData.fingerprint`: the ClientApp refuses to go on when they
change during a run).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmtl.app.run.experiment import Experiment
from fedmtl.core.data import LocalData, local_view
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import SiloInfo, TrainRequest
from fedmtl.core.schema import PartitionLocal
from fedmtl.datasets.table import (
    TableParams,
    read_table,
    schema_targets,
    table_schema,
    table_source,
)
from partitions import hold_out

DATA_FILE = "data-file"
SILO_ID = "silo-id"
TASKS = "tasks"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
MAX_LOCAL_EPOCHS = "max-local-epochs"
MAX_LOCAL_STEPS = "max-local-steps"
MAX_BATCH_SIZE = "max-batch-size"
STATE_DIR = "state-dir"
KNOWN_KEYS = (
    STATE_DIR,
    DATA_FILE,
    SILO_ID,
    TASKS,
    PARTITION_ID,
    NUM_PARTITIONS,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_BATCH_SIZE,
)
"""The node config keys fedmtl reads (``num-partitions`` is Flower's own, set in simulation)."""


class RequestRefused(Exception):
    """A value the server sent that the silo does not accept. Its message names only what the
    server sent and the silo's own limits, never anything about the silo's files."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds on the work one train message may ask of this silo (node config)."""

    max_local_epochs: int = 50
    max_local_steps: int = 50_000
    max_batch_size: int = 4096

    def check(self, request: TrainRequest, phases: Mapping[str, int], num_train: int) -> None:
        """Refuse a train request beyond these bounds, before any work; ``phases``: the epochs of
        each local training pass the request's method runs, by name (``local-epochs``, FedRep's
        ``head-epochs``, ...)."""
        train = request.train
        checks = [
            ("batch-size", train.batch_size, self.max_batch_size, MAX_BATCH_SIZE),
            ("max-steps", train.max_steps or 0, self.max_local_steps, MAX_LOCAL_STEPS),
        ]
        checks += [(n, e, self.max_local_epochs, MAX_LOCAL_EPOCHS) for n, e in phases.items()]
        for name, value, limit, key in checks:
            if value > limit:
                raise RequestRefused(f"{name} {value} exceeds this silo's {key} ({limit})")
        batches = math.ceil(num_train / train.batch_size)
        for epochs in phases.values():
            steps = epochs * batches
            if train.max_steps is not None:
                steps = min(steps, train.max_steps)
            if steps > self.max_local_steps:
                raise RequestRefused(
                    f"{epochs} epochs of batch-size {train.batch_size} take {steps} steps here, "
                    f"more than this silo's {MAX_LOCAL_STEPS} ({self.max_local_steps})"
                )


@dataclass(frozen=True)
class NodeSettings:
    """A SuperNode's node config, checked: where its silo's rows come from, and its limits."""

    data_file: str | None = None
    silo_id: int | None = None
    tasks: tuple[str, ...] | None = None
    partition_id: int | None = None
    limits: Limits = field(default_factory=Limits)
    state_dir: str | None = None
    unknown: tuple[str, ...] = ()


def _key(name: str) -> str:
    return f"node_config.{name}"


def _integer(node_config: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = node_config.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            _key(name),
            f"must be an integer >= {minimum}, got {value!r}.",
            f"set e.g. --node-config '{name}={max(minimum, 1)}'.",
        )
    return value


def node_settings(node_config: Mapping[str, Any]) -> NodeSettings:
    """Check a SuperNode's node config (ConfigErrors name ``node_config.<key>``)."""
    data_file = node_config.get(DATA_FILE)
    if data_file is not None and (not isinstance(data_file, str) or not data_file.strip()):
        raise ConfigError(
            _key(DATA_FILE),
            f"must be the path of a table, got {data_file!r}.",
            f"set --node-config '{DATA_FILE}=\"/data/silo.csv\"'.",
        )
    silo_id = _integer(node_config, SILO_ID, 0)
    partition_id = _integer(node_config, PARTITION_ID, 0)
    state_dir = node_config.get(STATE_DIR)
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir.strip()):
        raise ConfigError(
            _key(STATE_DIR),
            f"must be a directory path, got {state_dir!r}.",
            f"set --node-config '{STATE_DIR}=\"/var/lib/fedmtl\"'.",
        )
    raw_tasks = node_config.get(TASKS)
    tasks = None
    if raw_tasks is not None:
        names = [t.strip() for t in raw_tasks.split(",")] if isinstance(raw_tasks, str) else []
        if not names or not all(names) or len(set(names)) != len(names):
            raise ConfigError(
                _key(TASKS),
                f"must list distinct task names separated by commas, got {raw_tasks!r}.",
                f"set e.g. --node-config '{TASKS}=\"price,sold\"'.",
            )
        tasks = tuple(names)
    if data_file is None:
        for name, value in ((SILO_ID, silo_id), (TASKS, tasks)):
            if value is not None:
                raise ConfigError(
                    _key(name),
                    f"applies to a silo with its own table, but {DATA_FILE} is not set.",
                    f"set {DATA_FILE}, or drop {name}.",
                )
        if partition_id is None:
            raise ConfigError(
                _key(DATA_FILE),
                f"is not set, and neither is {PARTITION_ID}: the node names no data.",
                f'set {DATA_FILE}="..." and {SILO_ID}=N (its own table), or {PARTITION_ID}=N '
                "(a demo silo of a registry dataset).",
            )
    elif silo_id is None:
        raise ConfigError(
            _key(SILO_ID),
            "is required with data-file: every silo of the federation needs a distinct id.",
            f"set e.g. --node-config '{SILO_ID}=0'.",
        )
    defaults = Limits()
    limits = Limits(
        max_local_epochs=_integer(node_config, MAX_LOCAL_EPOCHS, 1) or defaults.max_local_epochs,
        max_local_steps=_integer(node_config, MAX_LOCAL_STEPS, 1) or defaults.max_local_steps,
        max_batch_size=_integer(node_config, MAX_BATCH_SIZE, 1) or defaults.max_batch_size,
    )
    return NodeSettings(
        data_file=data_file,
        silo_id=silo_id,
        tasks=tasks,
        partition_id=partition_id,
        limits=limits,
        state_dir=state_dir,
        unknown=tuple(sorted(k for k in node_config if k not in KNOWN_KEYS)),
    )


@dataclass(frozen=True)
class SiloData:
    """A silo's rows as it trains and evaluates on them, what it announces about them, and a
    fingerprint of both (they must not change during a run)."""

    info: SiloInfo
    train: LocalData
    test: LocalData
    fingerprint: str

    @property
    def silo_id(self) -> int:
        return self.info.silo_id


def load_silo(experiment: Experiment, node: NodeSettings) -> SiloData:
    """The silo a node holds: its own table (``data-file``) or a silo of the run's partition."""
    local = isinstance(experiment.config.partition, PartitionLocal)
    if node.data_file is not None:
        if not local:
            raise ConfigError(
                _key(DATA_FILE),
                "names this silo's own table, but the run's experiment does not use "
                "partition=local (it builds its own partition).",
                "join runs of a partition=local experiment, or use partition-id for demos.",
            )
        assert node.silo_id is not None  # checked by node_settings
        return table_silo(experiment, node.data_file, node.silo_id, node.tasks)
    if local:
        raise ConfigError(
            _key(DATA_FILE),
            "is not set, but the run's experiment uses partition=local: each silo brings its "
            "own table.",
            f"set --node-config '{DATA_FILE}=\"...\" {SILO_ID}=N'.",
        )
    assert node.partition_id is not None  # checked by node_settings
    return partition_silo(experiment, node.partition_id)


def partition_silo(experiment: Experiment, silo_id: int) -> SiloData:
    """Silo ``silo_id`` of the experiment's own partition (demos and simulations)."""
    num_silos = experiment.partition.num_silos
    if not 0 <= silo_id < num_silos:
        raise ConfigError(
            _key(PARTITION_ID),
            f"must be a silo id in [0, {num_silos}), got {silo_id}.",
            "give each node a distinct partition-id below the run's partition.num_silos.",
        )
    info = experiment.silo_info(silo_id)
    return SiloData(
        info=info,
        train=experiment.silo_data(silo_id, "train"),
        test=experiment.silo_data(silo_id, "test"),
        fingerprint=_digest(json.dumps(info.__dict__, sort_keys=True).encode()),
    )


def table_silo(
    experiment: Experiment, data_file: str, silo_id: int, tasks: tuple[str, ...] | None = None
) -> SiloData:
    """A silo's own table, encoded with the run's shared schema and cut into train and test.

    Target columns the table lacks are unlabelled; extra columns are ignored. The cut follows the
    dataset's leakage rule (``dataset.group_column``: whole groups on one side), drawn from the
    experiment seed and ``silo_id``. ``tasks`` (default: the run's tasks with a labelled row)
    must each have ``partition.min_train_per_task`` labelled training rows. ConfigErrors name
    ``node_config.<key>`` and may show local paths: they are for the silo's own log."""
    config = experiment.config
    params = config.dataset.params
    part = config.partition
    assert isinstance(params, TableParams) and isinstance(part, PartitionLocal)
    schema = table_schema(params)
    assert schema is not None  # a partition=local experiment has one (experiment.build_data)
    content = Path(data_file).read_bytes() if Path(data_file).is_file() else b""
    frame = read_table(data_file, key=_key(DATA_FILE))
    targets = schema_targets(schema)
    for target, kind in targets.items():
        if target not in frame.columns:  # a silo that labels none of a task may omit its column
            frame[target] = np.nan if kind == "regression" else None
    source = table_source(
        frame,
        name="table",
        targets=targets,
        features=params.features,
        id_columns=params.id_columns,
        group_column=params.group_column,
        schema=schema,
        key=_key(DATA_FILE),
    )
    dataset = source.to_dataset(np.arange(source.num_samples))
    run_tasks = experiment.dataset.task_names
    if tasks is None:
        labelled = dataset.mask.any(dim=0).tolist()
        tasks = tuple(t for t, has in zip(dataset.task_names, labelled, strict=True) if has)
        tasks = tuple(t for t in run_tasks if t in tasks)
    unknown = [t for t in tasks if t not in run_tasks]
    if unknown or not tasks:
        raise ConfigError(
            _key(TASKS),
            f"names tasks {unknown} that the run does not train."
            if unknown
            else "is empty: the table labels none of the run's tasks.",
            f"choose among the run's tasks {run_tasks}.",
        )
    tasks = tuple(t for t in run_tasks if t in tasks)  # the run's task order
    split_seed = zlib.crc32(f"{config.seed}/{silo_id}/split".encode())
    cut = hold_out(
        source.num_samples,
        source.natural_ids,
        source.group_column,
        None,
        part.test_fraction,
        0.0,
        split_seed,
        fitted=True,
    )
    assert cut is not None  # fitted=True always cuts
    train_rows, test_rows = cut.train_rows(), np.flatnonzero(cut.test)
    train = local_view(dataset, train_rows, tasks)
    test = local_view(dataset, test_rows, tasks)
    train_counts = dict(train.labelled_counts())
    short = {t: n for t, n in train_counts.items() if n < part.min_train_per_task}
    if short:
        raise ConfigError(
            _key(DATA_FILE),
            f"has too few labelled training rows for tasks {short} "
            f"(partition.min_train_per_task is {part.min_train_per_task}).",
            f"add rows, or leave those tasks out of {TASKS}.",
        )
    info = SiloInfo(
        silo_id=silo_id,
        tasks=tasks,
        num_train=train.num_samples,
        num_test=test.num_samples,
        train_per_task=train_counts,
        test_per_task=dict(test.labelled_counts()),
    )
    announced = json.dumps([silo_id, list(tasks)]).encode()
    return SiloData(info, train, test, _digest(content + announced))


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
