"""Flower's Byzantine-robust selection rules (krum, multikrum, bulyan; strategies.engine.robust)
and their breakdown checks (strategies.engine.breakdown): every expected value worked out by hand
next to it."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.core.errors import ConfigError
from strategies.engine.breakdown import breakdown
from strategies.engine.robust import Trim, average_group, averager
from tests.support.engines import assert_moved, make_fedavg, one_round
from tests.support.fakes import TRUNK_KEYS, FakeSilo, Federation, head_keys

FIVE = [np.array([v, 0.0]) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
SEVEN = [np.array([v]) for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0)]


def test_krum_and_multikrum_by_hand() -> None:
    # k = 5, f = 1: each value's k - f - 2 = 2 nearest others, squared distances:
    # 1: 2 (1) + 3 (4) = 5; 2: 1 + 1 = 2; 3: 1 + 1 = 2; 4: 1 + 4 = 5; 100: 96^2 + 97^2.
    # Krum: the least score, 2 (the first of the tie 2, 3).
    np.testing.assert_array_equal(averager("krum", faulty=1)(FIVE, [1.0] * 5), [2.0, 0.0])
    # MultiKrum: the k - f = 4 least scores {1, 2, 3, 4}, weighted 1, 1, 1, 5 (the outlier's
    # weight 9 is dropped with it): (1 + 2 + 3 + 20) / 8 = 3.25
    weights = [1.0, 1.0, 1.0, 5.0, 9.0]
    np.testing.assert_allclose(averager("multikrum", faulty=1)(FIVE, weights), [3.25, 0.0])


def test_bulyan_by_hand() -> None:
    # k = 7 >= 4f + 3 with f = 1: theta = 5 picked by Krum one after another (4 nearest others):
    # 3 (score 1+1+4+4 = 10, tie with 4, first), then of the rest 4 (1+4+4 = 9), then 2 (tie
    # with 5 at 10, first), then 5 (1), then 1 (25, tie with 6, first); the outlier never.
    # Coordinate-wise median of {3, 4, 2, 5, 1} = 3; the beta = theta - 2f = 3 closest to it
    # are 3, 2, 4: their mean is 3. A 100 -> 1e6 outlier changes nothing.
    np.testing.assert_allclose(averager("bulyan", faulty=1)(SEVEN, [1.0] * 7), [3.0])
    moved = [*SEVEN[:6], np.array([1e6])]
    np.testing.assert_allclose(averager("bulyan", faulty=1)(moved, [1.0] * 7), [3.0])
    # k = 5 < 4f + 3 = 7: the coordinate-wise median, 3 and 0
    np.testing.assert_allclose(averager("bulyan", faulty=1)(FIVE, [1.0] * 5), [3.0, 0.0])


def test_selection_compares_each_silos_arrays_as_one_vector() -> None:
    # silos A (0, 5), B (1, 0), C (5, 1), two arrays of one entry each; f = 0, each value's
    # k - f - 2 = 1 nearest other. As one vector: |A - B|^2 = 1 + 25 = 26, |A - C|^2 = 25 + 16
    # = 41, |B - C|^2 = 16 + 1 = 17: scores A 26, B 17, C 17, so Krum sends B's (1, 0) whole.
    # Array by array it would pick 0 of {0, 1, 5} and 0 of {5, 0, 1}: (0, 0), which no silo sent.
    values = [[np.array([a]), np.array([b])] for a, b in ((0.0, 5.0), (1.0, 0.0), (5.0, 1.0))]
    chosen = average_group(averager("krum", faulty=0), values, [1.0] * 3)
    np.testing.assert_array_equal(np.concatenate(chosen), [1.0, 0.0])
    # the coordinate-wise rules average each array alone: medians 1 and 1
    medians = average_group(averager("median"), values, [1.0] * 3)
    np.testing.assert_array_equal(np.concatenate(medians), [1.0, 1.0])


@pytest.mark.parametrize(
    ("rule", "k", "faulty", "broken"),
    [
        ("krum", 5, 1, False),  # 5 > 2 x 1 + 2
        ("krum", 4, 1, True),  # 4 <= 4
        ("multikrum", 7, 2, False),  # 7 > 6
        ("multikrum", 6, 2, True),
        ("bulyan", 7, 1, False),  # 7 >= 4 x 1 + 3
        ("bulyan", 6, 1, True),
        ("bulyan", 11, 2, False),
        ("bulyan", 10, 2, True),
        ("krum", 2, 0, False),  # nothing declared faulty
    ],
)
def test_selection_breakdown_points(rule: str, k: int, faulty: int, broken: bool) -> None:
    assert (breakdown(rule, k, faulty, Trim()) is not None) == broken  # type: ignore[arg-type]


def heads_federation() -> Federation:
    """Task a held by 5 silos (head deltas 1, 2, 3, 4 and an outlier 500), task b by 3 of them
    (head deltas 7, 8, 9); no trunk change."""
    a_heads = (1.0, 2.0, 3.0, 4.0, 500.0)
    silos = [
        FakeSilo(
            ("a", "b") if i < 3 else ("a",), 10, {"a": 10, "b": 10}, 0.0, {"a": v, "b": 7.0 + i}
        )
        for i, v in enumerate(a_heads)
    ]
    return Federation(silos)


@pytest.mark.parametrize(
    ("rule", "head_a", "warned"),
    [
        ("krum", 2.0, ["b"]),  # a: scores as FIVE's; b: k = 3 <= 2f + 2 = 4
        ("multikrum", 2.5, ["b"]),  # a: mean of 1, 2, 3, 4 (equal weights)
        ("bulyan", 3.0, ["a", "b"]),  # a: k = 5 < 7, its median; b: k = 3 < 7
    ],
)
def test_selection_rules_run_per_task_over_its_holders(
    rule: str, head_a: float, warned: list[str]
) -> None:
    engine = make_fedavg(robust=rule, max_faulty=1)
    new, outcome, _ = one_round(engine, heads_federation())
    assert outcome.num_updates == 5
    for key in head_keys("a"):
        assert_moved(new, key, head_a)
    for key in TRUNK_KEYS:
        assert_moved(new, key, 0.0)
    # trunk: k = 5 holds for krum and multikrum (5 > 4) but not for bulyan (5 < 7)
    expected = ["trunk", *warned] if rule == "bulyan" else warned
    assert sorted(engine.breakdowns.warnings) == sorted(expected)
    assert engine.breakdowns.warnings["b"]["min_k"] == 3


def test_selection_rules_need_max_faulty() -> None:
    with pytest.raises(ConfigError, match="max_faulty") as err:
        make_fedavg(robust="krum")
    assert "strategy.max_faulty" in str(err.value)
