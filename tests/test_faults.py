"""How runs end when things go wrong: the ``status`` in summary.json, the exit status of
``fedmtl run``, and a Ray address where nothing answers."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fedmtl.app.cli as cli
import fedmtl.app.runtimes.simulation as runtime
import strategies.engine.silo as silo_side
from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import resumed_raw_config
from fedmtl.app.run.config import parse
from fedmtl.app.run.server import final_status
from fedmtl.core.errors import ConfigError
from strategies.engine import SiloMethod, round_seed
from tests.support.runs import beats_chance, compose_raw, run_test_app

SMALL = ["runtime=inprocess", "tracking=quiet", "num_rounds=2", "partition.num_silos=4"]


def test_a_run_where_every_silo_fails_stops_with_a_status_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(silo_side, "train_local", broken)
    config = parse(compose_raw([*SMALL, "strategy.round_retries=1"], output_dir=tmp_path))
    summary = run(config)
    assert summary["status"] == "too_few_replies"
    assert summary["silos_participated"] == []
    assert len(summary["rejected"]) == 8  # 4 silos x 2 attempts of round 1
    with pytest.raises(SystemExit) as exit_:
        cli._run(parse(compose_raw(SMALL, output_dir=tmp_path / "again")))
    assert exit_.value.code == 1
    assert "status 'too_few_replies'" in capsys.readouterr().err


def strategy_stub(participants: set[int], connected: list[int]) -> SimpleNamespace:
    silos = {1000 + s: SimpleNamespace(silo_id=s) for s in connected}
    return SimpleNamespace(participants=participants, roster=SimpleNamespace(silos=silos))


@pytest.mark.parametrize(
    ("participants", "connected", "status"),
    [
        ({0, 1, 2}, [0, 1, 2], "completed"),
        ({0}, [0, 1, 2], "completed"),  # took part once: sampling decides the rest
        (set(), [0, 1, 2], "no_updates_aggregated"),
        ({0, 1}, [0, 1], "silos_missing"),
    ],
)
def test_final_status(participants: set[int], connected: list[int], status: str) -> None:
    assert final_status(strategy_stub(participants, connected), num_silos=3) == status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(30)  # the contract: a wrong address fails within 30 s, not after minutes
def test_a_ray_address_where_nothing_answers_fails_fast() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.ray_address.*no Ray cluster answers"):
        runtime.check_ray_address(f"127.0.0.1:{free_port()}")


def test_ray_address_auto_needs_a_running_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "RAY_CLUSTER_FILE", tmp_path / "absent")
    with pytest.raises(ConfigError, match="no running Ray cluster was found"):
        runtime.check_ray_address("auto")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        runtime.check_ray_address("auto")  # answers: no error


# ------------------------------------------------------------------ 30% of the silos faulty
FAULT_RUN = ["runtime=inprocess", "tracking=quiet", "partition.num_silos=10", "checkpoint_every=0"]
FAULTY_SHARE = 3  # of every 10 silos, in every round (a different three each round)


def faulty(silo_id: int, server_round: int) -> bool:
    return (silo_id + server_round) % 10 < FAULTY_SHARE


def inject(monkeypatch: pytest.MonkeyPatch, seed: int, fault: str) -> None:
    """Silos :func:`faulty` this round raise (``raise``), or send updates x1e6 and claim 1e12
    examples (``huge``). A silo is recognised by its round seed (seed, silo, round)."""
    original = SiloMethod.train

    def train(self, tools, received, request):
        silo = next(s for s in range(10) if round_seed(seed, s, request.server_round) == tools.seed)
        if not faulty(silo, request.server_round):
            return original(self, tools, received, request)
        if fault == "raise":
            raise RuntimeError("injected failure")
        reply = original(self, tools, received, request)
        return dataclasses.replace(
            reply,
            deltas={k: v * np.float32(1e6) for k, v in reply.deltas.items()},
            num_examples=1e12,
            task_examples={t: 1e12 for t in reply.task_examples},
        )

    monkeypatch.setattr(SiloMethod, "train", train)


def primary(summary: dict) -> dict[str, float]:
    info = summary["task_info"]
    return {t: m[info[t]["primary_metric"]] for t, m in summary["final"].items()}


@pytest.mark.slow
def test_silos_that_fail_every_round_cost_at_most_two_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every silo labels every task (1,500 test rows each): two points are beyond test-set noise
    overrides = [*FAULT_RUN, "dataset=synthetic", "partition=iid_all", "num_rounds=25"]
    clean = run(parse(compose_raw(overrides, output_dir=tmp_path / "clean")))
    inject(monkeypatch, seed=0, fault="raise")
    hurt = run(parse(compose_raw(overrides, output_dir=tmp_path / "faulty")))
    assert hurt["status"] == "completed"
    assert len(hurt["rejected"]) == 25 * FAULTY_SHARE
    assert set(hurt["silos_participated"]) == set(range(10))
    for task, value in primary(clean).items():
        assert abs(primary(hurt)[task] - value) <= 0.02, (task, value, primary(hurt)[task])


@pytest.mark.slow
def test_huge_updates_and_inflated_counts_are_contained_by_the_norm_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject(monkeypatch, seed=0, fault="huge")
    overrides = [*FAULT_RUN, "dataset=digits", "num_rounds=12", "strategy.norm_bound=2.0"]
    summary = run(parse(compose_raw(overrides, output_dir=tmp_path)))
    assert summary["status"] == "completed"
    assert beats_chance(summary, margin=0.1) == {}


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(400)
def test_a_crashed_ray_worker_stops_the_run_loudly_and_it_resumes(tmp_path: Path) -> None:
    """On Flower's simulation engine, silo 1's worker process dies in round 2: the run stops with
    ``worker_died`` and exit status 1 instead of losing silos silently, and it finishes with
    ``fedmtl run resume=DIR`` from its round-1 checkpoint (here in process)."""
    out = tmp_path / "run"
    crashed = run_test_app(
        "crash_app",
        [
            "run",
            "experiment=smoke",
            "runtime=simulation",
            "partition.num_silos=4",
            "num_rounds=3",
            "checkpoint_every=1",
            f"hydra.run.dir={out}",
        ],
        timeout=300,
    )
    assert crashed.returncode == 1, crashed.stderr[-3000:]
    assert "status 'worker_died'" in crashed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "worker_died" and summary["checkpoint_round"] == 1
    run(parse(resumed_raw_config(out, ["runtime=inprocess"])))  # what `resume=DIR` runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == [1]
    assert summary["rounds"] == 3 and summary["silos_participated"] == [0, 1, 2, 3]
