"""Server strategies driven through ``InProcessGrid`` against fake ClientApps with controlled replies.

Every expected number below is computed by hand from the fake silos' example counts and deltas
(written out next to the assertion), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

import strategies.engine.loop as loop
from fedmtl.app.runtimes import InProcessGrid
from fedmtl.core import records
from fedmtl.core.records import MethodSpec, SiloInfo, TrainRequest
from fedmtl.core.registry import PluginConfig
from fedmtl.core.rounds import RoundRecord
from fedmtl.core.schema import TrainConfig
from strategies import METHODS
from strategies.balancing import WEIGHTINGS
from strategies.engine import (
    Engine,
    FlowerStrategy,
    GlobalModel,
    Method,
    MethodSetup,
    RunContext,
    RunStopped,
    SiloMethod,
    TrunkAndHeads,
)
from tests.support.engines import assert_moved, assert_unchanged, make_fedavg, one_round
from tests.support.fakes import (
    SHAPES,
    TASKS,
    TRUNK_KEYS,
    FakeSilo,
    Federation,
    head_keys,
    initial_arrays,
    initial_model,
    pattern,
)

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
    new, outcome, messages = one_round(strategy, fed, drop_nodes=(1003,))

    assert sorted(m.metadata.dst_node_id for m in messages) == [1000, 1001, 1002]
    for task, coefficient in EXPECTED_HEADS.items():
        for key in head_keys(task):
            assert_moved(new, key, coefficient)
    assert_unchanged(new, head_keys("d"))  # held only by silo 3, which was not sampled
    for key in TRUNK_KEYS:
        assert_moved(new, key, EXPECTED_TRUNK)
    assert set(new) == set(SHAPES)
    assert outcome.num_updates == 3 and outcome.rejected == []
    assert outcome.train_loss == pytest.approx({"a": 0.6, "b": 2.8, "c": 1.5})  # d: no holder
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
@pytest.mark.parametrize(
    ("silo_weighting", "coefficient"), [("examples", 0.4), ("uniform", 2.5 / 3)]
)
def test_trunk_fedavg(silo_weighting: str, coefficient: float) -> None:
    silos = [
        FakeSilo(("a",), 10, {"a": 10}, 1.0),
        FakeSilo(("b",), 30, {"b": 30}, 2.0),
        FakeSilo(("a", "b"), 60, {"a": 60, "b": 60}, -0.5),
    ]
    new, _, _ = one_round(make_fedavg(silo_weighting=silo_weighting), Federation(silos))
    for key in TRUNK_KEYS:
        assert_moved(new, key, coefficient)


def test_trunk_unchanged_when_all_weights_are_zero() -> None:
    # Every silo reports 0 examples in total but counts per task: the trunk stays, heads still move.
    # head a: (10*1.0 + 30*3.0) / 40 = 2.5
    silos = [
        FakeSilo(("a",), 0, {"a": 10}, 1.0, {"a": 1.0}),
        FakeSilo(("a",), 0, {"a": 30}, 2.0, {"a": 3.0}),
    ]
    new, outcome, _ = one_round(make_fedavg(silo_weighting="examples"), Federation(silos))
    assert_unchanged(new, TRUNK_KEYS)
    for key in head_keys("a"):
        assert_moved(new, key, 2.5)
    assert outcome.num_updates == 2


# ------------------------------------------------------------------------- 3. what a silo receives
def test_silo_receives_only_trunk_and_heads_of_its_tasks() -> None:
    fed = Federation(hand_silos())
    strategy = make_fedavg()
    start = initial_arrays()
    messages = list(strategy.dispatch_train(fed.grid, 3, GlobalModel(start)).messages)
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
        assert TrainRequest.from_config(config) == TrainRequest(
            3, TrainConfig(), MethodSpec("fedavg")
        )
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
    eval_messages = strategy.dispatch_evaluate(fed.grid, 3, GlobalModel(start)).messages
    fed.grid.send_and_receive(eval_messages)
    evaluated = fed.received_by("evaluate")
    assert {node: set(arrays) for node, arrays in evaluated.items()} == expected


# ---------------------------------------------------------------------------------------- 4. sampling
def sampled(strategy: Engine, fed: Federation, server_round: int = 1) -> list[int]:
    messages = strategy.dispatch_train(
        fed.grid, server_round, GlobalModel(initial_arrays())
    ).messages
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


class OfflineNodes(InProcessGrid):
    """A grid that behaves as a SuperLink does for nodes that died: it gives each message an id;
    it answers a message to a ``dying`` node (dead, but not yet known to be: listed still) itself
    with Flower's NODE_UNAVAILABLE error (sender: the SuperLink); ``offline`` nodes (missed their
    heartbeats) are not listed. ``back_after``: list them again after that many listings."""

    def __init__(
        self, fed: Federation, offline: set[int], dying: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(fed.app, len(fed.silos), run_config={})
        self.offline, self.dying = set(offline), set(dying)
        self.back_after: int | None = None
        self.listings = 0

    def get_node_ids(self) -> list[int]:
        self.listings += 1
        if self.back_after is not None and self.listings > self.back_after:
            self.offline.clear()
        return [node for node in self.contexts if node not in self.offline]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            if message.metadata.dst_node_id in self.offline | self.dying:
                replies.append(
                    create_message_error_unavailable_res_message(message.metadata, "node_unavail")
                )
            else:
                replies.append(self._deliver(message))
        return replies


def test_a_node_that_died_is_named_by_its_silo_and_asked_again_when_back() -> None:
    """The SuperLink answers for a node that stopped sending heartbeats: the rejection names
    that node and its silo (not the SuperLink), and discovery does not ignore the node for the
    rest of the run: it is asked again when it is back."""
    fed = Federation(hand_silos())
    grid = OfflineNodes(fed, offline=set(), dying={1002})
    engine = make_fedavg()
    sent = engine.dispatch_train(grid, 1, initial_model())
    assert sorted(engine.roster.silos) == [1000, 1001, 1003] and not engine.roster.ignored
    engine.roster.silos[1002] = hand_silos()[2].info(2)  # known from before it died
    sent = engine.dispatch_train(grid, 2, initial_model())
    intake = engine.take_updates(sent, grid.send_and_receive(sent.messages))
    assert [u.silo.silo_id for u in intake.updates] == [0, 1, 3]
    [rejection] = intake.rejected
    assert (rejection["node"], rejection["silo"]) == (1002, 2)
    assert "Node Unavailable" in rejection["reason"]

    fresh = make_fedavg()
    fresh.dispatch_train(grid, 1, initial_model())
    grid.dying.clear()  # restarted: the next round's discovery asks it
    fresh.dispatch_train(grid, 2, initial_model())
    assert sorted(fresh.roster.silos) == [1000, 1001, 1002, 1003]


@pytest.fixture
def quick_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "WAIT_INTERVAL_S", 0.001)


@pytest.mark.usefixtures("quick_waits")
def test_fewer_silos_than_training_needs_are_waited_for_then_stop_the_run() -> None:
    fed = Federation(hand_silos())
    grid = OfflineNodes(fed, offline=set())
    engine = make_fedavg(min_train_nodes=4, wait_for_nodes_s=0.05)
    engine.dispatch_train(grid, 1, initial_model())  # all four known
    grid.offline = {1002}
    with pytest.raises(RunStopped) as stopped:
        engine.dispatch_train(grid, 2, initial_model())
    assert stopped.value.status == "too_few_silos"
    assert "only 3 of the 4 silos" in str(stopped.value) and "gone: [2]" in str(stopped.value)

    grid.back_after = grid.listings + 3  # it comes back while the round waits
    engine = make_fedavg(min_train_nodes=4, wait_for_nodes_s=60.0)
    engine.roster.silos = {1000 + i: silo.info(i) for i, silo in enumerate(hand_silos())}
    sent = engine.dispatch_train(grid, 2, initial_model())
    assert sorted(m.metadata.dst_node_id for m in sent.messages) == [1000, 1001, 1002, 1003]


@pytest.mark.usefixtures("quick_waits")
def test_a_federation_smaller_than_min_train_nodes_trains_with_all_of_it() -> None:
    fed = Federation(hand_silos())
    engine = make_fedavg(min_train_nodes=10, wait_for_nodes_s=0.05)
    sent = engine.dispatch_train(fed.grid, 1, initial_model())
    assert len(sent.messages) == 4


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
    new, outcome, messages = one_round(strategy, fed)

    assert len(messages) == 4
    assert len(strategy.rejections) == 1
    rejection = strategy.rejections[0]
    assert rejection["round"] == 1
    assert rejection["node"] == 1003
    assert rejection["silo"] == 3
    assert "rejected" in rejection["reason"]
    assert reason in rejection["reason"]
    assert outcome.num_updates == 3 and len(outcome.rejected) == 1
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
    new, outcome, _ = one_round(strategy, Federation(silos))
    assert_unchanged(new, set(SHAPES))
    assert set(new) == set(SHAPES)
    assert [r["silo"] for r in strategy.rejections] == [0, 1, 2]
    assert outcome.num_updates == 0 and len(outcome.rejected) == 3


def test_rejections_accumulate_across_rounds() -> None:
    silos = hand_silos()[:3]
    silos[1].train_defect = "nan-delta"
    fed = Federation(silos)
    strategy = make_fedavg()
    strategy.run(fed.grid, initial_model(), 2)
    assert [r["round"] for r in strategy.rejections] == [1, 2]
    assert [len(r.rejected) for r in strategy.history] == [1, 1]


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


def run_evaluate(strategy: Engine, fed: Federation) -> dict[str, float] | None:
    sent = strategy.dispatch_evaluate(fed.grid, 2, initial_model())
    assert len(sent.messages) == len(fed.silos)
    for message in sent.messages:
        assert message.metadata.message_type == "evaluate"
        assert message.content.config_records[records.CONFIG][records.SERVER_ROUND] == 2
    personal = strategy.pool_evaluations(sent, fed.grid.send_and_receive(sent.messages)).personal
    return None if personal is None else dict(records.flat_task_metrics(personal))


def test_evaluation_pools_statistics_exactly() -> None:
    strategy = make_fedavg()
    metrics = run_evaluate(strategy, Federation(eval_silos()))
    assert metrics is not None
    assert dict(metrics) == pytest.approx(EXPECTED_EVAL)
    assert strategy.rejections == []


def test_a_task_without_labelled_test_rows_has_no_pooled_metrics() -> None:
    """Sparse labels: a silo may hold a task (it has training labels) with no labelled test row;
    when no silo has one, the round reports no metric for that task (not an empty one)."""
    silos = [FakeSilo(("a", "b"), eval_metrics=EVAL_SILOS[0] | {"b/n": 0.0}), FakeSilo(("b",))]
    strategy, fed = make_fedavg(), Federation(silos)
    sent = strategy.dispatch_evaluate(fed.grid, 2, initial_model())
    evaluation = strategy.pool_evaluations(sent, fed.grid.send_and_receive(sent.messages))
    assert evaluation.personal == {"a": pytest.approx({"loss": 0.5, "accuracy": 0.7})}
    assert strategy.rejections == []


@pytest.mark.parametrize(
    ("defect", "reason"),
    [
        ("nan", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("unheld-task", "does not hold"),
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
    sent = strategy.dispatch_train(fed.grid, 1, initial_model())
    messages = sent.messages
    down = sum(m.content.array_records[records.ARRAYS].count_bytes() for m in messages)
    assert down > 0
    assert strategy.bytes_down == down
    # the same payload computed from what the fake clients hold: float32 data + key lengths
    replies = list(fed.grid.send_and_receive(messages))
    received = fed.received_by("train")
    assert sum(records.to_array_record(a).count_bytes() for a in received.values()) == down
    assert strategy.bytes_up == 0
    strategy.take_updates(sent, replies)
    up = sum(r.content.array_records[records.UPDATE].count_bytes() for r in replies)
    assert strategy.bytes_up == up > 0
    assert len(strategy.rejections) == 1

    eval_messages = list(
        strategy.dispatch_evaluate(fed.grid, 1, GlobalModel(initial_arrays())).messages
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
    server_calls: list[int] = []

    def evaluate_fn(server_round: int, model: GlobalModel) -> dict[str, dict[str, float]]:
        server_calls.append(server_round)
        return {"a": {"server": float(server_round)}}

    context = RunContext(observers=(recorder,), evaluate_global=evaluate_fn)
    strategy = make_fedavg(context=context, evaluate_every=2)
    rounds = 5
    final = strategy.run(fed.grid, initial_model(), rounds).arrays
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
    assert [r.server_round for r in strategy.history if r.personal] == evaluated_rounds
    assert server_calls == list(range(1, rounds + 1))
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
        strategy.roster.discover(fed.grid, lambda m: strategy.exchange(fed.grid, m))
    assert set(strategy.roster.silos) == {1000, 1002, 1003}
    assert any("1001" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    for server_round in range(1, 4):
        assert sampled(strategy, fed, server_round) == [1000, 1002, 1003]
    messages = strategy.dispatch_evaluate(fed.grid, 1, GlobalModel(initial_arrays())).messages
    assert [m.metadata.dst_node_id for m in messages] == [1000, 1002, 1003]
    assert 1001 not in {node for _, node, _, _ in fed.received}
    assert fed.queries.count(1001) == 1, "an ignored node is not asked again every round"


def test_two_nodes_claiming_one_silo_keep_the_first() -> None:
    """A misconfigured deployment (two nodes with the same data) must not count a silo twice."""
    fed = Federation([FakeSilo(("a",), 10, {"a": 10}, 1.0) for _ in range(3)])
    fed.grid.contexts[1002].node_config["partition-id"] = 0  # node 1002 also says "silo 0"
    strategy = make_fedavg()
    strategy.roster.discover(fed.grid, lambda m: strategy.exchange(fed.grid, m))
    assert set(strategy.roster.silos) == {1000, 1001}
    assert strategy.roster.ignored == {1002}


def test_discovery_queries_each_valid_node_once() -> None:
    fed = Federation(hand_silos())
    strategy = make_fedavg()
    strategy.run(fed.grid, initial_model(), 2)
    assert sorted(fed.queries) == [1000, 1001, 1002, 1003]
    assert strategy.roster.silos[1001].tasks == ("b", "c")
    assert strategy.roster.silos[1001].silo_id == 1


# ---------------------------------------------------------------------------------------- 10. contract
def contract_silos() -> list[FakeSilo]:
    """Three silos over tasks a, b, c (d is held by nobody) with small, distinct deltas. The trunk
    deltas are all positive multiples of one pattern, so their convex hull excludes 0 and every
    balancing method moves the trunk (with rows of both signs MGDA's exact answer would be 0)."""
    return [
        FakeSilo(
            ("a", "b"),
            12,
            {"a": 12, "b": 8},
            0.02,
            {"a": 0.01, "b": -0.03},
            eval_metrics=EVAL_SILOS[0],
        ),
        FakeSilo(("b", "c"), 20, {"b": 20, "c": 4}, 0.01, {"b": 0.02, "c": 0.05}),
        FakeSilo(
            ("a", "c"),
            7,
            {"a": 7, "c": 7},
            0.03,
            {"a": -0.02, "c": 0.01},
            eval_metrics=EVAL_SILOS[1],
        ),
    ]


CONTRACT_CASES = [
    *((name, None) for name in METHODS.names() if name != "balanced"),
    *(("balanced", weighting) for weighting in WEIGHTINGS.names()),
]
"""Every registered method, and ``balanced`` with every registered weighting."""


@pytest.mark.parametrize(("name", "weighting"), CONTRACT_CASES)
def test_method_contract(name: str, weighting: str | None) -> None:
    entry = METHODS.get(name)
    assert issubclass(entry.factory, Method) and issubclass(entry.factory.silo, SiloMethod)
    params = dataclasses.replace(
        entry.params(), min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1
    )
    if weighting is not None:
        choice = PluginConfig(weighting, WEIGHTINGS.parse(weighting, {}))
        params = dataclasses.replace(params, weighting=choice)
    recorder = Recorder()
    method = entry.factory(params, MethodSetup(TASKS, TrainConfig(), 0))
    strategy = Engine(name, method, params, RunContext(observers=[recorder]))
    fed = Federation(contract_silos())
    start = initial_arrays()
    final = strategy.run(fed.grid, GlobalModel(start, method.initial_groups()), 2).arrays
    assert set(final) == set(start)
    for key, value in final.items():
        assert value.shape == start[key].shape, key
        assert value.dtype == start[key].dtype, key
        assert np.isfinite(value).all(), key
    assert_unchanged(final, head_keys("d"))
    # the global trunk moves exactly when the server aggregates one (a TrunkAndHeads method),
    # not when the models live on the silos or per silo at the server
    moved = any(not np.array_equal(final[k], start[k]) for k in TRUNK_KEYS)
    assert moved == isinstance(method, TrunkAndHeads)
    assert len(strategy.history) == 2 == len(recorder.records)
    assert strategy.rejections == []
    assert all(r.num_updates == r.num_sampled > 0 for r in strategy.history)
    silo = SiloInfo(0, ("a",), 1, 1, {"a": 1}, {"a": 1})
    travels = bool(method.arrays_for(silo, GlobalModel(initial_arrays()), "train"))
    assert (strategy.bytes_down > 0 and strategy.bytes_up > 0) == travels  # local: nothing


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


def test_flowers_strategy_api_gives_the_explicit_rounds_result() -> None:
    """configure_train / aggregate_train (Flower's loop, through :class:`FlowerStrategy`) equal
    the engine's own round; the caller's config keys travel, the protocol's own win."""
    explicit, outcome, _ = one_round(make_fedavg(), Federation(hand_silos()))
    fed = Federation(hand_silos())
    strategy = FlowerStrategy(make_fedavg())
    start = records.to_array_record(initial_arrays())
    extra = ConfigRecord({"caller-key": 3, records.SERVER_ROUND: 99})
    messages = list(strategy.configure_train(1, start, extra, fed.grid))
    assert all(m.content.config_records[records.CONFIG]["caller-key"] == 3 for m in messages)
    assert all(
        m.content.config_records[records.CONFIG][records.SERVER_ROUND] == 1 for m in messages
    )
    arrays, metrics = strategy.aggregate_train(1, fed.grid.send_and_receive(messages))
    assert arrays is not None and metrics is not None
    for key, value in records.from_array_record(arrays).items():
        np.testing.assert_array_equal(value, explicit[key])
    assert metrics[records.NUM_UPDATES] == outcome.num_updates == 4
    assert metrics[records.NUM_REJECTED] == 0  # (run_evaluate drives the evaluate adapters)
