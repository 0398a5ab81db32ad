"""Engines over the fake tasks of :mod:`tests.support.fakes`: :func:`make_engine` builds an engine
for a registered method, :func:`one_round` drives one training round through a
:class:`~tests.support.fakes.Federation`, :func:`assert_moved` / :func:`assert_unchanged` check the
arrays it gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from fedmtl.core.schema import TrainConfig
from strategies import METHODS
from strategies.engine import (
    AveragingParams,
    Engine,
    GlobalModel,
    MethodParams,
    MethodSetup,
    RunContext,
    mean_train_loss,
)
from tests.support.fakes import TASKS, Federation, initial_arrays, initial_model, pattern


def make_engine(
    name: str = "fedavg",
    seed: int = 0,
    context: RunContext | None = None,
    params_type: type[MethodParams] | None = None,
    **overrides: Any,
) -> Engine:
    """An engine running method ``name`` over :data:`TASKS`, needing one node to go on;
    ``overrides``: its params (of ``params_type``, default the registered ones)."""
    cls = params_type or METHODS.get(name).params
    params = cls(
        min_train_nodes=overrides.pop("min_train_nodes", 1),
        min_evaluate_nodes=overrides.pop("min_evaluate_nodes", 1),
        min_available_nodes=overrides.pop("min_available_nodes", 1),
        **overrides,
    )
    method = METHODS.get(name).factory(params, MethodSetup(TASKS, TrainConfig(), seed))
    return Engine(name, method, params, context)


def make_fedavg(seed: int = 0, context: RunContext | None = None, **overrides: Any) -> Engine:
    """FedAvg over :data:`TASKS` that needs one node to go on; ``overrides``: its params."""
    return make_engine("fedavg", seed, context, AveragingParams, **overrides)


@dataclass(frozen=True)
class RoundOutcome:
    """What one training round gave: the new arrays (the round's own when nothing could be
    aggregated), the updates used, the replies refused, the example-weighted train loss, each
    task's balancing weight, the bytes received, and whether the method aggregated."""

    arrays: dict[str, np.ndarray]
    num_updates: int
    rejected: list[dict[str, Any]]
    train_loss: dict[str, float]
    task_weights: dict[str, float]
    bytes_up: int
    applied: bool


def one_round(
    engine: Engine,
    fed: Federation,
    drop_nodes: tuple[int, ...] = (),
    model: GlobalModel | None = None,
    server_round: int = 1,
) -> tuple[dict[str, np.ndarray], RoundOutcome, list[Message]]:
    """A round from ``model`` (default :func:`initial_model`): dispatch, grid, intake, aggregate;
    messages to ``drop_nodes`` are dropped (those silos were not sampled). Returns the new arrays,
    the round's outcome and the messages delivered."""
    start = model or initial_model()
    sent = engine.dispatch_train(fed.grid, server_round, start)
    messages = [m for m in sent.messages if m.metadata.dst_node_id not in drop_nodes]
    intake = engine.take_updates(sent, fed.grid.send_and_receive(messages))
    result = engine.aggregate(sent, intake)
    arrays = (start if result is None else result.model).arrays
    outcome = RoundOutcome(
        arrays=arrays,
        num_updates=len(intake.updates),
        rejected=intake.rejected,
        train_loss=mean_train_loss(intake.updates, list(engine.tasks)),
        task_weights={} if result is None else result.task_weights,
        bytes_up=intake.bytes_up,
        applied=result is not None,
    )
    return arrays, outcome, messages


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
