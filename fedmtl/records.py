"""The message protocol between ServerApp and ClientApp: record names and (de)serialisation.

Every record name and metric key of the protocol is defined here and nowhere else.

Server -> client
  ``query``:    empty content; the reply describes the silo (:class:`SiloInfo`).
  ``train``:    ``ARRAYS`` (the trunk and the heads of the silo's tasks only) and ``CONFIG``
                (server round, local training settings, the update mode, the weighting the
                silo applies at each local step and the task affinity it measures,
                :func:`train_config_record`).
  ``evaluate``: ``ARRAYS`` as for train and ``CONFIG`` (server round).
  Both carry ``GROUPS`` in ``CONFIG`` when the model has one trunk per task group: the JSON
  object {group: [tasks]} (:func:`groups_entry`); ``ARRAYS`` then holds ``trunks.<group>.*`` for
  the groups of the silo's tasks instead of ``trunk.*``.
Client -> server
  ``query``:    ``SILO`` (ConfigRecord: silo id, tasks, example counts).
  ``train``:    ``UPDATE`` (ArrayRecord of deltas, trained minus received: one per head received
                and, for the trunk, one per trunk array in ``joint`` mode or one per trunk array
                and task in ``per_task`` mode, keyed :func:`task_update_key`) and ``METRICS``
                (``num-examples``, ``steps``, per task ``<task>/num-examples``,
                ``<task>/train-loss`` (mean over local steps) and ``<task>/loss-before`` (mean
                over the silo's training rows, of the received model)) and, when an affinity
                was requested, ``affinity/<source>/<target>`` per ordered pair of the silo's
                tasks (:func:`affinity_key`; the mean of the silo's measurements).
  ``evaluate``: ``METRICS`` with per task additive statistics ``<task>/<stat>``
                (see :meth:`fedmtl.tasks.TaskSpec.metric_sums`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedmtl.config import TrainConfig

ARRAYS = "fedmtl.arrays"
CONFIG = "fedmtl.config"
UPDATE = "fedmtl.update"
METRICS = "fedmtl.metrics"
SILO = "fedmtl.silo"

SERVER_ROUND = "server-round"
NUM_EXAMPLES = "num-examples"
STEPS = "steps"
TRAIN_LOSS = "train-loss"
LOSS_BEFORE = "loss-before"

GROUPS = "groups"
AFFINITY = "affinity"

UpdateMode = Literal["joint", "per_task"]
"""``joint``: one trunk update per silo; ``per_task``: one per task the silo holds (they sum to
the joint one; see :func:`fedmtl.training.train_local`)."""

_TASK_UPDATE = "per-task"


def task_update_key(task: str, key: str) -> str:
    """UPDATE key of task ``task``'s share of the trunk array ``key`` in ``per_task`` mode."""
    return f"{_TASK_UPDATE}/{task}/{key}"


def affinity_key(source: str, target: str) -> str:
    """METRICS key of the affinity of ``target`` to a step on ``source`` (S_{source->target})."""
    return f"{AFFINITY}/{source}/{target}"


def split_affinity_key(key: str) -> tuple[str, str] | None:
    """``(source, target)`` for a key made by :func:`affinity_key`, else None."""
    parts = key.split("/")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == AFFINITY else None


def groups_entry(groups: Mapping[str, tuple[str, ...]] | None) -> dict[str, str]:
    """The ``CONFIG`` entry that tells a silo the model's task groups (empty without groups)."""
    return {} if groups is None else {GROUPS: json.dumps({g: list(ts) for g, ts in groups.items()})}


def groups_from_config(record: ConfigRecord) -> dict[str, tuple[str, ...]] | None:
    """The task groups a message's ``CONFIG`` names, or None (one shared trunk)."""
    if GROUPS not in record:
        return None
    value = json.loads(text(record, GROUPS))
    if not isinstance(value, dict) or not all(
        isinstance(ts, list) and all(isinstance(t, str) for t in ts) for ts in value.values()
    ):
        raise ValueError(f"{GROUPS} must be a JSON object of task lists, got {value!r}")
    return {str(g): tuple(ts) for g, ts in value.items()}


def task_key(task: str, stat: str) -> str:
    """Metric key for one task's statistic, e.g. ``digit/num-examples``."""
    return f"{task}/{stat}"


def split_task_key(key: str) -> tuple[str, str] | None:
    """``(task, stat)`` for a key made by :func:`task_key`, else None."""
    task, sep, stat = key.partition("/")
    return (task, stat) if sep else None


def number(record: Mapping[str, Any], key: str) -> float:
    """The finite scalar number ``record[key]``; KeyError when missing, ValueError otherwise."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def integer(record: Mapping[str, Any], key: str) -> int:
    """The integer ``record[key]`` (a float with an integral value is accepted)."""
    value = number(record, key)
    if not value.is_integer():
        raise ValueError(f"{key} must be an integer, got {record[key]!r}")
    return int(value)


def text(record: Mapping[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Arrays keep their shape (0-d included) and dtype; non-contiguous ones are copied."""
    return ArrayRecord({k: Array(_contiguous(v)) for k, v in arrays.items()})


def _contiguous(value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    return array if array.flags.c_contiguous else array.copy(order="C")


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def state_arrays(model: torch.nn.Module, keys: list[str]) -> dict[str, np.ndarray]:
    """The model's parameters ``keys`` as numpy copies."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().numpy().copy() for k in keys}


def load_arrays(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the model's parameters of the same names (the others are untouched)."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in arrays.items():
            if key not in state:
                raise KeyError(f"the model has no parameter {key!r}")
            target = state[key]
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"{key}: shape {value.shape} != model's {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.asarray(value)).to(target.dtype))


@dataclass(frozen=True)
class AffinityRequest:
    """Ask a silo to measure task affinity during local training: estimator ``name`` (registered
    in :data:`strategies.grouping.AFFINITIES`) on the batch of every ``every``-th local step."""

    name: str
    every: int = 1


@dataclass(frozen=True)
class TrainRequest:
    """What a train message asks of a silo: local training settings, the trunk update mode, and
    the weighting (registered name and parameters) to combine its tasks' gradients at each local
    step, or None for the plain sum of its task losses, and the affinity to measure, if any."""

    train: TrainConfig
    update_mode: UpdateMode = "joint"
    weighting: tuple[str, dict[str, Any]] | None = None
    affinity: AffinityRequest | None = None


def train_config_record(
    server_round: int,
    train: TrainConfig,
    update_mode: UpdateMode = "joint",
    weighting: tuple[str, dict[str, Any]] | None = None,
    affinity: AffinityRequest | None = None,
) -> ConfigRecord:
    """The ConfigRecord of a train message (see :class:`TrainRequest`)."""
    return ConfigRecord(
        {
            SERVER_ROUND: server_round,
            "local-epochs": train.local_epochs,
            "max-steps": -1 if train.max_steps is None else train.max_steps,
            "batch-size": train.batch_size,
            "optimizer": train.optimizer,
            "lr": train.lr,
            "momentum": train.momentum,
            "weight-decay": train.weight_decay,
            "update-mode": update_mode,
            "weighting": "" if weighting is None else weighting[0],
            "weighting-params": json.dumps({} if weighting is None else weighting[1]),
            AFFINITY: "" if affinity is None else affinity.name,
            "affinity-every": 1 if affinity is None else affinity.every,
        }
    )


def train_request_from_record(record: ConfigRecord) -> TrainRequest:
    """Parse a train message's ConfigRecord; a malformed one raises ValueError or KeyError."""
    max_steps = integer(record, "max-steps")
    optimizer = text(record, "optimizer")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    update_mode = text(record, "update-mode")
    if update_mode not in get_args(UpdateMode):
        raise ValueError(f"unknown update mode {update_mode!r}")
    weighting_name = text(record, "weighting")
    weighting_params = json.loads(text(record, "weighting-params"))
    if not isinstance(weighting_params, dict):
        raise ValueError(f"weighting-params must be a JSON object, got {weighting_params!r}")
    affinity_name = text(record, AFFINITY)
    affinity_every = integer(record, "affinity-every")
    if affinity_every < 1:
        raise ValueError(f"affinity-every must be >= 1, got {affinity_every}")
    train = TrainConfig(
        local_epochs=integer(record, "local-epochs"),
        max_steps=None if max_steps < 0 else max_steps,
        batch_size=integer(record, "batch-size"),
        optimizer=optimizer,  # type: ignore[arg-type]
        lr=number(record, "lr"),
        momentum=number(record, "momentum"),
        weight_decay=number(record, "weight-decay"),
    )
    return TrainRequest(
        train=train,
        update_mode=update_mode,  # type: ignore[arg-type]
        weighting=(weighting_name, weighting_params) if weighting_name else None,
        affinity=AffinityRequest(affinity_name, affinity_every) if affinity_name else None,
    )


@dataclass(frozen=True)
class SiloInfo:
    """What a node says of its silo in reply to ``query``: its tasks and labelled example counts."""

    silo_id: int
    tasks: tuple[str, ...]
    num_train: int
    num_test: int
    train_per_task: dict[str, int]
    test_per_task: dict[str, int]

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord(
            {
                "silo-id": self.silo_id,
                "tasks": list(self.tasks),
                "num-train": self.num_train,
                "num-test": self.num_test,
            }
        )
        for task in self.tasks:
            record[task_key(task, "num-train")] = self.train_per_task[task]
            record[task_key(task, "num-test")] = self.test_per_task[task]
        return record

    @classmethod
    def from_record(cls, record: ConfigRecord) -> SiloInfo:
        """Parse a ``SILO`` record; a malformed one raises ValueError or KeyError."""
        tasks = record["tasks"]
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks must be a list of names, got {tasks!r}")
        names = [str(t) for t in tasks]
        return cls(
            silo_id=integer(record, "silo-id"),
            tasks=tuple(names),
            num_train=integer(record, "num-train"),
            num_test=integer(record, "num-test"),
            train_per_task={t: integer(record, task_key(t, "num-train")) for t in names},
            test_per_task={t: integer(record, task_key(t, "num-test")) for t in names},
        )
