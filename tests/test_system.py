"""The virtual clock (``system=...``, :mod:`strategies.engine.system`): simulated round times
against the formula computed by hand, availability, the deadline's drop and partial work, the
same times on two runtimes, bad configs refused before work, a resumed clock, and the report's
simulated time and time to a target."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmtl.app.bench.report import build_report
from fedmtl.app.deploy.flwr_config import run_config as flwr_run_config
from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import MODEL_FILE, load_model_arrays, resumed_raw_config
from fedmtl.app.run.config import parse, raw_config
from fedmtl.app.run.experiment import prepare
from fedmtl.core import records
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import SiloInfo
from strategies.engine import SYSTEMS, ClientUpdate, Engine
from strategies.engine.buffered import Buffer, scaled
from strategies.engine.system import (
    SystemParams,
    TraceRow,
    Transfer,
    VirtualClock,
    load_trace,
)
from tests.support.bench import write_run
from tests.support.deployments import silo_tables
from tests.support.runs import compose_raw, read_jsonl

HAND = {"id": "hand000001", "name": "hand", "excluded": []}
BATCH = 16
STEPS = 3
SMALL = [
    "runtime=inprocess",
    "tracking=quiet",
    "tracking.plots=false",
    "dataset=synthetic",
    "dataset.num_samples=300",
    "dataset.num_tasks=2",
    "dataset.num_groups=1",
    "partition=iid_all",
    "partition.num_silos=3",
    f"train.batch_size={BATCH}",
    f"train.max_steps={STEPS}",
    "strategy.min_train_nodes=1",
    "num_rounds=2",
]


def write_trace(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(rows))
    return str(path)


@functools.cache
def model_values() -> int:
    """P: the values of the global model's exchanged arrays (what each silo receives with
    fedavg when every silo holds every task)."""
    network = prepare(parse(compose_raw(SMALL))).new_model()
    return sum(a.size for a in records.state_arrays(network, network.exchanged_keys()).values())


def run_rows(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[dict, list[dict]]:
    """The summary and the train rows of metrics.jsonl of a small in-process run."""
    out = tmp_path / name
    summary = run(parse(compose_raw([*SMALL, *overrides], output_dir=out)))
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"]
    return summary, rows


# ------------------------------------------------------------------------- the formula by hand
def test_a_round_lasts_its_slowest_silo_by_the_formula_by_hand() -> None:
    """t_s = (L + 8 b_down / B_down) + 6 P k r / F + (L + 8 b_up / B_up); the round lasts the
    slowest t_s plus the server's time; the deadline caps it and drops who is past it."""
    params = SystemParams(latency_s=0.1, server_s=0.5, deadline_s=3.0)
    trace = load_trace_rows(
        {0: (2.0, 8.0, 16.0), 1: (1.0, 1.0, 4.0), 2: (0.5, 2.0, 2.0)}  # GFLOP/s, Mbit/s up, down
    )
    clock = VirtualClock(params, seed=0, trace=trace)
    transfer = Transfer(
        down_bytes=1_000_000, up_bytes=500_000, parameters=10_000, steps=5, rows_per_step=32
    )
    by_hand = {
        0: (0.1 + 8e6 / 16e6) + 6 * 10_000 * 5 * 32 / 2e9 + (0.1 + 4e6 / 8e6),  # 1.2048
        1: (0.1 + 8e6 / 4e6) + 6 * 10_000 * 5 * 32 / 1e9 + (0.1 + 4e6 / 1e6),  # 6.2096
        2: (0.1 + 8e6 / 2e6) + 6 * 10_000 * 5 * 32 / 0.5e9 + (0.1 + 4e6 / 2e6),  # 6.2192
    }
    times = {s: clock.duration(s, transfer) for s in by_hand}
    assert times == pytest.approx(by_hand, rel=1e-12)
    settled = clock.settle({0: times[0], 1: times[1], 2: 2.9})
    assert settled.dropped == {1} and settled.in_time == {0, 2}
    assert settled.seconds == 3.0 + 0.5 and clock.now == 3.5  # waited the deadline
    in_time = clock.settle({0: times[0], 2: 2.9})
    assert in_time.seconds == 2.9 + 0.5 and not in_time.dropped and clock.now == 6.9


def load_trace_rows(rows: dict[int, tuple[float, float, float]]) -> dict[int, TraceRow]:
    """Trace rows of (GFLOP/s, Mbit/s up, Mbit/s down) by silo."""
    return {s: TraceRow(gflops=f, up_mbps=u, down_mbps=d) for s, (f, u, d) in rows.items()}


def test_partial_work_asks_for_the_steps_that_fit() -> None:
    """k_s = floor((D - (L + 8 b / B_down) - (L + 8 b / B_up)) F / (6 P r))."""
    clock = VirtualClock(
        SystemParams(latency_s=0.05, deadline_s=2.0, stragglers="partial"),
        trace=load_trace_rows({0: (0.1, 4.0, 8.0)}),
    )
    left = 2.0 - (0.05 + 8 * 250_000 / 8e6) - (0.05 + 8 * 250_000 / 4e6)  # 1.15 s
    by_hand = math.floor(left * 0.1e9 / (6 * 20_000 * 32))  # 29
    assert by_hand == 29
    assert clock.step_budget(0, 250_000, 20_000, 32) == by_hand
    assert clock.step_budget(0, 10_000_000, 20_000, 32) == 0  # the transfers alone are too long


def test_the_engine_times_each_round_by_the_formula(tmp_path: Path) -> None:
    """Through the engine: every silo receives the same arrays (iid_all, fedavg), so b_down and
    b_up are a third of the round's bytes and P the model's values; the round lasts the slowest
    silo's t_s, by hand."""
    speeds = {0: (50.0, 2.0, 10.0), 1: (20.0, 1.0, 40.0), 2: (5.0, 8.0, 4.0)}
    trace = write_trace(
        tmp_path,
        [{"silo": s, "gflops": f, "up_mbps": u, "down_mbps": d} for s, (f, u, d) in speeds.items()],
    )
    summary, rows = run_rows(
        tmp_path, [f"system.trace={trace}", "system.latency_s=0.01", "strategy.evaluate_every=2"]
    )
    first = rows[0]  # no evaluation in round 1: its bytes are the training's
    assert first["num_sampled"] == 3 and "stragglers" not in first
    down, up = first["bytes_down"] / 3, first["bytes_up"] / 3
    parameters = model_values()
    by_hand = max(
        (0.01 + 8 * down / (d * 1e6)) + 6 * parameters * STEPS * BATCH / (f * 1e9)
        + (0.01 + 8 * up / (u * 1e6))
        for f, u, d in speeds.values()
    )  # fmt: skip
    assert first["simulated_time_s"] == pytest.approx(by_hand, rel=1e-9)
    assert first["simulated_clock_s"] == first["simulated_time_s"]
    assert rows[1]["simulated_clock_s"] == first["simulated_clock_s"] + rows[1]["simulated_time_s"]
    assert summary["simulated_time_s"] == rows[1]["simulated_clock_s"]


# --------------------------------------------------------------------------------- availability
def test_availability_from_a_trace_is_honoured(tmp_path: Path) -> None:
    """A silo with availability 0 is never sampled; one with 1 always is."""
    trace = write_trace(
        tmp_path,
        [{"silo": 0, "availability": 1.0}, {"silo": 1, "availability": 0.0}, {"silo": 2}],
    )
    summary, rows = run_rows(tmp_path, [f"system.trace={trace}", "num_rounds=3"])
    assert summary["silos_participated"] == [0, 2]
    assert [r["num_sampled"] for r in rows] == [2, 2, 2]


def test_a_silo_is_online_in_a_share_p_of_the_rounds_seeded(tmp_path: Path) -> None:
    clock = VirtualClock(SystemParams(availability=0.3), seed=4)
    online = [clock.is_online(7, r) for r in range(1, 4001)]
    assert abs(sum(online) / len(online) - 0.3) < 0.03
    again = VirtualClock(SystemParams(availability=0.3), seed=4)
    assert [again.is_online(7, r) for r in range(1, 4001)] == online  # a function of the seed
    (tmp_path / "never.csv").write_text("silo,availability\n0,0\n")
    never = VirtualClock(SystemParams(), trace=load_trace(str(tmp_path / "never.csv")))
    assert not any(never.is_online(0, r) for r in range(1, 200))


def test_online_intervals_wait_for_the_next_opening() -> None:
    clock = VirtualClock(SystemParams(), trace={0: TraceRow(online=((0.0, 1.0), (10.0, 20.0)))})
    assert clock.online([0], 1) == {0}
    clock.now = 2.0
    assert clock.online([0], 2) == {0} and clock.now == 10.0  # waited for the next interval


# ----------------------------------------------------------------------- deadline: drop, partial
def slow_third_silo(tmp_path: Path, gflops: float) -> str:
    """Silos 0 and 1 as good as instant, silo 2 at ``gflops``; infinite links."""
    rows = [{"silo": 0, "gflops": 1e9}, {"silo": 1, "gflops": 1e9}, {"silo": 2, "gflops": gflops}]
    return write_trace(tmp_path, rows)


def test_the_deadline_drops_exactly_the_silos_past_it(tmp_path: Path) -> None:
    trace = slow_third_silo(tmp_path, 1e-3)  # hours per round
    summary, rows = run_rows(tmp_path, [f"system.trace={trace}", "system.deadline_s=1.0"])
    assert [r["stragglers"] for r in rows] == [[2], [2]]
    assert [r["num_updates"] for r in rows] == [2, 2]
    assert [r["simulated_time_s"] for r in rows] == [1.0, 1.0]  # the round waited D
    assert summary["silos_participated"] == [0, 1]


def test_partial_work_runs_the_steps_the_formula_gives(tmp_path: Path) -> None:
    """Silo 2 fits k = floor(D F / (6 P r)) = 2 < max_steps steps; the round lasts exactly its
    k steps (the others are instant, the links infinite), and it is aggregated."""
    deadline = 0.2
    gflops = 2.5 * 6 * model_values() * BATCH / deadline / 1e9  # 2.5 steps' work in D
    step_s = 6 * model_values() * BATCH / (gflops * 1e9)
    steps = math.floor(deadline / step_s)
    assert steps == 2 < STEPS
    trace = slow_third_silo(tmp_path, gflops)
    overrides = [
        f"system.trace={trace}",
        f"system.deadline_s={deadline}",
        "system.stragglers=partial",
    ]
    summary, rows = run_rows(tmp_path, [*overrides, "strategy.evaluate_every=2"])
    assert [r["num_updates"] for r in rows] == [3, 3] and "stragglers" not in rows[0]
    assert rows[0]["simulated_time_s"] == pytest.approx(steps * step_s, rel=1e-6)
    assert summary["silos_participated"] == [0, 1, 2]


def test_same_seed_same_times_on_inprocess_and_vectorized(tmp_path: Path) -> None:
    overrides = [
        "system=heterogeneous",
        "system.availability=0.7",
        "system.deadline_s=0.5",
        "system.stragglers=partial",
        "num_rounds=3",
    ]
    keys = ("num_sampled", "simulated_time_s", "simulated_clock_s", "stragglers")
    _, inprocess = run_rows(tmp_path, overrides, name="inprocess")
    _, vectorized = run_rows(tmp_path, [*overrides, "runtime=vectorized"], name="vectorized")
    assert [[r.get(k) for k in keys] for r in inprocess] == [
        [r.get(k) for k in keys] for r in vectorized
    ]
    assert len({r["num_sampled"] for r in inprocess} | {0}) > 1  # some silo offline sometime


# -------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"up_mbps": -1}, "system.up_mbps"),
        ({"down_mbps": 0}, "system.down_mbps"),
        ({"availability": 1.5}, "system.availability"),
        ({"availability": 0}, "system.availability"),
        ({"gflops": -2}, "system.gflops"),
        ({"stragglers": "partial"}, "system.stragglers"),  # no deadline to fit steps into
        ({"stragglers": "late"}, "system.stragglers"),
        ({"speed": 1}, "system.speed"),
        ({"concurrency": 4}, "system.concurrency"),  # a buffered-only key in sync mode
    ],
)
def test_a_bad_system_value_is_refused_naming_its_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        SYSTEMS.parse("heterogeneous", values, "system")
    assert error.value.key == key


def test_the_config_group_is_checked_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError) as error:
        parse(compose_raw([*SMALL, "system=thin_uplink", "system.up_mbps=-1"]))
    assert error.value.key == "system.up_mbps"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("t.csv", "silo,gflops\n0,fast\n1,1\n2,1\n", "not a number"),
        ("t.csv", "silo,speed\n0,1\n", "unknown columns"),
        ("t.json", '[{"silo": 0}, {"silo": 1}]', "silos [2] have no row"),
        ("t.json", "{not json", "not valid JSON"),
        ("t.csv", "silo,availability\n0,2\n1,1\n2,1\n", "not in [0, 1]"),
        ("t.csv", "silo,online\n0,5-1\n1,\n2,\n", "needs 0 <= start < end"),
    ],
)
def test_a_malformed_trace_is_refused_naming_the_key(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as error:
        load_trace(str(tmp_path / name), num_silos=3)
    assert error.value.key == "system.trace" and problem in error.value.problem


def test_a_missing_trace_file_is_refused_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Engine, "run", lambda *a, **k: pytest.fail("the run started"))
    trace = f"system.trace={tmp_path / 'absent.csv'}"
    config = parse(compose_raw([*SMALL, trace], output_dir=tmp_path / "run"))
    with pytest.raises(ConfigError) as error:
        run(config)
    assert error.value.key == "system.trace" and "no such file" in error.value.problem


def test_secure_aggregation_refuses_a_system_it_cannot_time() -> None:
    config = parse(compose_raw([*SMALL, "privacy=secagg", "system=intermittent"]))
    with pytest.raises(ConfigError) as error:
        prepare(config)
    assert error.value.key == "system"


# ------------------------------------------------------------------------------------- resume
def stopped_at_round_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]
) -> Path:
    """The run of ``overrides`` in ``tmp_path / "cut"``, stopped as round 3 starts."""
    original = Engine.train_round

    def stop_at_3(self: Engine, grid: Any, server_round: int, *args: Any) -> Any:
        if server_round == 3:
            raise KeyboardInterrupt("stopped")
        return original(self, grid, server_round, *args)

    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "train_round", stop_at_3)
        with pytest.raises(KeyboardInterrupt):
            run(parse(compose_raw([*SMALL, *overrides], output_dir=cut)))
    return cut


def test_a_resumed_run_continues_the_clock_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = [
        "system=heterogeneous",
        "system.availability=0.6",
        "num_rounds=4",
        "checkpoint_every=2",
    ]
    _, full = run_rows(tmp_path, overrides, name="full")
    cut = stopped_at_round_3(tmp_path, monkeypatch, overrides)
    summary = run(parse(resumed_raw_config(cut, [])))
    resumed = [r for r in read_jsonl(cut / "metrics.jsonl") if r["split"] == "train"]
    keys = ("round", "num_sampled", "simulated_time_s", "simulated_clock_s")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    assert summary["simulated_time_s"] == full[-1]["simulated_clock_s"]


# ------------------------------------------------------------------------------------- report
def timed_run(directory: Path, strategy: str, accuracy: float, clock: list[float]) -> None:
    """A hand-made run whose round k holds ``accuracy`` x k / 4 (MAE 0.2 x k / 4) and ends at
    ``clock[k - 1]`` simulated seconds."""
    final = {"a": {"accuracy": accuracy}, "r": {"mae": 0.2 if strategy != "fedavg" else 0.4}}
    summary = write_run(directory, strategy, 0, final, scenario=HAND, rounds=4)
    summary["simulated_time_s"] = clock[-1]
    (directory / "summary.json").write_text(json.dumps(summary))
    with (directory / "metrics.jsonl").open("a") as handle:
        for k, seconds in enumerate(clock, 1):
            row = {"round": k, "split": "train", "metrics": {}, "simulated_clock_s": seconds}
            handle.write(json.dumps(row) + "\n")


def test_the_report_gives_simulated_time_and_time_to_the_baselines_final_metric(
    tmp_path: Path,
) -> None:
    """FedAvg ends at accuracy 0.6 (MAE 0.4): it reaches that in round 4, at 40 s; mgda's
    accuracy 0.9 x k / 4 first reaches 0.6 in round 3 (0.675), at 21 s, its MAE always below."""
    timed_run(tmp_path / "runs" / "fedavg", "fedavg", 0.6, [10.0, 20.0, 30.0, 40.0])
    timed_run(tmp_path / "runs" / "mgda", "mgda", 0.9, [5.0, 12.0, 21.0, 33.0])
    out = tmp_path / "report"
    build_report([tmp_path / "runs"], out, plots=False)
    with (out / "strategies.csv").open() as handle:
        rows = {r["strategy"]: r for r in csv.DictReader(handle)}
    assert float(rows["fedavg"]["simulated_time_s"]) == 40.0
    assert float(rows["fedavg"]["time_to_target_s"]) == 40.0
    assert float(rows["mgda"]["simulated_time_s"]) == 33.0
    assert float(rows["mgda"]["time_to_target_s"]) == 21.0
    text = (out / "report.md").read_text()
    assert "### Simulated time" in text and "| mgda | 33.00 | 21.00 |" in text


def test_a_deployment_refuses_a_simulated_system(tmp_path: Path) -> None:
    _, schema = silo_tables(tmp_path / "silos")
    with pytest.raises(ConfigError) as error:
        flwr_run_config(
            ["experiment=flwr_tables", f"dataset.schema={schema}", "system=heterogeneous"]
        )
    assert error.value.key == "system"


# ------------------------------------------------------------------------------ buffered (FedBuff)
def test_staleness_weights_and_scaled_updates_follow_the_formula() -> None:
    """s(tau) = (1 + tau)^(-a); a scaled update is its deltas and per-task shares times s."""
    clock = VirtualClock(SystemParams(mode="buffered", staleness_exponent=0.5))
    assert [clock.staleness_weight(t) for t in (0, 1, 3, 8)] == [1.0, 2**-0.5, 0.5, 1 / 3]
    info = SiloInfo(0, ("a",), 4, 1, {"a": 4}, {"a": 1})
    delta = {"w": np.array([2.0, -4.0], np.float32)}
    update = ClientUpdate(0, info, delta, 4, {"a": 4}, {"a": 0.1}, task_deltas={"a": delta})
    half = scaled(update, 0.5)
    assert half.deltas["w"].tolist() == [1.0, -2.0] and half.deltas["w"].dtype == np.float32
    assert half.task_deltas is not None and half.task_deltas["a"]["w"].tolist() == [1.0, -2.0]
    assert scaled(update, 1.0) is update


def test_the_buffer_takes_the_first_arrivals_and_counts_staleness() -> None:
    info = {s: SiloInfo(s, ("a",), 4, 1, {"a": 4}, {"a": 1}) for s in range(3)}
    buffer = Buffer()
    for silo, arrival in ((2, 5.0), (1, 3.0), (0, 3.0)):
        buffer.add(arrival, ClientUpdate(silo, info[silo], {}, 4, {"a": 4}, {}))
    first = buffer.take(2)
    assert [job.update.silo.silo_id for job in first] == [0, 1]  # ties by silo id
    buffer.version += 1
    buffer.add(4.0, ClientUpdate(0, info[0], {}, 4, {"a": 4}, {}))
    second = buffer.take(1)
    assert second[0].update.silo.silo_id == 0 and buffer.staleness(second[0]) == 0
    assert buffer.staleness(buffer.in_flight[0]) == 1  # silo 2, sent before the aggregation


def test_buffered_with_every_silo_and_no_staleness_is_synchronous_fedavg(tmp_path: Path) -> None:
    """K = C = every silo and a = 0: each aggregation is a synchronous FedAvg round, per task
    over its holders (each silo labels 2 of the 3 tasks)."""
    task_aware = ["dataset.num_tasks=3", "partition=iid_random_k", "partition.num_silos=3"]
    _, sync = run_rows(tmp_path, task_aware, name="sync")
    buffered = [*task_aware, "system.mode=buffered", "system.staleness_exponent=0"]
    _, fedbuff = run_rows(tmp_path, buffered, name="buffered")
    keys = ("metrics", "num_sampled", "num_updates", "bytes_up", "bytes_down", "simulated_clock_s")
    assert [[r[k] for k in keys] for r in fedbuff] == [[r[k] for k in keys] for r in sync]
    expected, _ = load_model_arrays(tmp_path / "sync" / MODEL_FILE)
    got, _ = load_model_arrays(tmp_path / "buffered" / MODEL_FILE)
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def speeds_in_seconds(tmp_path: Path, seconds: dict[int, float]) -> str:
    """A trace whose silos take ``seconds`` per exchange (compute only: infinite links)."""
    work = 6 * model_values() * STEPS * BATCH
    rows = [{"silo": s, "gflops": work / t / 1e9} for s, t in seconds.items()]
    return write_trace(tmp_path, rows)


def test_buffered_aggregation_weighs_each_update_by_its_staleness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C = 3, K = 1, silos taking 1, 1.6 and 10 s, by hand: silos 0, 1, 2 sent at 0 (version 0);
    round 1 takes 0 (at 1, tau 0); 0 is sent again (version 1, arrives 2); round 2 takes 1 (at
    1.6, tau 1); 1 is sent again (version 2, arrives 3.2); round 3 takes 0 (at 2, tau 1); 0 again
    (version 3, arrives 3); round 4 takes 0 (at 3, tau 0); round 5 takes 1 (at 3.2, tau 2)."""
    weights: list[tuple[int, float]] = []

    def spy(update: ClientUpdate, weight: float) -> ClientUpdate:
        weights.append((update.silo.silo_id, weight))
        return scaled(update, weight)

    monkeypatch.setattr("strategies.engine.loop.scaled", spy)
    trace = speeds_in_seconds(tmp_path, {0: 1.0, 1: 1.6, 2: 10.0})
    overrides = [f"system.trace={trace}", "system.mode=buffered", "system.concurrency=3"]
    overrides += ["system.buffer_size=1", "system.staleness_exponent=1", "num_rounds=5"]
    summary, rows = run_rows(tmp_path, overrides)
    assert weights == [(0, 1.0), (1, 1 / 2), (0, 1 / 2), (0, 1.0), (1, 1 / 3)]
    clock = [r["simulated_clock_s"] for r in rows]
    assert clock == pytest.approx([1.0, 1.6, 2.0, 3.0, 3.2], rel=1e-9)
    assert [r["num_sampled"] for r in rows] == [3, 1, 1, 1, 1]
    assert summary["silos_participated"] == [0, 1]  # silo 2 is still on its way


def test_a_resumed_buffered_run_continues_with_its_updates_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["system=heterogeneous", "system.mode=buffered", "system.buffer_size=1"]
    overrides += ["num_rounds=4", "checkpoint_every=2"]
    _, full = run_rows(tmp_path, overrides, name="full")
    cut = stopped_at_round_3(tmp_path, monkeypatch, overrides)
    run(parse(resumed_raw_config(cut, [])))
    resumed = [r for r in read_jsonl(cut / "metrics.jsonl") if r["split"] == "train"]
    keys = ("round", "metrics", "num_sampled", "simulated_time_s", "simulated_clock_s")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    expected, _ = load_model_arrays(tmp_path / "full" / MODEL_FILE)
    got, _ = load_model_arrays(cut / MODEL_FILE)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["system.mode=buffered", "system.deadline_s=1"], "system.deadline_s"),
        (
            ["system.mode=buffered", "system.concurrency=2", "system.buffer_size=3"],
            "system.buffer_size",
        ),
        (["system.mode=buffered", "system.buffer_size=4"], "system.buffer_size"),
        (["system.mode=buffered", "privacy=dp_silo"], "system.mode"),
    ],
)
def test_a_bad_buffered_config_is_refused_before_work(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        prepare(parse(compose_raw([*SMALL, *overrides])))
    assert error.value.key == key


def test_a_buffered_update_of_an_earlier_layout_is_refused(tmp_path: Path) -> None:
    """Grouping forms task groups after its warm-up: the updates still in flight then were
    computed for the one-trunk model and are refused, never applied."""
    overrides = ["system=heterogeneous", "system.mode=buffered", "system.buffer_size=1"]
    overrides += ["strategy=grouping", "strategy.warmup_rounds=2", "num_rounds=4"]
    summary, rows = run_rows(tmp_path, overrides)
    assert summary["status"] == "completed"
    refused = [r for r in summary["rejected"] if "layout" in r["reason"]]
    assert refused and {r["round"] for r in refused} <= {3, 4}
    assert [r["num_updates"] + r["num_rejected"] for r in rows] == [1, 1, 1, 1]


def test_a_trace_path_is_made_absolute_when_the_config_is_composed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server may read the trace from another directory (a resumed run, Ray's driver)."""
    monkeypatch.chdir(tmp_path)
    raw = raw_config({"system": {"name": "ideal", "trace": "silos.csv"}}, ".")
    assert raw["system"]["trace"] == str(tmp_path.resolve() / "silos.csv")
