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


@dataclass(frozen=True, eq=False)
class HeldOut:
    """The dataset-wide split: ``test`` (N,) bool marks test rows, ``global_test`` the sorted rows of
    the global held-out test set (never in a silo), under ``rule`` (grouped by ``column``)."""

    rule: Rule
    column: str | None
    test: np.ndarray
    global_test: np.ndarray

    def train_rows(self) -> np.ndarray:
        """The rows that may be trained on: not test, not in the global test set."""
        train = ~self.test
        train[self.global_test] = False
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
) -> HeldOut | None:
    """The dataset-wide split for a dataset's leakage rule (module docstring), or None when rows
    are independent and nothing is fitted on them (each silo then cuts its own split).

    ``fitted``: the dataset's encoding is fitted on training rows, so the split is needed even
    without groups or held-out rows (rule ``rows``)."""
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
    return HeldOut(rule, group_column, test, global_test)


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
