"""``fedmtl partition`` (the command's contract) and a training run on a skewed partition with a
global held-out test set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from partitions.manifest import SCHEMA_VERSION
from partitions.stats import TABLE_WIDTH
from tests.support.runs import beats_chance, compose_raw, read_jsonl, run_fedmtl


@pytest.mark.slow
def test_partition_command_writes_the_manifest_stats_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = run_fedmtl(
        ["partition", "dataset=digits", "partition=dirichlet_0.5", f"hydra.run.dir={out}"],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "partition.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["dataset"] == "digits"
    assert len(manifest["silos"]) == 10 and len(manifest["global_test_indices"]) == 180
    for silo in manifest["silos"]:
        assert {"id", "tasks", "num_train", "num_test", "train_indices", "test_indices"} <= set(
            silo
        )
    with (out / "partition_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["silo"]) for r in rows] == list(range(10))
    assert {"tasks", "num_train", "num_test", "labelled_digit", "js_digit", "js_ink"} <= set(
        rows[0]
    )
    assert all(0.0 <= float(r["js_digit"]) <= 1.0 for r in rows)
    assert [int(r["num_train"]) for r in rows] == [s["num_train"] for s in manifest["silos"]]
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert "mean JS" in result.stdout and "magnitude" in result.stdout  # the tables
    assert max(len(line) for line in result.stdout.splitlines()) <= TABLE_WIDTH
    assert not (out / "metrics.jsonl").exists()  # nothing was trained


@pytest.mark.slow
def test_partition_command_rejects_a_bad_config(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    result = run_fedmtl(["partition", "partition=natural_id", f"hydra.run.dir={out}"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "invalid config: partition.split.column:" in result.stderr
    assert "Fix:" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_run_on_a_skewed_partition_reports_the_global_test_set(tmp_path: Path) -> None:
    """Dirichlet(0.5) label skew, missing labels and noise; the server evaluates the global model
    on the held-out 10% each evaluation round and it beats chance on every task."""
    num_rounds = 5
    raw = compose_raw(
        [
            "runtime=inprocess",
            "tracking=quiet",
            "partition=dirichlet_0.5",
            "+partition.missing_labels.rate=0.2",
            "+partition.feature_skew.name=noise",
            f"num_rounds={num_rounds}",
        ],
        output_dir=tmp_path,
    )
    summary = run(parse(raw))
    held_out = summary["global"]
    assert held_out["num_samples"] == 180 and held_out["final_round"] == num_rounds
    assert set(held_out["final"]) == set(summary["tasks"])
    assert set(held_out["best"]) == set(summary["tasks"])
    global_rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "global"]
    assert [r["round"] for r in global_rows] == list(range(1, num_rounds + 1))
    assert global_rows[-1]["metrics"] == held_out["final"]
    assert beats_chance({**summary, "final": held_out["final"]}, margin=0.2) == {}
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
