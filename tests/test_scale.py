"""Server, wire and start-up cost at scale: the blockwise Gramian (float32 block products, float64
sum), updates sent in float16 or bfloat16, and the driver's experiment shipped to Ray workers."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedmtl.app.launch import run
from fedmtl.app.run import experiment as experiment_module
from fedmtl.app.run.config import parse
from fedmtl.app.runtimes import Shipment
from fedmtl.core import records
from fedmtl.core.records import MethodSpec, TrainReply, TrainRequest
from fedmtl.core.schema import TrainConfig
from strategies.balancing import build_weighting, linalg
from tests.support.runs import compose_raw


def test_blockwise_gramian_matches_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 columns, chunks of 3 blocks and a remainder: G within float32 block error."""
    J = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(linalg, "FLOAT32_MIN_ELEMENTS", 0)
    monkeypatch.setattr(linalg, "BLOCK_COLUMNS", 64)
    monkeypatch.setattr(linalg, "CHUNK_ELEMENTS", 5 * 64 * 3)
    G = linalg.gramian(J)
    exact = J.double() @ J.double().T
    assert G.dtype == torch.float64 and G.device.type == "cpu"
    torch.testing.assert_close(G, G.T, rtol=0, atol=0)
    scale = exact.diagonal().max()
    assert float((G - exact).abs().max() / scale) < 1e-6


def test_float64_and_small_inputs_keep_the_float64_gramian() -> None:
    J = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(linalg.gramian(J), J @ J.T)
    small = J.float()
    torch.testing.assert_close(linalg.gramian(small), small.double() @ small.double().T)


@pytest.mark.parametrize("name", ["mgda", "upgrad"])
def test_weights_from_the_blockwise_gramian_match(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    J = torch.randn(6, 4096, generator=torch.Generator().manual_seed(2))
    exact = build_weighting(name).weights(J.double())
    monkeypatch.setattr(linalg, "FLOAT32_MIN_ELEMENTS", 0)
    monkeypatch.setattr(linalg, "BLOCK_COLUMNS", 512)
    blockwise = build_weighting(name).weights(J)
    torch.testing.assert_close(blockwise.double(), exact, rtol=1e-5, atol=1e-6)


# --- updates in float16 / bfloat16 on the wire ----------------------------------------------------


# Relative rounding of each format, and float16's absolute floor (its subnormal spacing 2^-24).
@pytest.mark.parametrize(
    ("dtype", "rel", "floor"), [("float16", 2.0**-11, 2.0**-24), ("bfloat16", 2.0**-8, 0.0)]
)
def test_half_precision_updates_halve_the_bytes_and_read_back_as_float32(
    dtype: str, rel: float, floor: float
) -> None:
    gen = np.random.default_rng(0)
    deltas = {"trunk.w": gen.normal(size=(64, 32)).astype(np.float32) * 1e-2}
    task_deltas = {"a": {"trunk.w": gen.normal(size=(64, 32)).astype(np.float32)}}
    reply = TrainReply(deltas, 10, 3, {"a": 10}, task_deltas=task_deltas)
    full = records.update_bytes(reply.to_content())
    half = dataclasses.replace(reply, update_dtype=dtype).to_content()  # type: ignore[arg-type]
    assert records.update_bytes(half) < 0.52 * full
    parsed = TrainReply.from_content(half)
    for got, sent in [
        (parsed.deltas["trunk.w"], deltas["trunk.w"]),
        (parsed.task_deltas["a"]["trunk.w"], task_deltas["a"]["trunk.w"]),  # type: ignore[index]
    ]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, sent, rtol=rel, atol=floor)


def test_a_bfloat16_array_must_hold_16_bit_patterns() -> None:
    bad = records.to_array_record({"x": np.zeros(3, dtype=np.float32)})
    array = bad["x"]
    bad["x"] = Array(records.BFLOAT16, array.shape, array.stype, array.data)
    with pytest.raises(ValueError, match="uint16"):
        records.from_array_record(bad)


def test_train_request_carries_the_update_dtype() -> None:
    request = TrainRequest(2, TrainConfig(), MethodSpec("fedavg"), update_dtype="bfloat16")
    assert TrainRequest.from_config(request.to_config()) == request
    older = dict(request.to_config())
    del older["update-dtype"]  # a server that does not send it asks for float32
    assert TrainRequest.from_config(older).update_dtype == "float32"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bfloat16_updates_halve_bytes_up_of_a_run(tmp_path: Path) -> None:
    base = ["dataset=synthetic", "dataset.num_samples=600", "partition.num_silos=4"]
    base += ["runtime=inprocess", "tracking=quiet", "num_rounds=2"]
    full = run(parse(compose_raw(base, tmp_path / "f32")))
    half = run(parse(compose_raw([*base, "strategy.update_dtype=bfloat16"], tmp_path / "bf16")))
    assert half["bytes_up"] < 0.55 * full["bytes_up"]
    assert half["bytes_down"] == full["bytes_down"]
    for task, metrics in full["final"].items():
        assert half["final"][task]["loss"] == pytest.approx(metrics["loss"], rel=0.05)


# --- the simulation's workers adopt the driver's experiment -------------------------------------


class FakeRef:
    """Stands in for a Ray ObjectRef: only its ``hex`` is used."""

    def hex(self) -> str:
        return "fake-ref"


def test_a_shipment_in_the_object_store_pickles_as_its_reference() -> None:
    shipment = Shipment({"rows": list(range(1000))})
    assert pickle.loads(pickle.dumps(shipment)).get() == {"rows": list(range(1000))}
    shipment._ref = FakeRef()  # as after put(): the value stays in the object store
    travelled = pickle.loads(pickle.dumps(shipment))
    assert travelled._value is None and isinstance(travelled._ref, FakeRef)
    assert len(pickle.dumps(shipment)) < 200


def test_an_adopted_experiment_replaces_building_it(tmp_path: Path) -> None:
    raw = compose_raw(["dataset=synthetic", "dataset.num_samples=600"], tmp_path)
    config_json = json.dumps(raw)
    other = json.dumps({**raw, "seed": 7})
    experiment = experiment_module.prepare(parse(raw))
    with pytest.raises(ValueError, match="another config"):
        experiment_module.adopt(other, experiment)
    experiment_module.adopt(config_json, experiment)
    try:
        assert experiment_module.cached_experiment(config_json) is experiment
    finally:
        del experiment_module._ADOPTED[config_json]


# --- arrays on the wire: np.save's bytes, read without parsing each header ------------------------

ARRAYS = {
    "matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "scalar": np.array(3.5, dtype=np.float32),
    "strided": np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2],
    "empty": np.zeros((0, 3), dtype=np.float16),
    "big-endian": np.arange(6, dtype=">f4").reshape(2, 3),
    "counts": np.arange(5, dtype=np.int64),
    "flags": np.array([True, False]),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_arrays_travel_as_np_save_bytes_and_read_back_equal(name: str) -> None:
    value = ARRAYS[name]
    record = records.to_array_record({"x": value})
    reference = Array(np.ascontiguousarray(value) if value.ndim else value)
    assert record["x"].data == reference.data
    assert (record["x"].dtype, record["x"].shape) == (reference.dtype, reference.shape)
    back = records.from_array_record(record)["x"]
    assert back.dtype == value.dtype and back.shape == value.shape and back.flags.writeable
    np.testing.assert_array_equal(back, value)
    np.testing.assert_array_equal(
        records.from_array_record(ArrayRecord({"x": reference}))["x"], value
    )
