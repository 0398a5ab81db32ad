"""Compressed updates (fedmtl.core.compression, strategy.compression): top-k and QSGD with error
feedback, the server's decoding and its refusals, the bytes on the wire, and runs: every
expected value worked out by hand or by an independent computation next to it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import MODEL_FILE, load_model_arrays
from fedmtl.app.run.config import parse
from fedmtl.core.compression import Compression, compress, decode
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import SiloInfo, TrainReply
from strategies.engine.replies import ReplyError, check_train_reply
from tests.support.engines import assert_unchanged, make_fedavg, one_round
from tests.support.fakes import FakeSilo, Federation, initial_arrays
from tests.support.runs import compose_raw

TOPK = Compression("topk", 0.3)
RNG = np.random.default_rng(0)


def test_topk_keeps_the_k_largest_and_feeds_back_what_it_dropped() -> None:
    x = np.array([0.5, -3.0, 0.1, 2.0, -0.2, 1.0, 0.0, -4.0, 0.3, 0.05], dtype=np.float32)
    # d = 10, k = ceil(0.3 x 10) = 3: the magnitudes 4, 3, 2 at indices 7, 1, 3
    wire, residual = compress({"w": x}, TOPK, {}, RNG)
    assert sorted(wire) == ["w#topk-idx", "w#topk-val"]
    np.testing.assert_array_equal(wire["w#topk-idx"], [1, 3, 7])
    assert wire["w#topk-idx"].dtype == np.int32
    np.testing.assert_array_equal(wire["w#topk-val"], [-3.0, 2.0, -4.0])
    dropped = x.copy()
    dropped[[1, 3, 7]] = 0.0
    np.testing.assert_array_equal(residual["w"], dropped)
    # next round: a = e + Delta; with Delta = 0.6 at index 0 the largest are 1.0 + 0 (5),
    # 0.5 + 0.6 (0) and 0.3 (8)
    delta = np.zeros(10, dtype=np.float32)
    delta[0] = 0.6
    wire, residual = compress({"w": delta}, TOPK, residual, RNG)
    np.testing.assert_array_equal(wire["w#topk-idx"], [0, 5, 8])
    np.testing.assert_allclose(wire["w#topk-val"], [1.1, 1.0, 0.3])
    np.testing.assert_allclose(residual["w"], [0, 0, 0.1, 0, -0.2, 0, 0, 0, 0, 0.05], atol=1e-7)
    # decoded by the server: the kept entries in place, zeros elsewhere
    dense = decode(wire, {"w": (2, 5)}, TOPK)["w"]
    np.testing.assert_allclose(dense.reshape(-1), [1.1, 0, 0, 0, 0, 1.0, 0, 0, 0.3, 0])
    assert dense.shape == (2, 5)


def test_ratio_one_is_the_identity() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    wire, residual = compress({"w": x}, Compression("topk", 1.0), {}, RNG)
    assert list(wire) == ["w"] and wire["w"] is not None
    np.testing.assert_array_equal(wire["w"], x)
    np.testing.assert_array_equal(residual["w"], np.zeros_like(x))


def qsgd_decoded(x: np.ndarray, levels: int, seed: int) -> np.ndarray:
    wire, _ = compress(
        {"w": x}, Compression("qsgd", levels=levels), {}, np.random.default_rng(seed)
    )
    return decode(wire, {"w": x.shape}, Compression("qsgd", levels=levels))["w"]


def test_qsgd_is_unbiased_and_reproducible_per_seed() -> None:
    x = np.array([0.3, -1.2, 0.05, 2.0, -0.7], dtype=np.float32)
    norm = float(np.linalg.norm(x))
    # s = 2: the coarsest useful grid, each entry lands on a multiple of ||x|| / 2
    draws = np.stack([qsgd_decoded(x, 2, seed) for seed in range(3000)])
    # every draw is ||x|| l / s with l in {floor(r), floor(r) + 1}, r = s |x| / ||x||
    levels = np.abs(draws) * 2 / norm
    low = np.floor(2 * np.abs(x) / norm)
    assert np.all(np.isclose(levels, low) | np.isclose(levels, low + 1))
    # unbiased: each entry's variance is at most (||x|| / s)^2 / 4, so the mean of 3000 draws
    # lies within 5 standard errors of x
    bound = 5 * (norm / 2) / 2 / math.sqrt(len(draws))
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=bound)
    np.testing.assert_array_equal(qsgd_decoded(x, 2, 7), qsgd_decoded(x, 2, 7))
    assert not np.array_equal(qsgd_decoded(x, 2, 7), qsgd_decoded(x, 2, 8))
    # codes and the norm travel: d int8 codes and one float32
    wire, _ = compress({"w": x}, Compression("qsgd", levels=2), {}, RNG)
    assert wire["w#qsgd-code"].dtype == np.int8 and wire["w#qsgd-code"].shape == (5,)
    np.testing.assert_allclose(wire["w#qsgd-norm"], [norm], rtol=1e-6)


SENT = {"w": np.zeros((2, 5), dtype=np.float32)}
SILO = SiloInfo(1, ("a",), 10, 5, {"a": 10}, {"a": 5})


def no_shares(key: str, task: str) -> bool:
    return False


def reply_with(arrays: dict[str, np.ndarray]) -> TrainReply:
    return TrainReply(deltas=arrays, num_examples=10, steps=1, task_examples={"a": 10})


def good_topk() -> dict[str, np.ndarray]:
    return {
        "w#topk-idx": np.array([0, 4, 9], dtype=np.int32),
        "w#topk-val": np.array([1.0, -2.0, 3.0], dtype=np.float32),
    }


def spoiled(part: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {**good_topk(), part: value}


@pytest.mark.parametrize(
    ("arrays", "why"),
    [
        (spoiled("w#topk-idx", np.array([0, 4, 10], dtype=np.int32)), "out of range"),
        (spoiled("w#topk-idx", np.array([0, -1, 9], dtype=np.int32)), "out of range"),
        (spoiled("w#topk-idx", np.array([0, 4, 4], dtype=np.int32)), "repeated"),
        (spoiled("w#topk-idx", np.array([0, 4], dtype=np.int32)), "expected 3 integers"),
        (spoiled("w#topk-idx", np.array([0.0, 4.0, 9.0], dtype=np.float32)), "integers"),
        (spoiled("w#topk-val", np.array([1.0, np.nan, 3.0], dtype=np.float32)), "non-finite"),
        (spoiled("w#topk-val", np.ones(4, dtype=np.float32)), "expected 3 floats"),
        ({"w#topk-idx": good_topk()["w#topk-idx"]}, "missing"),
        ({"w": np.ones((2, 5), dtype=np.float32)}, "sent dense"),
        ({**good_topk(), "w": np.ones((2, 5), dtype=np.float32)}, "sent dense"),
    ],
)
def test_malformed_topk_replies_are_refused(arrays: dict[str, np.ndarray], why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        check_train_reply(1, reply_with(arrays), SENT, SILO, "joint", no_shares, TOPK)
    good = check_train_reply(1, reply_with(good_topk()), SENT, SILO, "joint", no_shares, TOPK)
    np.testing.assert_array_equal(good.deltas["w"].reshape(-1), [1, 0, 0, 0, -2, 0, 0, 0, 0, 3])


@pytest.mark.parametrize(
    ("codes", "norm", "why"),
    [
        (np.array([1, 0, 3, 0, 0, 0, 0, 0, 0, 0], dtype=np.int8), [1.0], "within"),  # s = 2
        (np.zeros(10, dtype=np.int16), [1.0], "int8"),
        (np.zeros(9, dtype=np.int8), [1.0], "expected 10 integers"),
        (np.zeros(10, dtype=np.int8), [np.inf], "non-finite"),
        (np.zeros(10, dtype=np.int8), [-1.0], "negative"),
    ],
)
def test_malformed_qsgd_replies_are_refused(codes: np.ndarray, norm: list[float], why: str) -> None:
    arrays = {"w#qsgd-code": codes, "w#qsgd-norm": np.array(norm, dtype=np.float32)}
    with pytest.raises(ReplyError, match=why):
        qsgd = Compression("qsgd", levels=2)
        check_train_reply(1, reply_with(arrays), SENT, SILO, "joint", no_shares, qsgd)


def test_dense_replies_to_a_compressed_round_never_reach_the_model() -> None:
    silos = [FakeSilo(("a",), 10, {"a": 10}, trunk) for trunk in (1.0, 2.0)]
    engine = make_fedavg(compression="topk", compression_ratio=0.5)
    new, outcome, _ = one_round(engine, Federation(silos))
    assert outcome.num_updates == 0 and len(outcome.rejected) == 2
    assert all("sent dense" in r["reason"] for r in outcome.rejected)
    assert_unchanged(new, set(initial_arrays()))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"compression": "topk", "compression_ratio": 0.0}, "compression_ratio"),
        ({"compression": "topk", "compression_ratio": 1.5}, "compression_ratio"),
        ({"compression": "qsgd", "compression_ratio": 0.5}, "compression_ratio"),
        ({"compression": "qsgd", "qsgd_levels": 0}, "qsgd_levels"),
        ({"compression": "qsgd", "qsgd_levels": 128}, "qsgd_levels"),
        ({"compression": "topk", "qsgd_levels": 15}, "qsgd_levels"),
        ({"compression": "gzip"}, "compression"),
    ],
)
def test_bad_compression_parameters_name_their_field(params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_fedavg(**params)
    assert err.value.key == field


# ------------------------------------------------------------------------------------ runs
TINY = [
    "runtime=inprocess",
    "tracking=quiet",
    "dataset=synthetic",
    "dataset.num_samples=400",
    "dataset.num_tasks=4",
    "dataset.num_groups=2",
    "partition.num_silos=4",
    "train.max_steps=2",
    "num_rounds=2",
]


def run_dir(path: Path, overrides: list[str]) -> Path:
    run(parse(compose_raw([*TINY, *overrides], output_dir=path)))
    return path


@pytest.mark.slow  # two runs of UPGrad
def test_ratio_one_runs_bit_for_bit_as_uncompressed(tmp_path: Path) -> None:
    # upgrad: per-task trunk shares, each compressed on its own
    plain = run_dir(tmp_path / "plain", ["strategy=upgrad"])
    ones = run_dir(
        tmp_path / "ones",
        ["strategy=upgrad", "strategy.compression=topk", "strategy.compression_ratio=1.0"],
    )
    expected, _ = load_model_arrays(plain / MODEL_FILE)
    got, _ = load_model_arrays(ones / MODEL_FILE)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert np.array_equal(got[key], value), key
    summaries = [json.loads((d / "summary.json").read_text()) for d in (plain, ones)]
    assert summaries[0]["final"] == summaries[1]["final"]
    assert summaries[0]["bytes_up"] == summaries[1]["bytes_up"]


def npy_bytes(array: np.ndarray) -> int:
    """The bytes of one array in a reply: its ``.npy`` serialisation."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return len(buffer.getvalue())


def test_bytes_up_are_those_of_the_encoding(tmp_path: Path) -> None:
    out = run_dir(
        tmp_path / "topk",
        ["strategy=fedavg", "strategy.compression=topk", "strategy.compression_ratio=0.1"],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and not summary["rejected"]
    model, _ = load_model_arrays(out / MODEL_FILE)
    silos = json.loads((out / "partition.json").read_text())["silos"]
    per_round = 0
    for silo in silos:  # every silo trains in both rounds; it sends its trunk and its heads
        keys = [k for k in model if k.startswith("trunk.")]
        keys += [k for k in model for t in silo["tasks"] if k.startswith(f"heads.{t}.")]
        for key in keys:
            d = model[key].size
            k = math.ceil(0.1 * d)  # the sizes here give ceil(0.1 d) exactly
            # each array's bytes and its key's (Flower's ArrayRecord.count_bytes); a regression
            # head's bias (d = 1, k = d) travels dense
            if k == d:
                per_round += npy_bytes(np.zeros(model[key].shape, np.float32)) + len(key)
                continue
            indices, values = np.zeros(k, dtype=np.int32), np.zeros(k, dtype=np.float32)
            per_round += npy_bytes(indices) + len(f"{key}#topk-idx")
            per_round += npy_bytes(values) + len(f"{key}#topk-val")
    assert summary["bytes_up"] == 2 * per_round
