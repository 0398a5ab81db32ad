"""The scale benchmarks run and write their result files (their figures are not asserted);
``benchmarks/gpu.py`` runs with Flower, Ray, Hydra, OmegaConf and wandb unimportable."""

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
NOT_INSTALLED = ("flwr", "ray", "hydra", "omegaconf", "wandb")

pytestmark = pytest.mark.slow


def run_script(args: list[str], env: dict[str, str] | None = None) -> None:
    command = [sys.executable, *args]
    subprocess.run(
        command, check=True, timeout=600, env={**os.environ, **OFFLINE_ENV, **(env or {})}
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.timeout(600)
def test_scale_writes_csv_and_json(tmp_path: Path) -> None:
    args = [str(BENCHMARKS / "scale.py"), "--silos", "6", "--sampled", "3", "--rows", "8"]
    run_script([*args, "--rounds", "2", "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "scale.csv")
    assert [(r["runtime"], r["silos"]) for r in rows] == [("inprocess", "6"), ("vectorized", "6")]
    assert all(float(r["peak_rss_mb"]) > 0 and float(r["first_round_s"]) > 0 for r in rows)
    report = json.loads((tmp_path / "scale.json").read_text())
    assert "load_avg_start" in report and len(report["rows"]) == 2


@pytest.mark.timeout(600)
def test_overhead_writes_ratios_to_the_bare_loop(tmp_path: Path) -> None:
    args = [str(BENCHMARKS / "overhead.py"), "--silos", "3", "--rows", "8", "--rounds", "3"]
    run_script(
        [*args, "--runtimes", "inprocess", "vectorized", "--no-floor", "--out", str(tmp_path)]
    )
    rows = read_csv(tmp_path / "overhead.csv")
    assert [r["runtime"] for r in rows] == ["bare", "inprocess", "vectorized"]
    assert float(rows[0]["ratio_to_bare"]) == 1.0
    assert all(float(r["round_s"]) > 0 for r in rows)


@pytest.mark.timeout(600)
def test_gpu_benchmark_runs_where_only_torch_is_installed(tmp_path: Path) -> None:
    """Stub packages that fail on import stand in for Flower, Ray, Hydra, OmegaConf, wandb."""
    stubs = tmp_path / "stubs"
    for name in NOT_INSTALLED:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    path = os.pathsep.join([str(stubs), os.environ.get("PYTHONPATH", ""), str(BENCHMARKS.parent)])
    args = [str(BENCHMARKS / "gpu.py"), "--silos", "3", "6", "--rows", "16", "--device", "cpu"]
    run_script([*args, "--sequential", "3", "--out", str(tmp_path)], env={"PYTHONPATH": path})
    rows = read_csv(tmp_path / "gpu.csv")
    assert [r["silos"] for r in rows] == ["3", "6"]
    assert all(float(r["clients_per_s"]) > 0 and r["device"] == "cpu" for r in rows)


@pytest.mark.timeout(600)
def test_transport_compares_half_precision_updates_with_float32(tmp_path: Path) -> None:
    args = [str(BENCHMARKS / "transport.py"), "--seeds", "0", "--rounds", "1", "--overrides"]
    args += ["dataset=synthetic", "dataset.num_samples=600", "partition.num_silos=4"]
    run_script([*args, "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "transport.csv")
    assert [r["update_dtype"] for r in rows] == ["float32", "float16", "bfloat16"]
    assert float(rows[0]["bytes_up_vs_float32"]) == 1.0
    assert all(float(r["bytes_up_vs_float32"]) < 0.55 for r in rows[1:])
