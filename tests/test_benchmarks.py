"""The benchmark scripts run and write their result files (their figures are not asserted)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from fedmtl.runtime import OFFLINE_ENV

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_round_time_writes_csv_and_json(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHMARKS / "round_time.py"),
        "--runtimes", "inprocess", "--silos", "3", "4", "--rounds", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, timeout=300, env={**os.environ, **OFFLINE_ENV})
    with (tmp_path / "round_time.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["runtime"], r["silos"]) for r in rows] == [("inprocess", "3"), ("inprocess", "4")]
    assert all(float(r["wall_time_s"]) > 0 and int(r["bytes_up"]) > 0 for r in rows)
    report = json.loads((tmp_path / "round_time.json").read_text())
    assert len(report["rows"]) == 2 and report["machine"]["cpus"]
