"""FedCMOO (``strategies.fedcmoo``, sketches ``strategies.sketch``): the sketches decompress to the
gradients they were made of (exactly without compression or at full rank); the server's Gramian
estimate from exact sketches is the Gramian of the per-task means computed apart, and its weights
MGDA's; a silo's sketch holds its first step's per-task gradients; the bytes a silo sends against
UPGrad's per-task upload; malformed sketches are refused; bad parameters are refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedmtl.core import records
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import MethodSpec, SiloInfo, TrainReply, TrainRequest
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import task_losses
from strategies import METHODS
from strategies.balancing.mgda import min_norm_weights
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodSetup,
    ReplyError,
    Round,
    SiloTools,
    train_received,
)
from strategies.engine.replies import check_train_reply
from strategies.fedcmoo import ROW, FedCMOO, FedCMOOParams, FedCMOOSilo, FedCMOOSiloParams
from strategies.sketch import compress, decompress, fold, sketch_shapes, unfold
from tests.support.data import TINY_TASKS, small_model, tiny_view

SETUP = MethodSetup(TINY_TASKS, TrainConfig())
D = 6
MODEL = GlobalModel(
    {
        "trunk.w": np.zeros(D, np.float32),
        **{f"heads.{t.name}.w": np.zeros(1, np.float32) for t in TINY_TASKS},
    }
)
RNG = np.random.default_rng(3)
GRADIENTS = {0: RNG.normal(size=(2, D)), 1: RNG.normal(size=(2, D)), 2: RNG.normal(size=(1, D))}
HOLDS = {0: ("a", "b"), 1: ("b", "c"), 2: ("a",)}
COUNTS = {0: {"a": 10, "b": 30}, 1: {"b": 10, "c": 20}, 2: {"a": 30}}


@pytest.mark.parametrize("shape", [(1, 7), (2, 232), (3, 50), (5, 3)])
def test_fold_and_unfold_are_inverse(shape: tuple[int, int]) -> None:
    J = RNG.normal(size=shape)
    M = fold(J)
    assert abs(M.shape[0] - M.shape[1]) <= M.shape[0] + shape[0]  # near square
    np.testing.assert_array_equal(unfold(M, *shape), J)


@pytest.mark.parametrize("compression", ["randsvd", "topk", "none"])
def test_a_full_size_sketch_gives_the_matrix_back(compression: str) -> None:
    J = RNG.normal(size=(3, 40)).astype(np.float32)
    torch.manual_seed(0)
    sketch = compress(J, compression, budget=1000.0)  # full rank / every entry
    found = {k: (v.shape, v.dtype.kind) for k, v in sketch.items()}
    assert found == sketch_shapes(compression, 1000.0, 3, 40)
    np.testing.assert_allclose(decompress(sketch, compression, 3, 40), J, atol=1e-5)


def test_a_small_sketch_keeps_its_budget_and_topk_the_largest_entries() -> None:
    J = RNG.normal(size=(3, 400)).astype(np.float32)
    for compression in ("randsvd", "topk"):
        torch.manual_seed(0)
        sketch = compress(J, compression, budget=0.5)
        assert 0.5 * 0.5 * 400 * 4 <= sum(v.nbytes for v in sketch.values()) <= 0.5 * 400 * 4
    kept = decompress(compress(J, "topk", 0.5), "topk", 3, 400)
    smallest_kept = np.abs(kept[kept != 0]).min()
    assert (np.abs(J[kept == 0]) <= smallest_kept).all() and (kept != 0).sum() == 100


def update(silo_id: int, rows: np.ndarray, compression: str = "none") -> ClientUpdate:
    tasks = HOLDS[silo_id]
    info = SiloInfo(silo_id, tasks, 40, 4, COUNTS[silo_id], dict.fromkeys(tasks, 4))
    deltas = {"trunk.w": np.full(D, float(silo_id), np.float32)}
    deltas |= {f"heads.{t}.w": np.ones(1, np.float32) for t in tasks}
    metrics = {ROW + t: float(i) for i, t in enumerate(tasks)}
    sketch = compress(rows.astype(np.float32), compression, 1.0)
    sent = {k: MODEL.arrays[k] for k in deltas}
    return ClientUpdate(
        silo_id, info, deltas, 40, dict(COUNTS[silo_id]), {}, method_metrics=metrics, sent=sent,
        method_arrays=sketch,
    )  # fmt: skip


def dispatched(method: FedCMOO, updates: list[ClientUpdate]) -> None:
    """What the engine does before replies come: the method gives each silo its arrays."""
    for u in updates:
        method.arrays_for(u.silo, MODEL, "train")


def test_without_compression_the_estimate_is_the_exact_gramian_and_the_weights_mgdas() -> None:
    method = FedCMOO(FedCMOOParams(sketch="none"), SETUP)
    updates = [update(s, GRADIENTS[s]) for s in HOLDS]
    dispatched(method, updates)
    for u in updates:
        method.check_update(u)
    rows = {  # per-task means over holders, by n_{s,t}, computed here apart
        "a": (10 * GRADIENTS[0][0] + 30 * GRADIENTS[2][0]) / 40,
        "b": (30 * GRADIENTS[0][1] + 10 * GRADIENTS[1][0]) / 40,
        "c": GRADIENTS[1][1],
    }
    J = np.stack([rows["a"], rows["b"], rows["c"]])
    present, G = method.estimate(MODEL, updates)
    assert present == [0, 1, 2]
    np.testing.assert_allclose(G.numpy(), J @ J.T, rtol=1e-6)
    result = method.aggregate(Round(1), MODEL, updates)
    assert result.task_weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    np.testing.assert_allclose(method.task_weights, min_norm_weights(J @ J.T), atol=1e-6)
    # the next round's silos train with T w_t on the trunk
    sent = method.silo_task(2).params["weights"]
    assert sent == pytest.approx(
        {t: 3 * w for t, w in zip("abc", method.task_weights, strict=True)}
    )
    # the trunk is FedAvg's: silo weights n_s = 40 each
    np.testing.assert_allclose(result.model.arrays["trunk.w"], np.full(D, 1.0))


def test_a_task_nobody_sketched_keeps_its_weight() -> None:
    method = FedCMOO(FedCMOOParams(sketch="none"), SETUP)
    method.task_weights = np.array([0.2, 0.5, 0.3])
    updates = [update(0, GRADIENTS[0])]  # tasks a and b only
    dispatched(method, updates)
    method.aggregate(Round(1), MODEL, updates)
    G = GRADIENTS[0] @ GRADIENTS[0].T
    np.testing.assert_allclose(method.task_weights[:2], 0.7 * min_norm_weights(G), atol=1e-6)
    assert method.task_weights[2] == 0.3


def worker() -> SiloTools:
    model = small_model((5,), TINY_TASKS, seed=1)
    initial = records.state_arrays(model, model.exchanged_keys())
    return SiloTools(model, tiny_view(), RecordDict(), lambda: initial, seed=4, device="cpu")


def request(mode: str = "joint") -> TrainRequest:
    cfg = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.0)
    return TrainRequest(server_round=1, train=cfg, method=MethodSpec("fedcmoo"), update_mode=mode)  # type: ignore[arg-type]


def silo_reply(compression: str, budget: float = 1.0) -> tuple[TrainReply, SiloTools]:
    tools = worker()
    received = tools.initial()
    weights = {"a": 1.0, "b": 1.0, "c": 1.0}
    silo = FedCMOOSilo(FedCMOOSiloParams(weights, compression, budget))
    return silo.train(tools, received, request()), tools


def test_a_silos_sketch_holds_its_first_steps_task_gradients() -> None:
    reply, _ = silo_reply("none")
    tools = worker()  # the received model, untouched
    names = [t.name for t in TINY_TASKS]
    trunk = list(tools.model.shared_parameters(names).values())
    losses = task_losses(tools.model, tools.data, torch.arange(8))  # one batch: every row
    rows = reply.method_arrays["sketch.rows"]
    gradients = []
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, trunk, retain_graph=True)
        gradients.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
        row = int(reply.method_metrics[ROW + task])
        np.testing.assert_allclose(rows[row], gradients[-1], rtol=1e-4, atol=1e-6)
    # the server reads the reply's columns as the trunk arrays it sent, in order
    method = FedCMOO(FedCMOOParams(sketch="none"), SETUP)
    model = GlobalModel(tools.initial())
    info = SiloInfo(0, ("a", "b", "c"), 8, 0, {"a": 6, "b": 5, "c": 5}, {})
    sent = method.arrays_for(info, model, "train")
    checked = check_train_reply(0, reply, sent, info, "joint", model.serves)
    method.check_update(checked)
    _, G = method.estimate(model, [checked])
    J = np.stack(gradients)
    np.testing.assert_allclose(G.numpy(), J @ J.T, rtol=1e-4)


def test_bytes_up_against_upgrads_per_task_upload() -> None:
    """A silo of k = 3 tasks sends its joint update and a sketch of at most budget x d floats:
    (1 + budget) d instead of UPGrad's k d for the trunk."""
    budget = 0.5
    ours, tools = silo_reply("randsvd", budget)
    theirs = train_received(worker(), worker().initial(), request("per_task"))
    trunk = tools.model.shared_parameters([t.name for t in TINY_TASKS])
    d = sum(p.numel() for p in trunk.values())
    sketch = sum(v.nbytes for v in ours.method_arrays.values())
    assert 0.5 * budget * d * 4 <= sketch <= budget * d * 4
    payload = {
        "ours": sum(v.nbytes for v in ours.deltas.values()) + sketch,
        "theirs": sum(v.nbytes for v in theirs.deltas.values())
        + sum(v.nbytes for shares in (theirs.task_deltas or {}).values() for v in shares.values()),
    }
    assert payload["theirs"] - payload["ours"] == 2 * d * 4 - sketch  # (k - 1) d, less the sketch
    ours_bytes = records.update_bytes(ours.to_content())  # what the engine counts: sketch included
    bare = records.update_bytes(dataclasses.replace(ours, method_arrays={}).to_content())
    assert ours_bytes - bare >= sketch
    theirs_bytes = records.update_bytes(theirs.to_content())
    assert ours_bytes < 0.8 * theirs_bytes


def test_malformed_sketches_are_refused() -> None:
    method = FedCMOO(FedCMOOParams(sketch="topk"), SETUP)
    good = update(0, GRADIENTS[0], "topk")
    dispatched(method, [good])
    method.check_update(good)
    values = good.method_arrays["sketch.values"]
    bad = {
        "foreign task": {"method_metrics": {ROW + "a": 0.0, ROW + "c": 1.0}},
        "rows twice": {"method_metrics": {ROW + "a": 0.0, ROW + "b": 0.0}},
        "fractional row": {"method_metrics": {ROW + "a": 0.5, ROW + "b": 1.0}},
        "short": {"method_arrays": {**good.method_arrays, "sketch.values": values[:-1]}},
        "index outside": {
            "method_arrays": {
                **good.method_arrays,
                "sketch.indices": np.full(values.shape, 2 * D, np.int32),
            }
        },
        "arrays, no rows": {"method_metrics": {}},
        "missing array": {"method_arrays": {"sketch.values": values}},
    }
    for change in bad.values():  # keyed by what is wrong
        with pytest.raises(ReplyError):
            method.check_update(dataclasses.replace(good, **change))  # type: ignore[arg-type]


def test_the_engine_refuses_a_non_finite_method_array() -> None:
    reply, tools = silo_reply("randsvd")
    spoiled = {
        **reply.method_arrays,
        "sketch.u": np.full_like(reply.method_arrays["sketch.u"], np.nan),
    }
    info = SiloInfo(0, ("a", "b", "c"), 8, 0, {"a": 6, "b": 5, "c": 5}, {})
    sent = tools.initial()
    reply = TrainReply.from_content(dataclasses.replace(reply, method_arrays=spoiled).to_content())
    with pytest.raises(ReplyError, match=r"method array sketch\.u"):
        check_train_reply(0, reply, sent, info, "joint", lambda key, task: True)


@pytest.mark.parametrize(
    ("field", "value"),
    [("budget", 0.0), ("sketch", "svd"), ("weighting", {"name": "dwa"})],
)
def test_bad_parameters_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        METHODS.parse("fedcmoo", {field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("budget", -1.0), ("sketch", "svd"), ("weights", {"a": float("nan")})],
)
def test_a_silo_refuses_bad_settings_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        FedCMOOSilo.from_spec({field: value})
