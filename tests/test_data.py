"""Datasets: the generic contract every registered dataset meets (the kit's checks,
:mod:`fedmtl.testing.data`), then each dataset's own checks."""

from __future__ import annotations

import itertools
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import build_dataclass
from fedmtl.datasets import DATASETS, MultiTaskDataset
from fedmtl.datasets.digits import DigitsPairParams, DigitsParams, load_raw
from fedmtl.datasets.synthetic import SyntheticParams
from fedmtl.testing.data import (
    check_dataset_contract,
    check_dataset_is_deterministic,
    check_dataset_refuses_unknown_parameters,
    check_dataset_selects_tasks,
)
from tests.support.datasets import example_dataset, example_params

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dataset"


@cache
def built(name: str, seed: int = 0, **overrides: Any) -> MultiTaskDataset:
    """Dataset ``name`` with its example parameters but ``overrides`` (cached: tests only read it)."""
    return example_dataset(name, seed, **overrides)


def target_matrix(dataset: MultiTaskDataset) -> np.ndarray:
    """Targets as a (T, N) float array (class labels as numbers)."""
    return np.stack([dataset.targets[t].double().numpy() for t in dataset.task_names])


def group_correlations(dataset: MultiTaskDataset) -> dict[str, list[float]]:
    """Target correlations of task pairs: inside a planted group, and across groups."""
    groups = dataset.info["planted_groups"]
    group_of = {task: g for g, tasks in enumerate(groups) for task in tasks}
    corr = np.corrcoef(target_matrix(dataset))
    result: dict[str, list[float]] = {"same": [], "across": []}
    for a, b in itertools.combinations(range(len(dataset.tasks)), 2):
        same = group_of[dataset.task_names[a]] == group_of[dataset.task_names[b]]
        result["same" if same else "across"].append(float(corr[a, b]))
    return result


# ---------------------------------------------------------------------------------------------
# The contract of every registered dataset (a new dataset is tested the day it is registered).


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_contract(name: str) -> None:
    check_dataset_contract(name, example_params(name))


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_is_deterministic_for_a_seed(name: str) -> None:
    check_dataset_is_deterministic(name, example_params(name))


@pytest.mark.parametrize("name", DATASETS.names())
def test_build_dataset_selects_and_orders_tasks(name: str) -> None:
    check_dataset_selects_tasks(name, example_params(name))


@pytest.mark.parametrize("name", DATASETS.names())
def test_unknown_parameter_is_a_config_error(name: str) -> None:
    check_dataset_refuses_unknown_parameters(name)


@pytest.mark.parametrize(
    ("params", "values", "field"),
    [
        (SyntheticParams, {"num_groups": 0}, "num_groups"),
        (SyntheticParams, {"num_tasks": 2, "num_groups": 3}, "num_groups"),
        (SyntheticParams, {"num_tasks": 0, "num_groups": 1}, "num_tasks"),
        (SyntheticParams, {"num_samples": 1}, "num_samples"),
        (SyntheticParams, {"input_dim": 0}, "input_dim"),
        (SyntheticParams, {"latent_dim": 0}, "latent_dim"),
        (SyntheticParams, {"task_noise": -0.1}, "task_noise"),
        (SyntheticParams, {"label_noise": float("nan")}, "label_noise"),
        (SyntheticParams, {"num_classes": 1}, "num_classes"),
        (SyntheticParams, {"kinds": "images"}, "kinds"),
        (SyntheticParams, {"conflict": 1.5}, "conflict"),
        (SyntheticParams, {"conflict": -0.1}, "conflict"),
        (SyntheticParams, {"conflict": "yes"}, "conflict"),
        (DigitsParams, {"as_image": "no"}, "as_image"),
        (DigitsParams, {"normalize": 1}, "normalize"),
        (DigitsPairParams, {"num_samples": 0}, "num_samples"),
        (DigitsPairParams, {"num_samples": 2.5}, "num_samples"),
    ],
)
def test_invalid_parameters_name_the_field(params: type, values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_dataclass(params, values, "dataset")
    assert err.value.key == f"dataset.{field}"


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError) as err:
        SyntheticParams(kinds="images")  # type: ignore[arg-type]
    assert err.value.key == "kinds"
    with pytest.raises(ConfigError) as err:
        DigitsParams(normalize="yes")  # type: ignore[arg-type]
    assert err.value.key == "normalize"


# ---------------------------------------------------------------------------------------------
# synthetic


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_tasks=st.integers(1, 9),
    data=st.data(),
    kinds=st.sampled_from(["mixed", "classification", "regression"]),
    num_classes=st.integers(2, 5),
    conflict=st.sampled_from([0.0, 0.3, 1.0]),
    input_dim=st.integers(1, 12),
    latent_dim=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_synthetic_structure(
    num_tasks: int,
    data: st.DataObject,
    kinds: str,
    num_classes: int,
    conflict: float,
    input_dim: int,
    latent_dim: int,
    seed: int,
) -> None:
    num_groups = data.draw(st.integers(1, num_tasks), label="num_groups")
    params = SyntheticParams(
        num_samples=200,
        num_tasks=num_tasks,
        num_groups=num_groups,
        input_dim=input_dim,
        latent_dim=latent_dim,
        kinds=kinds,  # type: ignore[arg-type]
        num_classes=num_classes,
        conflict=conflict,
    )
    dataset = DATASETS.get("synthetic").factory(params, seed)
    groups = dataset.info["planted_groups"]

    assert dataset.task_names == [f"t{t}" for t in range(num_tasks)]
    assert dataset.input_shape == (input_dim,)
    assert bool(dataset.mask.all())
    assert len(groups) == num_groups
    assert [task for group in groups for task in group] == dataset.task_names  # contiguous, once
    sizes = [len(group) for group in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1

    for task in dataset.tasks:
        target = dataset.targets[task.name]
        if task.kind == "regression":
            assert abs(float(target.mean())) < 1e-4 and abs(float(target.std(False)) - 1) < 1e-4
        else:
            counts = torch.bincount(target.long(), minlength=task.num_classes or 2)
            assert len(counts) == task.num_classes and counts.min() >= 0.1 * len(target)
    kinds_of = [{dataset.task(t).kind == "regression" for t in group} for group in groups]
    if kinds == "mixed":
        assert all(
            len(k) == 2 for k, group in zip(kinds_of, groups, strict=True) if len(group) >= 2
        )
    else:
        assert all(k == {kinds == "regression"} for k in kinds_of)


def test_synthetic_mixed_default_kinds() -> None:
    kinds = [task.kind for task in built("synthetic").tasks]
    assert kinds == ["multiclass", "regression", "binary", "regression", "multiclass", "regression"]
    assert built("synthetic").task("t0").num_classes == 3


@pytest.mark.parametrize(
    ("seed", "overrides"),
    [(0, {}), (1, {}), (2, {"num_tasks": 8, "num_groups": 4}), (3, {"kinds": "regression"})],
)
def test_synthetic_planted_relatedness(seed: int, overrides: dict) -> None:
    """Default conflict = 1: tasks of a group strongly related, tasks of different groups not."""
    correlations = group_correlations(built("synthetic", seed, **overrides))
    assert correlations["same"] and correlations["across"]
    assert min(correlations["same"]) > 0.6
    assert max(abs(c) for c in correlations["across"]) < 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_conflict_sets_what_groups_share(seed: int) -> None:
    """Across groups the targets correlate about 1 - conflict (the common score's share), inside a
    group about 1 whatever the conflict; the inputs, maps and directions do not change."""
    datasets = {
        c: built("synthetic", seed, conflict=c, kinds="regression") for c in (0.0, 0.5, 1.0)
    }
    for conflict, dataset in datasets.items():
        correlations = group_correlations(dataset)
        assert min(correlations["same"]) > 0.95
        assert np.mean(correlations["across"]) == pytest.approx(1.0 - conflict, abs=0.06)
        assert torch.equal(dataset.inputs, datasets[1.0].inputs)
    assert "sqrt(0.5)" in datasets[0.5].info["description"]


@pytest.mark.parametrize("conflict", [1.0, 0.5])
def test_synthetic_groups_are_independent_not_just_uncorrelated(conflict: float) -> None:
    """No function of another group's target predicts a task (a head on another group's features
    cannot serve it), unlike a sign flip; its own group's target does. A cubic fit of task a on
    task b explains about 1 - conflict across groups (the common score) and nearly all inside."""
    dataset = built("synthetic", 5, conflict=conflict, kinds="regression")
    y = target_matrix(dataset)
    group_of = {t: g for g, ts in enumerate(dataset.info["planted_groups"]) for t in ts}
    for (a, task_a), (b, task_b) in itertools.permutations(enumerate(dataset.task_names), 2):
        basis = np.vander(y[b], 4)  # 1, y_b, y_b^2, y_b^3
        coef, *_ = np.linalg.lstsq(basis, y[a], rcond=None)
        r2 = 1.0 - np.var(basis @ coef - y[a]) / np.var(y[a])
        if group_of[task_a] == group_of[task_b]:
            assert r2 > 0.95, (task_a, task_b, r2)
        else:
            assert r2 < (1.0 - conflict) ** 2 + 0.05, (task_a, task_b, r2)


def test_synthetic_task_noise_loosens_groups() -> None:
    """Mean within-group correlation falls as tasks inside a group drift apart."""
    means = [
        np.mean(
            group_correlations(built("synthetic", 0, task_noise=noise, kinds="regression"))["same"]
        )
        for noise in (0.0, 0.5, 2.0)
    ]
    assert means[0] > 0.99 and means[0] > means[1] > means[2]
    assert means[2] < 0.6


def test_synthetic_targets_are_learnable_but_not_linear() -> None:
    """A linear probe on x explains most, not all, of each regression target (tanh feature map)."""
    dataset = built("synthetic", 0, kinds="regression")
    x = np.c_[dataset.inputs.double().numpy(), np.ones(dataset.num_samples)]
    for task in dataset.task_names:
        y = dataset.targets[task].double().numpy()
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2 = 1.0 - np.mean((x @ coef - y) ** 2) / np.var(y)
        assert 0.6 < r2 < 0.95, (task, r2)


def test_synthetic_seed_changes_the_data() -> None:
    first, second = built("synthetic", 0), built("synthetic", 1)
    assert not torch.equal(first.inputs, second.inputs)
    assert not torch.equal(first.targets["t1"], second.targets["t1"])


# ---------------------------------------------------------------------------------------------
# digits

# digit -> (parity, magnitude, loops), written out by hand.
KNOWN_DIGITS = {
    0: (0, 0, 1),
    1: (1, 0, 0),
    2: (0, 0, 0),
    3: (1, 0, 0),
    4: (0, 0, 1),
    5: (1, 1, 0),
    6: (0, 1, 1),
    7: (1, 1, 0),
    8: (0, 1, 2),
    9: (1, 1, 1),
}


def test_digits_derived_labels() -> None:
    dataset = built("digits")
    digit = dataset.targets["digit"]
    assert dataset.num_samples == dataset.info["num_samples"] == 1797
    assert dataset.info["source"] == "sklearn.datasets.load_digits"
    assert set(digit.tolist()) == set(range(10))
    for value, (parity, magnitude, loops) in KNOWN_DIGITS.items():
        rows = digit == value
        assert (dataset.targets["parity"][rows] == parity).all()
        assert (dataset.targets["magnitude"][rows] == magnitude).all()
        assert (dataset.targets["loops"][rows] == loops).all()


def test_digits_ink_is_standardised_mean_intensity() -> None:
    dataset = built("digits", normalize=False, as_image=False)
    ink = dataset.targets["ink"].double()
    mean_pixel = dataset.inputs.double().mean(dim=1)
    assert abs(float(ink.mean())) < 1e-5 and abs(float(ink.std(False)) - 1) < 1e-5
    assert float(torch.corrcoef(torch.stack([ink, mean_pixel]))[0, 1]) > 0.9999


def test_digits_shapes_and_scaling() -> None:
    image, flat = built("digits"), built("digits", as_image=False)
    assert image.input_shape == (1, 8, 8) and flat.input_shape == (64,)
    assert torch.equal(image.inputs.reshape(-1, 64), flat.inputs)
    assert abs(float(image.inputs.mean())) < 1e-4 and abs(float(image.inputs.std()) - 1) < 1e-3
    raw = built("digits", normalize=False)
    assert float(raw.inputs.min()) == 0.0 and float(raw.inputs.max()) == 1.0
    assert torch.allclose(raw.inputs * 16, (raw.inputs * 16).round())  # pixel / 16


def test_digits_does_not_depend_on_the_seed() -> None:
    first, second = built("digits", 0), built("digits", 5)
    assert torch.equal(first.inputs, second.inputs)
    assert all(torch.equal(first.targets[t], second.targets[t]) for t in first.task_names)


# ---------------------------------------------------------------------------------------------
# digits_pair


def test_digits_pair_labels_are_consistent() -> None:
    dataset = built("digits_pair")
    left, right = dataset.targets["left"], dataset.targets["right"]
    assert dataset.num_samples == 4000
    assert torch.equal(dataset.targets["sum_parity"], ((left + right) % 2).float())
    assert torch.equal(dataset.targets["left_larger"], (left > right).float())
    assert 0.3 < float(dataset.targets["left_larger"].mean()) < 0.6  # P(l > r) = 0.45


def test_digits_pair_halves_show_their_labels() -> None:
    """The left and right 8x8 halves are bundled digit images of the labelled digits."""
    images, labels = load_raw()
    labels_of: dict[bytes, set[int]] = {}
    for image, label in zip(images, labels, strict=True):
        labels_of.setdefault(image.tobytes(), set()).add(int(label))
    dataset = built("digits_pair", 3, num_samples=300, normalize=False)
    pixels = dataset.inputs[:, 0].numpy()
    for i in range(dataset.num_samples):
        left_half = np.ascontiguousarray(pixels[i, :, :8]).tobytes()
        right_half = np.ascontiguousarray(pixels[i, :, 8:]).tobytes()
        assert int(dataset.targets["left"][i]) in labels_of[left_half]
        assert int(dataset.targets["right"][i]) in labels_of[right_half]


def test_digits_pair_shapes_and_seed() -> None:
    image = built("digits_pair", 0, num_samples=500)
    flat = built("digits_pair", 0, num_samples=500, as_image=False)
    assert image.input_shape == (1, 8, 16) and flat.input_shape == (128,)
    assert torch.equal(image.inputs.reshape(500, -1), flat.inputs)
    assert abs(float(image.inputs.mean())) < 1e-4
    other = built("digits_pair", 1, num_samples=500)
    assert not torch.equal(image.targets["left"], other.targets["left"])
    assert math.isclose(image.num_samples, 500)
