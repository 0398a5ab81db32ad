"""Checks of the silos' replies against what the server sent: pure functions, no engine state.

A reply that fails a check raises :class:`ReplyError` with the reason; the engine then logs it,
lists it under ``rejected`` in ``summary.json`` and leaves the reply out of the aggregate, so a
failing silo, a NaN update or a malformed reply never touches the global model.

- **query** (:func:`check_silo`): tasks the server knows, a silo id no other node holds.
- **train** (:func:`check_train_reply`): a compressed update's encoding well formed (indices in
  range and distinct, the lengths and dtypes of the encoding, finite values:
  :func:`fedmtl.core.compression.decode`), then exactly the expected update keys for the update
  mode (``joint``: one delta per array sent; ``per_task``: one per task-specific array sent and one
  share per shared array and task that uses it), the shapes sent, finite floating-point values, finite counts >= 0
  for the silo's training rows and for each of its tasks, losses only for its own tasks (the
  method checks the numbers it asked for itself: :meth:`strategies.engine.Method.check_update`).
- **evaluate** (:func:`check_evaluate_reply`): statistics only for the silo's own tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict

from fedmtl.core import records
from fedmtl.core.compression import UNCOMPRESSED, Compression, decode
from fedmtl.core.records import (
    NUM_EXAMPLES,
    Arrays,
    EvaluateReply,
    SiloInfo,
    TrainReply,
    task_key,
    task_update_key,
)
from fedmtl.core.training import UpdateMode


class ReplyError(ValueError):
    """A reply the server refuses, with the reason."""


REPLY_ERRORS = (KeyError, ValueError, TypeError)
"""What parsing or checking a malformed reply raises (:class:`ReplyError` is a ValueError)."""


class RunStopped(RuntimeError):
    """The run cannot go on; ``status`` says why (it becomes ``summary.json``'s ``status``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


WORKER_DIED = ("ActorDiedError", "RayActorError")
"""How a reply names a dead simulation worker (Ray's exceptions, in the reason Flower forwards)."""


def client_error(reason: str) -> ReplyError:
    """The ReplyError for a silo's error reply with ``reason``; :class:`RunStopped`
    (``worker_died``) when the simulation worker that ran it died: Flower's actor pool keeps
    handing messages to a dead actor, so every later round would lose those silos without saying
    so."""
    if any(marker in reason for marker in WORKER_DIED):
        raise RunStopped(
            "worker_died",
            f"a simulation worker died ({reason[:300]}). Flower does not replace it, so the run "
            "stops here; continue it from its last checkpoint with `fedmtl run resume=DIR`.",
        )
    return ReplyError(f"client error: {reason}")


@dataclass
class ClientUpdate:
    """A checked training reply: the silo, its array deltas and its reported numbers.

    ``deltas`` holds the joint trunk update and the silo's head updates; in ``per_task`` mode
    ``task_deltas[t]`` holds task t's share of the trunk update (the joint one is their sum).
    ``loss_before[t]``: task t's mean training loss of the received model, before local training.
    ``method_metrics``: the numbers the method asked the silo for (e.g. measured task affinities);
    ``method_arrays``: the arrays it asked for besides the update (e.g. FedCMOO's sketches; the
    engine checks them finite, the method their keys and shapes).
    ``sent``: the arrays the silo received (the deltas are relative to them). ``steps``: the local
    optimizer steps it took.

    The aggregate update of a round whose server sees only sums (:func:`strategies.engine.sums.decode`)
    has ``node_id`` and silo id -1, the summed counts and the weighted means as arrays;
    ``contributors`` then lists the silo ids summed and ``noise_variance[t]`` the per-coordinate
    variance of the DP noise in task t's mean share.
    """

    node_id: int
    silo: SiloInfo
    deltas: Arrays
    num_examples: int
    task_examples: dict[str, int]
    train_loss: dict[str, float]
    loss_before: dict[str, float] = field(default_factory=dict)
    task_deltas: dict[str, Arrays] | None = None
    method_metrics: dict[str, float] = field(default_factory=dict)
    sent: Arrays = field(default_factory=dict)
    steps: int = 0
    noise_variance: dict[str, float] = field(default_factory=dict)
    contributors: tuple[int, ...] = ()
    method_arrays: Arrays = field(default_factory=dict)


Serves = Callable[[str, str], bool]
"""``serves(key, task)``: whether array ``key`` is a shared parameter that ``task`` uses (its
role, :meth:`strategies.engine.GlobalModel.serves`); in ``per_task`` mode the silo sends one
share per task of exactly those arrays, and a joint delta of the others."""


def check_silo(info: SiloInfo, known_tasks: Collection[str], claimed: Collection[int]) -> SiloInfo:
    """A silo description the server can use: only known tasks, a silo id not ``claimed``."""
    unknown = [t for t in info.tasks if t not in known_tasks]
    if unknown:
        raise ReplyError(f"unknown tasks {unknown}")
    if info.silo_id in claimed:
        raise ReplyError(f"silo {info.silo_id} is already held by another node")
    return info


def expected_update_shapes(
    sent: Arrays, silo: SiloInfo, mode: UpdateMode, serves: Serves
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the update a silo must send for the arrays it was ``sent``."""
    if mode == "joint":
        return {k: v.shape for k, v in sent.items()}
    shapes = {k: v.shape for k, v in sent.items() if not any(serves(k, t) for t in silo.tasks)}
    for task in silo.tasks:
        shapes.update(
            {task_update_key(task, k): v.shape for k, v in sent.items() if serves(k, task)}
        )
    return shapes


def check_train_reply(
    node: int,
    reply: TrainReply,
    sent: Arrays,
    silo: SiloInfo,
    mode: UpdateMode,
    serves: Serves,
    compression: Compression = UNCOMPRESSED,
) -> ClientUpdate:
    """The checked update of ``reply`` to the arrays ``sent`` (see the module docstring), its
    arrays decoded first when they travel ``compression``-ed; the joint trunk delta of a
    ``per_task`` reply is the sum of its tasks' shares."""
    expected = expected_update_shapes(sent, silo, mode, serves)
    try:
        received = decode(reply.wire_arrays(), expected, compression)
    except ValueError as err:
        raise ReplyError(f"malformed {compression.kind} encoding: {err}") from None
    if set(received) != set(expected):
        raise ReplyError(
            f"update keys differ from those expected in {mode} mode "
            f"({len(received)} vs {len(expected)})"
        )
    for key, delta in received.items():
        if delta.shape != expected[key]:
            raise ReplyError(f"{key}: shape {delta.shape} != {expected[key]}")
        if not np.issubdtype(delta.dtype, np.floating) or not np.isfinite(delta).all():
            raise ReplyError(f"{key}: non-finite or non-float values")
    for key, array in reply.method_arrays.items():
        numeric = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        if not numeric or not np.isfinite(array).all():
            raise ReplyError(f"method array {key}: non-finite or non-numeric values")
    num_examples = _count(NUM_EXAMPLES, reply.num_examples)
    task_examples = {}
    for task in silo.tasks:
        key = task_key(task, NUM_EXAMPLES)
        if task not in reply.task_examples:
            raise ReplyError(f"{key} is missing")
        task_examples[task] = _count(key, reply.task_examples[task])
    for what, values in (("train loss", reply.train_loss), ("loss before", reply.loss_before)):
        _own_tasks(what, values, silo)
    deltas, task_deltas = _split(received, sent, silo, mode, serves)
    return ClientUpdate(
        node,
        silo,
        deltas,
        num_examples,
        task_examples,
        dict(reply.train_loss),
        dict(reply.loss_before),
        task_deltas,
        dict(reply.method_metrics),
        sent,
        reply.steps,
        method_arrays=dict(reply.method_arrays),
    )


def check_evaluate_reply(reply: EvaluateReply, silo: SiloInfo) -> EvaluateReply:
    """An evaluate reply with statistics for the silo's own tasks only."""
    _own_tasks("metric", reply.stats, silo)
    return reply


def has_non_finite(content: RecordDict) -> bool:
    """Whether a reply's content carries a non-finite number (in a metric record or a
    floating-point array): what a silo training a model that blew up sends."""
    for record in content.metric_records.values():
        for value in record.values():
            numbers = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                return True
    for array_record in content.array_records.values():
        try:
            arrays = records.from_array_record(array_record)
        except (KeyError, ValueError, TypeError):
            continue
        if not all(
            bool(np.isfinite(a).all())
            for a in arrays.values()
            if np.issubdtype(a.dtype, np.floating)
        ):
            return True
    return False


def _task_stats(content: RecordDict) -> dict[str, dict[str, float]]:
    """Task -> stat -> number of a reply's metrics record, read leniently (what is no number is
    left out; NaN becomes +inf)."""
    found: dict[str, dict[str, float]] = {}
    record = content.metric_records.get(records.METRICS)
    for key, value in (record or {}).items():
        parsed = records.split_task_key(key)
        if parsed is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        found.setdefault(parsed[0], {})[parsed[1]] = math.inf if math.isnan(number) else number
    return found


def reported_train_losses(content: RecordDict) -> dict[str, float]:
    """Per task, the larger of the loss before training and the training loss a (refused) train
    reply reports, non-finite ones as +inf."""
    losses = {}
    for task, stats in _task_stats(content).items():
        values = [abs(stats[s]) for s in (records.TRAIN_LOSS, records.LOSS_BEFORE) if s in stats]
        if values:
            losses[task] = max(values)
    return losses


def reported_test_losses(content: RecordDict) -> dict[str, float]:
    """Per task, the test loss a (refused) evaluate reply's statistics give, +inf where one of
    them is non-finite."""
    losses = {}
    for task, stats in _task_stats(content).items():
        if not all(math.isfinite(v) for v in stats.values()):
            losses[task] = math.inf
        elif stats.get("n", 0.0) > 0 and "loss_sum" in stats:
            losses[task] = stats["loss_sum"] / stats["n"]
    return losses


def _count(what: str, value: float) -> int:
    """A reported example count: a finite number >= 0 (the parser already refused non-finite)."""
    if value < 0:
        raise ReplyError(f"{what} must be a count >= 0, got {value!r}")
    return int(value)


def _own_tasks(what: str, values: Mapping[str, object], silo: SiloInfo) -> None:
    strangers = [t for t in values if t not in silo.tasks]
    if strangers:
        raise ReplyError(f"{what} for tasks {strangers} the silo does not hold")


def _split(
    received: Arrays, sent: Arrays, silo: SiloInfo, mode: UpdateMode, serves: Serves
) -> tuple[Arrays, dict[str, Arrays] | None]:
    """The joint deltas (trunk and heads) and, in ``per_task`` mode, each task's trunk share."""
    if mode == "joint":
        return received, None
    task_deltas = {
        task: {k: received[task_update_key(task, k)] for k in sent if serves(k, task)}
        for task in silo.tasks
    }
    deltas = {k: v for k, v in received.items() if k in sent}
    for key in (k for k in sent if any(serves(k, t) for t in silo.tasks)):
        deltas[key] = sum(
            (shares[key] for shares in task_deltas.values() if key in shares),
            start=np.zeros_like(sent[key]),
        )
    return deltas, task_deltas
