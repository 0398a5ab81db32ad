"""How runs end when things go wrong: the ``status`` in summary.json, the exit status of
``fedmtl run``, and a Ray address where nothing answers."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

import fedmtl.app.cli as cli
import fedmtl.app.runtime as runtime
import fedmtl.app.silo as silo_side
from fedmtl.app.config import parse
from fedmtl.app.launch import run
from fedmtl.app.server_app import final_status
from fedmtl.core.errors import ConfigError
from tests.helpers import compose_raw

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
    return SimpleNamespace(participants=participants, silos=silos)


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
