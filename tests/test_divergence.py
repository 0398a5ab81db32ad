"""Divergence (strategies.engine.divergence and the engine's loop): a run whose losses explode
stops with ``status: diverged`` and never applies a non-finite model; expected values by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedmtl.core.records import SiloInfo
from fedmtl.core.rounds import RoundRecord
from strategies.engine import ClientUpdate, GlobalModel, RunContext, RunStopped, ServerOptParams
from strategies.engine.divergence import (
    DivergenceMonitor,
    evaluated_losses,
    evidence,
    train_losses,
)
from tests.support.engines import make_fedavg
from tests.support.fakes import FakeSilo, Federation, initial_model


def silo(silo_id: int, tasks: tuple[str, ...] = ("a",)) -> SiloInfo:
    return SiloInfo(silo_id, tasks, 10, 5, {t: 10 for t in tasks}, {t: 5 for t in tasks})


def update(silo_id: int, before: float, during: float) -> ClientUpdate:
    return ClientUpdate(silo_id, silo(silo_id), {}, 10, {"a": 10}, {"a": during}, {"a": before})


def test_the_reference_is_the_lower_median_of_the_initial_models_loss() -> None:
    monitor = DivergenceMonitor(10.0, 3)
    # loss before training 1, 2, 3, 100: lower median 2 (a liar cannot raise it alone)
    monitor.learn([update(s, b, 0.5) for s, b in enumerate((1.0, 2.0, 3.0, 100.0))])
    assert monitor.reference == {"a": 2.0}
    monitor.learn([update(0, 50.0, 50.0)])  # known tasks keep their reference
    assert monitor.reference == {"a": 2.0}


def test_a_round_is_suspect_when_a_tasks_median_exceeds_the_factor() -> None:
    monitor = DivergenceMonitor(10.0, 3)
    monitor.reference = {"a": 2.0, "b": 1.0}
    # lower median of (5, 25, 30) = 25 > 10 x 2; b's (1, 1) = 1 is fine
    verdict = monitor.judge(1, {"train loss": {"a": [5.0, 25.0, 30.0], "b": [1.0, 1.0]}})
    assert not verdict.sound and len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith("a: the median train loss 25 over 3 silos exceeds 10 x 2")
    assert monitor.judge(2, {"train loss": {"a": [5.0, 19.0, 30.0]}}).sound  # 19 <= 20


def test_a_minority_of_liars_can_neither_fake_nor_hide_a_divergence() -> None:
    monitor = DivergenceMonitor(10.0, 3)
    monitor.reference = {"a": 1.0}
    # two of four claim infinite losses: the lower median is still an honest 1
    assert monitor.judge(1, {"test loss": {"a": [1.0, 1.0, math.inf, math.inf]}}).sound
    # two of three are non-finite (the model blew up): suspect
    verdict = monitor.judge(2, {"test loss": {"a": [1.0, math.inf, math.inf]}})
    assert verdict.reasons == ("a: the median test loss over 3 silos is non-finite",)
    # one of three hides a blow-up with a small loss: the median 500 still shows it
    assert not monitor.judge(3, {"test loss": {"a": [0.1, 500.0, 600.0]}}).sound


def test_divergence_takes_that_many_suspect_rounds_in_a_row() -> None:
    monitor = DivergenceMonitor(10.0, 3)
    monitor.reference = {"a": 1.0}
    bad, good = {"x": {"a": [100.0]}}, {"x": {"a": [1.0]}}
    for server_round, found in enumerate([bad, bad, good, bad, bad], start=1):
        monitor.judge(server_round, found)
        assert not monitor.diverged
    assert monitor.last_sound == 3 and monitor.streak == 2
    monitor.judge(6, bad)
    assert monitor.diverged
    assert monitor.summary()["suspect_rounds"] == [1, 2, 4, 5, 6]
    again = DivergenceMonitor(10.0, 3)
    again.load_state_dict(monitor.state_dict())
    assert again.state_dict() == monitor.state_dict() and again.diverged


def test_a_factor_of_null_turns_detection_off() -> None:
    monitor = DivergenceMonitor(None, 3)
    monitor.reference = {"a": 1.0}
    for server_round in (1, 2, 3):
        assert monitor.judge(server_round, {"x": {"a": [math.inf]}}).sound
    assert not monitor.diverged and monitor.unusable({"a": [math.inf]}) == []


def test_evidence_takes_the_worse_of_the_two_train_losses_and_inf_for_non_finite_replies() -> None:
    updates = [update(0, 1.0, 3.0), update(1, 4.0, 2.0)]
    assert train_losses(updates) == {0: {"a": 3.0}, 1: {"a": 4.0}}
    found = evidence(train_losses(updates), {7: {"a": math.inf, "b": 2.0}}, ["b", "a"])
    assert found == {"b": [2.0], "a": [3.0, 4.0, math.inf]}
    per_silo = {0: {"a": {"loss": 0.5, "accuracy": 0.9}}, 1: {"a": {"accuracy": 0.1}}}
    assert evaluated_losses(per_silo) == {0: {"a": 0.5}, 1: {}}


# ---------------------------------------------------------------------------- through the engine
class Saves:
    """A round-end hook that records what it was told and saves every sound round."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def __call__(
        self, server_round: int, model: GlobalModel, state: Any, sound: bool
    ) -> int | None:
        self.calls.append((server_round, sound))
        return server_round if sound else None


class Worsen:
    """An observer that makes every silo's training loss of task a ``loss`` from round
    ``start - 1`` on (so round ``start``'s replies report it)."""

    def __init__(self, silos: list[FakeSilo], start: int, loss: float) -> None:
        self.silos, self.start, self.loss = silos, start, loss
        self.records: list[RoundRecord] = []

    def on_round(self, record: RoundRecord) -> None:
        self.records.append(record)
        if record.server_round + 1 >= self.start:
            for fake in self.silos:
                fake.train_loss = {"a": self.loss}


def fakes() -> list[FakeSilo]:
    # loss before training 1.0 (the fakes' default): the reference of a is 1
    return [FakeSilo(("a",), 10, {"a": 10}, 0.01, train_loss={"a": 0.5}) for _ in range(3)]


def test_three_suspect_rounds_stop_the_run_without_saving_them() -> None:
    silos = fakes()
    saves, watch = Saves(), Worsen(silos, start=3, loss=1e4)  # 1e4 > 10 x 1
    engine = make_fedavg(context=RunContext(observers=[watch], on_round_end=saves))
    with pytest.raises(RunStopped, match="rounds 3 to 5 are suspect") as stop:
        engine.run(Federation(silos).grid, initial_model(), num_rounds=8)
    assert stop.value.status == "diverged"
    assert saves.calls == [(1, True), (2, True), (3, False), (4, False), (5, False)]
    assert [bool(r.suspect) for r in watch.records] == [False, False, True, True, True]
    assert "a: the median train loss 1e+04 over 3 silos" in watch.records[2].suspect[0]
    assert engine.divergence.last_sound == 2


def test_a_suspect_last_round_is_no_success() -> None:
    silos = fakes()
    engine = make_fedavg(context=RunContext(observers=[Worsen(silos, start=4, loss=1e4)]))
    with pytest.raises(RunStopped, match="the last round, 4, is suspect") as stop:
        engine.run(Federation(silos).grid, initial_model(), num_rounds=4)
    assert stop.value.status == "diverged"


def test_a_transient_suspect_round_does_not_stop_the_run() -> None:
    silos = fakes()

    class Spike(Worsen):
        def on_round(self, record: RoundRecord) -> None:
            for fake in self.silos:
                fake.train_loss = {"a": self.loss if record.server_round == 1 else 0.5}

    saves = Saves()
    engine = make_fedavg(context=RunContext(observers=[Spike(silos, 2, 1e4)], on_round_end=saves))
    engine.run(Federation(silos).grid, initial_model(), num_rounds=4)
    assert saves.calls == [(1, True), (2, False), (3, True), (4, True)]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_an_aggregate_with_non_finite_values_is_never_applied() -> None:
    # deltas up to 3e37 x 6 = 1.8e38 (finite); the server step 2 x 1.8e38 overflows float32
    silos = [FakeSilo(("a",), 10, {"a": 10}, 3e37) for _ in range(2)]
    engine = make_fedavg(server_optimizer=ServerOptParams(lr=2.0))
    with pytest.raises(RunStopped, match="non-finite values; it was not applied") as stop:
        engine.run(Federation(silos).grid, initial_model(), num_rounds=2)
    assert stop.value.status == "diverged"
    assert engine.history == [] and not engine.participants


@pytest.mark.parametrize(("factor", "status"), [(100.0, "diverged"), (None, "too_few_replies")])
def test_a_round_most_silos_answer_with_non_finite_values_is_a_divergence(
    factor: float | None, status: str
) -> None:
    silos = fakes()
    for fake in silos[:2]:  # their training blew up: NaN losses and updates
        fake.train_loss, fake.train_defect = {"a": math.nan}, "nan-delta"
    engine = make_fedavg(min_train_nodes=3, divergence_factor=factor)
    with pytest.raises(RunStopped) as stop:
        engine.train_round(Federation(silos).grid, 1, initial_model())
    assert stop.value.status == status
    if factor is not None:
        assert "most silos of ['a'] replied with non-finite values" in str(stop.value)


def test_one_silo_with_non_finite_values_is_a_rejection_not_a_divergence() -> None:
    silos = fakes()
    silos[0].train_loss, silos[0].train_defect = {"a": math.nan}, "nan-delta"
    engine = make_fedavg(min_train_nodes=3, round_retries=0)
    with pytest.raises(RunStopped) as stop:
        engine.train_round(Federation(silos).grid, 1, initial_model())
    assert stop.value.status == "too_few_replies"


def test_a_reply_whose_arrays_alone_are_spoiled_counts_with_the_losses_it_measured() -> None:
    # silo 0, the only holder of b, sends a NaN array but finite losses: a malformed reply,
    # refused, and no evidence of divergence (its b losses, 1.0 before and 0.5 during, are sound)
    silos = fakes()
    silos[0] = FakeSilo(("a", "b"), 10, {"a": 10, "b": 10}, 0.01, train_loss={"a": 0.5, "b": 0.5})
    silos[0].train_defect = "nan-delta"
    engine = make_fedavg(divergence_rounds=1)
    engine.run(Federation(silos).grid, initial_model(), num_rounds=2)
    assert [r.suspect for r in engine.history] == [[], []]
    assert len(engine.rejections) == 2


def test_the_evaluations_non_finite_replies_count_against_the_model() -> None:
    silos = fakes()
    for fake in silos[:2]:
        fake.eval_metrics = {"a/n": 5.0, "a/loss_sum": 1.0, "a/correct": 1.0}
        fake.eval_defect = "inf"
    silos[2].eval_metrics = {"a/n": 5.0, "a/loss_sum": 1.0, "a/correct": 1.0}
    engine = make_fedavg(divergence_rounds=1)
    with pytest.raises(RunStopped, match="median test loss over 3 silos is non-finite"):
        engine.run(Federation(silos).grid, initial_model(), num_rounds=3)
    assert np.isfinite(engine.history[0].per_silo[2]["a"]["loss"])
