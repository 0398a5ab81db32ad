"""Helpers shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


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
