"""Helpers shared by the benchmark scripts: machine description, result files, fresh processes."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

TEST_FRACTION = 0.25
"""The test share of each silo's rows in the synthetic scale runs."""


def synthetic_run(runtime: str, silos: int, rows: int, rounds: int) -> list[str]:
    """Overrides of a quiet synthetic run on ``runtime`` with ``silos`` silos of ``rows``
    training rows each (the dataset grows with the silos, so a silo's work does not change)."""
    samples = math.ceil(silos * rows / (1 - TEST_FRACTION))
    return [
        "dataset=synthetic",
        f"dataset.num_samples={samples}",
        f"partition.num_silos={silos}",
        f"partition.test_fraction={TEST_FRACTION}",
        f"runtime={runtime}",
        "tracking=quiet",
        "tracking.plots=false",
        f"num_rounds={rounds}",
    ]


def machine_info() -> dict[str, Any]:
    """Python, architecture, CPU count, and torch's version, threads and CUDA device."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def write_results(out: Path, stem: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """``out/stem.csv`` (one line per row) and ``out/stem.json`` (machine info, ``extra``, rows)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = {"machine": machine_info(), **extra, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / f'{stem}.csv'}")


def run_json(args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``python ARGS`` in a fresh process (offline environment, this interpreter and
    ``PYTHONPATH``) and return the JSON object its last output line holds."""
    # Flower comes with it: benchmarks/gpu.py, which runs where only torch is installed, uses
    # this module too.
    from fedmtl.app.runtimes import OFFLINE_ENV  # noqa: PLC0415 - imports flwr, not for gpu.py

    env = {**os.environ, **OFFLINE_ENV}
    command = [sys.executable, *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{' '.join(command)} printed no result:\n{result.stdout[-2000:]}")
    value: dict[str, Any] = json.loads(lines[-1])
    return value


def quiet_machine_note() -> dict[str, Any]:
    """The 1-minute load average at the start of a timing run (timings mean little above ~0.5 on
    a shared machine), and a warning on stderr when it is high."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: timings will be noisy", file=sys.stderr)
    return {"load_avg_start": round(load, 2)}
