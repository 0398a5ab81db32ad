"""Server strategies driven through ``InProcessGrid`` against fake ClientApps with controlled replies.

Every expected number below is computed by hand from the fake silos' example counts and deltas
(written out next to the assertion), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmtl import records
from fedmtl.config import TrainConfig
from fedmtl.records import SiloInfo
from fedmtl.runtime import InProcessGrid
from fedmtl.tasks import TaskSpec
from strategies import STRATEGIES, FedAvg, RoundRecord, TaskAwareStrategy
from strategies.fedavg import FedAvgParams

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


# ---------------------------------------------------------------------------------------- fakes
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
        return SiloInfo(
            silo_id=silo_id,
            tasks=self.tasks,
            num_train=int(self.num_examples) if math.isfinite(self.num_examples) else 0,
            num_test=7,
            train_per_task={t: 10 for t in self.tasks},
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
    content = RecordDict(
        {records.UPDATE: records.to_array_record(deltas), records.METRICS: MetricRecord(metrics)}
    )
    if defect == "missing-update":
        content = RecordDict({records.METRICS: MetricRecord(metrics)})
    elif defect == "missing-metrics":
        content = RecordDict({records.UPDATE: records.to_array_record(deltas)})
    return content


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
            record = silo.info(pid).to_record()
            if silo.query_defect == "raise":
                raise RuntimeError("cannot read my data")
            if silo.query_defect is not None and silo.query_defect.startswith("drop:"):
                del record[silo.query_defect.removeprefix("drop:")]
            return Message(RecordDict({records.SILO: record}), reply_to=msg)

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            _, silo = silo_of(context)
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
            per_task = msg.content.config_records[records.CONFIG]["update-mode"] == "per_task"
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


def make_fedavg(seed: int = 0, observers: tuple = (), **overrides: Any) -> FedAvg:
    params = FedAvgParams(
        min_train_nodes=overrides.pop("min_train_nodes", 1),
        min_evaluate_nodes=overrides.pop("min_evaluate_nodes", 1),
        min_available_nodes=overrides.pop("min_available_nodes", 1),
        **overrides,
    )
    return FedAvg(params, TASKS, TrainConfig(), seed=seed, observers=observers)


def one_round(
    strategy: TaskAwareStrategy, fed: Federation, drop_nodes: tuple[int, ...] = ()
) -> tuple[dict[str, np.ndarray], MetricRecord | None, list[Message]]:
    """configure_train -> grid -> aggregate_train for round 1; messages to ``drop_nodes`` are
    dropped (those silos were not sampled)."""
    messages = list(
        strategy.configure_train(
            1, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
        )
    )
    messages = [m for m in messages if m.metadata.dst_node_id not in drop_nodes]
    replies = list(fed.grid.send_and_receive(messages))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return records.from_array_record(arrays), metrics, messages


def assert_moved(new: dict[str, np.ndarray], key: str, coefficient: float) -> None:
    """``new[key]`` is the initial array plus ``coefficient * pattern(key)``."""
    expected = initial_arrays()[key] + np.float32(coefficient) * pattern(key)
    assert new[key].dtype == np.float32
    np.testing.assert_allclose(new[key], expected, rtol=1e-6, atol=1e-6, err_msg=key)


def assert_unchanged(new: dict[str, np.ndarray], keys: set[str]) -> None:
    start = initial_arrays()
    for key in keys:
        np.testing.assert_array_equal(new[key], start[key], err_msg=key)
        assert new[key].dtype == start[key].dtype


# The federation of the hand computation. Per-task counts n_{s,t}, silo totals n_s and delta values:
#   silo 0 {a, b}: n_a=10, n_b=30, n=35;  trunk 1.0, a 1.0, b 2.0
#   silo 1 {b, c}: n_b=20, n_c=5,  n=22;  trunk 2.0, b -1.0, c 4.0
#   silo 2 {a, c}: n_a=40, n_c=15, n=50;  trunk -1.0, a 0.5, c -1.0
#   silo 3 {c, d}: not sampled in round 1 (its message is dropped).
# Heads (over holders, by n_{s,t}):
#   a: (10*1.0 + 40*0.5) / (10 + 40) = 30/50 = 0.6
#   b: (30*2.0 + 20*(-1.0)) / (30 + 20) = 40/50 = 0.8
#   c: (5*4.0 + 15*(-1.0)) / (5 + 15) = 5/20 = 0.25
#   d: no sampled holder -> unchanged
# Trunk (examples): (35*1.0 + 22*2.0 + 50*(-1.0)) / (35 + 22 + 50) = 29/107
# Train loss (by n_{s,t}): a (10*1 + 40*0.5)/50 = 0.6; b (30*2 + 20*4)/50 = 2.8; c (5*3 + 15*1)/20 = 1.5
EXPECTED_HEADS = {"a": 0.6, "b": 0.8, "c": 0.25}
EXPECTED_TRUNK = 29 / 107


def hand_silos() -> list[FakeSilo]:
    return [
        FakeSilo(
            ("a", "b"), 35, {"a": 10, "b": 30}, 1.0, {"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}
        ),
        FakeSilo(
            ("b", "c"), 22, {"b": 20, "c": 5}, 2.0, {"b": -1.0, "c": 4.0}, {"b": 4.0, "c": 3.0}
        ),
        FakeSilo(
            ("a", "c"), 50, {"a": 40, "c": 15}, -1.0, {"a": 0.5, "c": -1.0}, {"a": 0.5, "c": 1.0}
        ),
        FakeSilo(("c", "d"), 99, {"c": 70, "d": 70}, 9.0, {"c": 9.0, "d": 9.0}),
    ]


# ---------------------------------------------------------------------------------------- 1. heads
def test_heads_are_averaged_per_task_over_holders_by_task_examples() -> None:
    fed = Federation(hand_silos())
    strategy = make_fedavg()
    new, metrics, messages = one_round(strategy, fed, drop_nodes=(1003,))

    assert sorted(m.metadata.dst_node_id for m in messages) == [1000, 1001, 1002]
    for task, coefficient in EXPECTED_HEADS.items():
        for key in head_keys(task):
            assert_moved(new, key, coefficient)
    assert_unchanged(new, head_keys("d"))  # held only by silo 3, which was not sampled
    for key in TRUNK_KEYS:
        assert_moved(new, key, EXPECTED_TRUNK)
    assert set(new) == set(SHAPES)
    assert metrics is not None
    assert metrics["num-updates"] == 3
    assert metrics["num-rejected"] == 0
    assert metrics["a/train-loss"] == pytest.approx(0.6)
    assert metrics["b/train-loss"] == pytest.approx(2.8)
    assert metrics["c/train-loss"] == pytest.approx(1.5)
    assert "d/train-loss" not in metrics
    assert strategy.rejections == []


def test_task_with_zero_examples_on_a_silo_does_not_dilute_the_head() -> None:
    # silo 0 holds a with n_a = 0, silo 1 holds a with n_a = 20: head a moves by silo 1's delta only.
    silos = [
        FakeSilo(("a",), 5, {"a": 0}, 0.0, {"a": 8.0}),
        FakeSilo(("a",), 5, {"a": 20}, 0.0, {"a": -0.5}),
    ]
    new, _, _ = one_round(make_fedavg(), Federation(silos))
    for key in head_keys("a"):
        assert_moved(new, key, -0.5)


# ---------------------------------------------------------------------------------------- 2. trunk
# trunk deltas 1.0, 2.0, -0.5 (times pattern) from silos with 10, 30, 60 examples:
#   examples: (10*1.0 + 30*2.0 + 60*(-0.5)) / 100 = 40/100 = 0.4
#   uniform:  (1.0 + 2.0 - 0.5) / 3 = 2.5/3
@pytest.mark.parametrize(("weighting", "coefficient"), [("examples", 0.4), ("uniform", 2.5 / 3)])
def test_trunk_fedavg(weighting: str, coefficient: float) -> None:
    silos = [
        FakeSilo(("a",), 10, {"a": 10}, 1.0),
        FakeSilo(("b",), 30, {"b": 30}, 2.0),
        FakeSilo(("a", "b"), 60, {"a": 60, "b": 60}, -0.5),
    ]
    new, _, _ = one_round(make_fedavg(weighting=weighting), Federation(silos))
    for key in TRUNK_KEYS:
        assert_moved(new, key, coefficient)


def test_trunk_unchanged_when_all_weights_are_zero() -> None:
    # Every silo reports 0 examples in total but counts per task: the trunk stays, heads still move.
    # head a: (10*1.0 + 30*3.0) / 40 = 2.5
    silos = [
        FakeSilo(("a",), 0, {"a": 10}, 1.0, {"a": 1.0}),
        FakeSilo(("a",), 0, {"a": 30}, 2.0, {"a": 3.0}),
    ]
    new, metrics, _ = one_round(make_fedavg(weighting="examples"), Federation(silos))
    assert_unchanged(new, TRUNK_KEYS)
    for key in head_keys("a"):
        assert_moved(new, key, 2.5)
    assert metrics is not None and metrics["num-updates"] == 2


# ------------------------------------------------------------------------- 3. what a silo receives
def test_silo_receives_only_trunk_and_heads_of_its_tasks() -> None:
    fed = Federation(hand_silos())
    strategy = make_fedavg()
    start = initial_arrays()
    messages = list(
        strategy.configure_train(3, records.to_array_record(start), ConfigRecord(), fed.grid)
    )
    expected = {
        1000: TRUNK_KEYS | head_keys("a") | head_keys("b"),
        1001: TRUNK_KEYS | head_keys("b") | head_keys("c"),
        1002: TRUNK_KEYS | head_keys("a") | head_keys("c"),
        1003: TRUNK_KEYS | head_keys("c") | head_keys("d"),
    }
    sent = {
        m.metadata.dst_node_id: records.from_array_record(m.content.array_records[records.ARRAYS])
        for m in messages
    }
    assert {node: set(arrays) for node, arrays in sent.items()} == expected
    for message in messages:
        assert message.metadata.message_type == "train"
        config = message.content.config_records[records.CONFIG]
        assert config[records.SERVER_ROUND] == 3
        assert records.train_request_from_record(config) == records.TrainRequest(TrainConfig())
    for arrays in sent.values():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, start[key])

    fed.grid.send_and_receive(messages)
    received = fed.received_by("train")
    assert {node: set(arrays) for node, arrays in received.items()} == expected
    for arrays in received.values():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, start[key])

    # evaluation messages are restricted the same way
    eval_messages = strategy.configure_evaluate(
        3, records.to_array_record(start), ConfigRecord(), fed.grid
    )
    fed.grid.send_and_receive(eval_messages)
    evaluated = fed.received_by("evaluate")
    assert {node: set(arrays) for node, arrays in evaluated.items()} == expected


# ---------------------------------------------------------------------------------------- 4. sampling
def sampled(strategy: TaskAwareStrategy, fed: Federation, server_round: int = 1) -> list[int]:
    messages = strategy.configure_train(
        server_round, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
    )
    return [m.metadata.dst_node_id for m in messages]


def six_silos() -> list[FakeSilo]:
    return [FakeSilo(("a",), 10, {"a": 10}) for _ in range(6)]


@pytest.mark.parametrize(
    ("fraction", "minimum", "expected"),
    [(0.5, 1, 3), (1.0, 1, 6), (0.5, 5, 5), (0.5, 10, 6), (0.1, 1, 1), (0.34, 1, 3)],
)
def test_sample_size(fraction: float, minimum: int, expected: int) -> None:
    fed = Federation(six_silos())
    strategy = make_fedavg(fraction_train=fraction, min_train_nodes=minimum)
    for server_round in range(1, 6):
        nodes = sampled(strategy, fed, server_round)
        assert len(nodes) == expected
        assert len(set(nodes)) == expected
        assert set(nodes) <= set(range(1000, 1006))


def test_sample_size_is_not_inflated_by_float_rounding() -> None:
    fed = Federation([FakeSilo(("a",), 10, {"a": 10}) for _ in range(25)])
    strategy = make_fedavg(fraction_train=0.28)
    assert len(sampled(strategy, fed)) == 7


def test_sampling_is_deterministic_for_a_seed() -> None:
    fed = Federation(six_silos())
    first = make_fedavg(seed=7, fraction_train=0.5)
    second = make_fedavg(seed=7, fraction_train=0.5)
    rounds_first = [sampled(first, fed, r) for r in range(1, 6)]
    rounds_second = [sampled(second, fed, r) for r in range(1, 6)]
    assert rounds_first == rounds_second
    assert len({tuple(nodes) for nodes in rounds_first}) > 1  # rounds draw afresh


def test_different_seeds_can_sample_differently() -> None:
    fed = Federation(six_silos())
    draws = {tuple(sampled(make_fedavg(seed=seed, fraction_train=0.5), fed)) for seed in range(10)}
    assert len(draws) > 1


# ---------------------------------------------------------------------------------------- 5. rejections
@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        ("raise", "client error"),
        ("nan-delta", "non-finite"),
        ("inf-delta", "non-finite"),
        ("int-delta", "non-float"),
        ("missing-update", records.UPDATE),
        ("missing-metrics", records.METRICS),
        ("missing-key", "keys differ"),
        ("extra-key", "keys differ"),
        ("wrong-shape", "shape"),
        ("negative-n", records.NUM_EXAMPLES),
        ("nan-n", records.NUM_EXAMPLES),
        ("negative-task-n", "a/num-examples"),
        ("nan-task-n", "b/num-examples"),
        ("missing-task-n", "a/num-examples"),
    ],
)
def test_bad_train_reply_is_rejected_and_the_round_goes_on(defect: str, reason: str) -> None:
    # Silos 0-2 of the hand computation reply correctly; silo 3 (tasks a, b, with a huge weight and
    # huge deltas that would dominate every average) replies with one defect.
    silos = [*hand_silos()[:3], FakeSilo(("a", "b"), 1000, {"a": 1000, "b": 1000}, 50.0)]
    silos[3].heads = {"a": 50.0, "b": 50.0}
    silos[3].train_defect = defect
    fed = Federation(silos)
    strategy = make_fedavg()
    new, metrics, messages = one_round(strategy, fed)

    assert len(messages) == 4
    assert len(strategy.rejections) == 1
    rejection = strategy.rejections[0]
    assert rejection["round"] == 1
    assert rejection["node"] == 1003
    assert rejection["silo"] == 3
    assert "rejected" in rejection["reason"]
    assert reason in rejection["reason"]
    assert metrics is not None
    assert metrics["num-updates"] == 3
    assert metrics["num-rejected"] == 1
    # the aggregate of the three valid replies only (hand computation above)
    for task, coefficient in EXPECTED_HEADS.items():
        for key in head_keys(task):
            assert_moved(new, key, coefficient)
    for key in TRUNK_KEYS:
        assert_moved(new, key, EXPECTED_TRUNK)
    assert_unchanged(new, head_keys("d"))


def test_all_replies_rejected_leaves_global_arrays_unchanged() -> None:
    silos = hand_silos()[:3]
    for silo, defect in zip(silos, ["nan-delta", "raise", "wrong-shape"], strict=True):
        silo.train_defect = defect
    strategy = make_fedavg()
    new, metrics, _ = one_round(strategy, Federation(silos))
    assert_unchanged(new, set(SHAPES))
    assert set(new) == set(SHAPES)
    assert [r["silo"] for r in strategy.rejections] == [0, 1, 2]
    assert metrics is not None
    assert metrics["num-updates"] == 0
    assert metrics["num-rejected"] == 3


def test_rejections_accumulate_across_rounds() -> None:
    silos = hand_silos()[:3]
    silos[1].train_defect = "nan-delta"
    fed = Federation(silos)
    strategy = make_fedavg()
    result = strategy.start(fed.grid, records.to_array_record(initial_arrays()), num_rounds=2)
    assert [r["round"] for r in strategy.rejections] == [1, 2]
    assert [len(r.rejected) for r in strategy.history] == [1, 1]
    assert result.train_metrics_clientapp[2]["num-rejected"] == 1


# ---------------------------------------------------------------------------------------- 6. evaluation
# silo 0 {a, b}: a n=10 correct=7 loss_sum=5;  b n=4 correct=1 loss_sum=2
# silo 1 {a, c}: a n=30 correct=12 loss_sum=24; c n=8 loss_sum=16 abs_sum=8 y_sum=16 y_sq_sum=64
# pooled a: accuracy 19/40 = 0.475 (the mean of silo accuracies would be 0.55), loss 29/40 = 0.725
# pooled b: accuracy 1/4 = 0.25, loss 2/4 = 0.5
# pooled c: mse = loss = 16/8 = 2, mae = 8/8 = 1, variance = 64/8 - (16/8)^2 = 4, r2 = 1 - 2/4 = 0.5
EVAL_SILOS = [
    {
        "a/n": 10.0,
        "a/correct": 7.0,
        "a/loss_sum": 5.0,
        "b/n": 4.0,
        "b/correct": 1.0,
        "b/loss_sum": 2.0,
    },
    {
        "a/n": 30.0,
        "a/correct": 12.0,
        "a/loss_sum": 24.0,
        "c/n": 8.0,
        "c/loss_sum": 16.0,
        "c/abs_sum": 8.0,
        "c/y_sum": 16.0,
        "c/y_sq_sum": 64.0,
    },
]
EXPECTED_EVAL = {
    "a/accuracy": 0.475,
    "a/loss": 0.725,
    "b/accuracy": 0.25,
    "b/loss": 0.5,
    "c/loss": 2.0,
    "c/mse": 2.0,
    "c/mae": 1.0,
    "c/r2": 0.5,
}


def eval_silos() -> list[FakeSilo]:
    return [
        FakeSilo(("a", "b"), eval_metrics=EVAL_SILOS[0]),
        FakeSilo(("a", "c"), eval_metrics=EVAL_SILOS[1]),
    ]


def run_evaluate(strategy: TaskAwareStrategy, fed: Federation) -> MetricRecord | None:
    messages = list(
        strategy.configure_evaluate(
            2, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
        )
    )
    assert len(messages) == len(fed.silos)
    for message in messages:
        assert message.metadata.message_type == "evaluate"
        assert message.content.config_records[records.CONFIG][records.SERVER_ROUND] == 2
    return strategy.aggregate_evaluate(2, fed.grid.send_and_receive(messages))


def test_evaluation_pools_statistics_exactly() -> None:
    strategy = make_fedavg()
    metrics = run_evaluate(strategy, Federation(eval_silos()))
    assert metrics is not None
    assert dict(metrics) == pytest.approx(EXPECTED_EVAL)
    assert strategy.rejections == []


@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("unheld-task", "unexpected metric"),
        ("no-task", "unexpected metric"),
        ("raise", "client error"),
    ],
)
def test_bad_evaluate_reply_is_rejected_and_the_rest_pooled(defect: str, reason: str) -> None:
    bad = FakeSilo(
        ("b", "c"),
        eval_metrics={"b/n": 100.0, "b/correct": 100.0, "b/loss_sum": 0.0, "c/n": 50.0},
        eval_defect=defect,
    )
    bad.eval_metrics.update({"c/loss_sum": 0.0, "c/abs_sum": 0.0, "c/y_sum": 0.0})
    bad.eval_metrics["c/y_sq_sum"] = 1.0
    strategy = make_fedavg()
    metrics = run_evaluate(strategy, Federation([*eval_silos(), bad]))
    assert metrics is not None
    assert dict(metrics) == pytest.approx(EXPECTED_EVAL)
    assert len(strategy.rejections) == 1
    assert strategy.rejections[0]["silo"] == 2
    assert "evaluate reply rejected" in strategy.rejections[0]["reason"]
    assert reason in strategy.rejections[0]["reason"]


def test_evaluation_with_no_usable_reply_returns_none() -> None:
    silos = eval_silos()
    for silo in silos:
        silo.eval_defect = "nan"
    strategy = make_fedavg()
    assert run_evaluate(strategy, Federation(silos)) is None
    assert len(strategy.rejections) == 2


# ---------------------------------------------------------------------------------------- 7. bytes
def test_bytes_down_and_up_count_the_array_records() -> None:
    silos = hand_silos()
    silos[3].train_defect = "nan-delta"  # a rejected update still travelled up
    fed = Federation(silos)
    strategy = make_fedavg()
    messages = list(
        strategy.configure_train(
            1, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
        )
    )
    down = sum(m.content.array_records[records.ARRAYS].count_bytes() for m in messages)
    assert down > 0
    assert strategy.bytes_down == down
    # the same payload computed from what the fake clients hold: float32 data + key lengths
    replies = list(fed.grid.send_and_receive(messages))
    received = fed.received_by("train")
    assert sum(records.to_array_record(a).count_bytes() for a in received.values()) == down
    assert strategy.bytes_up == 0
    strategy.aggregate_train(1, replies)
    up = sum(r.content.array_records[records.UPDATE].count_bytes() for r in replies)
    assert strategy.bytes_up == up > 0
    assert len(strategy.rejections) == 1

    eval_messages = list(
        strategy.configure_evaluate(
            1, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
        )
    )
    eval_down = sum(m.content.array_records[records.ARRAYS].count_bytes() for m in eval_messages)
    assert strategy.bytes_down == down + eval_down


def test_bytes_exclude_error_replies() -> None:
    silos = hand_silos()[:2]
    silos[1].train_defect = "raise"
    fed = Federation(silos)
    strategy = make_fedavg()
    _, _, _ = one_round(strategy, fed)
    first = fed.received_by("train")[1000]
    deltas = silos[0].deltas(first)
    assert strategy.bytes_up == records.to_array_record(deltas).count_bytes()


# ---------------------------------------------------------------------------------------- 8. start()
class Recorder:
    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_round(self, record: RoundRecord) -> None:
        self.records.append(record)


def constant_silos() -> list[FakeSilo]:
    # every silo sends trunk delta 0.5 * pattern and head delta 0.25 * pattern for its tasks, so the
    # averages are exactly those values whatever the weights.
    metrics = [EVAL_SILOS[0], EVAL_SILOS[1], {"c/n": 0.0}]
    tasks = [("a", "b"), ("a", "c"), ("c",)]
    return [
        FakeSilo(
            t,
            10 * (i + 1),
            {task: 5 * (i + 1) for task in t},
            0.5,
            dict.fromkeys(t, 0.25),
            dict.fromkeys(t, 1.0),
            m,
        )
        for i, (t, m) in enumerate(zip(tasks, metrics, strict=True))
    ]


def test_start_runs_rounds_and_reports_to_observers() -> None:
    fed = Federation(constant_silos())
    recorder = Recorder()
    strategy = make_fedavg(observers=(recorder,), evaluate_every=2)
    server_calls: list[int] = []

    def evaluate_fn(server_round: int, arrays: Any) -> MetricRecord:
        server_calls.append(server_round)
        return MetricRecord({"server": float(server_round)})

    rounds = 5
    result = strategy.start(
        fed.grid,
        records.to_array_record(initial_arrays()),
        num_rounds=rounds,
        evaluate_fn=evaluate_fn,
    )
    final = records.from_array_record(result.arrays)
    for key in TRUNK_KEYS:
        assert_moved(final, key, 0.5 * rounds)
    for task in ("a", "b", "c"):
        for key in head_keys(task):
            assert_moved(final, key, 0.25 * rounds)
    assert_unchanged(final, head_keys("d"))

    # round r's train messages carry the model after r - 1 rounds
    train_logs = [
        (node, arrays, config) for k, node, arrays, config in fed.received if k == "train"
    ]
    assert len(train_logs) == 3 * rounds
    for node, arrays, config in train_logs:
        done = config[records.SERVER_ROUND] - 1
        np.testing.assert_allclose(
            arrays["trunk.w"],
            initial_arrays()["trunk.w"] + np.float32(0.5 * done) * pattern("trunk.w"),
            rtol=1e-6,
            err_msg=str(node),
        )

    assert [r.server_round for r in strategy.history] == list(range(1, rounds + 1))
    assert recorder.records == strategy.history
    assert all(r.num_sampled == 3 and r.num_updates == 3 for r in strategy.history)
    assert all(r.rejected == [] for r in strategy.history)
    assert strategy.history[0].train_loss == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert sum(r.bytes_down for r in strategy.history) == strategy.bytes_down
    assert sum(r.bytes_up for r in strategy.history) == strategy.bytes_up

    evaluated_rounds = [2, 4, 5]
    eval_logs = sorted({c[records.SERVER_ROUND] for k, _, _, c in fed.received if k == "evaluate"})
    assert eval_logs == evaluated_rounds
    assert sorted(result.evaluate_metrics_clientapp) == evaluated_rounds
    assert sorted(result.train_metrics_clientapp) == list(range(1, rounds + 1))
    assert server_calls == list(range(1, rounds + 1))
    assert sorted(result.evaluate_metrics_serverapp) == list(range(1, rounds + 1))
    for record in strategy.history:
        if record.server_round in evaluated_rounds:
            assert record.personal is not None
            assert record.personal["a"] == pytest.approx({"accuracy": 0.475, "loss": 0.725})
            assert record.personal["c"] == pytest.approx(
                {"loss": 2.0, "mse": 2.0, "mae": 1.0, "r2": 0.5}
            )
            assert record.per_silo[0]["a"] == pytest.approx({"accuracy": 0.7, "loss": 0.5})
            assert record.per_silo[1]["a"] == pytest.approx({"accuracy": 0.4, "loss": 0.8})
            assert record.per_silo[2] == {"c": {}}  # n = 0: no metric
        else:
            assert record.personal is None
            assert record.per_silo == {}
        # every round's bytes: 3 train payloads (+ 3 evaluate payloads when evaluated)
        assert record.bytes_down > 0 and record.bytes_up > 0


# ---------------------------------------------------------------------------------------- 9. discovery
@pytest.mark.parametrize(
    "defect",
    ["drop:num-train", "drop:tasks", "drop:silo-id", "drop:a/num-train", "unknown-task", "raise"],
)
def test_malformed_silo_description_is_ignored(
    defect: str, caplog: pytest.LogCaptureFixture
) -> None:
    silos = [FakeSilo(("a",), 10, {"a": 10}, 1.0) for _ in range(3)]
    bad = FakeSilo(("a",), 10, {"a": 10}, 1.0, query_defect=defect)
    if defect == "unknown-task":
        bad = FakeSilo(("a", "zzz"), 10, {"a": 10, "zzz": 10}, 1.0)
    silos.insert(1, bad)  # node 1001
    fed = Federation(silos)
    strategy = make_fedavg(fraction_train=1.0)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        strategy.discover(fed.grid)
    assert set(strategy.silos) == {1000, 1002, 1003}
    assert any("1001" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    for server_round in range(1, 4):
        assert sampled(strategy, fed, server_round) == [1000, 1002, 1003]
    messages = strategy.configure_evaluate(
        1, records.to_array_record(initial_arrays()), ConfigRecord(), fed.grid
    )
    assert [m.metadata.dst_node_id for m in messages] == [1000, 1002, 1003]
    assert 1001 not in {node for _, node, _, _ in fed.received}
    assert fed.queries.count(1001) == 1, "an ignored node is not asked again every round"


def test_two_nodes_claiming_one_silo_keep_the_first() -> None:
    """A misconfigured deployment (two nodes with the same data) must not count a silo twice."""
    fed = Federation([FakeSilo(("a",), 10, {"a": 10}, 1.0) for _ in range(3)])
    fed.grid.contexts[1002].node_config["partition-id"] = 0  # node 1002 also says "silo 0"
    strategy = make_fedavg()
    strategy.discover(fed.grid)
    assert set(strategy.silos) == {1000, 1001}
    assert strategy.ignored == {1002}


def test_discovery_queries_each_valid_node_once() -> None:
    fed = Federation(hand_silos())
    strategy = make_fedavg()
    strategy.start(fed.grid, records.to_array_record(initial_arrays()), num_rounds=2)
    assert sorted(fed.queries) == [1000, 1001, 1002, 1003]
    assert strategy.silos[1001].tasks == ("b", "c")
    assert strategy.silos[1001].silo_id == 1


# ---------------------------------------------------------------------------------------- 10. contract
def contract_silos() -> list[FakeSilo]:
    """Three silos over tasks a, b, c (d is held by nobody) with small, distinct deltas."""
    return [
        FakeSilo(
            ("a", "b"),
            12,
            {"a": 12, "b": 8},
            0.02,
            {"a": 0.01, "b": -0.03},
            eval_metrics=EVAL_SILOS[0],
        ),
        FakeSilo(("b", "c"), 20, {"b": 20, "c": 4}, -0.01, {"b": 0.02, "c": 0.05}),
        FakeSilo(
            ("a", "c"),
            7,
            {"a": 7, "c": 7},
            0.03,
            {"a": -0.02, "c": 0.01},
            eval_metrics=EVAL_SILOS[1],
        ),
    ]


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_contract(name: str) -> None:
    entry = STRATEGIES.get(name)
    assert issubclass(entry.factory, TaskAwareStrategy)
    params = dataclasses.replace(
        entry.params(), min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1
    )
    recorder = Recorder()
    strategy = entry.factory(params, TASKS, TrainConfig(), seed=0, observers=[recorder])
    fed = Federation(contract_silos())
    start = initial_arrays()
    result = strategy.start(fed.grid, records.to_array_record(start), num_rounds=2)

    final = records.from_array_record(result.arrays)
    assert set(final) == set(start)
    for key, value in final.items():
        assert value.shape == start[key].shape, key
        assert value.dtype == start[key].dtype, key
        assert np.isfinite(value).all(), key
    assert_unchanged(final, head_keys("d"))
    assert any(not np.array_equal(final[k], start[k]) for k in TRUNK_KEYS)
    assert len(strategy.history) == 2 == len(recorder.records)
    assert strategy.rejections == []
    assert all(r.num_updates == r.num_sampled > 0 for r in strategy.history)
    assert strategy.bytes_down > 0 and strategy.bytes_up > 0


def test_in_process_grid_push_and_pull_keep_every_reply() -> None:
    """Message ids stay unique after a partial pull, so no reply is overwritten."""
    fed = Federation(six_silos())

    def query(node: int) -> Message:
        content = RecordDict({records.CONFIG: ConfigRecord()})
        return Message(content, dst_node_id=node, message_type="query")

    first = list(fed.grid.push_messages([query(1000)]))
    second = list(fed.grid.push_messages([query(1001), query(1002)]))
    assert len(list(fed.grid.pull_messages([first[0], second[0]]))) == 2
    third = list(fed.grid.push_messages([query(1003), query(1004)]))  # one reply still unpulled
    assert len(set(first + second + third)) == 5
    pulled = list(fed.grid.pull_messages([second[1], *third]))
    assert [m.metadata.src_node_id for m in pulled] == [1002, 1003, 1004]
