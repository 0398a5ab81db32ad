"""The engine's reply checks (``strategies/engine/replies.py``) as pure functions, and the
aggregation math methods share (``strategies/engine/aggregation.py``,
``strategies/balancing/federated.py``), each against a hand computation. (A method checks the
numbers it asked for itself: grouping's affinities in ``tests/test_grouping.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.core.models import is_trunk_key
from fedmtl.core.records import EvaluateReply, SiloInfo, TrainReply
from strategies.balancing import build_weighting
from strategies.balancing.federated import balanced_update
from strategies.engine.aggregation import (
    aggregate_heads,
    flatten,
    mean_train_loss,
    per_task_rows,
    unflatten,
    weighted_mean_delta,
)
from strategies.engine.model import GlobalModel
from strategies.engine.replies import (
    ClientUpdate,
    ReplyError,
    check_evaluate_reply,
    check_silo,
    check_train_reply,
    expected_update_shapes,
)

SILO = SiloInfo(7, ("a", "b"), 20, 5, {"a": 12, "b": 8}, {"a": 3, "b": 2})
SENT = {
    "trunk.w": np.zeros((2, 3), np.float32),
    "trunk.b": np.zeros(2, np.float32),
    "heads.a.w": np.zeros((1, 2), np.float32),
    "heads.b.w": np.zeros((1, 2), np.float32),
}


def serves(key: str, task: str) -> bool:
    return is_trunk_key(key)


def filled(shapes: dict[str, tuple[int, ...]], value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in shapes.items()}


def joint_reply(**overrides: object) -> TrainReply:
    values: dict[str, object] = {
        "deltas": filled({k: v.shape for k, v in SENT.items()}, 1.0),
        "num_examples": 20,
        "steps": 3,
        "task_examples": {"a": 12, "b": 8},
        "train_loss": {"a": 0.5},
    }
    values.update(overrides)
    return TrainReply(**values)  # type: ignore[arg-type]


def test_expected_shapes_per_mode() -> None:
    joint = expected_update_shapes(SENT, SILO, "joint", serves)
    assert joint == {k: v.shape for k, v in SENT.items()}
    per_task = expected_update_shapes(SENT, SILO, "per_task", serves)
    assert set(per_task) == {
        "heads.a.w",
        "heads.b.w",
        *(f"per-task/{t}/trunk.{p}" for t in "ab" for p in "wb"),
    }


def test_a_joint_reply_becomes_a_client_update() -> None:
    update = check_train_reply(1001, joint_reply(), SENT, SILO, "joint", serves)
    assert update.node_id == 1001 and update.silo is SILO and update.task_deltas is None
    assert update.num_examples == 20 and update.task_examples == {"a": 12, "b": 8}
    assert update.train_loss == {"a": 0.5}


def test_per_task_shares_sum_to_the_joint_trunk_delta() -> None:
    heads = filled({"heads.a.w": (1, 2), "heads.b.w": (1, 2)}, 0.5)
    shares = {
        "a": filled({"trunk.w": (2, 3), "trunk.b": (2,)}, 1.0),
        "b": filled({"trunk.w": (2, 3), "trunk.b": (2,)}, -0.25),
    }
    reply = joint_reply(deltas=heads, task_deltas=shares)
    update = check_train_reply(1, reply, SENT, SILO, "per_task", serves)
    np.testing.assert_allclose(update.deltas["trunk.w"], np.full((2, 3), 0.75))
    np.testing.assert_allclose(update.deltas["heads.a.w"], heads["heads.a.w"])
    assert update.task_deltas is not None and set(update.task_deltas) == {"a", "b"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"deltas": {}}, "update keys differ"),
        ({"num_examples": -1}, "num-examples must be a count"),
        ({"task_examples": {"a": 12}}, "b/num-examples is missing"),
        ({"task_examples": {"a": 12, "b": -2}}, "b/num-examples must be a count"),
        ({"train_loss": {"c": 1.0}}, "does not hold"),
    ],
)
def test_bad_train_replies_raise_reply_error(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(ReplyError, match=reason):
        check_train_reply(1, joint_reply(**overrides), SENT, SILO, "joint", serves)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("trunk.w", np.zeros((3, 2), np.float32), "shape"),
        ("trunk.b", np.array([np.nan, 0.0], np.float32), "non-finite"),
        ("heads.a.w", np.zeros((1, 2), np.int64), "non-float"),
    ],
)
def test_bad_arrays_raise_reply_error(key: str, value: np.ndarray, reason: str) -> None:
    reply = joint_reply()
    reply.deltas[key] = value
    with pytest.raises(ReplyError, match=reason):
        check_train_reply(1, reply, SENT, SILO, "joint", serves)


def test_silo_checks() -> None:
    assert check_silo(SILO, ["a", "b", "c"], claimed=[1, 2]) is SILO
    with pytest.raises(ReplyError, match="unknown tasks"):
        check_silo(SILO, ["a"], claimed=[])
    with pytest.raises(ReplyError, match="already held"):
        check_silo(SILO, ["a", "b"], claimed=[7])


def test_evaluate_reply_only_for_own_tasks() -> None:
    reply = EvaluateReply({"a": {"n": 3.0}})
    assert check_evaluate_reply(reply, SILO) is reply
    with pytest.raises(ReplyError, match="does not hold"):
        check_evaluate_reply(EvaluateReply({"c": {"n": 1.0}}), SILO)


# ---------------------------------------------------------------------------------- aggregation
def update(
    silo_id: int, task_examples: dict[str, int], delta: float, **extra: object
) -> ClientUpdate:
    info = SiloInfo(silo_id, tuple(task_examples), 10, 2, task_examples, task_examples)
    deltas = {"trunk.w": np.full(2, delta, np.float32), "heads.a.w": np.full(1, delta, np.float32)}
    values: dict[str, object] = {"train_loss": {}, **extra}
    return ClientUpdate(silo_id, info, deltas, sum(task_examples.values()), task_examples, **values)  # type: ignore[arg-type]


def test_weighted_mean_delta() -> None:
    updates = [update(0, {"a": 1}, 1.0), update(1, {"a": 3}, -1.0)]
    # (1 * 1 + 3 * -1) / 4 = -0.5
    mean = weighted_mean_delta(updates, ["trunk.w"], [1.0, 3.0])
    assert mean is not None
    np.testing.assert_allclose(mean["trunk.w"], [-0.5, -0.5])
    assert weighted_mean_delta(updates, ["trunk.w"], [0.0, 0.0]) is None


def test_heads_average_over_holders_by_task_examples() -> None:
    arrays = {"heads.a.w": np.array([10.0], np.float32), "heads.b.w": np.array([5.0], np.float32)}
    updates = [update(0, {"a": 1}, 2.0), update(1, {"a": 3}, -2.0), update(2, {"b": 4}, 9.0)]
    updates[2].deltas["heads.b.w"] = np.array([9.0], np.float32)
    new = aggregate_heads(GlobalModel(arrays), updates, ["a", "b", "c"])
    # a: 10 + (1 * 2 + 3 * -2) / 4 = 9; b: 5 + 9 = 14; c: no holder, left out
    assert new == {"heads.a.w": pytest.approx([9.0]), "heads.b.w": pytest.approx([14.0])}


def test_mean_train_loss_weights_by_task_examples() -> None:
    updates = [
        update(0, {"a": 1}, 0.0, train_loss={"a": 1.0}),
        update(1, {"a": 3}, 0.0, train_loss={"a": 3.0}),
    ]
    assert mean_train_loss(updates, ["a", "b"]) == {"a": pytest.approx(2.5)}


def test_flatten_unflatten_round_trip() -> None:
    like = {"x": np.zeros((2, 2), np.float32), "y": np.zeros(3, np.float64)}
    vector = torch.arange(7, dtype=torch.float64)
    back = unflatten(vector, like)
    assert back["x"].dtype == np.float32 and back["y"].dtype == np.float64
    torch.testing.assert_close(flatten(back, ["x", "y"]).double(), vector)


def test_per_task_rows_and_the_balanced_update() -> None:
    shares = {
        0: {"a": np.array([1.0, 0.0], np.float32)},
        1: {"a": np.array([3.0, 0.0], np.float32), "b": np.array([0.0, 2.0], np.float32)},
    }
    updates = [
        update(0, {"a": 1}, 0.0, loss_before={"a": 2.0}),
        update(1, {"a": 3, "b": 2}, 0.0, loss_before={"a": 1.0, "b": 4.0}),
    ]
    for u, own in zip(updates, shares.values(), strict=True):
        u.task_deltas = {t: {"trunk.w": v} for t, v in own.items()}
    present, rows, losses = per_task_rows(["a", "b", "c"], updates, ["trunk.w"])
    # D_a = (1 * [1, 0] + 3 * [3, 0]) / 4 = [2.5, 0]; D_b = [0, 2]; L_a = (2 + 3) / 4 = 1.25
    assert present == [0, 1]
    torch.testing.assert_close(
        torch.stack(rows).double(), torch.tensor([[2.5, 0.0], [0.0, 2.0]]).double()
    )
    assert losses == pytest.approx([1.25, 4.0])
    trunk = {"trunk.w": np.zeros(2, np.float32)}
    delta, weights = balanced_update(
        build_weighting("sum"), ["a", "b", "c"], ["a", "b", "c"], updates, trunk, 1
    )
    assert delta is not None and weights == {"a": 1.0, "b": 1.0}
    np.testing.assert_allclose(delta["trunk.w"], [2.5, 2.0])
