"""The benchmark scripts run and write their result files (their figures are not asserted)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmtl.app.runtimes import OFFLINE_ENV

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def test_round_time_writes_csv_and_json(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "round_time.py"),
        "--runtimes", "inprocess", "--silos", "3", "--rounds", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "round_time.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["runtime"], r["silos"]) for r in rows] == [("inprocess", "3")]
    assert all(float(r["wall_time_s"]) > 0 and int(r["bytes_up"]) > 0 for r in rows)
    assert float(rows[0]["median_later_round_s"]) > 0  # two rounds: a later one is measured
    report = json.loads((tmp_path / "round_time.json").read_text())
    assert len(report["rows"]) == 1 and report["machine"]["cpus"]


def test_balancing_time_writes_csv_and_json(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "balancing_time.py"), "--methods", "mean", "mgda", "famo",
        "--tasks", "2", "3", "--dims", "100", "2e3", "--repeats", "1", "--max-gb", "2e-5",
        "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "balancing_time.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # 3 x 2e3 float32 = 24 kB > 2e-5 GB: that cell is skipped
    cells = [(r["method"], r["tasks"], r["dim"]) for r in rows]
    assert cells == [
        (m, t, d) for d, ts in (("100", ("2", "3")), ("2000", ("2",))) for t in ts
        for m in ("mean", "mgda", "famo")
    ]  # fmt: skip
    assert all(float(r["call_s"]) > 0 for r in rows)
    assert float(rows[1]["gramian_s"]) > 0 and float(rows[0]["gramian_s"]) == 0
    report = json.loads((tmp_path / "balancing_time.json").read_text())
    assert len(report["rows"]) == 9 and report["machine"]["cpus"] and report["machine"]["torch"]
    assert report["skipped"] == [{"tasks": 3, "dim": 2000}]


def test_compare_balancing_writes_rows_and_plot(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "compare_balancing.py"), "--strategies", "fedavg", "mgda",
        "--seeds", "0", "--rounds", "1", "--server-lrs", "1", "2", "--out", str(tmp_path),
        "--overrides", "dataset.num_samples=600", "partition.num_silos=4",
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "compare_balancing.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["strategy"], r["server_lr"]) for r in rows] == [
        ("fedavg", "1.0"), ("fedavg", "2.0"), ("mgda", "1.0"), ("mgda", "2.0")
    ]  # fmt: skip
    assert float(rows[0]["gain_vs_fedavg_pct"]) == 0.0  # fedavg against itself
    assert all(0.0 <= float(r["final_t0"]) <= 1.0 for r in rows)
    assert int(rows[2]["bytes_up"]) > int(rows[0]["bytes_up"])  # per-task uploads cost more
    report = json.loads((tmp_path / "compare_balancing.json").read_text())
    assert report["setting"]["overrides"] == ["dataset.num_samples=600", "partition.num_silos=4"]
    assert (tmp_path / "compare_balancing.png").stat().st_size > 1000


def test_grouping_time_writes_rows_and_plot(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "grouping_time.py"), "--tasks", "4", "6",
        "--methods", "milp", "tag", "--formulations", "columns", "--settings", "free", "size",
        "--repeats", "1",
        "--time-limit", "30", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "grouping_time.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["tasks"], r["method"], r["setting"]) for r in rows] == [
        (t, m, s) for t in ("4", "6") for m in ("milp", "tag") for s in ("free", "size")
    ]
    assert all(float(r["seconds"]) > 0 and r["optimal"] == "True" for r in rows)
    # the MILP finds the planted blocks (+1 inside, -0.5 across, small noise)
    assert all(r["recovered"] == "True" for r in rows if r["method"] == "milp")
    report = json.loads((tmp_path / "grouping_time.json").read_text())
    assert len(report["rows"]) == 8 and report["skipped"] == [] and report["time_limit_s"] == 30
    assert (tmp_path / "grouping_time.png").stat().st_size > 1000


def test_compare_grouping_writes_groups_ari_and_plot(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "compare_grouping.py"), "--affinities", "tag",
        "--references", "planted", "crossed", "--seeds", "0", "--rounds", "2", "--warmup", "1",
        "--out", str(tmp_path),
        "--overrides", "dataset.num_samples=600", "partition.num_silos=4",
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "compare_grouping.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["strategy"], r["affinity"]) for r in rows] == [
        ("fedavg", "all_in_one"), ("grouping", "planted"), ("grouping", "crossed"),
        ("grouping", "tag"),
    ]  # fmt: skip
    assert float(rows[1]["ari"]) == 1.0  # the planted groups, given
    assert rows[2]["groups"] == "t0,t3 | t1,t4 | t2,t5" and float(rows[2]["ari"]) < 0
    assert float(rows[0]["gain_vs_all_in_one_pct"]) == 0.0 and float(rows[0]["ari"]) == 0.0
    found = [g.split(",") for g in rows[3]["groups"].split(" | ")]
    assert sorted(t for g in found for t in g) == [f"t{i}" for i in range(6)]
    assert -1.0 <= float(rows[3]["ari"]) <= 1.0
    report = json.loads((tmp_path / "compare_grouping.json").read_text())
    planted = next(s for s in report["summary"] if s["affinity"] == "planted")
    assert planted["ari"] == [1.0] and planted["ari_is_1_on_every_seed"]
    assert set(planted) >= {"gain_mean_pct", "gain_std_pct", "gain_at_least_twice_std"}
    assert (tmp_path / "compare_grouping.png").stat().st_size > 1000


def test_reference_scores_write_rows_and_keep_other_datasets(tmp_path: Path) -> None:
    """One epoch on MultiMNIST's preset split; rows of a dataset not measured are kept."""
    fields = ["dataset", "task", "kind", "metric", "score", "chance", "train_rows", "test_rows"]
    fields += ["model", "optimizer", "epochs", "seed", "seconds"]
    kept = {**dict.fromkeys(fields, 1), "dataset": "elsewhere"}
    (tmp_path / "reference_scores.json").write_text(json.dumps({"rows": [kept]}))
    command = [
        sys.executable, str(BENCHMARKS / "reference_scores.py"), "--datasets", "multimnist",
        "--epochs", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=600, env={**os.environ, **OFFLINE_ENV})
    report = json.loads((tmp_path / "reference_scores.json").read_text())
    rows = report["rows"]
    assert rows[0] == kept
    assert [(r["dataset"], r["task"]) for r in rows[1:]] == [
        ("multimnist", "left"), ("multimnist", "right")
    ]  # fmt: skip
    for row in rows[1:]:
        assert row["train_rows"] == 12000 and row["test_rows"] == 3000
        assert row["score"] > row["chance"] + 0.3  # one epoch on 12,000 composites


def test_preset_times_writes_cpu_and_wall_seconds_and_rounds(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "preset_times.py"), "--presets", "smoke",
        "--overrides", "num_rounds=2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "preset_times.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["preset"], r["rounds"]) for r in rows] == [("smoke", "2")]
    row = rows[0]
    assert float(row["cpu_s"]) == pytest.approx(
        float(row["user_s"]) + float(row["sys_s"]), abs=0.11
    )
    assert float(row["cpu_s"]) > 0 and float(row["wall_s"]) > 0 and int(row["mb_up"]) >= 0
    report = json.loads((tmp_path / "preset_times.json").read_text())
    assert report["omp_num_threads"] == 1 and report["overrides"] == ["num_rounds=2"]
    tasks = set(report["final"]["smoke"]["personal"])
    assert tasks == {"digit", "parity", "magnitude", "loops", "ink"}


def test_faults_writes_a_row_per_defence_fault_and_share(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "faults.py"), "--settings", "digits",
        "--defences", "none", "trimmed", "--faults", "scale", "stale", "--fractions", "0.3",
        "--rounds", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=600, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "faults.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["defence"], r["fault"], r["fraction"]) for r in rows] == [
        ("none", "none", "0.0"), ("none", "scale", "0.3"), ("none", "stale", "0.3"),
        ("trimmed", "none", "0.0"), ("trimmed", "scale", "0.3"), ("trimmed", "stale", "0.3"),
    ]  # fmt: skip
    assert {r["faulty_silos"] for r in rows if r["fault"] != "none"} == {"0 5 8"}
    assert rows[0]["status"] == "completed" and rows[1]["status"] == "diverged"
    report = json.loads((tmp_path / "faults.json").read_text())
    assert report["setting"]["silos"] == {"digits": 10} and len(report["details"]) == 6
    assert set(report["details"][0]["final"]) == {"digit", "parity", "magnitude", "loops", "ink"}
    assert (tmp_path / "faults.png").stat().st_size > 1000


def test_mmoe_central_writes_rows_and_a_summary(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "mmoe_central.py"),
        "--rhos", "0.5", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "mmoe_central.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("shared_bottom", "0"), ("shared_bottom", "1"), ("mmoe", "0"), ("mmoe", "1"),
    ]  # fmt: skip
    summary = json.loads((tmp_path / "mmoe_central.json").read_text())["summary"]
    assert {(s["model"], s["n"]) for s in summary} == {("shared_bottom", 2), ("mmoe", 2)}


def test_fedcmoo_writes_a_row_per_variant_and_seed_and_the_means(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "fedcmoo.py"), "--seeds", "0", "--rounds", "1",
        "--silos", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "fedcmoo.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    variants = ["fedavg", "upgrad", "fedcmoo", "fedcmoo_topk", "fedcmoo_exact", "fedmgda_plus"]
    assert [(r["strategy"], r["seed"]) for r in rows] == [
        *((v, "0") for v in variants),
        *((v, "mean") for v in variants),
    ]
    upgrad = next(r for r in rows if r["strategy"] == "upgrad")
    assert float(upgrad["bytes_up_vs_upgrad"]) == 1.0
    fedcmoo = next(r for r in rows if r["strategy"] == "fedcmoo")
    assert float(fedcmoo["bytes_up_vs_upgrad"]) < 1.0  # every silo labels all 6 tasks
