"""The message protocol: every request and reply round-trips, keys, array records, model loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.core import records
from fedmtl.core.records import (
    EvaluateReply,
    EvaluateRequest,
    MethodSpec,
    SiloCheckpoint,
    SiloInfo,
    TrainReply,
    TrainRequest,
)
from fedmtl.core.schema import TrainConfig


# ---------------------------------------------------------------------------------------- query
def test_silo_info_round_trip() -> None:
    info = SiloInfo(
        silo_id=4,
        tasks=("digit", "parity"),
        num_train=120,
        num_test=30,
        train_per_task={"digit": 120, "parity": 80},
        test_per_task={"digit": 30, "parity": 0},
    )
    content = info.to_content()
    record = content.config_records[records.SILO]
    assert record["silo-id"] == 4
    assert list(record["tasks"]) == ["digit", "parity"]  # type: ignore[arg-type]
    assert record["parity/num-train"] == 80
    assert record["parity/num-test"] == 0
    back = SiloInfo.from_content(content)
    assert back == info
    assert back.tasks == ("digit", "parity")


def test_silo_info_without_tasks_round_trips() -> None:
    info = SiloInfo(3, (), 0, 0, {}, {})
    assert SiloInfo.from_content(info.to_content()) == info


@pytest.mark.parametrize("missing", ["silo-id", "tasks", "num-train", "num-test", "b/num-test"])
def test_silo_info_missing_field_raises(missing: str) -> None:
    content = SiloInfo(0, ("a", "b"), 5, 2, {"a": 5, "b": 1}, {"a": 2, "b": 2}).to_content()
    del content.config_records[records.SILO][missing]
    with pytest.raises(KeyError):
        SiloInfo.from_content(content)


def test_query_content_is_an_empty_config() -> None:
    content = records.query_content()
    assert dict(content.config_records[records.CONFIG]) == {}
    assert not content.array_records and not content.metric_records


# ---------------------------------------------------------------------------------------- task keys
@pytest.mark.parametrize(
    ("task", "stat", "key"),
    [
        ("digit", "num-examples", "digit/num-examples"),
        ("a", "train-loss", "a/train-loss"),
        ("x_1", "loss_sum", "x_1/loss_sum"),
    ],
)
def test_task_key_round_trip(task: str, stat: str, key: str) -> None:
    assert records.task_key(task, stat) == key
    assert records.split_task_key(key) == (task, stat)


@settings(max_examples=50, deadline=None)
@given(
    task=st.text(alphabet=st.characters(blacklist_characters="/."), min_size=1, max_size=12),
    stat=st.text(alphabet=st.characters(blacklist_characters="/"), min_size=1, max_size=12),
)
def test_task_key_round_trip_any_names(task: str, stat: str) -> None:
    assert records.split_task_key(records.task_key(task, stat)) == (task, stat)


@pytest.mark.parametrize("key", ["num-examples", "steps", "", "affinity/a/b"])
def test_split_task_key_without_task(key: str) -> None:
    assert records.split_task_key(key) is None


def test_task_update_keys_round_trip() -> None:
    key = records.task_update_key("b", "trunks.g0.layers.0.weight")
    assert records.split_task_update_key(key) == ("b", "trunks.g0.layers.0.weight")
    assert records.split_task_update_key("trunk.w") is None


# ---------------------------------------------------------------------------------------- arrays
ARRAYS = {
    "trunk.w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
    "trunk.b": np.array([1.5, -2.25], dtype=np.float64),
    "heads.a.w": np.array([[1, -2, 3]], dtype=np.int64),
    "heads.a.mask": np.array([True, False, True]),
    "heads.a.half": np.array([0.5, 1e-3], dtype=np.float16),
    "heads.b.empty": np.zeros((0, 3), dtype=np.float32),
    "heads.b.cube": np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11.5,
}


def test_array_record_round_trip_keeps_dtype_shape_values() -> None:
    record = records.to_array_record(ARRAYS)
    assert isinstance(record, ArrayRecord)
    assert list(record) == list(ARRAYS)
    back = records.from_array_record(record)
    assert list(back) == list(ARRAYS)
    for key, value in ARRAYS.items():
        assert back[key].dtype == value.dtype, key
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_array_record_accepts_non_contiguous_arrays() -> None:
    transposed = np.arange(12, dtype=np.float32).reshape(3, 4).T
    sliced = np.arange(20, dtype=np.float64)[::3]
    assert not transposed.flags.c_contiguous
    back = records.from_array_record(records.to_array_record({"t": transposed, "s": sliced}))
    np.testing.assert_array_equal(back["t"], transposed)
    np.testing.assert_array_equal(back["s"], sliced)
    assert back["t"].shape == (4, 3)


def test_array_record_copies_are_independent() -> None:
    source = {"trunk.w": np.ones((2, 2), dtype=np.float32)}
    record = records.to_array_record(source)
    source["trunk.w"][0, 0] = 5.0
    back = records.from_array_record(record)
    assert back["trunk.w"][0, 0] == 1.0


def test_array_record_keeps_zero_dim_shape() -> None:
    back = records.from_array_record(
        records.to_array_record({"trunk.scale": np.array(2.5, dtype=np.float32)})
    )
    assert back["trunk.scale"].shape == ()
    assert back["trunk.scale"] == np.float32(2.5)


def test_model_with_batchnorm_survives_the_protocol() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    keys = list(model.state_dict())
    assert "1.num_batches_tracked" in keys
    sent = records.from_array_record(records.to_array_record(records.state_arrays(model, keys)))
    records.load_arrays(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), sent)


# ---------------------------------------------------------------------------------------- torch model
class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(3, 2)
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 1), "b": torch.nn.Linear(2, 3)})


def plain_model() -> Small:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Small()


def test_load_arrays_then_state_arrays() -> None:
    model = plain_model()
    before_b = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("heads.b")}
    arrays = {
        "trunk.weight": np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]),  # float64 -> float32
        "trunk.bias": np.array([0.25, -1.0], dtype=np.float32),
        "heads.a.weight": np.array([[3.0, -2.0]], dtype=np.float32),
        "heads.a.bias": np.array([0.5], dtype=np.float32),
    }
    records.load_arrays(model, arrays)

    # the parameters themselves changed (the forward pass uses them), the others did not
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # trunk: [1 - 3 + 0.25, 0.5 + 4 - 1] = [-1.75, 3.5]; head a: 3 * -1.75 - 2 * 3.5 + 0.5 = -11.75
    trunk_out = model.trunk(x)
    torch.testing.assert_close(trunk_out, torch.tensor([[-1.75, 3.5]]))
    torch.testing.assert_close(model.heads["a"](trunk_out), torch.tensor([[-11.75]]))
    for key, value in model.state_dict().items():
        if key.startswith("heads.b"):
            torch.testing.assert_close(value, before_b[key])
    assert model.trunk.weight.requires_grad

    back = records.state_arrays(model, list(arrays))
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value.astype(np.float32))

    # state_arrays returns copies
    back["trunk.bias"][0] = 100.0
    assert float(model.trunk.bias.detach()[0]) == 0.25


def test_state_arrays_of_every_key_round_trip_into_a_fresh_model() -> None:
    model = plain_model()
    keys = list(model.state_dict())
    arrays = records.state_arrays(model, keys)
    other = Small()
    records.load_arrays(other, records.from_array_record(records.to_array_record(arrays)))
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key])


def test_load_arrays_rejects_unknown_key() -> None:
    model = plain_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match=r"heads\.c\.weight"):
        records.load_arrays(model, {"heads.c.weight": np.zeros((1, 2), dtype=np.float32)})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_load_arrays_rejects_wrong_shape() -> None:
    model = plain_model()
    before = model.trunk.weight.detach().clone()
    with pytest.raises(ValueError, match=r"trunk\.weight"):
        records.load_arrays(model, {"trunk.weight": np.zeros((3, 2), dtype=np.float32)})
    torch.testing.assert_close(model.trunk.weight.detach(), before)


# ---------------------------------------------------------------------------------------- requests
@pytest.mark.parametrize(
    "train",
    [
        TrainConfig(),
        TrainConfig(max_steps=None, local_epochs=2),
        TrainConfig(
            local_epochs=3,
            max_steps=7,
            batch_size=8,
            optimizer="adam",
            lr=1e-3,
            momentum=0.0,
            weight_decay=1e-4,
        ),
    ],
)
def test_train_config_round_trip(train: TrainConfig) -> None:
    record = TrainRequest(5, train, FEDAVG).to_config()
    assert record[records.SERVER_ROUND] == 5
    assert record["max-steps"] == (-1 if train.max_steps is None else train.max_steps)
    back = TrainRequest.from_config(record)
    assert back == TrainRequest(5, train, FEDAVG)
    assert back.train.max_steps == train.max_steps


def test_train_request_round_trips_every_field() -> None:
    request = TrainRequest(
        server_round=7,
        train=TrainConfig(optimizer="adam", lr=1e-3),
        method=MethodSpec("balanced", {"weighting": {"name": "cagrad", "c": 0.4}, "n": [1, 2]}),
        update_mode="per_task",
        groups={"g0": ("a", "c"), "g1": ("b",)},
        checkpoint=SiloCheckpoint(saved_round=4, resume_round=4),
        scope="ditto-run.2",
        update_dtype="bfloat16",
        loss_before=True,
    )
    assert TrainRequest.from_config(request.to_config()) == request


def test_train_request_travels_inside_a_message_with_its_arrays() -> None:
    arrays = {"trunk.w": np.ones((2, 2), dtype=np.float32)}
    request = TrainRequest(1, TrainConfig(), FEDAVG)
    content = records.request_content(records.to_array_record(arrays), request.to_config())
    received, config = records.request_parts(content)
    np.testing.assert_array_equal(received["trunk.w"], arrays["trunk.w"])
    assert TrainRequest.from_config(config) == request


def test_train_request_ignores_keys_it_does_not_know() -> None:
    record = TrainRequest(1, TrainConfig(), FEDAVG).to_config()
    record["caller-extra"] = "kept by Flower, ignored by fedmtl"
    assert TrainRequest.from_config(record) == TrainRequest(1, TrainConfig(), FEDAVG)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("update-mode", "diagonal", "unknown update mode"),
        ("optimizer", "lbfgs", "unknown optimizer"),
        ("method-params", "[1, 2]", "JSON object"),
        ("method-params", "{not json", "Expecting property name"),
        ("method", "", "must name a method"),
        ("method", 3, "must be a string"),
        ("groups", '{"g0": "a"}', "task lists"),
        ("scope", "../other", "scope must be a short name"),
        ("scope", "..", "scope must be a short name"),
    ],
)
def test_malformed_train_request_is_rejected(key: str, value: object, message: str) -> None:
    record = TrainRequest(1, TrainConfig(), FEDAVG).to_config()
    record[key] = value  # type: ignore[assignment]
    with pytest.raises(ValueError, match=message):
        TrainRequest.from_config(record)


@pytest.mark.parametrize("groups", [None, {"g0": ("a",), "g1": ("b", "c")}])
def test_evaluate_request_round_trip(groups: dict[str, tuple[str, ...]] | None) -> None:
    method = MethodSpec("fedper", {"head_epochs": 0})
    request = EvaluateRequest(3, method, groups, SiloCheckpoint(2, 0), scope="fedper")
    assert EvaluateRequest.from_config(request.to_config()) == request


FEDAVG = MethodSpec("fedavg")


# ---------------------------------------------------------------------------------------- replies
def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("per_task", [False, True])
def test_train_reply_round_trip(per_task: bool) -> None:
    heads = {"heads.a.w": np.full((1, 2), 0.5, dtype=np.float32)}
    trunk = {"trunk.w": np.ones((2, 2), dtype=np.float32)}
    reply = TrainReply(
        deltas=heads if per_task else {**heads, **trunk},
        num_examples=40,
        steps=3,
        task_examples={"a": 30, "b": 12},
        train_loss={"a": 0.5, "b": 1.25},
        loss_before={"a": 0.75},
        task_deltas={"a": trunk, "b": {"trunk.w": -trunk["trunk.w"]}} if per_task else None,
        method_metrics={"affinity/a/b": 0.125, "affinity/b/a": -0.5},
    )
    content = reply.to_content()
    assert records.update_bytes(content) == content.array_records[records.UPDATE].count_bytes()
    back = TrainReply.from_content(content)
    assert_same_arrays(back.deltas, reply.deltas)
    assert (back.task_deltas is None) == (not per_task)
    for task, shares in (reply.task_deltas or {}).items():
        assert back.task_deltas is not None
        assert_same_arrays(back.task_deltas[task], shares)
    for field in (
        "num_examples",
        "steps",
        "task_examples",
        "train_loss",
        "loss_before",
        "method_metrics",
    ):
        assert getattr(back, field) == getattr(reply, field), field


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("steps", 1.5, ValueError),
        ("num-examples", float("nan"), ValueError),
        ("a/surprise", 1.0, ValueError),
        ("surprise", 1.0, ValueError),
        ("affinity/a/b", float("inf"), ValueError),
    ],
)
def test_malformed_train_reply_is_rejected(key: str, value: float, error: type) -> None:
    content = TrainReply({}, 10, 1, {"a": 10}).to_content()
    content.metric_records[records.METRICS][key] = value
    with pytest.raises(error):
        TrainReply.from_content(content)


def test_method_metrics_travel_apart_and_must_be_finite() -> None:
    content = TrainReply({}, 10, 1, {"a": 10}, method_metrics={"a/b": 0.5}).to_content()
    assert dict(content.metric_records[records.METHOD_METRICS]) == {"a/b": 0.5}
    content.metric_records[records.METHOD_METRICS]["a/b"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        TrainReply.from_content(content)
    del content.metric_records[records.METHOD_METRICS]  # a reply without any: none asked
    assert TrainReply.from_content(content).method_metrics == {}


def test_train_reply_without_update_record_is_rejected() -> None:
    content = TrainReply({}, 10, 1, {"a": 10}).to_content()
    del content.array_records[records.UPDATE]
    assert records.update_bytes(content) == 0
    with pytest.raises(KeyError):
        TrainReply.from_content(content)


def test_evaluate_reply_round_trip_and_rejects_strange_keys() -> None:
    reply = EvaluateReply({"a": {"n": 4.0, "correct": 3.0}, "b": {"n": 2.0, "loss_sum": 0.5}})
    assert EvaluateReply.from_content(reply.to_content()) == reply
    content = reply.to_content()
    content.metric_records[records.METRICS]["accuracy"] = 0.5
    with pytest.raises(ValueError, match="unexpected metric"):
        EvaluateReply.from_content(content)


def test_round_metrics_and_nested_task_metrics() -> None:
    record = records.round_metrics(3, 1, {"a": 0.5})
    assert record[records.NUM_UPDATES] == 3 and record[records.NUM_REJECTED] == 1
    assert records.nested_task_metrics(record) == {"a": {"train-loss": 0.5}}
    flat = records.flat_task_metrics({"a": {"accuracy": 0.75}, "b": {"r2": 0.5}})
    assert records.nested_task_metrics(flat) == {"a": {"accuracy": 0.75}, "b": {"r2": 0.5}}
