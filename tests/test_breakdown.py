"""Trim counts and breakdown points (strategies.engine.robust, strategies.engine.breakdown): every
expected value worked out by hand next to it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedmtl.core.errors import ConfigError
from strategies.engine import AveragingParams
from strategies.engine.breakdown import BreakdownWatch, averaged_groups, breakdown
from strategies.engine.robust import Trim, averager
from tests.support.engines import assert_moved, make_fedavg, one_round
from tests.support.fakes import TRUNK_KEYS, FakeSilo, Federation, head_keys, initial_model

VALUES = [np.array([v]) for v in (1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 5.0)]  # k = 7
WEIGHTS = [1.0] * 7


def test_trim_count_cuts_exactly_that_many_per_side() -> None:
    # sorted: -50, 1, 2, 3, 4, 5, 100. Cut 1: mean(1, 2, 3, 4, 5) = 3; cut 2: mean(2, 3, 4) = 3
    # Fractions cut floor(beta k): 0.3 x 7 = 2.1 -> 2, the same values.
    np.testing.assert_allclose(averager("trimmed_mean", trim_count=1)(VALUES, WEIGHTS), [3.0])
    np.testing.assert_allclose(averager("trimmed_mean", trim_count=2)(VALUES, WEIGHTS), [3.0])
    np.testing.assert_allclose(averager("trimmed_mean", 0.3)(VALUES, WEIGHTS), [3.0])
    values = [np.array([v]) for v in (0.0, 0.0, 10.0, 20.0, 30.0, 100.0)]
    # cut 1 of 6: mean(0, 10, 20, 30) = 15; cut 2 leaves (10, 20): 15; fraction 0.2: floor 1.2 = 1
    np.testing.assert_allclose(averager("trimmed_mean", trim_count=1)(values, [1] * 6), [15.0])
    np.testing.assert_allclose(averager("trimmed_mean", 0.2)(values, [1] * 6), [15.0])


def test_too_few_values_for_the_cut_give_the_median() -> None:
    # k = 7 <= 2 x 3 + 1: the median 3 (cutting 3 per side leaves it alone); k = 4 <= 2 x 3:
    # median of (1, 2, 3, 4) = 2.5
    np.testing.assert_allclose(averager("trimmed_mean", trim_count=3)(VALUES, WEIGHTS), [3.0])
    np.testing.assert_allclose(averager("trimmed_mean", trim_count=5)(VALUES, WEIGHTS), [3.0])
    np.testing.assert_allclose(
        averager("trimmed_mean", trim_count=3)(VALUES[:4], WEIGHTS[:4]), [2.5]
    )
    assert Trim(count=3).falls_back(6) and not Trim(count=3).falls_back(7)
    assert not Trim(fraction=0.4).falls_back(2)  # a fraction always leaves a value


@pytest.mark.parametrize(
    ("rule", "k", "faulty", "trim", "broken"),
    [
        ("median", 7, 3, Trim(), False),  # 7 >= 2 x 3 + 1
        ("median", 6, 3, Trim(), True),  # 6 <= 2 x 3
        ("median", 4, 2, Trim(), True),  # a task's 4 holders, 2 of them faulty
        ("median", 4, 1, Trim(), False),
        ("trimmed_mean", 10, 1, Trim(fraction=0.1), False),  # cut floor(1.0) = 1 >= 1
        ("trimmed_mean", 10, 3, Trim(fraction=0.1), True),  # cut 1 < 3: the case
        ("trimmed_mean", 4, 1, Trim(fraction=0.1), True),  # cut floor(0.4) = 0 < 1
        ("trimmed_mean", 10, 3, Trim(count=3), False),  # cut 3 >= 3 and 10 >= 7
        ("trimmed_mean", 7, 3, Trim(count=3), False),  # the median of 7, 3 faulty
        ("trimmed_mean", 6, 3, Trim(count=3), True),  # the median of 6, 3 faulty
        ("trimmed_mean", 12, 3, Trim(count=2), True),  # cut 2 < 3
        ("mean", 10, 1, Trim(), True),  # breakdown point 0
        ("median", 2, 0, Trim(), False),  # nothing declared faulty
    ],
)
def test_breakdown_points(rule: str, k: int, faulty: int, trim: Trim, broken: bool) -> None:
    assert (breakdown(rule, k, faulty, trim) is not None) == broken  # type: ignore[arg-type]


def test_a_norm_bound_keeps_the_mean_from_being_reported() -> None:
    assert breakdown("mean", 10, 3, Trim(), norm_bound=2.0) is None


def test_trim_defaults_follow_max_faulty_and_bad_values_name_their_key() -> None:
    assert AveragingParams(robust="trimmed_mean").trim() == Trim(fraction=0.1)
    assert AveragingParams(robust="trimmed_mean", max_faulty=3).trim() == Trim(count=3)
    assert AveragingParams(robust="trimmed_mean", trim_fraction=0.2, max_faulty=3).trim() == Trim(
        fraction=0.2
    )
    assert AveragingParams(robust="trimmed_mean", trim_count=1, max_faulty=3).trim() == Trim(
        count=1
    )
    bad = [
        ({"robust": "trimmed_mean", "trim_count": 1, "trim_fraction": 0.1}, "trim_count"),
        ({"robust": "median", "trim_count": 1}, "trim_count"),
        ({"robust": "trimmed_mean", "trim_count": -1}, "trim_count"),
        ({"max_faulty": -2}, "max_faulty"),
        ({"divergence_factor": 1.0}, "divergence_factor"),
        ({"divergence_rounds": 0}, "divergence_rounds"),
    ]
    for values, key in bad:
        with pytest.raises(ConfigError) as err:
            AveragingParams(**values)  # type: ignore[arg-type]
        assert err.value.key == key, values


def holders_federation() -> Federation:
    """10 silos: every one holds a; b is held by silos 0-3 only (k_b = 4)."""
    silos = [FakeSilo(("a", "b") if i < 4 else ("a",), 10, {}, 1.0) for i in range(10)]
    return Federation(silos)


def test_averaged_groups_count_the_trunk_and_each_tasks_holders() -> None:
    engine = make_fedavg()
    fed = holders_federation()
    sent = engine.dispatch_train(fed.grid, 1, initial_model())
    intake = engine.take_updates(sent, fed.grid.send_and_receive(sent.messages))
    assert averaged_groups(intake.updates, ["a", "b", "c"]) == {"trunk": 10, "a": 10, "b": 4}


def test_the_engine_warns_once_per_group_and_counts_the_rounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # median with f = 2: the trunk and a (k = 10 >= 5) hold, b (k = 4 <= 4) breaks down.
    engine = make_fedavg(robust="median", max_faulty=2)
    fed = holders_federation()
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        for server_round in (1, 2, 3):
            one_round(engine, fed, server_round=server_round)
    warnings = engine.breakdowns.warnings
    assert list(warnings) == ["b"]
    assert warnings["b"]["rounds"] == 3 and warnings["b"]["first_round"] == 1
    assert warnings["b"]["min_k"] == 4 and warnings["b"]["max_faulty"] == 2
    logged = [r.getMessage() for r in caplog.records if "breaks down" in r.getMessage()]
    assert len(logged) == 1
    assert "task 'b'" in logged[0] and "k=4" in logged[0] and "max_faulty=2" in logged[0]
    assert "at least 5 holders" in logged[0]


def test_a_trim_count_too_large_for_a_task_is_reported_without_max_faulty() -> None:
    # trim_count 2: b's 4 holders are too few (4 <= 2 x 2): its median is taken, and said so.
    engine = make_fedavg(robust="trimmed_mean", trim_count=2)
    new, _, _ = one_round(engine, holders_federation())
    assert list(engine.breakdowns.warnings) == ["b"]
    assert "too few to cut trim_count=2" in engine.breakdowns.warnings["b"]["reason"]
    for key in TRUNK_KEYS:
        assert_moved(new, key, 1.0)
    assert set(head_keys("b")) <= set(new)


def test_no_declaration_no_warning() -> None:
    engine = make_fedavg(robust="median")
    one_round(engine, holders_federation())
    assert engine.breakdowns.warnings == {}


def test_the_watch_state_survives_a_checkpoint() -> None:
    watch = BreakdownWatch("median", Trim(), 2)
    watch.warnings = {"b": {"reason": "r", "fix": "f", "rounds": 2, "first_round": 1, "min_k": 4}}
    again = BreakdownWatch("median", Trim(), 2)
    again.load_state_dict(watch.state_dict())
    assert again.warnings == watch.warnings
