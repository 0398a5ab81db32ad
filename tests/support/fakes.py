"""Engine fakes: a fake model over :data:`TASKS` (:data:`SHAPES`, :func:`pattern`,
:func:`initial_arrays`), :class:`FakeSilo` replies as told, :class:`Federation` serves fake silos
behind an in-process grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.app.runtimes import InProcessGrid
from fedmtl.core import records
from fedmtl.core.records import SiloInfo, TrainRequest
from fedmtl.core.tasks import TaskSpec
from strategies.engine import GlobalModel

# ------------------------------------------------------------------------------------ the model
TASKS = (
    TaskSpec.multiclass("a", 3),
    TaskSpec.binary("b"),
    TaskSpec.regression("c"),
    TaskSpec.regression("d"),
)
SHAPES = {
    "trunk.w": (2, 3),
    "trunk.b": (2,),
    "heads.a.w": (3, 2),
    "heads.a.b": (3,),
    "heads.b.w": (1, 2),
    "heads.b.b": (1,),
    "heads.c.w": (1, 2),
    "heads.c.b": (1,),
    "heads.d.w": (1, 2),
    "heads.d.b": (1,),
}
TRUNK_KEYS = {"trunk.w", "trunk.b"}


def initial_model() -> GlobalModel:
    """:func:`initial_arrays` as the engine's global model (one shared trunk)."""
    return GlobalModel(initial_arrays())


def pattern(key: str) -> np.ndarray:
    """A fixed, non-constant array per key: 1, 2, 3, ... in the key's shape."""
    shape = SHAPES[key]
    return np.arange(1, math.prod(shape) + 1, dtype=np.float32).reshape(shape)


def initial_arrays() -> dict[str, np.ndarray]:
    """The global model: distinct values per key so a mixed-up key shows."""
    return {
        key: (np.float32(0.1 * (i + 1)) * pattern(key) - np.float32(0.3)).astype(np.float32)
        for i, key in enumerate(SHAPES)
    }


def head_keys(task: str) -> set[str]:
    return {f"heads.{task}.w", f"heads.{task}.b"}


# ------------------------------------------------------------------------------------ the silos
@dataclass
class FakeSilo:
    """One fake silo: what it says in ``query`` and how it replies to ``train`` and ``evaluate``.

    Its delta for key k is ``value * pattern(k)`` with value ``trunk`` for trunk keys and
    ``heads[t]`` for the heads of task t. Asked for ``per_task`` updates, it sends task t's trunk
    share as ``task_trunk[t] * pattern(k)`` (default: ``trunk`` split evenly over its tasks).
    """

    tasks: tuple[str, ...]
    num_examples: int | float = 10
    task_examples: dict[str, int | float] = field(default_factory=dict)
    trunk: float = 0.0
    heads: dict[str, float] = field(default_factory=dict)
    train_loss: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    train_defect: str | None = None
    eval_defect: str | None = None
    query_defect: str | None = None
    task_trunk: dict[str, float] = field(default_factory=dict)
    loss_before: dict[str, float] = field(default_factory=dict)

    def info(self, silo_id: int) -> SiloInfo:
        """What the silo announces at discovery: the counts it reports with its updates (the
        server fixes them from here)."""
        return SiloInfo(
            silo_id=silo_id,
            tasks=self.tasks,
            num_train=int(self.num_examples) if math.isfinite(self.num_examples) else 0,
            num_test=7,
            train_per_task={t: int(self.task_examples.get(t, 10)) for t in self.tasks},
            test_per_task={t: 3 for t in self.tasks},
        )

    def deltas(self, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key in received:
            value = self.trunk if key in TRUNK_KEYS else self.heads.get(key.split(".")[1], 0.0)
            out[key] = (np.float32(value) * pattern(key)).astype(np.float32)
        return out

    def per_task_deltas(self, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in self.deltas(received).items() if k not in TRUNK_KEYS}
        for task in self.tasks:
            value = self.task_trunk.get(task, self.trunk / len(self.tasks))
            for key in TRUNK_KEYS:
                out[records.task_update_key(task, key)] = np.float32(value) * pattern(key)
        return out


def apply_train_defect(
    defect: str | None, deltas: dict[str, np.ndarray], metrics: dict[str, Any]
) -> RecordDict:
    """The train reply content, spoiled in one way (or not)."""
    if defect == "raise":
        raise RuntimeError("disk on fire")
    if defect == "nan-share":
        deltas[records.task_update_key("b", "trunk.w")][0, 0] = np.nan
    elif defect == "missing-share":
        del deltas[records.task_update_key("c", "trunk.b")]
    elif defect == "joint-instead":
        for key in TRUNK_KEYS:
            deltas[key] = sum(deltas.pop(k) for k in list(deltas) if k.endswith("/" + key))
    elif defect == "nan-delta":
        deltas["trunk.w"][0, 1] = np.nan
    elif defect == "inf-delta":
        deltas["heads.a.b"][2] = -np.inf
    elif defect == "missing-key":
        del deltas["heads.b.b"]
    elif defect == "extra-key":
        deltas["heads.c.w"] = np.zeros(SHAPES["heads.c.w"], dtype=np.float32)
    elif defect == "wrong-shape":
        deltas["trunk.w"] = np.zeros((3, 2), dtype=np.float32)
    elif defect == "int-delta":
        deltas["trunk.b"] = np.zeros(SHAPES["trunk.b"], dtype=np.int64)
    elif defect == "negative-n":
        metrics[records.NUM_EXAMPLES] = -5
    elif defect == "nan-n":
        metrics[records.NUM_EXAMPLES] = float("nan")
    elif defect == "negative-task-n":
        metrics[records.task_key("a", records.NUM_EXAMPLES)] = -1
    elif defect == "nan-task-n":
        metrics[records.task_key("b", records.NUM_EXAMPLES)] = float("nan")
    elif defect == "missing-task-n":
        del metrics[records.task_key("a", records.NUM_EXAMPLES)]
    elif defect == "inflated-n":  # claims a million times the examples it announced
        for key in [k for k in metrics if k.endswith(records.NUM_EXAMPLES)]:
            metrics[key] = metrics[key] * 1e6
    content = RecordDict(
        {records.UPDATE: records.to_array_record(deltas), records.METRICS: MetricRecord(metrics)}
    )
    if defect == "missing-update":
        content = RecordDict({records.METRICS: MetricRecord(metrics)})
    elif defect == "missing-metrics":
        content = RecordDict({records.UPDATE: records.to_array_record(deltas)})
    return content


class ActorDiedError(RuntimeError):
    """Named as Ray's exception for a dead actor (what Flower forwards in the error reason)."""


class Federation:
    """Fake ClientApps for ``silos`` (node 1000 + i holds silo i) behind an InProcessGrid.

    ``received`` logs every train/evaluate message a node got: (type, node, arrays, config).
    """

    def __init__(self, silos: list[FakeSilo]) -> None:
        self.silos = silos
        self.received: list[tuple[str, int, dict[str, np.ndarray], dict[str, Any]]] = []
        self.queries: list[int] = []
        app = ClientApp()

        def silo_of(context: Context) -> tuple[int, FakeSilo]:
            pid = int(context.node_config["partition-id"])
            return pid, self.silos[pid]

        def log_message(kind: str, msg: Message, context: Context) -> dict[str, np.ndarray]:
            arrays = records.from_array_record(msg.content.array_records[records.ARRAYS])
            config = dict(msg.content.config_records[records.CONFIG])
            self.received.append((kind, context.node_id, arrays, config))
            return arrays

        @app.query()
        def query(msg: Message, context: Context) -> Message:
            pid, silo = silo_of(context)
            self.queries.append(context.node_id)
            content = silo.info(pid).to_content()
            if silo.query_defect == "raise":
                raise RuntimeError("cannot read my data")
            if silo.query_defect is not None and silo.query_defect.startswith("drop:"):
                del content.config_records[records.SILO][silo.query_defect.removeprefix("drop:")]
            return Message(content, reply_to=msg)

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            _, silo = silo_of(context)
            if silo.train_defect == "raise-once":  # fails its first round, then recovers
                silo.train_defect = None
                raise RuntimeError("transient failure")
            if silo.train_defect == "worker-died":  # as Ray reports a dead simulation actor
                raise ActorDiedError("The actor died unexpectedly before finishing this task.")
            received = log_message("train", msg, context)
            metrics: dict[str, Any] = {records.NUM_EXAMPLES: silo.num_examples, records.STEPS: 3}
            for task in silo.tasks:
                metrics[records.task_key(task, records.NUM_EXAMPLES)] = silo.task_examples.get(
                    task, 10
                )
                if task in silo.train_loss:
                    metrics[records.task_key(task, records.TRAIN_LOSS)] = silo.train_loss[task]
                metrics[records.task_key(task, records.LOSS_BEFORE)] = silo.loss_before.get(
                    task, 1.0
                )
            request = TrainRequest.from_config(msg.content.config_records[records.CONFIG])
            per_task = request.update_mode == "per_task"
            deltas = silo.per_task_deltas(received) if per_task else silo.deltas(received)
            content = apply_train_defect(silo.train_defect, deltas, metrics)
            return Message(content, reply_to=msg)

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            _, silo = silo_of(context)
            log_message("evaluate", msg, context)
            metrics = dict(silo.eval_metrics)
            if silo.eval_defect == "raise":
                raise RuntimeError("evaluation crashed")
            if silo.eval_defect == "nan":
                metrics[next(iter(metrics))] = float("nan")
            elif silo.eval_defect == "inf":
                metrics[next(iter(metrics))] = float("inf")
            elif silo.eval_defect == "unheld-task":
                unheld = next(t.name for t in TASKS if t.name not in silo.tasks)
                metrics[records.task_key(unheld, "n")] = 4.0
            elif silo.eval_defect == "no-task":
                metrics["accuracy"] = 0.5
            return Message(RecordDict({records.METRICS: MetricRecord(metrics)}), reply_to=msg)

        self.app = app
        self.grid = InProcessGrid(app, len(silos), run_config={})

    def received_by(self, kind: str) -> dict[int, dict[str, np.ndarray]]:
        return {node: arrays for k, node, arrays, _ in self.received if k == kind}
