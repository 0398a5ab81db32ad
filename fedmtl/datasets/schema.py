"""The feature schema of a table: how raw columns become model inputs and task targets.

A schema is fitted on a table's **training rows only** (in simulation), or read from a JSON file
that every silo of a deployment shares, so that every silo builds inputs of the same width with the
same scaling. Its JSON form (``schema_version`` 1)::

    {"schema_version": 1,
     "features": [{"name": "exp", "kind": "numeric", "mean": 9.3, "std": 5.7, "missing": true},
                  {"name": "cltype", "kind": "categorical", "categories": ["reg", "small"]}],
     "targets": [{"name": "read", "kind": "regression", "mean": 480.2, "std": 40.1},
                 {"name": "votetrump", "kind": "binary", "classes": ["0", "1"]},
                 {"name": "fearraces", "kind": "multiclass", "classes": ["1", "2", "3", "4", "5"]}]}

Encoding, column by column (the input width is the sum):

- numeric x: (x - mean) / std, missing values at 0 (the training mean); with ``missing`` (the
  training rows had missing values) one more column, 1 where x is missing.
- categorical x with categories c_1..c_K: one-hot over the K categories plus one column for a
  value that is missing or not among them (seen only outside the training rows).

Targets: regression y -> (y - mean) / std (metrics are in these standardised units); binary and
multiclass y -> the index of its class (binary: 0 or 1). A missing target, or a class the training
rows never had, leaves the row unlabelled for that task (the task mask).

Values are compared as labels: a number with an integral value is written without decimals
(``5.0`` -> ``"5"``), other values as text; classes and categories are sorted numerically when
they are all numbers, else as text.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskKind, TaskSpec

SCHEMA_VERSION = 1
MAX_CATEGORIES = 1000
"""A categorical feature with more levels than this is refused (an id column, most likely)."""


def label(value: Any) -> str | None:
    """A raw cell as a label: None when missing, integral numbers without decimals."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    return text or None


def sorted_labels(labels: set[str]) -> list[str]:
    """Numerically when every label is a number, else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def is_numeric(column: np.ndarray) -> bool:
    return column.dtype.kind in "biuf"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    mean: float
    std: float
    missing: bool = False

    @property
    def width(self) -> int:
        return 2 if self.missing else 1

    def encode(self, column: np.ndarray) -> np.ndarray:
        values = column.astype(np.float64)
        absent = np.isnan(values)
        scaled = np.where(absent, 0.0, (values - self.mean) / self.std)
        return np.stack([scaled, absent.astype(np.float64)], 1) if self.missing else scaled[:, None]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "mean": self.mean,
            "std": self.std,
            "missing": self.missing,
        }


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.categories) + 1

    def encode(self, column: np.ndarray) -> np.ndarray:
        position = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        codes = np.array([position.get(label(v) or "", other) for v in column], dtype=np.int64)
        return np.eye(self.width)[codes] if len(codes) else np.zeros((0, self.width))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "categorical", "categories": list(self.categories)}


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class Target:
    """A task's column: its kind and, for classification, its classes (for regression its
    training mean and standard deviation)."""

    name: str
    kind: TaskKind
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    def spec(self) -> TaskSpec:
        if self.kind == "regression":
            return TaskSpec.regression(self.name)
        if self.kind == "binary":
            return TaskSpec.binary(self.name)
        return TaskSpec.multiclass(self.name, len(self.classes))

    def encode(self, column: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, labelled) for every row."""
        if self.kind == "regression":
            values = column.astype(np.float64)
            labelled = ~np.isnan(values)
            scaled = np.where(labelled, (values - self.mean) / self.std, 0.0)
            return torch.tensor(scaled, dtype=torch.float32), torch.from_numpy(labelled)
        position = {c: i for i, c in enumerate(self.classes)}
        codes = np.array([position.get(label(v) or "", -1) for v in column], dtype=np.int64)
        labelled = codes >= 0
        dtype = torch.long if self.kind == "multiclass" else torch.float32
        return torch.tensor(np.maximum(codes, 0)).to(dtype), torch.from_numpy(labelled)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "regression":
            entry.update(mean=self.mean, std=self.std)
        else:
            entry["classes"] = list(self.classes)
        return entry


@dataclass(frozen=True)
class FeatureSchema:
    """How a table's feature columns become inputs and its target columns become tasks."""

    features: tuple[Feature, ...]
    targets: tuple[Target, ...]
    version: int = SCHEMA_VERSION
    fitted_rows: int | None = field(default=None, compare=False)

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def encode(self, columns: Mapping[str, np.ndarray], num_rows: int) -> torch.Tensor:
        """The (N, width) float32 inputs of the table ``columns``."""
        parts = [f.encode(np.asarray(columns[f.name])) for f in self.features]
        matrix = np.concatenate(parts, axis=1) if parts else np.zeros((num_rows, 0))
        return torch.tensor(matrix, dtype=torch.float32)

    # ------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        columns: Mapping[str, np.ndarray],
        features: Sequence[str],
        targets: Mapping[str, TaskKind],
        rows: np.ndarray,
        categorical: Sequence[str] = (),
        key: str = "dataset",
    ) -> FeatureSchema:
        """Fit on the table's ``rows`` only (its training rows); errors name ``key.targets.<col>``
        or ``key.features``."""
        fitted = [
            _fit_feature(name, np.asarray(columns[name])[rows], name in categorical, key)
            for name in features
        ]
        kinds = [
            _fit_target(name, kind, np.asarray(columns[name])[rows], key)
            for name, kind in targets.items()
        ]
        return cls(tuple(fitted), tuple(kinds), fitted_rows=len(rows))

    # ------------------------------------------------------------------------- JSON form
    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.version,
            "features": [f.to_json() for f in self.features],
            "targets": [t.to_json() for t in self.targets],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: str = "dataset.schema") -> FeatureSchema:
        """Read a schema file; anything malformed is a ConfigError on ``key`` naming the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                key, f"no schema file at {path}.", "give the path of a schema JSON file."
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                key,
                f"{path} is not a JSON schema file ({err}).",
                "give a schema JSON file (written by fedmtl).",
            ) from None
        return cls.from_json(data, f"{key}: {path}")

    @classmethod
    def from_json(cls, data: Any, where: str) -> FeatureSchema:
        fail = _Failure(where)
        if not isinstance(data, Mapping):
            fail("the file", "must be a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            fail("schema_version", f"must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
        features = [
            _feature_from_json(e, f"features[{i}]", fail)
            for i, e in enumerate(_list(data, "features", fail))
        ]
        targets = [
            _target_from_json(e, f"targets[{i}]", fail)
            for i, e in enumerate(_list(data, "targets", fail))
        ]
        names = [f.name for f in features] + [t.name for t in targets]
        if len(set(names)) != len(names):
            fail("features/targets", "name a column twice")
        if not targets:
            fail("targets", "must name at least one target")
        return cls(tuple(features), tuple(targets))


# ------------------------------------------------------------------------------------ helpers
class _Failure:
    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, field_name: str, problem: str) -> NoReturn:
        key, _, path = self.where.partition(": ")
        raise ConfigError(
            key,
            f"{path}: {field_name} {problem}.",
            "fix the file, or let fedmtl fit a schema (dataset.schema: null) and save it.",
        )


def _list(data: Mapping[str, Any], name: str, fail: _Failure) -> list[Any]:
    value = data.get(name)
    if not isinstance(value, list):
        fail(name, "must be a list")
    return list(value)


def _number(
    entry: Mapping[str, Any], name: str, where: str, fail: _Failure, positive: bool = False
) -> float:
    value = entry.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (positive and value <= 0)
    ):
        fail(f"{where}.{name}", "must be a finite number" + (" > 0" if positive else ""))
    return float(value)


def _strings(entry: Mapping[str, Any], name: str, where: str, fail: _Failure) -> tuple[str, ...]:
    value = entry.get(name)
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) for v in value)
        or len(set(value)) != len(value)
    ):
        fail(f"{where}.{name}", "must be a list of distinct strings")
    return tuple(value)


def _name(entry: Any, where: str, fail: _Failure) -> str:
    if not isinstance(entry, Mapping):
        fail(where, "must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        fail(f"{where}.name", "must be a non-empty string")
    return name


def _feature_from_json(entry: Any, where: str, fail: _Failure) -> Feature:
    name = _name(entry, where, fail)
    kind = entry.get("kind")
    if kind == "numeric":
        missing = entry.get("missing", False)
        if not isinstance(missing, bool):
            fail(f"{where}.missing", "must be true or false")
        return NumericFeature(
            name,
            _number(entry, "mean", where, fail),
            _number(entry, "std", where, fail, positive=True),
            missing,
        )
    if kind == "categorical":
        return CategoricalFeature(name, _strings(entry, "categories", where, fail))
    fail(f"{where}.kind", f"must be numeric or categorical, got {kind!r}")


def _target_from_json(entry: Any, where: str, fail: _Failure) -> Target:
    name = _name(entry, where, fail)
    kind = entry.get("kind")
    if kind == "regression":
        return Target(
            name,
            "regression",
            mean=_number(entry, "mean", where, fail),
            std=_number(entry, "std", where, fail, positive=True),
        )
    if kind in ("binary", "multiclass"):
        classes = _strings(entry, "classes", where, fail)
        if (kind == "binary" and len(classes) != 2) or len(classes) < 2:
            fail(
                f"{where}.classes", f"must hold {'2' if kind == 'binary' else 'at least 2'} classes"
            )
        return Target(name, kind, classes)
    fail(f"{where}.kind", f"must be binary, multiclass or regression, got {kind!r}")


def _fit_feature(name: str, values: np.ndarray, categorical: bool, key: str) -> Feature:
    if is_numeric(values) and not categorical:
        numbers = values.astype(np.float64)
        present = numbers[~np.isnan(numbers)]
        if present.size == 0:
            raise ConfigError(
                f"{key}.features",
                f"column '{name}' has no value in the training rows.",
                "drop it from dataset.features.",
            )
        std = float(present.std())
        return NumericFeature(
            name,
            float(present.mean()),
            std if std > 1e-12 else 1.0,
            bool(present.size < numbers.size),
        )
    categories = {c for c in (label(v) for v in values) if c is not None}
    if len(categories) > MAX_CATEGORIES:
        raise ConfigError(
            f"{key}.features",
            f"column '{name}' has {len(categories)} distinct values, more than {MAX_CATEGORIES}: an id, not a feature.",
            "list it under dataset.id_columns, or leave it out of dataset.features.",
        )
    return CategoricalFeature(name, tuple(sorted_labels(categories)))


def _fit_target(name: str, kind: TaskKind, values: np.ndarray, key: str) -> Target:
    where = f"{key}.targets.{name}"
    if kind == "regression":
        if not is_numeric(values):
            raise ConfigError(
                where,
                f"is regression but column '{name}' is not numeric.",
                "declare it binary or multiclass, or clean the column.",
            )
        numbers = values.astype(np.float64)
        present = numbers[~np.isnan(numbers)]
        if present.size < 2:
            raise ConfigError(
                where,
                "has fewer than 2 labelled training rows.",
                "check the column, or drop the target.",
            )
        std = float(present.std())
        return Target(name, kind, mean=float(present.mean()), std=std if std > 1e-12 else 1.0)
    classes = sorted_labels({c for c in (label(v) for v in values) if c is not None})
    if kind == "binary" and len(classes) != 2:
        raise ConfigError(
            where,
            f"is binary but its training rows hold {len(classes)} values {classes[:10]}.",
            "declare it multiclass, or give a column with two values.",
        )
    if len(classes) < 2:
        raise ConfigError(
            where,
            f"needs at least 2 classes in the training rows, found {classes}.",
            "choose another target.",
        )
    return Target(name, kind, tuple(classes))
