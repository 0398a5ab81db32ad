"""The message protocol: SiloInfo, metric keys, array records, model loading and train configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl import records
from fedmtl.config import TrainConfig
from fedmtl.records import SiloInfo


# ---------------------------------------------------------------------------------------- SiloInfo
def test_silo_info_round_trip() -> None:
    info = SiloInfo(
        silo_id=4,
        tasks=("digit", "parity"),
        num_train=120,
        num_test=30,
        train_per_task={"digit": 120, "parity": 80},
        test_per_task={"digit": 30, "parity": 0},
    )
    record = info.to_record()
    assert isinstance(record, ConfigRecord)
    assert record["silo-id"] == 4
    assert list(record["tasks"]) == ["digit", "parity"]  # type: ignore[arg-type]
    assert record["parity/num-train"] == 80
    assert record["parity/num-test"] == 0
    back = SiloInfo.from_record(record)
    assert back == info
    assert back.tasks == ("digit", "parity")


def test_silo_info_without_tasks_round_trips() -> None:
    info = SiloInfo(3, (), 0, 0, {}, {})
    assert SiloInfo.from_record(info.to_record()) == info


@pytest.mark.parametrize("missing", ["silo-id", "tasks", "num-train", "num-test", "b/num-test"])
def test_silo_info_missing_field_raises(missing: str) -> None:
    record = SiloInfo(0, ("a", "b"), 5, 2, {"a": 5, "b": 1}, {"a": 2, "b": 2}).to_record()
    del record[missing]
    with pytest.raises(KeyError):
        SiloInfo.from_record(record)


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
    stat=st.text(min_size=1, max_size=12),
)
def test_task_key_round_trip_any_names(task: str, stat: str) -> None:
    assert records.split_task_key(records.task_key(task, stat)) == (task, stat)


@pytest.mark.parametrize("key", ["num-examples", "steps", ""])
def test_split_task_key_without_task(key: str) -> None:
    assert records.split_task_key(key) is None


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


def small_model() -> Small:
    torch.manual_seed(0)
    return Small()


def test_load_arrays_then_state_arrays() -> None:
    model = small_model()
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
    model = small_model()
    keys = list(model.state_dict())
    arrays = records.state_arrays(model, keys)
    other = Small()
    records.load_arrays(other, records.from_array_record(records.to_array_record(arrays)))
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key])


def test_load_arrays_rejects_unknown_key() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError, match=r"heads\.c\.weight"):
        records.load_arrays(model, {"heads.c.weight": np.zeros((1, 2), dtype=np.float32)})
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_load_arrays_rejects_wrong_shape() -> None:
    model = small_model()
    before = model.trunk.weight.detach().clone()
    with pytest.raises(ValueError, match=r"trunk\.weight"):
        records.load_arrays(model, {"trunk.weight": np.zeros((3, 2), dtype=np.float32)})
    torch.testing.assert_close(model.trunk.weight.detach(), before)


# ---------------------------------------------------------------------------------------- train config
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
    record = records.train_config_record(5, train)
    assert record[records.SERVER_ROUND] == 5
    assert record["max-steps"] == (-1 if train.max_steps is None else train.max_steps)
    back = records.train_request_from_record(record)
    assert back == records.TrainRequest(train)
    assert back.train.max_steps == train.max_steps


def test_train_config_none_max_steps_round_trips_to_none() -> None:
    back = records.train_request_from_record(records.train_config_record(1, TrainConfig()))
    assert TrainConfig().max_steps is None
    assert back.train.max_steps is None


def test_train_request_carries_update_mode_and_weighting() -> None:
    record = records.train_config_record(2, TrainConfig(), "per_task", ("cagrad", {"c": 0.4}))
    back = records.train_request_from_record(record)
    assert back == records.TrainRequest(TrainConfig(), "per_task", ("cagrad", {"c": 0.4}))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("update-mode", "diagonal", "unknown update mode"),
        ("optimizer", "lbfgs", "unknown optimizer"),
        ("weighting-params", "[1, 2]", "JSON object"),
    ],
)
def test_malformed_train_request_is_rejected(key: str, value: str, message: str) -> None:
    record = records.train_config_record(1, TrainConfig())
    record[key] = value
    with pytest.raises(ValueError, match=message):
        records.train_request_from_record(record)
