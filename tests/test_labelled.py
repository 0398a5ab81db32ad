"""Natural silos that hold the tasks they label: the ``labelled`` assignment, natural-id partitions
with one silo per id (``partition.num_silos`` null), the manifest's record of dropped tasks and
silos, and the README's "bring your own table" example, run as written."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.scenario import default_name
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import MissingLabelsConfig, PartitionConfig, PluginConfig
from partitions import ASSIGNMENTS, SPLITS, DroppedSilo, Partition, build
from tests.support.data import make_dataset
from tests.support.datasets import shop_table, write_table
from tests.support.runs import compose_raw, run_fedmtl

ROOT = Path(__file__).resolve().parents[1]
NUM_SITES = 12  # make_dataset's 'site' column: row i is at site i % 12


def labelled_config(
    min_labelled: int = 1, num_silos: int | None = None, **extra: Any
) -> PartitionConfig:
    return PartitionConfig(
        num_silos=num_silos,
        assignment=PluginConfig(
            "labelled", ASSIGNMENTS.parse("labelled", {"min_labelled": min_labelled}, "a")
        ),
        split=PluginConfig("natural_id", SPLITS.parse("natural_id", {"column": "site"}, "s")),
        **extra,
    )


def site_dataset(
    labels: dict[str, set[int]], num_rows: int = 120, sparse: dict[str, int] | None = None
) -> MultiTaskDataset:
    """Tasks t0, t1, t2; task t is labelled on every row of the sites ``labels[t]``, and on the
    first row only of site ``sparse[t]``."""
    sites = np.arange(num_rows) % NUM_SITES
    mask = torch.zeros(num_rows, 3, dtype=torch.bool)
    for j, task in enumerate(["t0", "t1", "t2"]):
        mask[:, j] = torch.from_numpy(np.isin(sites, sorted(labels[task])))
        if sparse and task in sparse:
            mask[int(np.flatnonzero(sites == sparse[task])[0]), j] = True
    return make_dataset(num_rows, 3, mask=mask)


def labelled_train_rows(dataset: MultiTaskDataset, train_indices: np.ndarray) -> dict[str, int]:
    counts = dataset.mask.numpy()[train_indices].sum(axis=0)
    return {t: int(c) for t, c in zip(dataset.task_names, counts, strict=True)}


# --- the assignment on a hand-built dataset -----------------------------------------------------

# t0 at sites 0-5; t1 at sites 3-10 but site 7 (one labelled row there); t2 at sites 0-10.
# Site 11 labels nothing.
HAND_LABELS = {"t0": set(range(6)), "t1": set(range(3, 11)) - {7}, "t2": set(range(11))}


def test_each_silo_holds_the_tasks_it_labels_and_the_manifest_says_what_it_lacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dataset = site_dataset(HAND_LABELS, sparse={"t1": 7})
    with caplog.at_level(logging.INFO, logger="partitions"):
        partition = build(dataset, labelled_config(min_labelled=2), seed=0)
    sites = dataset.natural_ids["site"]
    # one silo per site, in ascending site order; site 11 (no label at all) is left out
    assert partition.num_silos == 11
    for silo in partition.silos:
        rows = np.concatenate([silo.train_indices, silo.test_indices])
        assert set(sites[rows]) == {silo.id}
    expected = {s: [t for t in ("t0", "t1", "t2") if s in HAND_LABELS[t]] for s in range(11)}
    assert {s.id: list(s.tasks) for s in partition.silos} == expected
    assert partition.silos[0].dropped_tasks == {"t1": 0}
    assert partition.silos[4].dropped_tasks == {}
    assert partition.silos[8].dropped_tasks == {"t0": 0}
    # site 7 has one labelled t1 row (in train or in test): below min_labelled=2 either way
    seven = partition.silos[7]
    assert seven.tasks == ("t2",)
    assert seven.dropped_tasks == {
        "t0": 0,
        "t1": labelled_train_rows(dataset, seven.train_indices)["t1"],
    }
    assert seven.dropped_tasks["t1"] in (0, 1)
    (left_out,) = partition.dropped_silos
    assert left_out.split_position == 11
    assert left_out.dropped_tasks == {"t0": 0, "t1": 0, "t2": 0}
    assert left_out.num_train + left_out.num_test == 10
    used = np.concatenate(
        [np.concatenate([s.train_indices, s.test_indices]) for s in partition.silos]
    )
    assert not set(sites[used]) & {11}  # its rows are in no silo
    # logged: the silos lacking tasks, and the silo left out (a warning)
    assert any("lack tasks" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "left out of the federation" in warnings[0]
    assert "[11]" in warnings[0]


def test_min_labelled_is_the_threshold() -> None:
    dataset = site_dataset(HAND_LABELS, sparse={"t1": 7})
    loose = build(dataset, labelled_config(min_labelled=1), seed=0)
    seven = loose.silos[7]
    has_t1 = labelled_train_rows(dataset, seven.train_indices)["t1"] == 1
    assert ("t1" in seven.tasks) == has_t1
    # sites hold 10 rows, at least 7 of them for training: min_labelled 7 keeps every full label
    strict = build(dataset, labelled_config(min_labelled=7), seed=0)
    assert [s.tasks for s in strict.silos] == [
        s.tasks for s in build(dataset, labelled_config(2), seed=0).silos
    ]


def test_a_task_no_silo_holds_names_min_labelled_and_the_fix() -> None:
    dataset = site_dataset(HAND_LABELS)
    with pytest.raises(ConfigError) as err:
        build(dataset, labelled_config(min_labelled=9), seed=0)  # at most 8 training rows a site
    assert err.value.key == "partition.assignment.min_labelled"
    assert "['t0', 't1', 't2']" in err.value.problem
    assert "lower partition.assignment.min_labelled to" in err.value.fix

    nowhere = site_dataset({**HAND_LABELS, "t2": set()})
    with pytest.raises(ConfigError) as err:
        build(nowhere, labelled_config(), seed=0)
    assert err.value.key == "partition.assignment.min_labelled"
    assert "dataset.tasks=['t0', 't1']" in err.value.fix


def test_labelled_params_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        ASSIGNMENTS.parse("labelled", {"min_labelled": 0}, "partition.assignment")
    assert err.value.key.endswith("min_labelled")


def test_with_num_silos_given_the_ids_are_grouped_and_each_group_holds_what_it_labels() -> None:
    dataset = site_dataset(HAND_LABELS)
    partition = build(dataset, labelled_config(num_silos=4), seed=3)
    assert partition.num_silos == 4  # three sites each: every group labels some task
    for silo in partition.silos:
        counts = labelled_train_rows(dataset, silo.train_indices)
        assert list(silo.tasks) == [t for t, c in counts.items() if c >= 1]
        assert silo.dropped_tasks == {t: 0 for t, c in counts.items() if c == 0}


# --- property: every silo's tasks are labelled enough, every task is held -------------------------


@st.composite
def labelled_federations(draw: st.DrawFn) -> dict[str, Any]:
    rates = draw(st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]), min_size=36, max_size=36))
    rate = np.asarray(rates).reshape(NUM_SITES, 3)  # site x task: share of rows labelled
    gen = np.random.default_rng(draw(st.integers(0, 2**16)))
    sites = np.arange(144) % NUM_SITES
    mask = torch.from_numpy(gen.random((144, 3)) < rate[sites])
    cfg = labelled_config(
        min_labelled=draw(st.integers(1, 6)),
        num_silos=draw(st.none() | st.integers(1, NUM_SITES)),
        test_fraction=draw(st.floats(0.1, 0.5)),
        global_test_fraction=draw(st.sampled_from([0.0, 0.1])),
        missing_labels=MissingLabelsConfig(rate=draw(st.sampled_from([0.0, 0.3]))),
    )
    return {
        "dataset": make_dataset(144, 3, mask=mask),
        "cfg": cfg,
        "seed": draw(st.integers(0, 99)),
    }


@settings(max_examples=40, deadline=None)
@given(labelled_federations())
def test_every_silo_holds_exactly_its_labelled_tasks(fed: dict[str, Any]) -> None:
    dataset, cfg = fed["dataset"], fed["cfg"]
    minimum = cfg.assignment.params.min_labelled
    try:
        partition = build(dataset, cfg, fed["seed"])
    except ConfigError as err:
        # no silo labels some task enough, or missing labels hid too many of a held task's labels
        assert err.key in {"partition.assignment.min_labelled", "partition.min_train_per_task"}
        assert err.fix
        return
    assert all(partition.holders(t) for t in dataset.task_names)
    for silo in partition.silos:
        counts = labelled_train_rows(dataset, silo.train_indices)  # before labels are hidden
        assert silo.tasks and all(counts[t] >= minimum for t in silo.tasks)
        assert silo.dropped_tasks == {t: c for t, c in counts.items() if t not in silo.tasks}
        assert all(c < minimum for c in silo.dropped_tasks.values())
    for left_out in partition.dropped_silos:
        assert sorted(left_out.dropped_tasks) == list(dataset.task_names)
        assert all(c < minimum for c in left_out.dropped_tasks.values())
    split_silos = partition.num_silos + len(partition.dropped_silos)
    if cfg.num_silos is None:
        pool = np.setdiff1d(np.arange(dataset.num_samples), partition.global_test_indices)
        assert split_silos == len(np.unique(dataset.natural_ids["site"][pool]))
    else:
        assert split_silos == cfg.num_silos
    assert build(dataset, cfg, fed["seed"]) == partition


# --- the manifest -------------------------------------------------------------------------------


def test_dropped_tasks_and_silos_round_trip_through_the_manifest(tmp_path: Path) -> None:
    dataset = site_dataset(HAND_LABELS, sparse={"t1": 7})
    partition = build(dataset, labelled_config(min_labelled=2), seed=0)
    path = partition.save(tmp_path / "partition.json")
    loaded = Partition.load(path)
    assert loaded == partition
    loaded.validate_against(dataset)
    manifest = json.loads(path.read_text())
    assert manifest["schema_version"] == 4
    assert manifest["silos"][0]["dropped_tasks"] == {"t1": 0}
    assert manifest["dropped_silos"] == [partition.dropped_silos[0].to_manifest()]
    assert set(manifest["dropped_silos"][0]) == {
        "split_position",
        "num_train",
        "num_test",
        "dropped_tasks",
    }
    assert manifest["config"]["num_silos"] is None
    assert manifest["config"]["assignment"] == {"name": "labelled", "params": {"min_labelled": 2}}


def test_version_3_manifests_still_load(tmp_path: Path) -> None:
    dataset = site_dataset(HAND_LABELS)
    manifest = build(dataset, labelled_config(), seed=0).to_manifest()
    manifest["schema_version"] = 3
    del manifest["dropped_silos"]
    for entry in manifest["silos"]:
        del entry["dropped_tasks"]
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(manifest))
    loaded = Partition.load(path)
    assert loaded.dropped_silos == ()
    assert all(silo.dropped_tasks == {} for silo in loaded.silos)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m["silos"][0].update(dropped_tasks={"t1": -1}), "negative"),
        (lambda m: m["silos"][0].update(dropped_tasks={"t0": 0}), "lists tasks it holds"),
        (lambda m: m["silos"][0].update(dropped_tasks={"unicorn": 0}), "unknown tasks"),
        (lambda m: m["silos"][0].update(dropped_tasks=[]), "must be an object"),
        (lambda m: m.update(dropped_silos={}), "'dropped_silos' must be a list"),
        (lambda m: m["dropped_silos"][0].pop("num_train"), "missing field"),
        (lambda m: m["dropped_silos"][0].update(split_position=-1), "split_position"),
    ],
)
def test_a_malformed_dropped_record_is_refused(tmp_path: Path, change: Any, problem: str) -> None:
    manifest = build(site_dataset(HAND_LABELS), labelled_config(), seed=0).to_manifest()
    change(manifest)
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=problem) as err:
        Partition.load(path)
    assert err.value.key == "partition.path"


def test_a_dropped_silo_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="num_test"):
        DroppedSilo(0, 3, True, {})  # a bool is no count


# --- natural-id partitions decide the number of silos ------------------------------------------


def test_natural_id_with_num_silos_null_gives_one_silo_per_id_in_id_order() -> None:
    dataset = make_dataset(240, 2)
    cfg = PartitionConfig(
        num_silos=None,
        assignment=PluginConfig("all", ASSIGNMENTS.parse("all", {}, "a")),
        split=PluginConfig("natural_id", SPLITS.parse("natural_id", {"column": "site"}, "s")),
        global_test_fraction=0.1,
    )
    partition = build(dataset, cfg, seed=5)
    sites = dataset.natural_ids["site"]
    assert partition.num_silos == NUM_SITES
    for silo in partition.silos:
        assert set(sites[np.concatenate([silo.train_indices, silo.test_indices])]) == {silo.id}


def test_a_scenario_with_silos_per_id_is_named_so() -> None:
    raw = compose_raw(["partition=labelled"])
    assert raw["partition"]["num_silos"] is None
    assert default_name(raw) == "digits-labelled-natural_id-silos_per_id"
    assert default_name(compose_raw(["partition=labelled", "partition.num_silos=4"])).endswith(
        "-4silos"
    )


def test_num_silos_null_needs_a_split_that_finds_the_silos() -> None:
    with pytest.raises(ConfigError) as err:
        PartitionConfig(
            num_silos=None,
            assignment=PluginConfig("all", ASSIGNMENTS.parse("all", {}, "a")),
            split=PluginConfig("iid", SPLITS.parse("iid", {}, "s")),
        )
    assert err.value.key == "num_silos" and "natural_id" in err.value.fix


# --- end to end ---------------------------------------------------------------------------------


def gappy_shop(num_rows: int = 480) -> pd.DataFrame:
    """:func:`shop_table` (stores 0-5) where stores 0 and 1 never record a price and store 5
    never records whether it sold."""
    frame = shop_table(num_rows)
    frame.loc[frame["store"].isin([0, 1]), "price"] = np.nan
    frame.loc[frame["store"] == 5, "sold"] = np.nan
    return frame


def readme_table_command() -> list[str]:
    """The README's "Bring your own table" command, as the shell would split it."""
    text = (ROOT / "README.md").read_text()
    after = text.split("Bring your own table", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:2] == ["fedmtl", "run"], block
    return words[2:]


def check_the_shop_run(summary: dict[str, Any], manifest: dict[str, Any]) -> None:
    assert summary["status"] == "completed"
    assert summary["num_silos"] == 6  # one silo per store
    assert summary["holders"] == {"price": [2, 3, 4, 5], "sold": [0, 1, 2, 3, 4]}
    dropped = [silo["dropped_tasks"] for silo in manifest["silos"]]
    assert dropped == [{"price": 0}, {"price": 0}, {}, {}, {}, {"sold": 0}]
    assert summary["final"]["price"]["r2"] > 0.5
    assert summary["final"]["sold"]["accuracy"] > summary["task_info"]["sold"]["chance"]


def test_the_readme_table_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's command, composed and run in this process (as ``fedmtl run`` does, without
    Hydra's run directory), on a shop table where some stores never label a task."""
    overrides = readme_table_command()
    assert "runtime=inprocess" in overrides  # fast enough for the normal tier
    monkeypatch.chdir(tmp_path)
    write_table(gappy_shop(), tmp_path / "shop.csv")
    summary = run(parse(compose_raw(overrides, tmp_path / "run")))
    check_the_shop_run(summary, json.loads((tmp_path / "run" / "partition.json").read_text()))


@pytest.mark.slow
def test_the_readme_table_example_runs_in_a_shell(tmp_path: Path) -> None:
    """The same command through the ``fedmtl`` executable, in the table's directory."""
    write_table(gappy_shop(), tmp_path / "shop.csv")
    result = run_fedmtl(["run", *readme_table_command()], timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    check_the_shop_run(summary, json.loads((run_dir / "partition.json").read_text()))


def test_labelled_on_an_iid_split_gives_different_task_subsets(tmp_path: Path) -> None:
    """partition.assignment.name=labelled on another preset: with 'sold' recorded on a few rows
    only, the silos that hold fewer than min_labelled of them train on price alone."""
    frame = shop_table(360)
    frame.loc[frame.index[24:], "sold"] = np.nan  # 24 rows, about 4 per silo
    path = write_table(frame, tmp_path / "shop.csv")
    overrides = [
        "dataset=table",
        f"dataset.path={path}",
        "dataset.targets={price: regression, sold: binary}",
        "partition=iid_all",
        "partition.num_silos=6",
        "partition.assignment.name=labelled",
        "+partition.assignment.min_labelled=3",
        "runtime=inprocess",
        "tracking=quiet",
        "num_rounds=2",
    ]
    summary = run(parse(compose_raw(overrides, tmp_path / "run")))
    assert summary["status"] == "completed"
    manifest = json.loads((tmp_path / "run" / "partition.json").read_text())
    subsets = {tuple(silo["tasks"]) for silo in manifest["silos"]}
    assert subsets == {("price",), ("price", "sold")}
    for silo in manifest["silos"]:
        assert ("sold" in silo["dropped_tasks"]) == (silo["tasks"] == ["price"])
        assert all(count < 3 for count in silo["dropped_tasks"].values())
    assert summary["holders"]["price"] == list(range(6))
    assert 0 < len(summary["holders"]["sold"]) < 6
