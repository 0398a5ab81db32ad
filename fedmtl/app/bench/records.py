"""The files a bench writes, and the one place that reads them back (``fedmtl bench`` resuming,
``fedmtl report`` grouping).

A run's ``summary.json`` is the run's own: the bench reads it and never writes it. What the bench
knows about the run goes beside it, into ``bench_cell.json`` (:class:`CellRecord`): the suite, the
cell of its grid (phase, scenario, strategy label, seed, tuned values, grid point), the suite's
Delta_MTL reference, the scenario id as the suite defines it (its tuned keys left out), and the
run's Delta_MTL against the reference run of the same scenario and seed (null until that run
exists) with that run's directory. Run directories a bench wrote before ``bench_cell.json``
existed hold the same fields inside ``summary.json`` (``bench``: suite, cell, reference; then
``scenario``, ``delta_mtl``, ``delta_mtl_reference``); :func:`read_cell` reads them there.

The bench's output directory holds ``bench.json`` (the suite, provenance, every run's status) and
``tuning.json`` (the tuning record).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmtl.app.run.tracking import SUMMARY_FILE

CELL_FILE = "bench_cell.json"
BENCH_FILE = "bench.json"
TUNING_FILE = "tuning.json"


@dataclass(frozen=True)
class CellRecord:
    """What a bench records about one of its runs (``bench_cell.json``, module docstring)."""

    suite: str
    cell: dict[str, Any]
    reference: str | None
    scenario: dict[str, Any] | None
    delta_mtl: float | None = None
    delta_mtl_reference: str | None = None


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (a crash leaves the old file or the new)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str))
    temporary.replace(path)


def read_mapping(path: Path) -> dict[str, Any] | None:
    """The JSON mapping in ``path``, or None when it is missing, unreadable or not a mapping."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_summary(directory: Path) -> dict[str, Any] | None:
    """``directory/summary.json``, or None when it is missing or unreadable."""
    return read_mapping(directory / SUMMARY_FILE)


def write_cell(directory: Path, record: CellRecord) -> None:
    """Write ``record`` to ``directory/bench_cell.json``."""
    write_json(directory / CELL_FILE, dataclasses.asdict(record))


def read_cell(directory: Path, summary: Mapping[str, Any] | None = None) -> CellRecord | None:
    """The bench's record of the run in ``directory``: its ``bench_cell.json``, else the fields an
    older bench wrote into the run's ``summary`` (when given); None for a run no bench recorded,
    or a ``bench_cell.json`` that cannot be read."""
    data = read_mapping(directory / CELL_FILE)
    if data is None and summary is not None and isinstance(summary.get("bench"), Mapping):
        block = summary["bench"]
        data = {
            "suite": block.get("suite"),
            "cell": block.get("cell"),
            "reference": block.get("reference"),
            **{k: summary.get(k) for k in ("scenario", "delta_mtl", "delta_mtl_reference")},
        }
    if data is None or not isinstance(data.get("cell"), dict):
        return None
    return CellRecord(
        suite=str(data.get("suite")),
        cell=dict(data["cell"]),
        reference=data.get("reference"),
        scenario=data.get("scenario"),
        delta_mtl=data.get("delta_mtl"),
        delta_mtl_reference=data.get("delta_mtl_reference"),
    )
