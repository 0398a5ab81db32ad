"""The benchmark's statistics (``fedmtl/app/bench/stats.py``) on fixed numbers: Delta_MTL by hand,
the confidence interval and the paired test against scipy, silo quantiles, ranks, the Pareto
front."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from fedmtl.app.bench.report.plots import pareto_front
from fedmtl.app.bench.stats import (
    delta_metric,
    delta_mtl,
    paired_test,
    ranks,
    silo_quantiles,
    spread,
    summary_delta,
)


def summary(accuracy: float, mae: float, r2: float) -> dict[str, object]:
    """A run's summary with a classification task ``a`` and a regression task ``r``."""
    return {
        "tasks": ["a", "r"],
        "task_info": {"a": {"kind": "multiclass"}, "r": {"kind": "regression"}},
        "final": {"a": {"accuracy": accuracy, "loss": 0.3}, "r": {"mae": mae, "r2": r2}},
    }


def test_delta_mtl_by_hand_with_a_regression_task_by_mae() -> None:
    """(100/T) sum_t s_t (M_t - M_t^ST)/|M_t^ST|: accuracy 0.9 vs 0.8 is +12.5%; MAE 0.5 vs 0.4 is
    worse, so -25% (s = -1); R^2 (near zero, -0.02 vs 0.01) takes no part."""
    run, reference = summary(0.9, 0.5, -0.02), summary(0.8, 0.4, 0.01)
    delta = summary_delta(run, reference)
    assert delta.per_task == pytest.approx({"a": 12.5, "r": -25.0})
    assert delta.value == pytest.approx((12.5 - 25.0) / 2)
    assert summary_delta(reference, reference).value == 0.0
    assert summary_delta(reference, run).value == pytest.approx(
        (100 * (0.8 - 0.9) / 0.9 - 100 * (0.4 - 0.5) / 0.5) / 2
    )


def test_delta_metrics_stay_away_from_zero() -> None:
    assert delta_metric({"kind": "binary"}) == ("accuracy", True)
    assert delta_metric({"kind": "multiclass"}) == ("accuracy", True)
    assert delta_metric({"kind": "regression"}) == ("mae", False)


def test_a_zero_reference_is_left_out_and_a_missing_task_leaves_delta_undefined() -> None:
    higher = {"a": True, "b": True}
    delta = delta_mtl({"a": 0.5, "b": 0.6}, {"a": 0.0, "b": 0.3}, higher)
    assert delta.value == pytest.approx(100.0) and delta.skipped == ("a",)
    assert delta_mtl({"a": 0.5}, {"a": 0.4, "b": 0.3}, higher).value is None


def test_spread_is_mean_sample_std_and_the_t_interval() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 6.0]
    result = spread(values)
    low, high = scipy.stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
    )
    assert result.mean == pytest.approx(3.2) and result.n == 5
    assert result.std == pytest.approx(np.std(values, ddof=1))
    assert result.ci95 == pytest.approx((high - low) / 2)
    single = spread([0.7])
    assert single.mean == 0.7 and math.isnan(single.std) and math.isnan(single.ci95)


def test_paired_test_is_scipys_paired_t_test() -> None:
    a = [0.81, 0.79, 0.84, 0.80, 0.83]
    b = [0.78, 0.79, 0.80, 0.77, 0.81]
    result = paired_test(a, b)
    expected = scipy.stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.mean_difference == pytest.approx(np.mean(np.subtract(a, b))) and result.n == 5
    assert paired_test([1.0, 2.0], [1.0, 2.0]).p_value == 1.0  # identical: no difference
    assert paired_test([2.0, 3.0], [1.0, 2.0]).p_value == 0.0  # the same shift every seed
    assert math.isnan(paired_test([1.0], [0.0]).p_value)


def test_wilcoxon_cannot_reject_at_five_percent_with_five_seeds() -> None:
    """Why the paired test is a t-test: the most extreme five differences give Wilcoxon p = 2/2^5."""
    assert scipy.stats.wilcoxon([1.0, 2.0, 3.0, 4.0, 5.0]).pvalue == pytest.approx(0.0625)


def test_silo_quantiles_take_the_bad_tail() -> None:
    accuracies = [0.9, 0.5, 0.7, 0.8, 0.6]
    assert silo_quantiles(accuracies, True) == pytest.approx((0.5, np.percentile(accuracies, 10)))
    errors = [0.1, 0.4, 0.2]
    assert silo_quantiles(errors, False) == pytest.approx((0.4, np.percentile(errors, 90)))


def test_ranks_share_ties_and_skip_missing_scores() -> None:
    assert ranks({"x": 3.0, "y": 1.0, "z": 3.0}) == {"x": 1.5, "y": 3.0, "z": 1.5}
    lower = ranks({"x": 0.2, "y": 0.1, "w": math.nan}, higher_is_better=False)
    assert lower["y"] == 1.0 and lower["x"] == 2.0 and math.isnan(lower["w"])


def test_pareto_front_respects_each_direction() -> None:
    # (accuracy higher, MAE lower): point 2 is beaten by 0 on both; 0 and 1 trade off
    points = [(0.8, 0.3), (0.9, 0.5), (0.7, 0.6)]
    assert pareto_front(points, (True, False)) == [0, 1]
    assert pareto_front(points, (True, True)) == [2, 1]  # both higher: 0 is beaten by 1
