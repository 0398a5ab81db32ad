"""``fedmtl report`` on hand-written ``summary.json`` / ``metrics.jsonl`` files: the tables' numbers
against hand computation and scipy, what is left out, a missing reference."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats

from fedmtl.app.bench.records import CELL_FILE, CellRecord, write_cell
from fedmtl.app.bench.report import build_report, main
from fedmtl.core.errors import ConfigError
from tests.support.bench import write_run

SEEDS = (0, 1, 2)
REFERENCE = {0: (0.80, 0.40), 1: (0.82, 0.42), 2: (0.78, 0.38)}  # single_task: accuracy, MAE
MGDA_GAIN = {0: 0.04, 1: 0.08, 2: 0.06}  # mgda's accuracy over single_task; its MAE is 0.02 lower
HAND = {"id": "hand000001", "name": "hand", "excluded": []}
OTHER = {"id": "other00001", "name": "other", "excluded": []}


def metrics(accuracy: float, mae: float) -> dict[str, dict[str, float]]:
    return {"a": {"accuracy": accuracy, "loss": 0.5}, "r": {"mae": mae, "r2": 0.02}}


def silos(accuracy: float, mae: float) -> dict[int, dict[str, dict[str, float]]]:
    """Two silos around the pooled values: accuracy +-0.1, MAE +-0.05."""
    return {
        0: metrics(accuracy + 0.1, mae - 0.05),
        1: metrics(accuracy - 0.1, mae + 0.05),
    }


def mgda_values(seed: int) -> tuple[float, float]:
    accuracy, mae = REFERENCE[seed]
    return accuracy + MGDA_GAIN[seed], mae - 0.02


def fedavg_values(seed: int) -> tuple[float, float]:
    accuracy, mae = REFERENCE[seed]
    return accuracy + 0.02, mae


def hand_runs(root: Path) -> None:
    """Scenario ``hand``: single_task, fedavg and mgda on 3 seeds; scenario ``other``: fedavg and
    mgda only (mgda with a Delta_MTL a bench stored); plus a crashed run, a tuning run and an
    older duplicate, all to be left out."""
    for seed in SEEDS:
        for strategy, values in (
            ("single_task", REFERENCE[seed]),
            ("fedavg", fedavg_values(seed)),
            ("mgda", mgda_values(seed)),
        ):
            write_run(
                root / "hand" / strategy / f"seed{seed}",
                strategy,
                seed,
                metrics(*values),
                silos=silos(*values),
                scenario=HAND,
            )
        write_run(
            root / "other" / "fedavg" / f"s{seed}",
            "fedavg",
            seed,
            metrics(0.5, 1.0),
            scenario=OTHER,
        )
        stored = write_run(
            root / "other" / "mgda" / f"s{seed}", "mgda", seed, metrics(0.6, 1.0), scenario=OTHER
        )
        stored["delta_mtl"] = 5.0 + seed
        stored["privacy"] = {"mode": "dp_silo", "epsilon": 2.0 + seed, "delta": 1e-5}
        (root / "other" / "mgda" / f"s{seed}" / "summary.json").write_text(json.dumps(stored))
    write_run(root / "crashed", "mgda", 3, metrics(0.1, 9.0), scenario=HAND, completed=False)
    tune = {"suite": "s", "cell": {"phase": "tune", "strategy": "mgda", "tuned": {}}}
    write_run(root / "tune", "mgda", 0, metrics(0.1, 9.0), scenario=HAND, bench=tune)
    old = root / "old" / "fedavg"
    write_run(old, "fedavg", 0, metrics(0.1, 9.0), scenario=HAND)
    os.utime(old / "summary.json", (1.0, 1.0))  # older than the kept fedavg seed-0 run


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def delta(values: tuple[float, float], reference: tuple[float, float]) -> float:
    """Delta_MTL by hand: accuracy higher is better, MAE lower is better."""
    return (
        100
        * ((values[0] - reference[0]) / reference[0] - (values[1] - reference[1]) / reference[1])
        / 2
    )


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, Any]:
    hand_runs(tmp_path / "runs")
    out = tmp_path / "report"
    return out, build_report([tmp_path / "runs"], out, plots=False)


def test_strategy_table_has_delta_mtl_its_ci_and_the_paired_test(report: tuple[Path, Any]) -> None:
    out, _ = report
    rows = {(r["scenario"], r["strategy"]): r for r in read_csv(out / "strategies.csv")}
    mgda = [delta(mgda_values(s), REFERENCE[s]) for s in SEEDS]
    fedavg = [delta(fedavg_values(s), REFERENCE[s]) for s in SEEDS]
    row = rows[("hand", "mgda")]
    assert float(row["delta_mtl_mean"]) == pytest.approx(np.mean(mgda))
    low, high = scipy.stats.t.interval(0.95, 2, loc=np.mean(mgda), scale=scipy.stats.sem(mgda))
    assert float(row["delta_mtl_ci95"]) == pytest.approx((high - low) / 2)
    assert row["test_score"] == "delta_mtl" and row["n_pairs"] == "3"
    assert float(row["p_vs_baseline"]) == pytest.approx(scipy.stats.ttest_rel(mgda, fedavg).pvalue)
    assert float(row["rank"]) == 1.0 and float(rows[("hand", "single_task")]["rank"]) == 3.0
    assert float(rows[("hand", "single_task")]["delta_mtl_mean"]) == 0.0
    assert float(row["bytes_up"]) == pytest.approx(2000.0) and row["n_seeds"] == "3"
    assert rows[("hand", "fedavg")]["p_vs_baseline"] == ""  # not tested against itself


def test_the_privacy_mode_and_the_largest_epsilon_reach_the_report(
    report: tuple[Path, Any],
) -> None:
    out, _ = report
    rows = {(r["scenario"], r["strategy"]): r for r in read_csv(out / "strategies.csv")}
    assert rows[("other", "mgda")]["privacy"] == "dp_silo"
    assert float(rows[("other", "mgda")]["epsilon"]) == 4.0
    assert rows[("other", "fedavg")]["privacy"] == "none"
    assert rows[("other", "fedavg")]["epsilon"] == ""
    text = (out / "report.md").read_text()
    assert "mgda `dp_silo`, epsilon 4.00" in text and text.count("**Privacy**") == 1


def test_task_table_has_spread_silo_quantiles_and_per_task_tests(report: tuple[Path, Any]) -> None:
    out, _ = report
    rows = {(r["scenario"], r["strategy"], r["task"]): r for r in read_csv(out / "tasks.csv")}
    accuracy = [mgda_values(s)[0] for s in SEEDS]
    row = rows[("hand", "mgda", "a")]
    assert row["metric"] == "accuracy" and row["higher_is_better"] == "True"
    assert float(row["mean"]) == pytest.approx(np.mean(accuracy))
    assert float(row["std"]) == pytest.approx(np.std(accuracy, ddof=1))
    assert float(row["worst_silo"]) == pytest.approx(np.mean(accuracy) - 0.1)
    assert float(row["p10_silo"]) == pytest.approx(np.mean(accuracy) - 0.1 + 0.2 * 0.1)
    fedavg_accuracy = [fedavg_values(s)[0] for s in SEEDS]
    expected = scipy.stats.ttest_rel(accuracy, fedavg_accuracy).pvalue
    assert float(row["p_vs_baseline"]) == pytest.approx(expected)
    regression = rows[("hand", "mgda", "r")]
    mae = [mgda_values(s)[1] for s in SEEDS]
    assert regression["metric"] == "mae" and regression["primary_metric"] == "r2"
    assert float(regression["mean"]) == pytest.approx(np.mean(mae))
    assert float(regression["worst_silo"]) == pytest.approx(np.mean(mae) + 0.05)  # the highest MAE


def test_missing_reference_and_left_out_runs_are_reported(report: tuple[Path, Any]) -> None:
    out, result = report
    rows = {(r["scenario"], r["strategy"]): r for r in read_csv(out / "strategies.csv")}
    assert rows[("other", "fedavg")]["delta_mtl_mean"] == ""  # no single_task run there
    assert float(rows[("other", "mgda")]["delta_mtl_mean"]) == pytest.approx(6.0)  # stored ones
    assert rows[("other", "mgda")]["test_score"] == "gain_vs_baseline"
    assert float(rows[("other", "mgda")]["gain_vs_baseline_mean"]) == pytest.approx(10.0)
    text = (out / "report.md").read_text()
    assert "Delta_MTL reference missing" in text and "## Scenario `other`" in text
    reasons = {path.name: reason for path, reason in result.inputs.left_out}
    assert reasons["crashed"].startswith("did not complete")
    assert reasons["tune"].startswith("tuning run")
    assert reasons["fedavg"].startswith("duplicate")  # the older of the two fedavg seed-0 runs
    fedavg = next(r for r in read_csv(out / "tasks.csv") if r["strategy"] == "fedavg")
    assert float(fedavg["mean"]) == pytest.approx(np.mean([fedavg_values(s)[0] for s in SEEDS]))
    assert "paired t-test" in text and "No tuning record" in text


def test_no_run_found_is_an_error_naming_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_report([tmp_path], tmp_path / "out", plots=False)
    assert err.value.key == "DIR"
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2


def test_a_bench_record_beside_the_summary_gives_label_scenario_and_stored_delta(
    tmp_path: Path,
) -> None:
    """A bench's ``bench_cell.json`` (the layout since the run's summary.json stays the run's):
    its label, scenario and Delta_MTL are used, its tuning runs left out; an unreadable one leaves
    its run out. The old layout (the same fields inside summary.json) is the ``report`` fixture."""
    cell = {"phase": "final", "scenario": "s", "strategy": "mgda_lr3", "seed": 0, "point": None}
    for seed in (0, 1):
        directory = tmp_path / "mgda" / f"seed{seed}"
        write_run(directory, "mgda", seed, metrics(0.6, 1.0))  # its own scenario: hand
        record = CellRecord(
            "suite", {**cell, "seed": seed, "tuned": {"train.lr": 0.1}}, None, OTHER
        )
        write_cell(directory, dataclasses.replace(record, delta_mtl=4.0 + seed))
    tune = CellRecord("suite", {**cell, "phase": "tune", "tuned": {}}, None, OTHER)
    write_run(tmp_path / "tune", "mgda", 0, metrics(0.1, 9.0))
    write_cell(tmp_path / "tune", tune)
    write_run(tmp_path / "broken", "mgda", 2, metrics(0.1, 9.0))
    (tmp_path / "broken" / CELL_FILE).write_text("{")
    result = build_report([tmp_path], tmp_path / "out", plots=False)
    rows = read_csv(tmp_path / "out" / "strategies.csv")
    assert [(r["scenario"], r["strategy"], r["n_seeds"]) for r in rows] == [
        ("other", "mgda_lr3", "2")
    ]
    assert float(rows[0]["delta_mtl_mean"]) == pytest.approx(4.5)  # stored by the bench
    assert rows[0]["tuned"] == "train.lr=0.1"
    reasons = {path.name: reason for path, reason in result.inputs.left_out}
    assert (
        reasons["tune"].startswith("tuning run") and reasons["broken"] == f"unreadable {CELL_FILE}"
    )


def test_the_baseline_may_be_a_label_of_a_strategy_listed_twice(tmp_path: Path) -> None:
    """Two entries of one strategy (say FedAvg with two models): ``--baseline`` names a label."""
    from fedmtl.app.bench.report.loading import Run  # noqa: PLC0415 - this test only
    from fedmtl.app.bench.report.tables import _pick  # noqa: PLC0415 - this test only

    def run(label: str) -> Run:
        return Run(tmp_path, {}, "id", "s", label, "fedavg", 0, "run", {}, None, 0.0)

    runs = [run("shared_bottom"), run("mmoe")]
    assert _pick(runs, "shared_bottom") == "shared_bottom"
    assert _pick(runs, "fedavg") == "mmoe"  # the name: its first label
    assert _pick(runs, "upgrad") is None
