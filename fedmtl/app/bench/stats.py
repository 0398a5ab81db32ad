"""The statistics of a benchmark: the multi-task metric Delta_MTL, uncertainty over seeds, the
paired test against FedAvg and per-silo quantiles.

**Delta_MTL.** For a run with final metrics M_t on its T tasks and the single-task reference run
of the same scenario and seed with M_t^ST,

    Delta_MTL (%) = (100 / T) sum_t s_t (M_t - M_t^ST) / |M_t^ST|,   s_t = +1 if higher is better, else -1.

M_t is the task's *Delta metric* (:func:`delta_metric`), chosen to stay away from zero, so the
relative difference is meaningful: accuracy for classification (binary, multiclass), mean absolute
error for regression (never R^2, which is near zero on hard tasks). A task whose reference value is
exactly 0 is left out of the mean (and named); a task missing from the run makes Delta undefined.

**Uncertainty over n seeds.** Mean, sample standard deviation s (ddof 1) and the half-width of the
95% confidence interval of the mean from Student's t distribution,
``ci95 = t_{0.975, n-1} s / sqrt(n)`` (undefined for n < 2).

**Paired test.** A strategy and FedAvg run on the same seeds see the same partitions and
initialisations, so their per-seed scores are paired: the two-sided paired t-test
(``scipy.stats.ttest_rel``) on the per-seed differences d_k, t = mean(d) / (s_d / sqrt(n)) with n - 1
degrees of freedom. Why not Wilcoxon's signed-rank test: with n = 5 seeds its smallest two-sided
p-value is 2 / 2^5 = 0.0625, so it can never reject at 5%; the t-test assumes roughly normal
differences, which one cannot check with 5 numbers, so its p-values are a guide, not a verdict.

**Silo quantiles.** Per task, over the silos holding it (their own test splits): the worst silo
(minimum when higher is better, else maximum) and the 10th-percentile silo (the 10th percentile
of the values when higher is better, the 90th when lower is better: the value 10% of the silos
do worse than), numpy's linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

REFERENCE_STRATEGY = "single_task"
"""The strategy whose runs are Delta_MTL's reference (the same scenario and seed)."""
BASELINE_STRATEGY = "fedavg"
"""The strategy every other one is tested against."""
DELTA_METRICS = {"binary": "accuracy", "multiclass": "accuracy", "regression": "mae"}
"""Task kind -> the metric Delta_MTL uses for it."""
HIGHER_IS_BETTER = {"accuracy": True, "mae": False}
"""Whether a higher value is better, for each Delta metric."""


def delta_metric(task_info: Mapping[str, Any]) -> tuple[str, bool]:
    """(metric name, higher is better) that Delta_MTL uses for a task, from its ``task_info``
    entry in ``summary.json`` (its ``kind``)."""
    kind = task_info.get("kind")
    if kind not in DELTA_METRICS:
        raise ValueError(f"task kind {kind!r} has no Delta_MTL metric ({sorted(DELTA_METRICS)})")
    metric = DELTA_METRICS[kind]
    return metric, HIGHER_IS_BETTER[metric]


@dataclass(frozen=True)
class Delta:
    """Delta_MTL (``value``, percent; None when undefined) with each task's term
    ``100 s_t (M_t - M_t^ST) / |M_t^ST|`` and the tasks left out for a zero reference."""

    value: float | None
    per_task: dict[str, float]
    skipped: tuple[str, ...] = ()


def delta_mtl(
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> Delta:
    """Delta_MTL (module docstring) of ``metrics`` against ``reference``: task -> Delta metric
    value each, ``higher_is_better``: task -> direction. The tasks are ``reference``'s."""
    terms: dict[str, float] = {}
    skipped: list[str] = []
    for task, ref in reference.items():
        value = metrics.get(task)
        if value is None or not math.isfinite(value) or not math.isfinite(ref):
            return Delta(None, {}, ())
        if ref == 0:
            skipped.append(task)
            continue
        sign = 1.0 if higher_is_better[task] else -1.0
        terms[task] = 100.0 * sign * (value - ref) / abs(ref)
    if not terms:
        return Delta(None, {}, tuple(skipped))
    return Delta(sum(terms.values()) / len(terms), terms, tuple(skipped))


def summary_delta_metrics(summary: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
    """(task -> final Delta metric, task -> higher is better) of a run's ``summary.json``
    (``final``: pooled over the silos' own test splits). Tasks without the metric are left out."""
    values: dict[str, float] = {}
    directions: dict[str, bool] = {}
    for task in summary.get("tasks", []):
        metric, higher = delta_metric(summary["task_info"][task])
        value = summary.get("final", {}).get(task, {}).get(metric)
        directions[task] = higher
        if value is not None:
            values[task] = float(value)
    return values, directions


def summary_delta(summary: Mapping[str, Any], reference: Mapping[str, Any]) -> Delta:
    """Delta_MTL of the run ``summary`` against the reference run ``reference`` (both
    ``summary.json`` mappings)."""
    values, directions = summary_delta_metrics(summary)
    ref_values, _ = summary_delta_metrics(reference)
    return delta_mtl(values, {t: ref_values.get(t, math.nan) for t in directions}, directions)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (ddof 1) and 95% CI half-width over ``n`` values (NaN where
    undefined: no values, or fewer than two for ``std`` and ``ci95``)."""

    mean: float
    std: float
    ci95: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean, std and ``ci95 = t_{0.975, n-1} s / sqrt(n)`` of ``values`` (module docstring)."""
    array = np.asarray([v for v in values if v is not None], dtype=float)
    n = int(array.size)
    if n == 0:
        return Spread(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n < 2:
        return Spread(mean, math.nan, math.nan, 1)
    std = float(array.std(ddof=1))
    ci95 = float(scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return Spread(mean, std, ci95, n)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired t-test of ``a`` against ``b`` over ``n`` pairs: mean difference a - b,
    t statistic and p-value (NaN for fewer than two pairs)."""

    mean_difference: float
    statistic: float
    p_value: float
    n: int


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """The paired t-test of ``a`` against ``b`` (same length, pair k = seed k; module docstring).

    Identical differences (zero variance) give p = 1 when they are all zero and p = 0 otherwise
    (scipy returns NaN there)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(diffs.size)
    if n < 2:
        return PairedTest(float(diffs.mean()) if n else math.nan, math.nan, math.nan, n)
    mean = float(diffs.mean())
    if np.allclose(diffs, diffs[0], rtol=0.0, atol=1e-12):
        if mean == 0.0:
            return PairedTest(mean, 0.0, 1.0, n)
        return PairedTest(mean, math.copysign(math.inf, mean), 0.0, n)
    result = scipy.stats.ttest_rel(a, b)
    return PairedTest(mean, float(result.statistic), float(result.pvalue), n)


def silo_quantiles(values: Sequence[float], higher_is_better: bool) -> tuple[float, float]:
    """(worst silo, 10th-percentile silo) of one task's per-silo ``values`` (module docstring);
    NaN for no values."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    if higher_is_better:
        return float(array.min()), float(np.percentile(array, 10))
    return float(array.max()), float(np.percentile(array, 90))


def ranks(scores: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Rank of each key by its score, 1 = best, ties sharing their mean rank; NaN scores get NaN."""
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    keys = list(finite)
    ordered = [-finite[k] if higher_is_better else finite[k] for k in keys]
    ranked = scipy.stats.rankdata(ordered) if keys else []
    found = {k: float(r) for k, r in zip(keys, ranked, strict=True)}
    return {k: found.get(k, math.nan) for k in scores}
