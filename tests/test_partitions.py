"""Partitions: task assignment x sample split, train/test holdout, and the manifest contract."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

import partitions
from fedmtl.app.run.config import parse_partition
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import PartitionConfig, PluginConfig
from partitions import ASSIGNMENTS, SPLITS, Partition, Silo, build
from partitions.assignment import FromLabels, RandomKParams, assign_random_k
from tests.support.data import assignment_params, make_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "partition"
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


def make_config(
    num_silos: int,
    k: int | None = None,
    test_fraction: float = 0.25,
    min_train_per_task: int = 1,
) -> PartitionConfig:
    """``k=None``: every silo holds every task; else ``random_k`` with that ``k``. IID split."""
    name, values = ("all", {}) if k is None else ("random_k", {"k": k})
    return PartitionConfig(
        num_silos=num_silos,
        test_fraction=test_fraction,
        min_train_per_task=min_train_per_task,
        assignment=PluginConfig(name, ASSIGNMENTS.parse(name, values, "partition.assignment")),
        split=PluginConfig("iid", SPLITS.parse("iid", {}, "partition.split")),
    )


def config_from_yaml(path: Path) -> PartitionConfig:
    cfg = parse_partition(yaml.safe_load(path.read_text()))
    assert isinstance(cfg, PartitionConfig)
    return cfg


@st.composite
def federations(draw: st.DrawFn) -> dict[str, Any]:
    """(num_tasks, k, num_silos, num_samples, seed, test_fraction) with num_silos * k >= T."""
    num_tasks = draw(st.integers(1, 6))
    k = draw(st.integers(1, num_tasks))
    num_silos = draw(st.integers(math.ceil(num_tasks / k), 12))
    return {
        "num_tasks": num_tasks,
        "k": k,
        "num_silos": num_silos,
        "num_samples": draw(st.integers(num_silos, 200)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "test_fraction": draw(st.floats(0.05, 0.95)),
    }


def all_indices(partition: Partition) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([s.train_indices, s.test_indices]) for s in partition.silos]
    )


# --- properties -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(federations())
def test_build_properties(fed: dict[str, Any]) -> None:
    dataset = make_dataset(fed["num_samples"], fed["num_tasks"])
    cfg = make_config(fed["num_silos"], fed["k"], fed["test_fraction"])
    partition = build(dataset, cfg, fed["seed"])

    assert partition.num_silos == fed["num_silos"]
    assert [s.id for s in partition.silos] == list(range(fed["num_silos"]))
    # Every sample sits in exactly one silo, and in exactly one of its train and test parts.
    np.testing.assert_array_equal(np.sort(all_indices(partition)), np.arange(fed["num_samples"]))
    sizes = [s.num_train + s.num_test for s in partition.silos]
    assert max(sizes) - min(sizes) <= 1  # iid: near-equal shards
    for silo in partition.silos:
        assert len(silo.tasks) == len(set(silo.tasks)) == fed["k"]
        assert list(silo.tasks) == [t for t in dataset.task_names if t in silo.tasks]
        assert silo.num_train >= 1
        if silo.num_train + silo.num_test >= 2:
            assert silo.num_test >= 1
        assert min(silo.labelled_counts(dataset, "train").values()) >= cfg.min_train_per_task
    for task in dataset.task_names:
        assert partition.holders(task)
    assert build(dataset, cfg, fed["seed"]) == partition  # deterministic for a seed


@PROPERTY_SETTINGS
@given(federations(), st.integers(1, 3), st.floats(0.3, 0.95))
def test_min_train_per_task_is_enforced(fed: dict[str, Any], minimum: int, rate: float) -> None:
    # Sample indices do not depend on the mask: a fully labelled twin gives the same silos.
    sparse = make_dataset(fed["num_samples"], fed["num_tasks"], label_rate=rate)
    full = make_dataset(fed["num_samples"], fed["num_tasks"])
    reference = build(full, make_config(fed["num_silos"], fed["k"], fed["test_fraction"]), 0)
    cfg = make_config(fed["num_silos"], fed["k"], fed["test_fraction"], minimum)
    feasible = all(
        min(silo.labelled_counts(sparse).values()) >= minimum for silo in reference.silos
    )
    event("feasible" if feasible else "infeasible")
    if feasible:
        partition = build(sparse, cfg, 0)
        assert partition.silos == reference.silos
    else:
        with pytest.raises(ConfigError) as info:
            build(sparse, cfg, 0)
        assert info.value.key == "partition.min_train_per_task"
        assert "silo" in info.value.problem
        assert "fewer silos" in info.value.fix


@PROPERTY_SETTINGS
@given(federations())
def test_different_seeds_differ(fed: dict[str, Any]) -> None:
    dataset = make_dataset(max(fed["num_samples"], 40), fed["num_tasks"])
    cfg = make_config(fed["num_silos"], fed["k"], fed["test_fraction"])
    assert build(dataset, cfg, fed["seed"]) != build(dataset, cfg, fed["seed"] + 1)


def test_all_gives_every_silo_every_task() -> None:
    dataset = make_dataset()
    partition = build(dataset, make_config(7), seed=3)
    assert all(s.tasks == tuple(dataset.task_names) for s in partition.silos)
    assert partition.holders("t2") == list(range(7))


# --- generic contract of every registered plug-in ----------------------------------------------


def decided_from_labels(name: str) -> bool:
    return isinstance(ASSIGNMENTS.get(name).factory, FromLabels)


@pytest.mark.parametrize("name", [n for n in ASSIGNMENTS.names() if not decided_from_labels(n)])
@pytest.mark.parametrize(("num_tasks", "num_silos"), [(1, 1), (4, 6), (6, 3), (5, 12)])
def test_assignment_contract(name: str, num_tasks: int, num_silos: int) -> None:
    task_names = [f"t{i}" for i in range(num_tasks)]
    params = assignment_params(name, task_names, num_silos)
    factory = ASSIGNMENTS.get(name).factory
    result = factory(list(task_names), num_silos, params, np.random.default_rng(5))
    assert len(result) == num_silos
    for tasks in result:
        assert tasks and tasks == [t for t in task_names if t in tasks]
    assert {t for tasks in result for t in tasks} == set(task_names)
    assert factory(list(task_names), num_silos, params, np.random.default_rng(5)) == result


@pytest.mark.parametrize("name", [n for n in ASSIGNMENTS.names() if decided_from_labels(n)])
@pytest.mark.parametrize(("num_tasks", "num_silos"), [(1, 1), (4, 6), (6, 3), (5, 12)])
def test_assignment_from_labels_contract(name: str, num_tasks: int, num_silos: int) -> None:
    """Every silo's tasks (in dataset order) and dropped tasks (with its labelled rows) make up
    the dataset's tasks; every task is held (each has a silo with 9 labelled rows); no draw."""
    task_names = [f"t{i}" for i in range(num_tasks)]
    labelled = np.random.default_rng(num_silos).integers(0, 4, size=(num_silos, num_tasks))
    labelled[np.arange(num_tasks) % num_silos, np.arange(num_tasks)] = 9
    factory = ASSIGNMENTS.get(name).factory
    assert isinstance(factory, FromLabels)
    params = ASSIGNMENTS.parse(name, {}, "partition.assignment")
    result = factory(list(task_names), labelled, params)
    assert len(result) == num_silos
    for row, choice in zip(labelled, result, strict=True):
        assert choice.tasks == [t for t in task_names if t in choice.tasks]
        assert sorted([*choice.tasks, *choice.dropped]) == sorted(task_names)
        assert choice.dropped == {
            t: int(row[j]) for j, t in enumerate(task_names) if t in choice.dropped
        }
    assert {t for choice in result for t in choice.tasks} == set(task_names)
    assert factory(list(task_names), labelled, params) == result


@pytest.mark.parametrize("name", SPLITS.names())
@pytest.mark.parametrize(("num_samples", "num_silos"), [(40, 1), (97, 8), (300, 12)])
def test_split_contract(name: str, num_samples: int, num_silos: int) -> None:
    dataset = make_dataset(num_samples, 3)
    pool = np.arange(num_samples)[np.arange(num_samples) % 7 != 3]  # some samples held out
    params = SPLITS.parse(name, {}, "partition.split")
    factory = SPLITS.get(name).factory
    result = factory(dataset, pool, num_silos, params, 11)
    assert len(result) == num_silos
    joined = np.concatenate(result)
    assert all(len(r) > 0 for r in result)
    assert len(np.unique(joined)) == len(joined)
    assert np.isin(joined, pool).all()
    again = factory(dataset, pool, num_silos, params, 11)
    assert all(np.array_equal(a, b) for a, b in zip(result, again, strict=True))


def test_disjoint_with_extra_holds_every_pair_of_tasks() -> None:
    """Blocks of 2 plus 1 task of another block, in turn (experiment=synthetic_groups): 12
    distinct silos, each block's pair on 4 silos and each pair across blocks on 2."""
    task_names = [f"t{i}" for i in range(6)]
    params = ASSIGNMENTS.parse("disjoint", {"block_size": 2, "extra": 1}, "partition.assignment")
    held = ASSIGNMENTS.get("disjoint").factory(task_names, 12, params, np.random.default_rng(0))
    assert held[:4] == [
        ["t0", "t1", "t2"],
        ["t0", "t2", "t3"],
        ["t0", "t4", "t5"],
        ["t0", "t1", "t3"],
    ]
    assert len({tuple(tasks) for tasks in held}) == 12
    for a, b in itertools.combinations(task_names, 2):
        together = sum(a in tasks and b in tasks for tasks in held)
        assert together == (4 if task_names.index(a) // 2 == task_names.index(b) // 2 else 2)


def test_disjoint_extra_takes_outside_tasks_in_turn() -> None:
    """Blocks t0-t2, t3-t5, t6; the r-th silo of a block adds outside tasks 2r, 2r + 1."""
    task_names = [f"t{i}" for i in range(7)]
    params = ASSIGNMENTS.parse("disjoint", {"block_size": 3, "extra": 2}, "a")
    held = ASSIGNMENTS.get("disjoint").factory(task_names, 6, params, np.random.default_rng(0))
    assert held == [
        ["t0", "t1", "t2", "t3", "t4"],
        ["t0", "t1", "t3", "t4", "t5"],
        ["t0", "t1", "t6"],
        ["t0", "t1", "t2", "t5", "t6"],
        ["t2", "t3", "t4", "t5", "t6"],
        ["t2", "t3", "t6"],
    ]


def test_disjoint_extra_errors() -> None:
    rng = np.random.default_rng(0)
    params = ASSIGNMENTS.parse("disjoint", {"block_size": 2, "extra": 5}, "partition.assignment")
    with pytest.raises(ConfigError) as info:
        ASSIGNMENTS.get("disjoint").factory([f"t{i}" for i in range(6)], 3, params, rng)
    assert info.value.key == "partition.assignment.extra" and "extra <= 4" in info.value.fix
    with pytest.raises(ConfigError) as info:
        ASSIGNMENTS.parse("disjoint", {"extra": -1}, "partition.assignment")
    assert info.value.key == "partition.assignment.extra"


# --- errors -----------------------------------------------------------------------------------


def test_k_larger_than_the_number_of_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        build(make_dataset(num_tasks=4), make_config(6, k=5), seed=0)
    assert info.value.key == "partition.assignment.k"
    assert "4" in info.value.fix


def test_k_zero() -> None:
    with pytest.raises(ConfigError) as info:
        ASSIGNMENTS.parse("random_k", {"k": 0}, "partition.assignment")
    assert info.value.key == "partition.assignment.k"


def test_too_few_silos_for_the_tasks() -> None:
    with pytest.raises(ConfigError) as info:
        build(make_dataset(num_tasks=5), make_config(2, k=2), seed=0)
    assert info.value.key == "partition.num_silos"
    assert "no silo" in info.value.problem
    assert "num_silos >= 3" in info.value.fix


def test_assignment_errors_come_before_any_draw() -> None:
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ConfigError):
        assign_random_k(["a", "b", "c"], 1, RandomKParams(k=2), rng)
    assert rng.bit_generator.state == state


def test_more_silos_than_samples() -> None:
    with pytest.raises(ConfigError) as info:
        build(make_dataset(num_samples=5), make_config(6), seed=0)
    assert info.value.key == "partition.num_silos"


def test_min_train_per_task_impossible() -> None:
    dataset = make_dataset(num_samples=200, num_tasks=4)
    dataset.mask[:, 3] = False
    dataset.mask[:3, 3] = True  # task t3 has 3 labels for 10 silos
    with pytest.raises(ConfigError) as info:
        build(dataset, make_config(10), seed=0)
    err = info.value
    assert err.key == "partition.min_train_per_task"
    assert "'t3'" in err.problem and "silo " in err.problem
    assert "fewer silos" in err.fix


def test_unknown_plugin_name() -> None:
    with pytest.raises(ConfigError) as info:
        ASSIGNMENTS.parse("nope", {}, "partition.assignment")
    assert info.value.key == "partition.assignment.name"


# --- manifest -----------------------------------------------------------------------------------


def test_manifest_round_trip(tmp_path: Path) -> None:
    dataset = make_dataset(label_rate=0.9)
    partition = build(dataset, make_config(6, k=2), seed=42)
    path = partition.save(tmp_path / "run" / "partition.json")
    loaded = partitions.load(path, dataset)
    assert loaded == partition
    for a, b in zip(loaded.silos, partition.silos, strict=True):
        assert a.tasks == b.tasks
        np.testing.assert_array_equal(a.train_indices, b.train_indices)
        np.testing.assert_array_equal(a.test_indices, b.test_indices)

    manifest = json.loads(path.read_text())
    foundation = {"schema_version", "seed", "dataset", "tasks", "config", "silos"}
    later = {"global_test_indices", "feature_skew", "held_out", "dropped_silos"}
    assert set(manifest) == foundation | later
    assert manifest["schema_version"] == partitions.SCHEMA_VERSION == 4
    assert manifest["dropped_silos"] == []
    assert manifest["held_out"] is None  # digits-like rows are independent: each silo cut its own
    assert (manifest["seed"], manifest["dataset"]) == (42, "tiny")
    assert manifest["tasks"] == dataset.task_names
    assert manifest["config"]["num_silos"] == 6
    assert manifest["config"]["assignment"] == {"name": "random_k", "params": {"k": 2}}
    assert manifest["config"]["split"] == {"name": "iid", "params": {}}
    for entry in manifest["silos"]:
        assert set(entry) == {
            "id",
            "tasks",
            "num_train",
            "num_test",
            "train_indices",
            "test_indices",
            "hidden_labels",
            "feature_skew",
            "dropped_tasks",
        }
        assert entry["dropped_tasks"] == {}  # random_k decides from the task names alone
        for part in ("train", "test"):
            indices = entry[f"{part}_indices"]
            assert all(type(i) is int for i in indices)
            assert indices == sorted(indices)
            assert entry[f"num_{part}"] == len(indices)


def rewrite(path: Path, change: Any) -> Path:
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def saved(tmp_path: Path) -> tuple[MultiTaskDataset, Path]:
    dataset = make_dataset()
    return dataset, build(dataset, make_config(4, k=2), seed=1).save(tmp_path / "partition.json")


def test_load_rejects_an_unknown_schema_version(saved: tuple[MultiTaskDataset, Path]) -> None:
    dataset, path = saved
    rewrite(path, lambda m: m.update(schema_version=99))
    with pytest.raises(ConfigError) as info:
        partitions.load(path, dataset)
    assert info.value.key == "partition.path"
    assert "schema_version" in info.value.problem


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.pop("silos"), "silos"),
        (lambda m: m.pop("seed"), "seed"),
        (lambda m: m["silos"][1].pop("train_indices"), "silos[1].train_indices"),
        (lambda m: m["silos"][0].update(num_test=10**6), "silos[0].num_test"),
    ],
)
def test_load_rejects_a_broken_manifest(
    saved: tuple[MultiTaskDataset, Path], change: Any, field: str
) -> None:
    dataset, path = saved
    rewrite(path, change)
    with pytest.raises(ConfigError) as info:
        partitions.load(path, dataset)
    assert info.value.key == "partition.path"
    assert f"'{field}'" in info.value.problem


def test_load_rejects_a_manifest_for_another_dataset(saved: tuple[MultiTaskDataset, Path]) -> None:
    _, path = saved
    with pytest.raises(ConfigError) as info:
        partitions.load(path, make_dataset(name="other"))
    assert info.value.key == "partition.path"
    assert "'tiny'" in info.value.problem


@pytest.mark.parametrize(
    "dataset",
    [make_dataset(num_samples=50), make_dataset(num_tasks=2)],
    ids=["fewer-samples", "fewer-tasks"],
)
def test_load_rejects_a_mismatched_dataset(
    saved: tuple[MultiTaskDataset, Path], dataset: MultiTaskDataset
) -> None:
    _, path = saved
    with pytest.raises(ConfigError) as info:
        partitions.load(path, dataset)
    assert info.value.key == "partition.path"


def test_load_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        partitions.load(tmp_path / "absent.json", make_dataset())
    assert info.value.key == "partition.path"


def test_validate_against_finds_shared_samples() -> None:
    silos = (
        Silo(0, ("t0",), np.array([0, 1, 2]), np.array([3])),
        Silo(1, ("t1",), np.array([3, 4]), np.array([5])),
    )
    partition = Partition("tiny", 0, ("t0", "t1"), silos, {})
    with pytest.raises(ConfigError, match="share samples") as info:
        partition.validate_against(make_dataset(num_tasks=2))
    assert info.value.key == "partition.path"


def test_silo_arrays_are_sorted_and_read_only() -> None:
    silo = Silo(0, ("t0",), np.array([5, 1, 3]), np.array([], dtype=np.int64))
    np.testing.assert_array_equal(silo.train_indices, [1, 3, 5])
    with pytest.raises(ValueError):
        silo.train_indices[0] = 7
    with pytest.raises(ValueError):
        Silo(0, ("t0",), np.array([1, 1]), np.array([2]))


# --- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "num_silos"), [("iid_random_k.yaml", 12), ("iid_all.yaml", 10)])
def test_config_presets_build(preset: str, num_silos: int) -> None:
    cfg = config_from_yaml(CONFIGS / preset)
    partition = build(make_dataset(num_samples=600, num_tasks=6, label_rate=0.8), cfg, seed=0)
    assert partition.num_silos == num_silos
    assert partition.config == partitions.config_to_dict(cfg)


def test_every_registered_scheme_has_a_preset() -> None:
    """configs/partition/ mirrors the three registries: each plug-in is chosen by some preset."""
    used: dict[str, set[str]] = {"assignment": set(), "split": set(), "feature_skew": set()}
    for path in CONFIGS.glob("*.yaml"):
        values = yaml.safe_load(path.read_text())
        if "path" in values or "local" in values:  # from_file, local: no scheme of their own
            continue
        for key, names in used.items():
            names.add(values.get(key, {"name": "none"})["name"])
    assert used["assignment"] == set(ASSIGNMENTS.names())
    assert used["split"] == set(SPLITS.names())
    assert used["feature_skew"] == set(partitions.FEATURE_SKEWS.names())
