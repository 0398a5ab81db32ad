"""Leakage rules (``partitions/heldout.py``): train and test decided for the whole dataset, so no
group (a student, a person) is on both sides of any split, and the dataset's own held-out rows are
only ever test rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import PartitionConfig, PluginConfig
from partitions import ASSIGNMENTS, SPLITS, Partition, build, hold_out
from tests.support.data import make_dataset


def grouped(num_rows: int, rows_per_group: int, seed: int = 0, **extra: Any) -> MultiTaskDataset:
    """A dataset whose consecutive ``rows_per_group`` rows share a ``person``; ``site`` cycles, so a
    person's rows fall in several sites (a student who changed schools)."""
    dataset = make_dataset(num_rows, 3, seed=seed)
    ids = {"site": dataset.natural_ids["site"], "person": np.arange(num_rows) // rows_per_group}
    return dataclasses.replace(dataset, natural_ids=ids, group_column="person", **extra)


def config(num_silos: int, split: str = "natural_id", **scalars: Any) -> PartitionConfig:
    values = {"column": "site"} if split == "natural_id" else {}
    return PartitionConfig(
        num_silos=num_silos,
        assignment=PluginConfig("all", ASSIGNMENTS.parse("all", {}, "a")),
        split=PluginConfig(split, SPLITS.parse(split, values, "s")),
        **scalars,
    )


def partition_of(dataset: MultiTaskDataset, cfg: PartitionConfig, seed: int = 0) -> Partition:
    held = hold_out(
        dataset.num_samples,
        dataset.natural_ids,
        dataset.group_column,
        dataset.heldout,
        cfg.test_fraction,
        cfg.global_test_fraction,
        seed,
    )
    return build(dataset, cfg, seed, held)


@settings(max_examples=30, deadline=None)
@given(
    rows_per_group=st.integers(1, 5),
    num_silos=st.integers(1, 6),
    test_fraction=st.floats(0.1, 0.5),
    global_fraction=st.sampled_from([0.0, 0.1, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_no_group_is_on_both_sides(
    rows_per_group: int, num_silos: int, test_fraction: float, global_fraction: float, seed: int
) -> None:
    dataset = grouped(240, rows_per_group, seed=seed % 7)
    cfg = config(num_silos, test_fraction=test_fraction, global_test_fraction=global_fraction)
    partition = partition_of(dataset, cfg, seed)
    people = dataset.natural_ids["person"]
    train, test = set(people[partition.train_rows()]), set(people[partition.test_rows()])
    assert not train & test
    assert set(people[partition.global_test_indices]) <= test
    num_people = len(np.unique(people))
    assert len(np.unique(people[partition.global_test_indices])) == round(
        global_fraction * num_people
    )
    assert partition.held_out == {"rule": "groups", "column": "person"}


def test_held_out_rows_are_only_test_rows() -> None:
    heldout = np.zeros(200, dtype=bool)
    heldout[150:] = True
    dataset = dataclasses.replace(make_dataset(200, 2), heldout=heldout)
    partition = partition_of(dataset, config(4, "iid", global_test_fraction=0.1))
    assert set(partition.test_rows()) == set(range(150, 200))
    assert set(partition.global_test_indices) <= set(range(150, 200))
    assert len(partition.global_test_indices) == 20  # round(0.1 * 200 rows)
    assert partition.held_out == {"rule": "fixed", "column": None}


def test_independent_rows_keep_the_per_silo_split() -> None:
    dataset = make_dataset(120, 2)
    assert hold_out(120, dataset.natural_ids, None, None, 0.25, 0.0, 0) is None
    fitted = hold_out(120, dataset.natural_ids, None, None, 0.25, 0.0, 0, fitted=True)
    assert fitted is not None and fitted.rule == "rows" and fitted.test.sum() == 30


def test_the_split_does_not_change_the_partitions_other_draws() -> None:
    """Tasks per silo come from the same stream with or without a leakage rule."""
    plain = build(make_dataset(240, 3), config(4, "iid"), 5)
    with_groups = partition_of(grouped(240, 2), config(4, "iid"), 5)
    assert [s.tasks for s in plain.silos] == [s.tasks for s in with_groups.silos]


def test_too_large_a_global_test_set_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        hold_out(10, {"p": np.arange(10) // 5}, "p", None, 0.25, 0.9, 0)  # 2 of 2 groups
    assert err.value.key == "partition.global_test_fraction" and "groups of 'p'" in str(err.value)


def test_a_dataset_whose_groups_straddle_its_heldout_rows_is_refused() -> None:
    heldout = np.zeros(30, dtype=bool)
    heldout[:4] = True  # person 1 (rows 3-5) has held-out and other rows
    with pytest.raises(ValueError, match="held-out and other rows"):
        grouped(30, 3, heldout=heldout)


def test_held_out_round_trips_and_a_leaking_manifest_is_refused(tmp_path: Path) -> None:
    dataset = grouped(120, 3)
    partition = partition_of(dataset, config(3))
    path = partition.save(tmp_path / "partition.json")
    manifest = json.loads(path.read_text())
    assert manifest["schema_version"] == 4 and manifest["held_out"]["rule"] == "groups"
    loaded = Partition.load(path)
    assert loaded == partition
    loaded.validate_against(dataset)
    # move one test row of a train person's group into a silo's test split: a leak
    silo = manifest["silos"][0]
    moved = silo["train_indices"].pop(0)
    silo["test_indices"] = sorted([*silo["test_indices"], moved])
    silo["num_train"], silo["num_test"] = len(silo["train_indices"]), len(silo["test_indices"])
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="both the train and the test side") as err:
        Partition.load(path).validate_against(dataset)
    assert err.value.key == "partition.path"


def test_version_2_manifests_still_load(tmp_path: Path) -> None:
    dataset = make_dataset(80, 2)
    manifest = build(dataset, config(2, "iid"), 0).to_manifest()
    manifest["schema_version"] = 2
    del manifest["held_out"]
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(manifest))
    loaded = Partition.load(path)
    assert loaded.held_out is None
    loaded.validate_against(dataset)


@pytest.mark.parametrize("bad", [{"rule": "by-magic"}, {"rule": "groups", "column": 3}, "groups"])
def test_a_bad_held_out_entry_names_the_field(tmp_path: Path, bad: object) -> None:
    manifest = build(make_dataset(80, 2), config(2, "iid"), 0).to_manifest()
    manifest["held_out"] = bad
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="held_out"):
        Partition.load(path)
