"""End-to-end runs: the in-process runtime in this process, and Flower's simulation engine (Ray)
through the ``fedmtl`` command in a subprocess under a hard timeout."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import fedmtl.app.silo.client_app as client_app
import strategies.engine.silo as silo_side
from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.runtimes import client_device
from fedmtl.app.silo.node import node_settings
from fedmtl.app.silo.toolkit import silo_rows
from tests.support.runs import (
    beats_chance,
    check_result_files,
    compose_raw,
    read_jsonl,
    run_fedmtl,
)

FEDMTL = [sys.executable, "-m", "fedmtl.app.cli"]


@pytest.mark.slow
def test_inprocess_digits_learns_every_task(tmp_path: Path) -> None:
    """The default experiment on the in-process runtime: every task ends well above chance."""
    num_rounds = 15
    raw = compose_raw(
        ["runtime=inprocess", "tracking=quiet", f"num_rounds={num_rounds}"], output_dir=tmp_path
    )
    summary = run(parse(raw))
    check_result_files(tmp_path, summary, num_rounds)
    assert summary["dataset"] == "digits" and summary["strategy"] == "fedavg"
    assert beats_chance(summary, margin=0.2) == {}
    personal = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "personal"]
    first, last = personal[0]["metrics"]["digit"], personal[-1]["metrics"]["digit"]
    assert last["accuracy"] > first["accuracy"]


def test_inprocess_synthetic_contract_and_planted_groups(tmp_path: Path) -> None:
    raw = compose_raw(
        ["dataset=synthetic", "runtime=inprocess", "tracking=quiet", "num_rounds=3"],
        output_dir=tmp_path,
    )
    summary = run(parse(raw))
    check_result_files(tmp_path, summary, 3)
    groups = summary["dataset_info"]["planted_groups"]
    assert sorted(t for g in groups for t in g) == sorted(summary["tasks"])


SMALL_SYNTHETIC = [
    "dataset=synthetic",
    "dataset.num_samples=600",
    "partition.num_silos=4",
    "runtime=inprocess",
    "tracking=quiet",
]


@pytest.mark.parametrize(
    ("name", "extra"),
    [("pcgrad", ["strategy.balancing=local"]), ("mgda", ["strategy.balancing=both"])],
)
def test_balancing_modes_run_end_to_end(tmp_path: Path, name: str, extra: list[str]) -> None:
    """``fedmtl run`` of a balancing method that weighs tasks on the silos only (``local``: no
    task weights on the server) and on both sides, in process: result files, finite metrics,
    and task weights exactly where the server balances. Every preset's own run is checked the
    same way after the method kit (tests/test_method_kit.py)."""
    raw = compose_raw([*SMALL_SYNTHETIC, f"strategy={name}", "num_rounds=2", *extra], tmp_path)
    summary = run(parse(raw))
    check_result_files(tmp_path, summary, 2)
    assert summary["strategy"] == name and summary["rejected"] == []
    assert all(math.isfinite(v) for m in summary["final"].values() for v in m.values())
    on_server = extra == ["strategy.balancing=both"]
    for row in (r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"):
        weights = [m["weight"] for m in row["metrics"].values() if "weight" in m]
        assert len(weights) == (len(summary["tasks"]) if on_server else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mgda", "upgrad", "famo"])
def test_balancing_learns_competing_synthetic_tasks(tmp_path: Path, name: str) -> None:
    """Planted groups competing for the preset's narrow trunk ([32, 4]), silos holding 3 of 6
    tasks: each method learns every task with one shared trunk.

    The weights sum to one, so the server learning rate is 3 (k = 3 tasks per silo) to take steps
    as long as FedAvg's (docs/balancing.md, "Step size"). The narrow shared trunk learns slowly
    (MGDA is still near chance on some tasks after 8 rounds, or with fewer samples), hence the
    full dataset and 12 rounds. Only learning is asserted; how the methods compare is measured by
    ``benchmarks/compare_balancing.py``, not tuned into this test.
    """
    overrides = [
        "experiment=synthetic_groups",
        f"strategy={name}",
        "strategy.server_optimizer.lr=3.0",
        "strategy.evaluate_every=4",
        "runtime=inprocess",
        "tracking=quiet",
        "num_rounds=12",
    ]
    summary = run(parse(compose_raw(overrides, tmp_path)))
    assert len(summary["dataset_info"]["planted_groups"]) == 3
    assert beats_chance(summary, margin=0.15) == {}


@pytest.mark.parametrize("dropout", [pytest.param(0.0, marks=pytest.mark.slow), 0.3])
def test_inprocess_run_is_deterministic(tmp_path: Path, dropout: float) -> None:
    """Batch order and dropout masks are seeded per (seed, silo, round): a seed fixes the result."""
    overrides = [
        "runtime=inprocess",
        "tracking=quiet",
        "num_rounds=2",
        "partition.num_silos=5",
        f"model.dropout={dropout}",
    ]
    first = run(parse(compose_raw(overrides, output_dir=tmp_path / "a")))
    second = run(parse(compose_raw(overrides, output_dir=tmp_path / "b")))
    assert first["final"] == second["final"]


def test_a_failing_silo_is_rejected_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A ClientApp that raises on one silo: its replies are rejected and logged, the others train."""
    raw = compose_raw(
        ["runtime=inprocess", "tracking=quiet", "num_rounds=2", "partition.num_silos=4"],
        output_dir=tmp_path,
    )
    config = parse(raw)
    # Silo data is built once per process, so silo 1's training data is this very object.
    device = client_device(config.runtime.name, config.runtime.params)
    node = node_settings({"partition-id": 1, "num-partitions": 4})
    bad_data = silo_rows(config.to_json(), node, "train", device)
    original = silo_side.train_local

    def flaky(model, data, cfg, generator, **kwargs):
        if data is bad_data:
            raise RuntimeError("disk on fire")
        return original(model, data, cfg, generator, **kwargs)

    monkeypatch.setattr(silo_side, "train_local", flaky)
    summary = run(config)
    assert [(r["round"], r["silo"]) for r in summary["rejected"]] == [(1, 1), (2, 1)]
    # the reason stays in the silo's own log: the reply says only that the silo is unavailable
    assert all(client_app.UNAVAILABLE in r["reason"] for r in summary["rejected"])
    assert not any("disk on fire" in r["reason"] for r in summary["rejected"])
    assert summary["rounds"] == 2
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["num_rejected"] for r in train_rows] == [1, 1]
    assert [r["num_updates"] for r in train_rows] == [3, 3]
    finals = [v for metrics in summary["final"].values() for v in metrics.values()]
    assert all(math.isfinite(v) for v in finals)


@pytest.mark.slow
def test_wandb_logs_offline_into_the_run_directory(tmp_path: Path) -> None:
    raw = compose_raw(
        ["experiment=smoke", "tracking.wandb=true", "tracking.wandb_mode=offline"],
        output_dir=tmp_path,
    )
    run(parse(raw))
    offline_runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "the offline run holds no logged data"


@pytest.mark.slow
def test_cli_usage_and_unknown_command() -> None:
    assert "fedmtl run" not in run_fedmtl(["--help"], timeout=60).stderr
    assert "commands:" in run_fedmtl(["--help"], timeout=60).stdout
    unknown = run_fedmtl(["train"], timeout=60)
    assert unknown.returncode == 2
    assert "unknown command 'train'" in unknown.stderr


@pytest.mark.slow
def test_cli_contract_example(tmp_path: Path) -> None:
    """The command from the contract, end to end through Hydra."""
    out = tmp_path / "x"
    result = run_fedmtl(
        [
            "run",
            "dataset=synthetic",
            "strategy=fedavg",
            "runtime=inprocess",
            "num_rounds=3",
            "tracking=quiet",
            f"hydra.run.dir={out}",
        ],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    check_result_files(out, summary, 3)
    assert "results:" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("num_rounds=-1", "num_rounds"),  # refused by the config's checks, inside Hydra's run
        ("runtime.num_gpus=1", "runtime.num_gpus"),  # refused by the runtime's resource check
        ("strategy.weighting=uniform", "strategy.weighting"),  # refused before Hydra's run
    ],
)
def test_cli_rejects_bad_config_before_training(tmp_path: Path, override: str, key: str) -> None:
    """Exit status 2, the key named, and no output directory left behind, for a refusal at each
    stage of ``fedmtl run`` (every key's message is tested in process: tests/test_config.py)."""
    if key == "runtime.num_gpus" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "bad"
    result = run_fedmtl(["run", override, f"hydra.run.dir={out}"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"invalid config: {key}:" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
