"""The balancing method over fake silos: per-task rows, losses, modes, replies, server optimizer.

Expected numbers are computed by hand from the fake silos' counts and per-task shares (each share
of silo s for task t is ``task_trunk[t] * pattern(key)``), never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message

from fedmtl.core import records
from fedmtl.core.records import TrainRequest
from fedmtl.core.registry import PluginConfig
from strategies.balanced import Balanced, BalancedSilo
from strategies.balancing import WEIGHTINGS
from strategies.engine import Engine, ServerOptParams
from tests.support.engines import assert_moved, assert_unchanged, make_engine, one_round
from tests.support.fakes import (
    TRUNK_KEYS,
    FakeSilo,
    Federation,
    head_keys,
    initial_model,
    pattern,
)

# Per-task counts n_{s,t}, per-task trunk shares and losses before training:
#   silo 0 {a, b}: n_a=10, n_b=30;  shares a 1.0,  b 2.0;   loss_before a 2.0, b 1.0
#   silo 1 {b, c}: n_b=20, n_c=5;   shares b -1.0, c 4.0;   loss_before b 3.0, c 1.0
#   silo 2 {a, c}: n_a=40, n_c=15;  shares a 0.5,  c -1.0;  loss_before a 1.0, c 2.0
# D_a = (10*1 + 40*0.5)/50 = 0.6;  D_b = (30*2 - 20*1)/50 = 0.8;  D_c = (5*4 - 15*1)/20 = 0.25
# L_a = (10*2 + 40*1)/50 = 1.2;    L_b = (30*1 + 20*3)/50 = 1.8;  L_c = (5*1 + 15*2)/20 = 1.75
ROWS = {"a": 0.6, "b": 0.8, "c": 0.25}
LOSSES = [1.2, 1.8, 1.75]


def three_silos(**extra: Any) -> list[FakeSilo]:
    specs = [
        (("a", "b"), {"a": 10, "b": 30}, {"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 1.0}),
        (("b", "c"), {"b": 20, "c": 5}, {"b": -1.0, "c": 4.0}, {"b": 3.0, "c": 1.0}),
        (("a", "c"), {"a": 40, "c": 15}, {"a": 0.5, "c": -1.0}, {"a": 1.0, "c": 2.0}),
    ]
    return [
        FakeSilo(
            tasks,
            num_examples=sum(counts.values()),
            task_examples=counts,
            trunk=sum(shares.values()),
            heads={t: 0.1 for t in tasks},
            task_trunk=shares,
            loss_before=losses,
            **extra,
        )
        for tasks, counts, shares, losses in specs
    ]


def make(name: str, balancing: str = "server", **method_params: Any) -> Engine:
    """An engine running ``balanced`` with weighting ``name`` (its ``method_params``); keys of
    the common parameters (``server_optimizer``) go to the method's parameters."""
    common = {k: method_params.pop(k) for k in list(method_params) if k == "server_optimizer"}
    weighting = PluginConfig(name, WEIGHTINGS.parse(name, method_params))
    engine = make_engine("balanced", weighting=weighting, balancing=balancing, **common)
    assert isinstance(engine.method, Balanced)
    return engine


class Spy:
    """Wraps a weighting and records what it was called with."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.needs_losses = True
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, list[int]]] = []

    def __call__(self, J: torch.Tensor, losses: torch.Tensor | None, tasks: Any) -> Any:
        self.calls.append((J.clone(), None if losses is None else losses.clone(), list(tasks)))
        return self.inner(J, losses, tasks)


def request_of(message: Message) -> TrainRequest:
    return TrainRequest.from_config(message.content.config_records[records.CONFIG])


@pytest.mark.parametrize(
    ("name", "balancing", "asked"),
    [("dwa", "server", True), ("famo", "both", True), ("dwa", "local", False),
     ("mgda", "server", False), ("mean", "server", False)],
)  # fmt: skip
def test_only_a_loss_based_server_weighting_asks_for_the_losses_before_training(
    name: str, balancing: str, asked: bool
) -> None:
    """The silos' extra pass over their rows (each task's loss of the received model) is asked
    for only where the server weighs tasks by it."""
    engine = make(name, balancing)
    sent = engine.dispatch_train(Federation(three_silos()).grid, 1, initial_model())
    assert {request_of(m).loss_before for m in sent.messages} == {asked}


def test_rows_are_example_weighted_per_task_updates_and_losses() -> None:
    strategy = make("sum")
    method = strategy.method
    assert isinstance(method, Balanced)
    spy = Spy(method.weighting)
    method.weighting = spy  # type: ignore[assignment]
    new, outcome, messages = one_round(strategy, Federation(three_silos()))
    assert all(request_of(m).update_mode == "per_task" for m in messages)
    ((J, losses, tasks),) = spy.calls
    assert tasks == [0, 1, 2]  # a, b, c; d has no holder this round and no row
    flat = np.concatenate([pattern(k).reshape(-1) for k in ["trunk.w", "trunk.b"]])
    for row, task in zip(J.numpy(), "abc", strict=True):
        np.testing.assert_allclose(row, ROWS[task] * flat, rtol=1e-6)
    assert losses is not None
    np.testing.assert_allclose(losses.numpy(), LOSSES)
    for key in TRUNK_KEYS:  # sum: Delta = D_a + D_b + D_c = 1.65
        assert_moved(new, key, 1.65)
    assert outcome.task_weights == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert_unchanged(new, head_keys("d"))


def test_mean_weighting_and_server_optimizer() -> None:
    strategy = make("mean", server_optimizer=ServerOptParams(lr=0.5))
    new, outcome, _ = one_round(strategy, Federation(three_silos()))
    for key in TRUNK_KEYS:  # 0.5 * (0.6 + 0.8 + 0.25) / 3 = 0.275
        assert_moved(new, key, 0.275)
    assert outcome.task_weights == pytest.approx(dict.fromkeys("abc", 1 / 3))


def test_per_task_upload_costs_one_trunk_per_task() -> None:
    joint = make("mean", balancing="local")
    per_task = make("mean")
    one_round(joint, Federation(three_silos()))
    one_round(per_task, Federation(three_silos()))
    trunk_bytes = sum(pattern(k).nbytes for k in TRUNK_KEYS)
    # every silo holds two tasks: one more trunk each (plus the extra arrays' key overhead)
    assert 3 * trunk_bytes <= per_task.bytes_up - joint.bytes_up < 3 * trunk_bytes + 3 * 1024


def test_local_balancing_sends_the_weighting_and_averages_joint_updates() -> None:
    strategy = make("cagrad", balancing="local", c=0.3)
    new, outcome, messages = one_round(strategy, Federation(three_silos()))
    for message in messages:
        request = request_of(message)
        assert request.update_mode == "joint"
        assert request.method.name == "balanced"
        assert request.method.params == {
            "weighting": {"name": "cagrad", "c": 0.3, "rescale": False, "norm_eps": 1e-4}
        }
        assert BalancedSilo.from_spec(request.method.params).batchable() is not None
    # FedAvg over silos weighted by n_s: (40*3 + 25*3 + 55*(-0.5)) / 120 = 1.4791666
    for key in TRUNK_KEYS:
        assert_moved(new, key, (40 * 3.0 + 25 * 3.0 + 55 * -0.5) / 120)
    assert outcome.task_weights == {}


def test_both_balances_at_silos_and_at_the_server() -> None:
    strategy = make("cagrad", balancing="both")
    _, _, messages = one_round(strategy, Federation(three_silos()))
    request = request_of(messages[0])
    assert request.update_mode == "per_task"
    assert request.method.params["weighting"]["name"] == "cagrad"
    assert isinstance(strategy.method, Balanced) and strategy.method.weighting is not None


def test_server_balancing_asks_silos_for_plain_per_task_training() -> None:
    strategy = make("upgrad")
    _, _, messages = one_round(strategy, Federation(three_silos()))
    request = request_of(messages[0])
    assert request.update_mode == "per_task" and request.method.params == {}
    assert BalancedSilo.from_spec(request.method.params).batchable() is None


@pytest.mark.parametrize("defect", ["nan-share", "missing-share", "joint-instead"])
def test_bad_per_task_reply_is_rejected_and_the_round_goes_on(defect: str) -> None:
    silos = three_silos()
    silos[1] = dataclasses.replace(silos[1], train_defect=defect)
    strategy = make("sum")
    new, _, _ = one_round(strategy, Federation(silos))
    assert [r["silo"] for r in strategy.rejections] == [1]
    # without silo 1: D_a = 0.6, D_b = 2.0 (silo 0 only), D_c = -1.0 (silo 2 only)
    for key in TRUNK_KEYS:
        assert_moved(new, key, 0.6 + 2.0 - 1.0)
    assert np.isfinite(new["trunk.w"]).all()


def test_task_whose_holders_report_no_examples_gets_no_row() -> None:
    silos = three_silos()
    silos[1] = dataclasses.replace(silos[1], task_examples={"b": 20, "c": 0})
    strategy = make("sum")
    new, _, _ = one_round(strategy, Federation(silos))
    # D_c from silo 2 only: -1.0; D_a = 0.6, D_b = 0.8
    for key in TRUNK_KEYS:
        assert_moved(new, key, 0.6 + 0.8 - 1.0)


def test_no_task_with_examples_keeps_the_trunk() -> None:
    silos = [dataclasses.replace(s, task_examples=dict.fromkeys(s.tasks, 0)) for s in three_silos()]
    strategy = make("mean")
    new, _, _ = one_round(strategy, Federation(silos))
    assert_unchanged(new, TRUNK_KEYS)
