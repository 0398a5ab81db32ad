"""Leakage rules: train and test decided for the whole dataset, before silos are cut.

By default each silo cuts its own samples into train and test (``per_silo``), which is right when
rows are independent. When they are not, the split is decided over the whole dataset first:

- ``groups`` (the dataset names a ``group_column``: a student seen in several grades, a person over
  several years): units are the groups. The global test set takes ``round(g U)`` of the U groups
  (g = ``global_test_fraction``), drawn uniformly, with all their rows; of the other groups
  ``round(t (U - round(g U)))`` (t = ``test_fraction``) are test groups. Every row follows its
  group, so no group has rows on both sides in any silo or in the global test set, even when its
  rows fall in two silos (a student who changed schools).
- ``fixed`` (the dataset gives ``heldout`` rows, e.g. MultiMNIST composites of held-out digits):
  those rows are the test rows; the global test set takes ``round(g U)`` units (groups, or rows)
  from them.
- ``rows`` (rows are independent but the dataset's encoding is fitted on training rows, e.g. a
  table whose feature scaling and categories must not see test rows): units are rows, drawn as
  for ``groups``.

Silos are then cut from the rows outside the global test set as usual; a silo's train split is its
rows outside the test units, its test split the rest. The drawn units come from their own child of
``SeedSequence(seed)``, so the other steps of a partition keep their random streams.

Validation partitions (``partition.validation_fraction`` = v > 0, for hyperparameter tuning): the
validation rows are carved out of the *training* rows and replace the test rows, and there is no
global test set, so a tuning run never sees a test row. The test rows and the global test set are
drawn exactly as without v (same streams), then left out of every silo. Under a rule above, the
validation units are ``round(v U_train)`` of the U_train units (groups, or rows) that have no test
row, drawn from their own stream (:data:`VALIDATION_STREAM`): whole groups, so no group is on both
sides. With independent rows each silo cuts ``round(v n)`` of its n training rows
(:func:`carve_validation`, at least one when n >= 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedmtl.core.errors import ConfigError

Rule = Literal["groups", "fixed", "rows"]
SEED_STREAM = 5
"""The child of ``SeedSequence(seed)`` that draws the held-out units (children 0-4 are the
partition's other steps)."""
VALIDATION_STREAM = 6
"""The child of ``SeedSequence(seed)`` that draws the validation rows or units."""


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The dataset-wide split: ``test`` (N,) bool marks test rows, ``global_test`` the sorted rows of
    the global held-out test set (never in a silo), under ``rule`` (grouped by ``column``).
    ``validation`` (N,) bool, for a validation partition: the validation rows, all outside
    ``test``; they are the silos' evaluation rows, and the test rows are used by no silo."""

    rule: Rule
    column: str | None
    test: np.ndarray
    global_test: np.ndarray
    validation: np.ndarray | None = None

    def train_rows(self) -> np.ndarray:
        """The rows that may be trained on: not test, not validation, not in the global test set."""
        train = ~self.test
        train[self.global_test] = False
        if self.validation is not None:
            train &= ~self.validation
        return np.flatnonzero(train)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``held_out`` entry."""
        return {"rule": self.rule, "column": self.column}


def hold_out(
    num_rows: int,
    natural_ids: Mapping[str, np.ndarray],
    group_column: str | None,
    heldout: np.ndarray | None,
    test_fraction: float,
    global_test_fraction: float,
    seed: int,
    fitted: bool = False,
    validation_fraction: float = 0.0,
) -> HeldOut | None:
    """The dataset-wide split for a dataset's leakage rule (module docstring), or None when rows
    are independent and nothing is fitted on them (each silo then cuts its own split).

    ``fitted``: the dataset's encoding is fitted on training rows, so the split is needed even
    without groups or held-out rows (rule ``rows``). ``validation_fraction`` > 0: also draw the
    validation units among the training units (module docstring)."""
    if heldout is None and group_column is None and not fitted:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(SEED_STREAM + 1)[SEED_STREAM])
    units = np.asarray(natural_ids[group_column]) if group_column else np.arange(num_rows)
    names, unit_of_row = np.unique(units, return_inverse=True)
    rule: Rule = "fixed" if heldout is not None else "groups" if group_column else "rows"
    num_global = round(global_test_fraction * len(names))
    eligible = np.unique(unit_of_row[heldout]) if heldout is not None else np.arange(len(names))
    if global_test_fraction > 0 and not 1 <= num_global < len(eligible):
        raise ConfigError(
            "partition.global_test_fraction",
            f"is {global_test_fraction}: {num_global} of the {len(eligible)} "
            f"{_units(group_column)} that can be held out would form the global test set.",
            "choose a fraction that leaves units on both sides, or 0 for none.",
        )
    global_units = rng.choice(eligible, size=num_global, replace=False)
    if heldout is not None:
        test = heldout.copy()
    else:
        rest = np.setdiff1d(np.arange(len(names)), global_units)
        test_units = rng.choice(rest, size=round(test_fraction * len(rest)), replace=False)
        test = np.isin(unit_of_row, test_units)
    global_test = np.flatnonzero(np.isin(unit_of_row, global_units))
    test[global_test] = True
    validation = None
    if validation_fraction > 0:
        validation = _validation_rows(unit_of_row, test, validation_fraction, seed, group_column)
    return HeldOut(rule, group_column, test, global_test, validation)


def _validation_rows(
    unit_of_row: np.ndarray, test: np.ndarray, fraction: float, seed: int, column: str | None
) -> np.ndarray:
    """(N,) bool: the rows of ``round(fraction U)`` units drawn among the U units without a test
    row (whole groups under a group column)."""
    units_with_test = np.unique(unit_of_row[test])
    eligible = np.setdiff1d(np.unique(unit_of_row), units_with_test)
    count = round(fraction * len(eligible))
    if not 1 <= count < len(eligible):
        raise ConfigError(
            "partition.validation_fraction",
            f"is {fraction}: {count} of the {len(eligible)} training {_units(column)} would "
            "form the validation rows.",
            "choose a fraction that leaves units on both sides.",
        )
    rng = validation_rng(seed)
    chosen = rng.choice(eligible, size=count, replace=False)
    return np.isin(unit_of_row, chosen)


def validation_rng(seed: int) -> np.random.Generator:
    """The generator of the validation draw (its own child of ``SeedSequence(seed)``)."""
    stream = np.random.SeedSequence(seed).spawn(VALIDATION_STREAM + 1)[VALIDATION_STREAM]
    return np.random.default_rng(stream)


def carve_validation(
    train: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows left, validation rows), both sorted: a seeded shuffle of a silo's ``train``
    rows cut at ``round(n fraction)`` validation rows (at least one of each when n >= 2)."""
    n = len(train)
    count = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
    shuffled = rng.permutation(np.asarray(train, dtype=np.int64))
    return np.sort(shuffled[count:]), np.sort(shuffled[:count])


def _units(group_column: str | None) -> str:
    return f"groups of '{group_column}'" if group_column else "rows"


def check_groups(
    groups: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray, column: str, key: str
) -> None:
    """No group has rows among both ``train_rows`` and ``test_rows`` (ConfigError on ``key``)."""
    shared = np.intersect1d(groups[train_rows], groups[test_rows])
    if shared.size:
        raise ConfigError(
            key,
            f"{shared.size} values of '{column}' (e.g. {shared[0]!r}) have rows on both the "
            "train and the test side: the partition leaks them.",
            "rebuild the partition with this version of fedmtl, which keeps each one on one side.",
        )
