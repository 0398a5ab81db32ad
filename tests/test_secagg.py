"""SecAgg+ over task-aware sums (strategies/engine/secagg.py, sums.py): the masks cancel, the
aggregate equals the plain weighted means within the documented quantization bound, dropouts up
to the threshold are recovered, and the server never holds an unmasked update."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from fedmtl.app import launch
from fedmtl.app.run.checkpoint import load_model_arrays
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.app.runtimes.inprocess import _set_server_identity
from fedmtl.core import records
from fedmtl.core.models import head_task
from fedmtl.core.records import SiloInfo, TrainReply
from strategies.engine import GlobalModel, PrivacyParams, SumRule
from strategies.engine.secagg import MASKED, SecAggFailed, SecAggRound, error_bound, silo_stage
from strategies.engine.sums import Layout, build_layout, decode, max_weight
from tests.support.runs import compose_raw

TASKS = ("a", "b")
MODEL = GlobalModel(
    {
        "trunk.w": np.zeros((3, 2), np.float32),
        "heads.a.w": np.zeros(2, np.float32),
        "heads.b.w": np.zeros(2, np.float32),
    }
)
HOLDS = {101: ("a", "b"), 102: ("a",), 103: ("b",), 104: ("a", "b"), 105: ("a",)}
PRIVACY = PrivacyParams(secure_aggregation="secagg_plus")


@pytest.fixture(autouse=True)
def server_identity() -> None:
    """Messages made outside a grid need the process's task identity (as a grid sets it)."""
    _set_server_identity()


def silo(node: int) -> SiloInfo:
    tasks = HOLDS[node]
    counts = {t: 10 + node % 7 + 3 * i for i, t in enumerate(tasks)}
    return SiloInfo(node - 100, tasks, 20 + node % 5, 5, counts, dict.fromkeys(tasks, 5))


def reply(node: int) -> TrainReply:
    rng = np.random.default_rng(node)
    info = silo(node)
    deltas = {"trunk.w": rng.normal(0, 0.5, (3, 2)).astype(np.float32)}
    deltas |= {f"heads.{t}.w": rng.normal(0, 0.5, 2).astype(np.float32) for t in info.tasks}
    return TrainReply(deltas, info.num_train, 3, dict(info.train_per_task))


def layout(nodes: list[int]) -> Layout:
    keys = list(MODEL.arrays)
    return build_layout(
        MODEL, TASKS, keys, "joint", SumRule("examples"), [silo(n) for n in nodes], False
    )


Exchange = Callable[[list[Message]], list[Message]]


def federation(drop: dict[int, str] | None = None, seen: list[Message] | None = None) -> Exchange:
    """Silos answering every stage in process; ``drop``: node -> the stage it fails at."""
    contexts = {
        n: Context(run_id=0, node_id=n, node_config={}, state=RecordDict(), run_config={})
        for n in HOLDS
    }

    def train(message: Message, context: Context) -> TrainReply:
        return reply(message.metadata.dst_node_id)

    def exchange(messages: list[Message]) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            stage = message.content.config_records["secaggplus_configs"]["stage"]
            if (drop or {}).get(node) == stage:
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "gone")
                replies.append(Message(error, reply_to=message))
                continue
            replies.append(silo_stage(message, contexts[node], train, seed=0))
        if seen is not None:
            seen.extend(replies)
        return replies

    return exchange


def train_messages(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def plain_means(nodes: list[int]) -> dict[str, np.ndarray]:
    """The engine's plain aggregation: trunk by n_s, each head by n_{s,t} over its holders."""
    replies = {n: reply(n) for n in nodes}
    n_s = np.array([replies[n].num_examples for n in nodes], float)
    trunk = sum(w * replies[n].deltas["trunk.w"] for w, n in zip(n_s, nodes, strict=True))
    means = {"trunk.w": trunk / n_s.sum()}
    for task in TASKS:
        holders = [n for n in nodes if task in HOLDS[n]]
        weights = [replies[n].task_examples[task] for n in holders]
        head = sum(
            w * replies[n].deltas[f"heads.{task}.w"] for w, n in zip(weights, holders, strict=True)
        )
        means[f"heads.{task}.w"] = head / sum(weights)
    return means


def secure_aggregate(nodes: list[int], exchange: Exchange) -> tuple[Layout, object, list[int]]:
    plan = layout(nodes)
    protocol = SecAggRound(PRIVACY, plan, exchange, server_round=1)
    values, counts, survivors = protocol.run(train_messages(nodes))
    update = decode(plan, values, counts, [silo(n) for n in survivors])
    return plan, update, survivors


def test_the_sums_equal_the_plain_means_within_the_bound() -> None:
    nodes = sorted(HOLDS)
    plan, update, survivors = secure_aggregate(nodes, federation())
    assert survivors == nodes
    expected = plain_means(nodes)
    n_total = sum(silo(n).num_train for n in nodes)
    for key, mean in expected.items():
        weight = (
            n_total
            if key == "trunk.w"
            else sum(silo(n).train_per_task.get(key.split(".")[1], 0) for n in nodes)
        )
        bound = error_bound(PRIVACY, len(nodes), 1.0, plan.max_weight, weight)
        assert np.max(np.abs(update.deltas[key] - mean)) <= bound, key  # type: ignore[attr-defined]
    assert bound < 1e-4  # the default parameters' bound is tiny
    assert update.task_examples == {  # type: ignore[attr-defined]
        t: sum(silo(n).train_per_task.get(t, 0) for n in nodes) for t in TASKS
    }
    assert update.contributors == tuple(silo(n).silo_id for n in nodes)  # type: ignore[attr-defined]


def test_a_silo_dropping_out_after_sharing_its_keys_is_unmasked_away() -> None:
    nodes = sorted(HOLDS)
    _, update, survivors = secure_aggregate(nodes, federation({103: "collect_masked_vectors"}))
    assert survivors == [101, 102, 104, 105]
    expected = plain_means(survivors)
    for key, mean in expected.items():
        np.testing.assert_allclose(update.deltas[key], mean, atol=1e-4)  # type: ignore[attr-defined]


def test_dropouts_below_the_threshold_stop_the_round() -> None:
    nodes = sorted(HOLDS)
    drop = dict.fromkeys([101, 102, 103, 104], "share_keys")
    with pytest.raises(SecAggFailed, match="threshold"):
        secure_aggregate(nodes, federation(drop))


def test_the_server_never_holds_an_unmasked_update() -> None:
    nodes = sorted(HOLDS)
    seen: list[Message] = []
    secure_aggregate(nodes, federation(seen=seen))
    target_range = 2**PRIVACY.quantization_bits
    masked = [m for m in seen if MASKED in m.content.array_records]
    assert len(masked) == len(nodes)
    for message in seen:  # no plain update, no counts or losses in the clear
        assert records.UPDATE not in message.content.array_records
        assert not message.content.metric_records
    for message in masked:
        vector = records.from_array_record(message.content.array_records[MASKED])["masked"]
        # quantized values lie in [0, 2^22]; masked ones spread over the ring [0, 2^32)
        assert np.mean(vector.astype(np.int64) > target_range) > 0.8


@pytest.mark.slow
def test_a_secagg_run_ends_where_the_plain_run_does_within_the_bound(tmp_path: Path) -> None:
    """One round of FedAvg on digits, in process: plain and under SecAgg+ from the same model
    and the same (seeded) local training; every array of the new model within the documented
    bound K delta w_max / W of the plain one (W: the weights' sum of that array's slot)."""
    overrides = ["runtime=inprocess", "tracking=quiet", "num_rounds=1", "partition.num_silos=4"]
    models = {}
    for mode in ("none", "secagg"):
        raw = compose_raw([*overrides, f"privacy={mode}"], tmp_path / mode)
        summary = launch.run(parse(raw))
        assert summary["status"] == "completed" and summary["privacy"]["mode"] == mode
        models[mode] = load_model_arrays(tmp_path / mode / "model.safetensors")[0]
    experiment = prepare(parse(compose_raw(overrides)))
    silos = [experiment.silo_info(i) for i in range(experiment.num_silos)]
    top = max_weight(silos)
    for key, plain in models["none"].items():
        task = head_task(key)
        weight = sum(s.num_train if task is None else s.train_per_task.get(task, 0) for s in silos)
        bound = error_bound(PRIVACY, len(silos), 1.0, top, weight)
        assert np.max(np.abs(models["secagg"][key] - plain)) <= bound, key


@pytest.mark.parametrize("strategy", ["fedavg", pytest.param("dwa", marks=pytest.mark.slow)])
def test_the_summed_losses_give_the_divergence_check_a_true_reference(
    tmp_path: Path, strategy: str
) -> None:
    """Under SecAgg+ the layout sums the losses before training only where the request asks the
    silos for them (dwa's weighting reads them; fedavg's does not): a slot no silo fills would
    sum to a reference loss of 0, and the divergence check would stop a sound run."""
    overrides = ["experiment=smoke", "runtime=inprocess", "tracking=quiet", "num_rounds=2"]
    raw = compose_raw([*overrides, "privacy=secagg", f"strategy={strategy}"], tmp_path)
    summary = launch.run(parse(raw))
    assert summary["status"] == "completed"
    reference = summary["divergence"]["reference"]
    assert reference and all(value > 0 for value in reference.values())


@pytest.mark.slow  # an end-to-end run
def test_secagg_lays_out_an_architectures_task_parameters_by_their_roles(tmp_path: Path) -> None:
    """MMoE's gates are task parameters that are not heads: the layout takes every array of role
    ``task`` into its task's slots and every shared one into the trunk's, so the run under SecAgg+
    ends where the plain one does (to the quantization error)."""
    overrides = ["experiment=smoke", "model=mmoe", "runtime=inprocess", "tracking=quiet"]
    finals = {}
    for mode in ("none", "secagg"):
        raw = compose_raw([*overrides, "num_rounds=2", f"privacy={mode}"], tmp_path / mode)
        summary = launch.run(parse(raw))
        assert summary["status"] == "completed"
        finals[mode] = summary["final"]
    for task, metrics in finals["none"].items():
        for name, value in metrics.items():
            assert finals["secagg"][task][name] == pytest.approx(value, abs=1e-3), (task, name)
