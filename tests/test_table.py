"""``dataset=table``: a user's own CSV or Parquet file, its feature schema fitted on training rows
only (or given as a shared file), missing target cells as the task mask, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import build_data
from fedmtl.core.errors import ConfigError
from fedmtl.datasets.schema import FeatureSchema
from fedmtl.datasets.table import table_source
from tests.support.datasets import shop_table, write_table
from tests.support.runs import beats_chance, compose_raw


def overrides(path: Path, *extra: str) -> list[str]:
    return [
        "dataset=table",
        f"dataset.path={path}",
        "dataset.targets={price: regression, sold: binary, size: multiclass}",
        "dataset.id_columns=[store]",
        "dataset.group_column=customer",
        "model=mlp",
        "partition.num_silos=3",
        *extra,
    ]


@pytest.mark.parametrize("suffix", [".csv", pytest.param(".parquet", marks=pytest.mark.slow)])
def test_a_users_table_runs_end_to_end(tmp_path: Path, suffix: str) -> None:
    path = write_table(shop_table(), tmp_path / f"shop{suffix}")
    raw = compose_raw(
        overrides(path, "runtime=inprocess", "tracking=quiet", "num_rounds=8"), tmp_path / "run"
    )
    summary = run(parse(raw))
    assert summary["tasks"] == ["price", "sold", "size"]
    assert beats_chance(summary, margin=0.1) == {}
    assert summary["task_info"]["size"]["num_classes"] == 3
    schema = summary["dataset_info"]["schema"]
    assert [f["name"] for f in schema["features"]] == ["x", "colour", "code"]


def test_the_schema_is_fitted_on_training_rows_only(tmp_path: Path) -> None:
    frame = shop_table()
    frame.loc[frame.index[-30:], "colour"] = "violet"  # only in the last rows
    path = write_table(frame, tmp_path / "shop.csv")
    config = parse(compose_raw(overrides(path, "partition.test_fraction=0.3")))
    dataset, partition = build_data(config)
    train = partition.train_rows()
    assert len(train) < len(frame)
    schema = dataset.info["schema"]
    x = next(f for f in schema["features"] if f["name"] == "x")
    assert x["mean"] == pytest.approx(np.nanmean(frame["x"].to_numpy()[train]))
    assert x["mean"] != pytest.approx(np.nanmean(frame["x"].to_numpy()))
    assert x["missing"] is True
    colours = next(f for f in schema["features"] if f["name"] == "colour")["categories"]
    violet_rows = frame.index[frame["colour"] == "violet"].to_numpy()
    assert ("violet" in colours) == bool(np.isin(violet_rows, train).any())
    price = next(t for t in schema["targets"] if t["name"] == "price")
    assert price["mean"] == pytest.approx(frame["price"].to_numpy()[train].mean())
    # the width follows the schema: x (value, missing), colour (categories + other), code
    assert dataset.input_shape == (2 + len(colours) + 1 + 1,)
    # no customer on both sides; empty 'sold' cells are unlabelled
    customers = frame["customer"].to_numpy()
    assert not set(customers[train]) & set(customers[partition.test_rows()])
    sold = dataset.task_names.index("sold")
    np.testing.assert_array_equal(dataset.mask[:, sold].numpy(), frame["sold"].notna().to_numpy())


def test_a_shared_schema_gives_every_silo_the_same_inputs(tmp_path: Path) -> None:
    """Two silos' tables with different colours: with the shared schema, the same width and the
    same scaling; a colour the schema does not know goes to the 'other' column."""
    frame = shop_table()
    source = table_source(frame, "shop", {"price": "regression"}, features=["x", "colour"])
    schema_path = source.fit(np.arange(len(frame))).save(tmp_path / "schema.json")
    schema = FeatureSchema.load(schema_path)
    first = frame[frame["colour"] != "blue"].copy()
    second = frame[frame["colour"] == "blue"].copy()
    second.loc[second.index[:5], "colour"] = "purple"
    widths = set()
    for part in (first, second):
        built = table_source(part, "shop", {"price": "regression"}, schema=schema)
        dataset = built.to_dataset(np.arange(len(part)))
        widths.add(dataset.input_shape)
        assert dataset.info["schema"] == schema.to_json()
    assert widths == {(2 + 3 + 1,)}  # x and its missing flag, red/green/blue + other


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"dataset.path": "missing.csv"}, "dataset.path", "no CSV file"),
        ({"dataset.path": "shop.txt"}, "dataset.path", "neither .csv nor .parquet"),
        ({"dataset.targets": "{prize: regression}"}, "dataset.targets.prize", "no column 'prize'"),
        ({"dataset.targets": "{price: ordinal}"}, "dataset.targets.price", "'ordinal'"),
        ({"dataset.targets": "{colour: binary}"}, "dataset.targets.colour", "3 values"),
        ({"dataset.targets": "{colour: regression}"}, "dataset.targets.colour", "not numeric"),
        ({"dataset.targets": "{}"}, "dataset.targets", "names no target"),
        ({"dataset.features": "[x, price]"}, "dataset.features", "target, id or group"),
        ({"dataset.group_column": "nobody"}, "dataset.group_column", "no column 'nobody'"),
        ({"dataset.schema": "garbage.json"}, "dataset.schema", "not a JSON schema"),
    ],
)
def test_bad_tables_name_the_key(
    tmp_path: Path, change: dict[str, str], key: str, says: str
) -> None:
    write_table(shop_table(60), tmp_path / "shop.csv")
    (tmp_path / "garbage.json").write_bytes(b"\x00\xff not json")
    values = {
        "dataset.path": str(tmp_path / "shop.csv"),
        "dataset.targets": "{price: regression}",
        "dataset.group_column": "customer",
    }
    values.update(
        {
            k: str(tmp_path / v) if k in ("dataset.path", "dataset.schema") else v
            for k, v in change.items()
        }
    )
    raw = compose_raw(["dataset=table", "model=mlp", *(f"{k}={v}" for k, v in values.items())])
    with pytest.raises(ConfigError) as err:
        build_data(parse(raw))
    assert err.value.key == key and says in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("mangle", "field"),
    [
        (lambda s: s.update(schema_version=7), "schema_version"),
        (lambda s: s["features"][0].update(std=0), "features[0].std"),
        (lambda s: s["features"][1].update(kind="ordinal"), "features[1].kind"),
        (lambda s: s["targets"][0].update(classes=["a"]), "targets[0].classes"),
    ],
)
def test_a_malformed_schema_file_names_the_field(tmp_path: Path, mangle, field: str) -> None:
    frame = shop_table(60)
    source = table_source(frame, "shop", {"sold": "binary"}, features=["x", "colour"])
    data = source.fit(np.arange(60)).to_json()
    mangle(data)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        FeatureSchema.load(path)
    assert err.value.key == "dataset.schema" and field in str(err.value)
