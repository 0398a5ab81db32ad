"""Non-IID schemes: every assignment x split with missing labels, feature skew and a global test set.

Properties (hypothesis) over schemes and parameters, a statistical check of Dirichlet label skew,
errors that name the key, the manifest round trip, and what a silo's data looks like.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from rich.console import Console

import partitions
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import MissingLabelsConfig, PartitionConfig, PluginConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.datasets import build_dataset
from fedmtl.datasets.digits import DigitsParams
from partitions import ASSIGNMENTS, FEATURE_SKEWS, SPLITS, Partition, build
from partitions.split import run_partitioner, shuffled
from partitions.stats import TABLE_WIDTH, mean_js, print_table, silo_stats
from partitions.views import global_test_data, silo_data
from tests.support.data import assignment_params, make_dataset
from tests.support.runs import compose_raw

NUM_SAMPLES = 240
NUM_TASKS = 4  # t0, t2 multiclass (3 classes), t1, t3 binary; a 'site' column with 12 ids
# Infeasible draws may only fail on these keys, with a ConfigError.
INFEASIBLE_KEYS = {
    "partition.split.alpha",  # no Dirichlet draw in 10 gave every silo min_size samples
    "partition.split.profile",  # exponential sizes that round a silo to nothing
    "partition.min_train_per_task",
    "partition.assignment.single_task_fraction",
    "partition.assignment.min_labelled",  # a task no silo has enough labelled rows of
}
USES_EVERY_SAMPLE = {"iid", "dirichlet", "quantity", "natural_id"}


def plugin(registry: Any, name: str, values: dict[str, Any], key: str) -> PluginConfig:
    return PluginConfig(name, registry.parse(name, values, key))


def assignment_values(draw: st.DrawFn, name: str, task_names: list[str], num_silos: int) -> dict:
    num_tasks = len(task_names)
    if name == "random_k":
        return {"k": draw(st.integers(math.ceil(num_tasks / num_silos), num_tasks))}
    if name == "dirichlet":
        return {"alpha": draw(st.floats(0.05, 5.0)), "min_share": draw(st.floats(0.05, 0.5))}
    if name == "explicit":
        subsets = st.lists(st.sampled_from(task_names), min_size=1, max_size=num_tasks, unique=True)
        tasks = [draw(subsets) for _ in range(num_silos)]
        # silo i >= 1 covers task i - 1, silo 0 every task the others leave uncovered
        covered = min(num_silos, num_tasks) - 1
        tasks[0] = sorted(set(tasks[0]) | set(task_names[covered:]))
        for i in range(1, covered + 1):
            tasks[i] = sorted(set(tasks[i]) | {task_names[i - 1]})
        return {"tasks": tasks}
    if name == "labelled":
        return {"min_labelled": draw(st.integers(1, 3))}
    if name == "mixed":
        k = draw(st.none() | st.integers(1, num_tasks))
        return {"single_task_fraction": draw(st.floats(0.05, 1.0)), "k": k}
    return {}


def split_values(draw: st.DrawFn, name: str, num_silos: int) -> dict:
    if name == "dirichlet":
        return {"alpha": draw(st.floats(0.1, 10.0)), "min_size": 1}
    if name == "pathological":
        return {"classes_per_silo": draw(st.integers(1, 3))}
    if name == "shards":
        return {"shards_per_silo": draw(st.integers(1, 3))}
    if name == "quantity":
        profiles = ["linear", "fmtlbench", "square", "power_law"]
        profiles += ["exponential"] if num_silos <= 4 else []
        return {"profile": draw(st.sampled_from(profiles)), "exponent": draw(st.floats(0.2, 2))}
    return {}


@st.composite
def schemes(draw: st.DrawFn) -> dict[str, Any]:
    """A partition config over the tiny dataset, with its seed and label rate."""
    task_names = [f"t{i}" for i in range(NUM_TASKS)]
    num_silos = draw(st.integers(1, 10))
    assignment = draw(st.sampled_from(ASSIGNMENTS.names()))
    split = draw(st.sampled_from(SPLITS.names()))
    silos_from_data = split == "natural_id" and draw(st.booleans())
    if silos_from_data:
        num_silos = 12  # one silo per site (the assignment's parameters are drawn for them)
    skew = draw(st.sampled_from([n for n in FEATURE_SKEWS.names() if n != "rotation"]))
    rate = draw(st.sampled_from([0.0, 0.0, 0.3, 0.7]))
    cfg = PartitionConfig(
        num_silos=None if silos_from_data else num_silos,
        test_fraction=draw(st.floats(0.1, 0.5)),
        min_train_per_task=draw(st.integers(1, 2)),
        global_test_fraction=draw(st.sampled_from([0.0, 0.1, 0.25])),
        assignment=plugin(
            ASSIGNMENTS,
            assignment,
            assignment_values(draw, assignment, task_names, num_silos),
            "partition.assignment",
        ),
        split=plugin(SPLITS, split, split_values(draw, split, num_silos), "partition.split"),
        feature_skew=plugin(FEATURE_SKEWS, skew, {}, "partition.feature_skew"),
        missing_labels=MissingLabelsConfig(rate=rate, per_task={"t1": rate / 2}),
    )
    return {"cfg": cfg, "seed": draw(st.integers(0, 2**32 - 1))}


DATASET = make_dataset(NUM_SAMPLES, NUM_TASKS, label_rate=0.9)


@settings(max_examples=60, deadline=None)
@given(schemes())
def test_every_scheme_keeps_the_guarantees(scheme: dict[str, Any]) -> None:
    cfg: PartitionConfig = scheme["cfg"]
    event(f"{cfg.assignment.name} x {cfg.split.name}")
    try:
        partition = build(DATASET, cfg, scheme["seed"])
    except ConfigError as err:
        event(f"infeasible: {err.key}")
        assert err.key in INFEASIBLE_KEYS, str(err)
        assert err.fix
        return

    # Disjoint: a sample sits in at most one silo, in one of its parts, or in the global test set.
    held_out = partition.global_test_indices
    parts = [held_out] + [
        np.concatenate([s.train_indices, s.test_indices]) for s in partition.silos
    ]
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)
    assert len(held_out) == round(NUM_SAMPLES * cfg.global_test_fraction)
    if cfg.split.name in USES_EVERY_SAMPLE and not partition.dropped_silos:
        assert len(joined) == NUM_SAMPLES  # (a dropped silo's samples are used by no silo)
    # Coverage, minimums and missing labels; silos without a task (labelled) are left out.
    pool = np.setdiff1d(np.arange(NUM_SAMPLES), held_out)
    sites = len(np.unique(DATASET.natural_ids["site"][pool]))
    split_silos = sites if cfg.num_silos is None else cfg.num_silos
    assert partition.num_silos + len(partition.dropped_silos) == split_silos
    assert all(partition.holders(t) for t in DATASET.task_names)
    for silo in partition.silos:
        assert silo.tasks and silo.num_train >= 1
        visible = silo.labelled_counts(DATASET, "train")
        assert min(visible.values()) >= cfg.min_train_per_task
        for task in silo.tasks:
            rate = cfg.missing_labels.per_task.get(task, cfg.missing_labels.rate)
            hidden = len(silo.hidden.get(task, ()))
            assert hidden == round(rate * (hidden + visible[task]))
    # Deterministic for a seed, and the manifest describes it exactly.
    assert build(DATASET, cfg, scheme["seed"]) == partition
    assert Partition.from_manifest(json.loads(json.dumps(partition.to_manifest()))) == partition


@pytest.mark.parametrize("split", SPLITS.names())
@pytest.mark.parametrize("assignment", ASSIGNMENTS.names())
def test_every_assignment_with_every_split(assignment: str, split: str) -> None:
    """Each pair with default parameters, missing labels, noise and a global test set."""
    task_names = DATASET.task_names
    cfg = PartitionConfig(
        num_silos=5,
        global_test_fraction=0.1,
        assignment=PluginConfig(assignment, assignment_params(assignment, task_names, 5)),
        split=plugin(SPLITS, split, {"min_size": 5} if split == "dirichlet" else {}, "s"),
        feature_skew=plugin(FEATURE_SKEWS, "noise", {}, "f"),
        missing_labels=MissingLabelsConfig(rate=0.2),
    )
    partition = build(DATASET, cfg, seed=4)
    assert partition.num_silos == 5 and len(partition.global_test_indices) == 24
    assert all(partition.holders(t) for t in task_names)
    assert all(s.hidden for s in partition.silos)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("linear", [1, 2, 3, 4]), ("fmtlbench", [1, 2, 3, 4]), ("square", [1, 4, 9, 16])],
)
def test_quantity_sizes_follow_the_profile(profile: str, expected: list[int]) -> None:
    cfg = PartitionConfig(
        num_silos=4,
        assignment=plugin(ASSIGNMENTS, "all", {}, "a"),
        split=plugin(SPLITS, "quantity", {"profile": profile}, "s"),
    )
    partition = build(make_dataset(1000, 2), cfg, seed=0)
    sizes = np.array([s.num_train + s.num_test for s in partition.silos])
    np.testing.assert_allclose(sizes / sizes.sum(), np.array(expected) / sum(expected), atol=0.01)


def test_power_law_sizes() -> None:
    sizes = partitions.split.quantity_sizes(1000, 4, exponent=1.0)
    assert sum(sizes) == 1000 and sizes == sorted(sizes, reverse=True)
    assert sizes[1] == math.floor(1000 * 0.5 / (1 + 1 / 2 + 1 / 3 + 1 / 4))


@pytest.mark.parametrize(("num_samples", "num_silos"), [(10, 3), (97, 7), (64, 64), (1000, 13)])
def test_iid_split_equals_flwr_datasets_iid_partitioner(num_samples: int, num_silos: int) -> None:
    """``split_iid`` cuts the shuffled pool as flwr-datasets' IidPartitioner does."""
    from flwr_datasets.partitioner import IidPartitioner  # noqa: PLC0415 - heavy, this test only

    pool = np.arange(num_samples, dtype=np.int64) * 3  # indices need not be 0..n-1
    ours = SPLITS.get("iid").factory(None, pool, num_silos, None, 5)  # type: ignore[arg-type]
    theirs = run_partitioner(
        IidPartitioner(num_partitions=num_silos), {"index": shuffled(pool, 5)}, num_silos, "k", ""
    )
    assert len(ours) == len(theirs) == num_silos
    for mine, flower in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, flower)


def test_disjoint_gives_one_task_per_silo() -> None:
    cfg = PartitionConfig(
        num_silos=8,
        assignment=plugin(ASSIGNMENTS, "disjoint", {}, "a"),
        split=plugin(SPLITS, "iid", {}, "s"),
    )
    partition = build(make_dataset(200, 4), cfg, seed=0)
    assert [s.tasks for s in partition.silos] == [(f"t{i % 4}",) for i in range(8)]


def test_pathological_silos_hold_c_classes() -> None:
    cfg = PartitionConfig(
        num_silos=6,
        assignment=plugin(ASSIGNMENTS, "all", {}, "a"),
        split=plugin(SPLITS, "pathological", {"classes_per_silo": 2, "task": "t0"}, "s"),
    )
    dataset = make_dataset(300, 2)
    for silo in build(dataset, cfg, seed=1).silos:
        samples = np.concatenate([silo.train_indices, silo.test_indices])
        assert len(np.unique(dataset.targets["t0"].numpy()[samples])) == 2


def test_natural_id_silos_follow_the_ids() -> None:
    cfg = PartitionConfig(
        num_silos=5,
        assignment=plugin(ASSIGNMENTS, "all", {}, "a"),
        split=plugin(SPLITS, "natural_id", {"column": "site"}, "s"),
    )
    dataset = make_dataset(240, 2)
    sites = dataset.natural_ids["site"]
    partition = build(dataset, cfg, seed=0)
    site_sets = [
        set(sites[np.concatenate([s.train_indices, s.test_indices])]) for s in partition.silos
    ]
    assert sorted(len(s) for s in site_sets) == [2, 2, 2, 3, 3]  # 12 ids in 5 groups
    assert set().union(*site_sets) == set(range(12))
    assert sum(len(s) for s in site_sets) == 12  # an id never spans two silos


# --- statistics ---------------------------------------------------------------------------------


def test_smaller_alpha_gives_larger_label_divergence() -> None:
    """Mean over silos and 5 seeds of JS(P_silo || P) on digits' 'digit' labels, 10 silos."""
    dataset = build_dataset("digits", DigitsParams(), seed=0)
    means = {}
    for alpha in (0.1, 0.5, 1.0, 100.0):
        cfg = PartitionConfig(
            num_silos=10,
            assignment=plugin(ASSIGNMENTS, "all", {}, "a"),
            split=plugin(SPLITS, "dirichlet", {"alpha": alpha, "min_size": 10}, "s"),
        )
        runs = [
            mean_js(silo_stats(dataset, build(dataset, cfg, seed)), "digit") for seed in range(5)
        ]
        means[alpha] = float(np.mean(runs))
    assert means[0.1] > means[0.5] > means[1.0] > means[100.0], means
    assert means[0.1] > 0.3 and means[100.0] < 0.05, means


def test_label_skew_on_a_regression_task_skews_its_decile_bins() -> None:
    """Dirichlet skew named on a regression task splits its 10 global decile bins: a small alpha
    gives a larger divergence of the silos' bin distributions than a large one."""
    tasks = [TaskSpec.regression("y"), TaskSpec.binary("b")]
    dataset = make_dataset(1000, tasks=tasks)
    means = {}
    for alpha in (0.1, 100.0):
        cfg = PartitionConfig(
            num_silos=5,
            assignment=plugin(ASSIGNMENTS, "all", {}, "a"),
            split=plugin(SPLITS, "dirichlet", {"task": "y", "alpha": alpha, "min_size": 10}, "s"),
        )
        means[alpha] = mean_js(silo_stats(dataset, build(dataset, cfg, 0)), "y")
    assert means[0.1] > 2 * means[100.0], means


def test_stats_rows() -> None:
    dataset = make_dataset(200, 4)
    cfg = PartitionConfig(
        num_silos=4,
        assignment=plugin(ASSIGNMENTS, "disjoint", {}, "a"),
        split=plugin(SPLITS, "iid", {}, "s"),
        missing_labels=MissingLabelsConfig(rate=0.5),
    )
    partition = build(dataset, cfg, seed=0)
    rows = silo_stats(dataset, partition)
    assert [r["silo"] for r in rows] == [0, 1, 2, 3]
    for row, silo in zip(rows, partition.silos, strict=True):
        assert row["tasks"] == silo.tasks[0]
        assert row[f"labelled_{silo.tasks[0]}"] == silo.labelled_counts(dataset)[silo.tasks[0]]
        assert (
            sum(row[f"labelled_{t}"] for t in dataset.task_names)
            == row[f"labelled_{silo.tasks[0]}"]
        )
        assert all(0.0 <= row[f"js_{t}"] <= 1.0 for t in dataset.task_names)


@pytest.mark.parametrize(("assignment", "values"), [("all", {}), ("random_k", {"k": 2})])
def test_the_printed_table_fits_the_width_with_many_tasks_and_silos(
    assignment: str, values: dict[str, Any]
) -> None:
    """40 tasks with long names over 60 silos: every line of the printed tables (given all the
    room it wants) fits :data:`TABLE_WIDTH` and names every silo and every task."""
    tasks = [TaskSpec.binary(f"attribute_{i:02d}_with_a_long_name") for i in range(40)]
    dataset = make_dataset(1200, tasks=tasks)
    cfg = PartitionConfig(
        num_silos=60,
        assignment=plugin(ASSIGNMENTS, assignment, values, "a"),
        split=plugin(SPLITS, "iid", {}, "s"),
    )
    rows = silo_stats(dataset, build(dataset, cfg, seed=0))
    out = io.StringIO()
    print_table(rows, "many tasks", Console(file=out, width=400, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= TABLE_WIDTH
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") > 2]
    assert [c[0] for c in cells[:60]] == [str(i) for i in range(60)]  # one row per silo
    assert [c[0] for c in cells[60:]] == dataset.task_names  # then one row per task
    means = [float(c[3]) for c in cells[60:]]
    assert means == [round(mean_js(rows, t), 3) for t in dataset.task_names]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["partition=dirichlet_0.5", "partition.split.alpha=0"], "partition.split.alpha"),
        (["partition=dirichlet_0.5", "partition.split.alpha=-1"], "partition.split.alpha"),
        (["partition=dirichlet_0.5", "partition.split.task=unicorn"], "partition.split.task"),
        (
            ["partition=dirichlet_0.1", "partition.num_silos=60", "partition.split.min_size=20"],
            "partition.split.alpha",
        ),
        (["partition=dirichlet_0.5", "partition.num_silos=5000"], "partition.num_silos"),
        (["partition=quantity_skew", "partition.num_silos=5000"], "partition.num_silos"),
        (
            ["partition=pathological", "partition.split.classes_per_silo=11"],
            "partition.split.classes_per_silo",
        ),
        (["partition=natural_id"], "partition.split.column"),
        (
            [
                "partition=natural_id",
                "partition.num_silos=12",
                "dataset=synthetic",
                "dataset.num_sites=3",
            ],
            "partition.num_silos",
        ),
        (["partition=iid_all", "partition.num_silos=null"], "partition.num_silos"),
        (
            ["partition=disjoint", "partition.assignment.block_size=1", "partition.num_silos=3"],
            "partition.assignment.block_size",
        ),
        (["partition=explicit", "partition.num_silos=3"], "partition.assignment.tasks"),
        (
            ["partition=dirichlet_tasks", "partition.assignment.alpha=0"],
            "partition.assignment.alpha",
        ),
        (["partition=mixed", "partition.assignment.k=6"], "partition.assignment.k"),
        (
            ["partition=missing_labels", "partition.missing_labels.rate=1.0"],
            "partition.missing_labels.rate",
        ),
        (
            ["partition=missing_labels", "+partition.missing_labels.per_task.unicorn=0.5"],
            "partition.missing_labels.per_task",
        ),
        (
            [
                "partition=missing_labels",
                "partition.missing_labels.rate=0.99",
                "partition.min_train_per_task=5",
            ],
            "partition.min_train_per_task",
        ),
        (["partition=feature_rotation", "dataset.as_image=false"], "partition.feature_skew.name"),
        (
            ["partition=feature_noise", "partition.feature_skew.max_sigma=0"],
            "partition.feature_skew.max_sigma",
        ),
        (["+partition.global_test_fraction=1.0"], "partition.global_test_fraction"),
        (["+partition.global_test_fraction=0.0001"], "partition.global_test_fraction"),
        (["partition=from_file"], "partition.path"),
        (["partition=from_file", "partition.path=/nonexistent/partition.json"], "partition.path"),
        (
            ["partition=from_file", "partition.path=x.json", "+partition.num_silos=3"],
            "partition.num_silos",
        ),
    ],
)
def test_impossible_requests_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        prepare(parse(compose_raw(overrides)))
    assert info.value.key == key, str(info.value)
    assert info.value.fix


# --- manifest and silo data ---------------------------------------------------------------------


def skewed_config(skew: str, **values: Any) -> PartitionConfig:
    return PartitionConfig(
        num_silos=5,
        global_test_fraction=0.2,
        assignment=plugin(ASSIGNMENTS, "random_k", {"k": 2}, "a"),
        split=plugin(SPLITS, "dirichlet", {"alpha": 1.0}, "s"),
        feature_skew=plugin(FEATURE_SKEWS, skew, values, "f"),
        missing_labels=MissingLabelsConfig(rate=0.25),
    )


@pytest.mark.parametrize("skew", ["noise", "covariate_shift", "brightness"])
def test_manifest_round_trip_reproduces_silo_data(tmp_path: Path, skew: str) -> None:
    dataset = make_dataset(300, 4)
    partition = build(dataset, skewed_config(skew), seed=3)
    loaded = partitions.load(partition.save(tmp_path / "partition.json"), dataset)
    assert loaded == partition
    assert loaded.feature_skew == skew and any(s.hidden for s in loaded.silos)
    for silo_id in range(partition.num_silos):
        for split in ("train", "test"):
            a = silo_data(dataset, partition, silo_id, split)
            b = silo_data(dataset, loaded, silo_id, split)
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.mask, b.mask)
    np.testing.assert_array_equal(loaded.global_test_indices, partition.global_test_indices)


def test_from_file_reruns_the_same_partition(tmp_path: Path) -> None:
    overrides = ["partition=missing_labels", "+partition.global_test_fraction=0.1"]
    original = prepare(parse(compose_raw(overrides))).partition
    path = original.save(tmp_path / "partition.json")
    rerun = prepare(parse(compose_raw(["partition=from_file", f"partition.path={path}", "seed=7"])))
    assert rerun.partition == original


def test_a_version_1_manifest_still_loads(tmp_path: Path) -> None:
    dataset = make_dataset(100, 2)
    manifest = build(dataset, skewed_config("none"), seed=0).to_manifest()
    manifest["schema_version"] = 1
    for key in ("global_test_indices", "feature_skew", "held_out"):
        manifest.pop(key)
    for silo in manifest["silos"]:
        silo.pop("hidden_labels")
        silo.pop("feature_skew")
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(manifest))
    loaded = partitions.load(path, dataset)
    assert loaded.global_test_indices.size == 0 and loaded.feature_skew == "none"
    assert all(not s.hidden for s in loaded.silos)


def test_a_manifest_whose_silo_holds_global_test_samples_is_refused(tmp_path: Path) -> None:
    dataset = make_dataset(100, 2)
    manifest = build(dataset, skewed_config("none"), seed=0).to_manifest()
    manifest["global_test_indices"].append(manifest["silos"][0]["train_indices"][0])
    manifest["global_test_indices"].sort()
    path = tmp_path / "partition.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="global test set") as info:
        partitions.load(path, dataset)
    assert info.value.key == "partition.path"


def test_silo_data_masks_hidden_labels_and_applies_the_skew() -> None:
    dataset = make_dataset(300, 4)
    partition = build(dataset, skewed_config("noise"), seed=1)
    for silo in partition.silos:
        train = silo_data(dataset, partition, silo.id, "train")
        test = silo_data(dataset, partition, silo.id, "test")
        assert train.labelled_counts() == silo.labelled_counts(dataset, "train")
        for task in silo.tasks:  # hidden labels only hide training labels
            rows = np.searchsorted(silo.train_indices, silo.hidden.get(task, []))
            assert not train.mask[rows, silo.tasks.index(task)].any()
        plain = dataset.inputs[torch.from_numpy(silo.test_indices.copy())]
        assert not torch.equal(test.inputs, plain) or silo.feature_skew["sigma"] == 0
        assert torch.equal(silo_data(dataset, partition, silo.id, "test").inputs, test.inputs)
    held_out = global_test_data(dataset, partition)
    rows = torch.from_numpy(partition.global_test_indices.copy())
    assert torch.equal(held_out.inputs, dataset.inputs[rows])  # never skewed
    assert held_out.num_samples == 60


def test_rotation_turns_images() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 1, :] = 1.0  # a horizontal bar near the top
    skew = FEATURE_SKEWS.get("rotation").factory
    turned = skew.apply(image, {"degrees": 90.0}, 0)
    assert turned.shape == image.shape
    assert turned[0, 0, :, 1].sum() > 6 or turned[0, 0, :, 6].sum() > 6  # now a vertical bar
    assert torch.allclose(skew.apply(image, {"degrees": 0.0}, 0), image, atol=1e-6)
