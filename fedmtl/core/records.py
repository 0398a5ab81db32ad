"""The message protocol between ServerApp and ClientApp: both sides of every message, in one place.

Every record name, config key and metric key of the protocol is defined here and nowhere else. Each
message has a typed value with a builder (``to_...``) and a parser (``from_...``); a parser raises
``KeyError``, ``ValueError`` or ``TypeError`` on a malformed message and checks its structure only
(what a reply must contain given what was sent is checked by the server, :mod:`strategies.replies`).

Server -> client
  ``query``:    :func:`query_content` (an empty ``CONFIG``).
  ``train``:    ``ARRAYS`` (what the method gives the silo: by default the trunk(s) and the heads
                of the silo's tasks only) and ``CONFIG`` (:class:`TrainRequest`: server round,
                local training settings, the trunk update mode, the method's silo settings as one
                :class:`MethodSpec`, and the task groups of a grouped model).
  ``evaluate``: ``ARRAYS`` as for train and ``CONFIG`` (:class:`EvaluateRequest`: server round,
                the method, task groups).
  With task groups, ``CONFIG`` carries ``GROUPS``, the JSON object {group: [tasks]}, and
  ``ARRAYS`` holds ``trunks.<group>.*`` for the groups of the silo's tasks instead of ``trunk.*``.
Client -> server
  ``query``:    ``SILO`` (:class:`SiloInfo`: silo id, tasks, example counts).
  ``train``:    :class:`TrainReply`: ``UPDATE`` (deltas, trained minus received: one per head
                received and, for the trunk, one per trunk array in ``joint`` mode or one per trunk
                array and task in ``per_task`` mode, keyed :func:`task_update_key`; in the
                request's ``update-dtype``: float32, float16, or bfloat16 sent as its 16 bits,
                read back as float32 by the parser; with the request's ``compression`` each
                array travels encoded under its key and a suffix,
                :mod:`fedmtl.core.compression`) and ``METRICS``
                (``num-examples``, ``steps``, per task ``<task>/num-examples``,
                ``<task>/train-loss`` (mean over local steps) and ``<task>/loss-before`` (mean over
                the silo's training rows, of the received model)), and ``METHOD_METRICS``: the
                numbers the method asked for, under keys of its own (e.g. grouping's measured
                affinities), and, when the method asks for arrays besides the update (e.g.
                FedCMOO's sketch of the task gradients), ``METHOD_ARRAYS``, sent as they are.
  ``evaluate``: :class:`EvaluateReply`: ``METRICS`` with per task additive statistics
                ``<task>/<stat>`` (see :meth:`fedmtl.core.tasks.TaskSpec.metric_sums`).
The server's own summary of a training round (Flower's ``aggregate_train`` metrics) holds
``num-updates``, ``num-rejected`` and ``<task>/train-loss`` (:func:`round_metrics`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, MetricRecordValues, RecordDict

from fedmtl.core.compression import UNCOMPRESSED, Compression
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import UpdateMode

ARRAYS = "fedmtl.arrays"
CONFIG = "fedmtl.config"
UPDATE = "fedmtl.update"
METRICS = "fedmtl.metrics"
SILO = "fedmtl.silo"
METHOD_METRICS = "fedmtl.method-metrics"
METHOD_ARRAYS = "fedmtl.method-arrays"
SECAGG_MASKED = "fedmtl.masked"
"""SecAgg+ stage 2's reply record: the masked vector (values, counts, overflow count)."""

# SecAgg+ (strategies.engine.secagg): the stages travel in Flower's own config record
# (``secaggplus_configs``, its keys); fedmtl's stage-2 keys sit beside them.
SECAGG_LAYOUT = "fedmtl-layout"
SECAGG_ROUND = "fedmtl-round"
SECAGG_DP_CLIP = "fedmtl-dp-clip"
SECAGG_DP_PER_TASK = "fedmtl-dp-per-task"
SECAGG_DP_NOISE = "fedmtl-dp-noise"
SECAGG_DP_BIT_NOISE = "fedmtl-dp-bit-noise"

SERVER_ROUND = "server-round"
GROUPS = "groups"

NUM_EXAMPLES = "num-examples"
STEPS = "steps"
TRAIN_LOSS = "train-loss"
LOSS_BEFORE = "loss-before"
NUM_UPDATES = "num-updates"
NUM_REJECTED = "num-rejected"

_LOCAL_EPOCHS = "local-epochs"
_MAX_STEPS = "max-steps"
_BATCH_SIZE = "batch-size"
_OPTIMIZER = "optimizer"
_LR = "lr"
_MOMENTUM = "momentum"
_WEIGHT_DECAY = "weight-decay"
_UPDATE_MODE = "update-mode"
_METHOD = "method"
_METHOD_PARAMS = "method-params"
_SCOPE = "scope"
_SAVED_ROUND = "saved-round"
_RESUME_ROUND = "resume-round"
_UPDATE_DTYPE = "update-dtype"
_REPORT_LOSS_BEFORE = "report-loss-before"
_COMPRESSION = "compression"
_COMPRESSION_RATIO = "compression-ratio"
_QSGD_LEVELS = "qsgd-levels"
_TASK_UPDATE = "per-task"
_SILO_ID = "silo-id"
_TASKS = "tasks"
_NUM_TRAIN = "num-train"
_NUM_TEST = "num-test"

Arrays = dict[str, np.ndarray]
Groups = dict[str, tuple[str, ...]]
"""Task groups of a grouped model: group name -> its tasks."""

UpdateDtype = Literal["float32", "float16", "bfloat16"]
"""The precision a silo's update travels in (``strategy.update_dtype``): float32, or half the
bytes as float16 (10-bit mantissa; |x| > 65504 becomes inf and the reply is refused, |x| < 6e-5
loses relative precision and |x| < 3e-8 becomes 0) or bfloat16 (8-bit mantissa, float32's
range). The server reads either back as float32."""

BFLOAT16 = "bfloat16"
"""The ``Array.dtype`` of a bfloat16 array: its 16-bit patterns travel as a uint16 ``.npy``."""


# ---------------------------------------------------------------------------------------- keys
def task_key(task: str, stat: str) -> str:
    """Metric key for one task's statistic, e.g. ``digit/num-examples``."""
    return f"{task}/{stat}"


def split_task_key(key: str) -> tuple[str, str] | None:
    """``(task, stat)`` for a key made by :func:`task_key`, else None."""
    task, sep, stat = key.partition("/")
    return (task, stat) if sep and "/" not in stat else None


def task_update_key(task: str, key: str) -> str:
    """UPDATE key of task ``task``'s share of the trunk array ``key`` in ``per_task`` mode."""
    return f"{_TASK_UPDATE}/{task}/{key}"


def split_task_update_key(key: str) -> tuple[str, str] | None:
    """``(task, trunk key)`` for a key made by :func:`task_update_key`, else None."""
    parts = key.split("/", 2)
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == _TASK_UPDATE else None


# ------------------------------------------------------------------------------------- values
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


def flag(record: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """The boolean ``record[key]`` (``default`` when missing)."""
    value = record.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _json_object(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = json.loads(text(record, key))
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object, got {value!r}")
    return value


# ------------------------------------------------------------------------------------- arrays
def to_array_record(
    arrays: Mapping[str, np.ndarray], dtype: UpdateDtype = "float32"
) -> ArrayRecord:
    """Arrays keep their shape (0-d included) and dtype; non-contiguous ones are copied. With
    ``dtype`` float16 or bfloat16, floating arrays are rounded to it (to nearest even) first."""
    if dtype == "float32":
        return ArrayRecord({k: _npy_array(v) for k, v in arrays.items()})
    return ArrayRecord({k: _half(v, dtype) for k, v in arrays.items()})


_NPY = "numpy.ndarray"
_NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=4096)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header ``np.save`` writes for a C-ordered array."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _npy_array(value: np.ndarray) -> Array:
    """``Array(value)``: the same ``.npy`` bytes as ``np.save``, with the header cached per dtype
    and shape (``np.save`` rebuilds it for every array, which dominates small arrays)."""
    array = _contiguous(value)
    descr = np.lib.format.dtype_to_descr(array.dtype)
    if array.dtype.hasobject or not isinstance(descr, str):
        return Array(array)
    header = _npy_header(descr, tuple(array.shape))
    return Array(str(array.dtype), tuple(array.shape), _NPY, header + array.tobytes())


def _numpy(value: Array) -> np.ndarray:
    """``value.numpy()`` (a writable copy), reading the ``.npy`` header of a plain C-ordered array
    by its length field instead of parsing it (``np.load`` parses every header)."""
    data = value.data
    if value.stype != _NPY or data[:6] != _NPY_MAGIC or sys.byteorder != "little":
        return value.numpy()
    if data[6] == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    else:
        offset = 12 + int.from_bytes(data[8:12], "little")
    header = data[:offset]
    dtype = np.dtype(value.dtype)
    descr = np.lib.format.dtype_to_descr(dtype)
    if dtype.hasobject or not isinstance(descr, str):
        return value.numpy()
    plain = b"'fortran_order': False" in header and f"'descr': '{descr}'".encode() in header
    if not plain:
        return value.numpy()
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(value.shape).copy()


def _half(value: np.ndarray, dtype: UpdateDtype) -> Array:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        return Array(_contiguous(array))
    if dtype == "float16":
        return Array(_contiguous(array.astype(np.float16)))
    bits = torch.from_numpy(_contiguous(array)).to(torch.bfloat16).view(torch.int16).numpy()
    encoded = _npy_array(bits.view(np.uint16))
    return Array(BFLOAT16, tuple(array.shape), encoded.stype, encoded.data)


def _contiguous(value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    return array if array.flags.c_contiguous else array.copy(order="C")


def from_array_record(record: ArrayRecord) -> Arrays:
    """The arrays of a record; a bfloat16 array (:data:`BFLOAT16`) comes back as float32."""
    return {
        k: _bfloat16_to_float32(v) if v.dtype == BFLOAT16 else _numpy(v) for k, v in record.items()
    }


def _bfloat16_to_float32(value: Array) -> np.ndarray:
    bits = value.numpy()  # its dtype field says bfloat16, its .npy header uint16
    if bits.dtype != np.uint16:
        raise ValueError(f"a {BFLOAT16} array must hold uint16 patterns, got {bits.dtype}")
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()


def state_arrays(model: torch.nn.Module, keys: list[str]) -> Arrays:
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


# ----------------------------------------------------------------------------------- requests
def _groups_entry(groups: Mapping[str, tuple[str, ...]] | None) -> dict[str, str]:
    """The ``CONFIG`` entry that tells a silo the model's task groups (empty without groups)."""
    return {} if groups is None else {GROUPS: json.dumps({g: list(ts) for g, ts in groups.items()})}


def _groups_from(record: Mapping[str, Any]) -> Groups | None:
    """The task groups a ``CONFIG`` names, or None (one shared trunk)."""
    if GROUPS not in record:
        return None
    value = _json_object(record, GROUPS)
    if not all(
        isinstance(ts, list) and all(isinstance(t, str) for t in ts) for ts in value.values()
    ):
        raise ValueError(f"{GROUPS} must be a JSON object of task lists, got {value!r}")
    return {str(g): tuple(ts) for g, ts in value.items()}


def request_content(arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
    """The content of a train or evaluate message: the arrays a silo receives and its config."""
    return RecordDict({ARRAYS: arrays, CONFIG: config})


def request_parts(content: RecordDict) -> tuple[Arrays, ConfigRecord]:
    """The received arrays and the ``CONFIG`` of a train or evaluate message."""
    return from_array_record(content.array_records[ARRAYS]), content.config_records[CONFIG]


def query_content() -> RecordDict:
    """The content of a ``query`` message."""
    return RecordDict({CONFIG: ConfigRecord()})


@dataclass(frozen=True)
class MethodSpec:
    """The method a request belongs to, as a silo needs it: the method's registered name and its
    silo half's parameters (JSON values; the method's own dataclass checks them on the silo)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, str]:
        return {_METHOD: self.name, _METHOD_PARAMS: json.dumps(self.params, sort_keys=True)}

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> MethodSpec:
        name = text(record, _METHOD)
        if not name:
            raise ValueError(f"{_METHOD} must name a method")
        return cls(name, _json_object(record, _METHOD_PARAMS))


@dataclass(frozen=True)
class SiloCheckpoint:
    """Sent with every train and evaluate request, for silos that keep state of their own
    (personal heads or models) in files: ``saved_round``, the server's last complete checkpoint
    (a silo keeps its newest state at or before it, and any newer); ``resume_round``, the
    checkpoint this run resumed from (0: none; a silo that has no state in memory loads its
    newest at or before it and drops newer ones, which belong to rounds being redone)."""

    saved_round: int = 0
    resume_round: int = 0

    def to_config(self) -> dict[str, int]:
        return {_SAVED_ROUND: self.saved_round, _RESUME_ROUND: self.resume_round}

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> SiloCheckpoint:
        saved, resume = integer(record, _SAVED_ROUND), integer(record, _RESUME_ROUND)
        if saved < 0 or resume < 0:
            raise ValueError(f"{_SAVED_ROUND} and {_RESUME_ROUND} must be >= 0")
        return cls(saved, resume)


@dataclass(frozen=True)
class TrainRequest:
    """What a train message asks of a silo: the round, local training settings, the trunk update
    mode (``joint`` or ``per_task``: the layout of the reply, which the server checks), the
    method's silo settings (:class:`MethodSpec`: its silo half trains accordingly), the model's task
    groups (None: one shared trunk), the precision its update travels in (:data:`UpdateDtype`);
    what silos keeping state in files need to know of the server's checkpoints
    (:class:`SiloCheckpoint`); and the ``scope``: the training run the message belongs to, when
    several share the same nodes (a silo keeps separate state per scope; empty: the only one).
    ``loss_before``: whether the reply reports each task's loss of the received model before
    training (an extra pass over the silo's rows, for the methods that weigh tasks by it)."""

    server_round: int
    train: TrainConfig
    method: MethodSpec
    update_mode: UpdateMode = "joint"
    groups: Groups | None = None
    checkpoint: SiloCheckpoint = SiloCheckpoint()
    scope: str = ""
    update_dtype: UpdateDtype = "float32"
    loss_before: bool = False
    compression: Compression = UNCOMPRESSED

    def to_config(self) -> ConfigRecord:
        train = self.train
        return ConfigRecord(
            {
                SERVER_ROUND: self.server_round,
                _LOCAL_EPOCHS: train.local_epochs,
                _MAX_STEPS: -1 if train.max_steps is None else train.max_steps,
                _BATCH_SIZE: train.batch_size,
                _OPTIMIZER: train.optimizer,
                _LR: train.lr,
                _MOMENTUM: train.momentum,
                _WEIGHT_DECAY: train.weight_decay,
                _UPDATE_MODE: self.update_mode,
                **self.method.to_config(),
                _SCOPE: self.scope,
                **self.checkpoint.to_config(),
                _UPDATE_DTYPE: self.update_dtype,
                _REPORT_LOSS_BEFORE: self.loss_before,
                _COMPRESSION: self.compression.kind,
                _COMPRESSION_RATIO: self.compression.ratio,
                _QSGD_LEVELS: self.compression.levels,
                **_groups_entry(self.groups),
            }
        )

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> TrainRequest:
        """Parse a train message's ``CONFIG``; keys it does not know are ignored."""
        max_steps = integer(record, _MAX_STEPS)
        optimizer = text(record, _OPTIMIZER)
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {optimizer!r}")
        update_mode = text(record, _UPDATE_MODE)
        if update_mode not in get_args(UpdateMode):
            raise ValueError(f"unknown update mode {update_mode!r}")
        update_dtype = text(record, _UPDATE_DTYPE) if _UPDATE_DTYPE in record else "float32"
        if update_dtype not in get_args(UpdateDtype):
            raise ValueError(f"unknown {_UPDATE_DTYPE} {update_dtype!r}")
        train = TrainConfig(
            local_epochs=integer(record, _LOCAL_EPOCHS),
            max_steps=None if max_steps < 0 else max_steps,
            batch_size=integer(record, _BATCH_SIZE),
            optimizer=optimizer,  # type: ignore[arg-type]
            lr=number(record, _LR),
            momentum=number(record, _MOMENTUM),
            weight_decay=number(record, _WEIGHT_DECAY),
        )
        return cls(
            server_round=integer(record, SERVER_ROUND),
            train=train,
            method=MethodSpec.from_config(record),
            update_mode=update_mode,  # type: ignore[arg-type]
            groups=_groups_from(record),
            checkpoint=SiloCheckpoint.from_config(record),
            scope=_scope(record),
            update_dtype=update_dtype,  # type: ignore[arg-type]
            loss_before=flag(record, _REPORT_LOSS_BEFORE),
            compression=_compression(record),
        )


@dataclass(frozen=True)
class EvaluateRequest:
    """What an evaluate message asks of a silo: the round, the method (its silo half chooses the
    model to evaluate: the received one, or one the silo keeps for itself), the model's task
    groups; ``checkpoint`` and ``scope`` as in :class:`TrainRequest`."""

    server_round: int
    method: MethodSpec
    groups: Groups | None = None
    checkpoint: SiloCheckpoint = SiloCheckpoint()
    scope: str = ""

    def to_config(self) -> ConfigRecord:
        return ConfigRecord(
            {
                SERVER_ROUND: self.server_round,
                **self.method.to_config(),
                _SCOPE: self.scope,
                **self.checkpoint.to_config(),
                **_groups_entry(self.groups),
            }
        )

    @classmethod
    def from_config(cls, record: Mapping[str, Any]) -> EvaluateRequest:
        return cls(
            server_round=integer(record, SERVER_ROUND),
            method=MethodSpec.from_config(record),
            groups=_groups_from(record),
            checkpoint=SiloCheckpoint.from_config(record),
            scope=_scope(record),
        )


def _compression(record: Mapping[str, Any]) -> Compression:
    """The request's compression of the reply (none when the request names none); a bad value
    raises ValueError (:class:`~fedmtl.core.errors.ConfigError` is one)."""
    if _COMPRESSION not in record:
        return UNCOMPRESSED
    return Compression(
        text(record, _COMPRESSION),  # type: ignore[arg-type]
        number(record, _COMPRESSION_RATIO),
        integer(record, _QSGD_LEVELS),
    )


def _scope(record: Mapping[str, Any]) -> str:
    """The request's scope: a name of letters, digits, ``_``, ``-`` and ``.`` (it names a node-
    state record and a directory on the silo), or empty."""
    scope = text(record, _SCOPE)
    if scope and (not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", scope) or set(scope) == {"."}):
        raise ValueError(
            f"{_SCOPE} must be a short name of letters, digits, _, - and ., got {scope!r}"
        )
    return scope


# ------------------------------------------------------------------------------------ replies
@dataclass(frozen=True)
class SiloInfo:
    """What a node says of its silo in reply to ``query``: its tasks and labelled example counts."""

    silo_id: int
    tasks: tuple[str, ...]
    num_train: int
    num_test: int
    train_per_task: dict[str, int]
    test_per_task: dict[str, int]

    def to_content(self) -> RecordDict:
        record = ConfigRecord(
            {
                _SILO_ID: self.silo_id,
                _TASKS: list(self.tasks),
                _NUM_TRAIN: self.num_train,
                _NUM_TEST: self.num_test,
            }
        )
        for task in self.tasks:
            record[task_key(task, _NUM_TRAIN)] = self.train_per_task[task]
            record[task_key(task, _NUM_TEST)] = self.test_per_task[task]
        return RecordDict({SILO: record})

    @classmethod
    def from_content(cls, content: RecordDict) -> SiloInfo:
        """Parse a ``query`` reply; a malformed one raises ValueError or KeyError."""
        record = content.config_records[SILO]
        tasks = record[_TASKS]
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks must be a list of names, got {tasks!r}")
        names = [str(t) for t in tasks]
        return cls(
            silo_id=integer(record, _SILO_ID),
            tasks=tuple(names),
            num_train=integer(record, _NUM_TRAIN),
            num_test=integer(record, _NUM_TEST),
            train_per_task={t: integer(record, task_key(t, _NUM_TRAIN)) for t in names},
            test_per_task={t: integer(record, task_key(t, _NUM_TEST)) for t in names},
        )


@dataclass(frozen=True)
class TrainReply:
    """A silo's reply to ``train``.

    ``deltas``: trained minus received for every head and, in ``joint`` mode, every trunk array;
    ``task_deltas[t][k]``: task t's share of trunk array k (``per_task`` mode; None otherwise).
    ``num_examples``: the silo's training rows; ``task_examples[t]``: its labelled rows of task t
    (counts travel as numbers: the server checks them). ``train_loss[t]`` and ``loss_before[t]``:
    task t's mean loss over the local steps, and of the received model; ``method_metrics``: the
    numbers the method asked for (e.g. grouping's measured affinities); ``method_arrays``: the
    arrays it asked for besides the update (sent in their own dtype, float32 or an integer one).
    ``update_dtype``: the precision the update travels in (the parser always gives float32 back).
    """

    deltas: Arrays
    num_examples: float
    steps: int
    task_examples: dict[str, float]
    train_loss: dict[str, float] = field(default_factory=dict)
    loss_before: dict[str, float] = field(default_factory=dict)
    task_deltas: dict[str, Arrays] | None = None
    method_metrics: dict[str, float] = field(default_factory=dict)
    method_arrays: Arrays = field(default_factory=dict)
    update_dtype: UpdateDtype = "float32"

    def wire_arrays(self) -> Arrays:
        """The arrays of ``UPDATE`` by their keys on the wire (a task's share under
        :func:`task_update_key`)."""
        arrays = dict(self.deltas)
        for task, shares in (self.task_deltas or {}).items():
            arrays.update({task_update_key(task, k): v for k, v in shares.items()})
        return arrays

    def with_wire_arrays(self, arrays: Mapping[str, np.ndarray]) -> TrainReply:
        """This reply with ``arrays`` (by their keys on the wire) as its deltas and shares."""
        deltas: Arrays = {}
        task_deltas: dict[str, Arrays] = {}
        for key, value in arrays.items():
            share = split_task_update_key(key)
            if share is None:
                deltas[key] = value
            else:
                task_deltas.setdefault(share[0], {})[share[1]] = value
        return dataclasses.replace(self, deltas=deltas, task_deltas=task_deltas or None)

    def to_content(self) -> RecordDict:
        arrays = self.wire_arrays()
        metrics: dict[str, MetricRecordValues] = {
            NUM_EXAMPLES: self.num_examples,
            STEPS: self.steps,
        }
        for stat, values in (
            (NUM_EXAMPLES, self.task_examples),
            (TRAIN_LOSS, self.train_loss),
            (LOSS_BEFORE, self.loss_before),
        ):
            metrics.update({task_key(task, stat): value for task, value in values.items()})
        content = RecordDict(
            {
                UPDATE: to_array_record(arrays, self.update_dtype),
                METRICS: MetricRecord(metrics),
                METHOD_METRICS: MetricRecord(dict(self.method_metrics)),
            }
        )
        if self.method_arrays:
            content.array_records[METHOD_ARRAYS] = to_array_record(self.method_arrays)
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReply:
        """Parse a ``train`` reply's structure; a malformed one raises KeyError or ValueError.

        Values are numbers of any sign and arrays of any shape here: whether they fit what was
        sent is for the server to check."""
        arrays = {
            key: value.astype(np.float32) if value.dtype == np.float16 else value
            for key, value in from_array_record(content.array_records[UPDATE]).items()
        }
        metrics = content.metric_records[METRICS]
        per_task: dict[str, dict[str, float]] = {NUM_EXAMPLES: {}, TRAIN_LOSS: {}, LOSS_BEFORE: {}}
        for key in metrics:
            parsed = split_task_key(key)
            if parsed is not None:
                if parsed[1] not in per_task:
                    raise ValueError(f"unexpected metric {key!r}")
                per_task[parsed[1]][parsed[0]] = number(metrics, key)
            elif key not in (NUM_EXAMPLES, STEPS):
                raise ValueError(f"unexpected metric {key!r}")
        reply = cls(
            deltas={},
            num_examples=number(metrics, NUM_EXAMPLES),
            steps=integer(metrics, STEPS),
            task_examples=per_task[NUM_EXAMPLES],
            train_loss=per_task[TRAIN_LOSS],
            loss_before=per_task[LOSS_BEFORE],
            method_metrics=_method_metrics(content),
            method_arrays=(
                from_array_record(content.array_records[METHOD_ARRAYS])
                if METHOD_ARRAYS in content.array_records
                else {}
            ),
        )
        return reply.with_wire_arrays(arrays)


def _method_metrics(content: RecordDict) -> dict[str, float]:
    """The ``METHOD_METRICS`` record of a reply (empty when it has none), finite numbers only."""
    record = content.metric_records.get(METHOD_METRICS)
    return {} if record is None else {key: number(record, key) for key in record}


@dataclass(frozen=True)
class EvaluateReply:
    """A silo's reply to ``evaluate``: per task, additive statistics over its test rows."""

    stats: dict[str, dict[str, float]]

    def to_content(self) -> RecordDict:
        metrics: dict[str, MetricRecordValues] = {
            task_key(task, stat): value
            for task, task_stats in self.stats.items()
            for stat, value in task_stats.items()
        }
        return RecordDict({METRICS: MetricRecord(metrics)})

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluateReply:
        """Parse an ``evaluate`` reply; a key that is no ``<task>/<stat>`` or a value that is no
        finite number raises ValueError."""
        metrics = content.metric_records[METRICS]
        stats: dict[str, dict[str, float]] = {}
        for key in metrics:
            parsed = split_task_key(key)
            if parsed is None:
                raise ValueError(f"unexpected metric {key!r}")
            stats.setdefault(parsed[0], {})[parsed[1]] = number(metrics, key)
        return cls(stats)


def update_bytes(content: RecordDict) -> int:
    """Bytes of the arrays in a ``train`` reply: its update and its method's arrays (0 when it
    has none)."""
    found = (content.array_records.get(name) for name in (UPDATE, METHOD_ARRAYS))
    return sum(record.count_bytes() for record in found if record is not None)


def reported_steps(content: RecordDict) -> int:
    """The local steps a ``train`` reply reports (0 when it reports none)."""
    metrics = content.metric_records.get(METRICS)
    steps = None if metrics is None else metrics.get(STEPS)
    return int(steps) if isinstance(steps, int | float) and steps >= 0 else 0


# ------------------------------------------------------------------------ the server's summary
def round_metrics(
    num_updates: int, num_rejected: int, train_loss: Mapping[str, float]
) -> MetricRecord:
    """The server's summary of a training round, as Flower's ``aggregate_train`` returns it."""
    metrics: dict[str, MetricRecordValues] = {NUM_UPDATES: num_updates, NUM_REJECTED: num_rejected}
    metrics.update({task_key(t, TRAIN_LOSS): v for t, v in train_loss.items()})
    return MetricRecord(metrics)


def nested_task_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``<task>/<metric>`` keys of a flat record as task -> metric -> value."""
    nested: dict[str, dict[str, float]] = {}
    for key in metrics:
        parsed = split_task_key(key)
        if parsed is not None:
            nested.setdefault(parsed[0], {})[parsed[1]] = number(metrics, key)
    return nested


def flat_task_metrics(metrics: Mapping[str, Mapping[str, float]]) -> MetricRecord:
    """task -> metric -> value as one flat record of ``<task>/<metric>`` keys."""
    return MetricRecord(
        {
            task_key(task, name): value
            for task, task_metrics in metrics.items()
            for name, value in task_metrics.items()
        }
    )
