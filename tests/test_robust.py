"""Robust aggregation and round retries (strategies.engine.robust, Engine.train_round) against
fake silos whose replies are controlled; every expected value is worked out by hand next to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedmtl.core.errors import ConfigError
from strategies.engine import Engine, RunStopped
from strategies.engine.robust import averager
from tests.support.engines import (
    RoundOutcome,
    assert_moved,
    assert_unchanged,
    make_fedavg,
    one_round,
)
from tests.support.fakes import (
    TRUNK_KEYS,
    FakeSilo,
    Federation,
    head_keys,
    initial_arrays,
    initial_model,
)


def trunk_silos(*trunks: float, count: int = 10) -> list[FakeSilo]:
    """Silos of task a with equal counts, trunk deltas ``trunks`` and no head change."""
    return [FakeSilo(("a",), count, {"a": count}, trunk) for trunk in trunks]


def test_averager_rules_by_hand() -> None:
    values = [
        np.array([1.0, -4.0]),
        np.array([2.0, 0.0]),
        np.array([3.0, 8.0]),
        np.array([100.0, 4.0]),
    ]
    weights = [1.0, 1.0, 1.0, 7.0]
    # mean: (1 + 2 + 3 + 700) / 10 = 70.6 and (-4 + 0 + 8 + 28) / 10 = 3.2
    np.testing.assert_allclose(averager("mean")(values, weights), [70.6, 3.2])
    # median of {1, 2, 3, 100} = 2.5, of {-4, 0, 8, 4} = 2 (unweighted)
    np.testing.assert_allclose(averager("median")(values, weights), [2.5, 2.0])
    # trimmed 25% at each end: mean of {2, 3} = 2.5 and of {0, 4} = 2
    np.testing.assert_allclose(averager("trimmed_mean", 0.25)(values, weights), [2.5, 2.0])


def test_counts_claimed_in_replies_cannot_outweigh_those_announced() -> None:
    # announced: 10 and 30 examples; the second claims 30e6 in its reply.
    # Fixed at discovery: trunk (10 * 1 + 30 * 2) / 40 = 1.75 either way.
    honest = trunk_silos(1.0, 2.0)
    honest[1].num_examples, honest[1].task_examples = 30, {"a": 30}
    inflated = trunk_silos(1.0, 2.0)
    inflated[1].num_examples, inflated[1].task_examples = 30, {"a": 30}
    inflated[1].train_defect = "inflated-n"
    for silos in (honest, inflated):
        new, outcome, _ = one_round(make_fedavg(), Federation(silos))
        assert outcome.num_updates == 2
        for key in TRUNK_KEYS:
            assert_moved(new, key, 1.75)


def test_announced_counts_are_capped_at_a_multiple_of_the_median() -> None:
    silos = trunk_silos(0.0, 0.0, 0.0, 1.0)
    silos[3].num_examples, silos[3].task_examples = 1000, {"a": 1000}
    # uncapped: 1000 / 1030; capped at 2 x median(10, 10, 10, 1000) = 20: 20 / 50 = 0.4
    new, _, _ = one_round(make_fedavg(), Federation(silos))
    for key in TRUNK_KEYS:
        assert_moved(new, key, 1000 / 1030)
    new, _, _ = one_round(make_fedavg(max_count_ratio=2.0), Federation(silos))
    for key in TRUNK_KEYS:
        assert_moved(new, key, 0.4)


def test_norm_bound_clips_to_a_multiple_of_the_round_median() -> None:
    # norms are |trunk| x ||pattern||, median 1 x ||pattern||: the bound 2 x median clips the
    # 1e6 update to trunk 2, so the mean is (1 + 1 + 2) / 3.
    new, outcome, _ = one_round(make_fedavg(norm_bound=2.0), Federation(trunk_silos(1.0, 1.0, 1e6)))
    assert outcome.num_updates == 3 and not outcome.rejected
    for key in TRUNK_KEYS:
        assert_moved(new, key, 4 / 3)
    assert_unchanged(new, set(head_keys("a")))


def test_norm_bound_can_reject_instead() -> None:
    strategy = make_fedavg(norm_bound=2.0, norm_rule="reject")
    new, outcome, _ = one_round(strategy, Federation(trunk_silos(1.0, 1.0, -1e6)))
    assert outcome.num_updates == 2
    assert strategy.rejections[0]["silo"] == 2
    assert "update norm" in strategy.rejections[0]["reason"]
    for key in TRUNK_KEYS:
        assert_moved(new, key, 1.0)


def test_norm_bound_leaves_ordinary_rounds_alone() -> None:
    # norms 1, 2, 3 (median 2): all within 2 x 2, so the plain mean (1 + 2 + 3) / 3 = 2.
    new, outcome, _ = one_round(make_fedavg(norm_bound=2.0), Federation(trunk_silos(1.0, 2.0, 3.0)))
    assert not outcome.rejected
    for key in TRUNK_KEYS:
        assert_moved(new, key, 2.0)


@pytest.mark.parametrize(
    ("rule", "trunks", "expected"),
    [
        ("median", (1.0, 2.0, 1e6), 2.0),  # coordinate-wise median (sign-symmetric pattern)
        ("trimmed_mean", (1.0, 2.0, 3.0, 4.0, 1e6), 3.0),  # cut 1 of 5 at each end: (2+3+4)/3
    ],
)
def test_robust_rules_ignore_one_attacker(
    rule: str, trunks: tuple[float, ...], expected: float
) -> None:
    strategy = make_fedavg(robust=rule, trim_fraction=0.2)
    new, _, _ = one_round(strategy, Federation(trunk_silos(*trunks)))
    for key in TRUNK_KEYS:
        assert_moved(new, key, expected)


def test_robust_rules_apply_to_heads_over_their_holders() -> None:
    # head a over holders {0, 1, 2} with deltas 1, 3, 500: median 3; head b over {2} only: 7.
    silos = [
        FakeSilo(("a",), 10, {"a": 10}, 0.0, {"a": 1.0}),
        FakeSilo(("a",), 10, {"a": 10}, 0.0, {"a": 3.0}),
        FakeSilo(("a", "b"), 10, {"a": 10, "b": 10}, 0.0, {"a": 500.0, "b": 7.0}),
    ]
    new, _, _ = one_round(make_fedavg(robust="median"), Federation(silos))
    for key in head_keys("a"):
        assert_moved(new, key, 3.0)
    for key in head_keys("b"):
        assert_moved(new, key, 7.0)


def round_one(strategy: Engine, fed: Federation) -> tuple[RoundOutcome, Any]:
    """Round 1 through the engine's retrying round: its outcome and its dispatch."""
    result, intake, sent = strategy.train_round(fed.grid, 1, initial_model())
    outcome = RoundOutcome(
        result.model.arrays, len(intake.updates), intake.rejected, {}, {}, intake.bytes_up, True
    )
    return outcome, sent


def test_a_round_short_of_valid_updates_is_sent_again() -> None:
    silos = trunk_silos(1.0, 1.0, 4.0)
    silos[2].train_defect = "raise-once"
    fed = Federation(silos)
    strategy = make_fedavg(min_train_nodes=3, round_retries=1)
    outcome, _ = round_one(strategy, fed)
    assert len(fed.received_by("train")) == 3
    # two attempts of 3 messages; the failing silo's first one raised before it was logged
    assert sum(1 for kind, *_ in fed.received if kind == "train") == 5
    assert len(strategy.rejections) == 1 and "transient" in strategy.rejections[0]["reason"]
    assert outcome.applied and outcome.num_updates == 3
    for key in TRUNK_KEYS:
        assert_moved(outcome.arrays, key, 2.0)
    assert strategy.participants == {0, 1, 2}


def test_a_round_that_keeps_failing_stops_the_run_loudly() -> None:
    silos = trunk_silos(1.0, 1.0, 4.0)
    silos[2].train_defect = "raise"
    fed = Federation(silos)
    strategy = make_fedavg(min_train_nodes=3, round_retries=2)
    with pytest.raises(RunStopped, match="after 3 attempts") as stop:
        round_one(strategy, fed)
    assert stop.value.status == "too_few_replies"
    assert sum(1 for kind, *_ in fed.received if kind == "train") == 9  # 3 attempts x 3 messages
    assert not strategy.participants


def test_fewer_valid_updates_than_required_leave_the_model_unchanged() -> None:
    silos = trunk_silos(1.0, 1.0, 4.0)
    silos[0].train_defect = silos[1].train_defect = "nan-delta"
    strategy = make_fedavg(min_train_nodes=2)
    new, outcome, _ = one_round(strategy, Federation(silos))
    assert not outcome.applied and outcome.num_updates == 1
    assert_unchanged(new, set(initial_arrays()))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trim_fraction", 0.5),
        ("trim_fraction", -0.1),
        ("norm_bound", 0.0),
        ("max_count_ratio", -1.0),
        ("round_retries", -1),
    ],
)
def test_bad_robust_parameters_name_their_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        make_fedavg(**{field: value})


def test_a_dead_simulation_worker_stops_the_run_with_its_reason() -> None:
    silos = trunk_silos(1.0, 1.0, 4.0)
    silos[1].train_defect = "worker-died"
    with pytest.raises(RunStopped, match=r"simulation worker died.*resume=DIR") as stop:
        round_one(make_fedavg(), Federation(silos))
    assert stop.value.status == "worker_died"
