"""The runs a report reads: every ``summary.json`` under the given directories, as typed rows.

Every ``summary.json`` is a run (a ``fedmtl bench`` output, a sweep of ``fedmtl run``, or a mix);
a bench's record of it (``bench_cell.json`` beside it, or the same fields in the ``summary.json`` of
older benches: :mod:`fedmtl.app.bench.records`) gives its suite's label, phase, tuned values,
scenario id and stored Delta_MTL. Runs are grouped by scenario (the bench's scenario, else
``summary.json``'s ``scenario``; computed from its config for older runs,
:mod:`fedmtl.app.run.scenario`), strategy (the suite's label, else the strategy's name, with
``@<hash>`` of its config when one name has several configs in a scenario) and seed. Left out, and
listed: runs that did not complete, tuning runs (unless asked for), and duplicates of a
(scenario, strategy, seed) (the newest is kept). The ``tuning.json`` records of benches are read
too.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.app.bench.records import CELL_FILE, TUNING_FILE, read_cell
from fedmtl.app.bench.stats import delta_metric, summary_delta_metrics
from fedmtl.app.run.scenario import scenario_of
from fedmtl.app.run.tracking import METRICS_FILE, SUMMARY_FILE, SUMMARY_SCHEMA_VERSION, read_metrics
from fedmtl.core.errors import ConfigError


@dataclass
class Run:
    """One run directory as the report sees it: its ``summary.json`` and, from a bench's record,
    its label (``strategy``; else the strategy's name), ``phase`` (``run`` outside a bench), tuned
    values and ``stored_delta``, the Delta_MTL the bench computed (None outside a bench)."""

    directory: Path
    summary: dict[str, Any]
    scenario_id: str
    scenario_name: str
    strategy: str
    strategy_name: str
    seed: int
    phase: str
    tuned: dict[str, Any]
    stored_delta: float | None
    mtime: float

    @property
    def metrics(self) -> dict[str, float]:
        """Task -> final Delta metric (pooled over the silos' own test splits)."""
        return summary_delta_metrics(self.summary)[0]

    @functools.cached_property
    def lines(self) -> list[dict[str, Any]]:
        """The run's ``metrics.jsonl`` lines (none when the file is missing), read once."""
        path = self.directory / METRICS_FILE
        return read_metrics(path) if path.exists() else []

    @functools.cached_property
    def silo_values(self) -> dict[str, list[float]]:
        """Task -> each holding silo's Delta metric at the last evaluated round (metrics.jsonl)."""
        lines = [r for r in self.lines if r.get("split") == "silo"]
        if not lines:
            return {}
        last = max(r["round"] for r in lines)
        values: dict[str, list[float]] = defaultdict(list)
        for line in lines:
            if line["round"] != last:
                continue
            for task, metrics in line["metrics"].items():
                metric, _ = delta_metric(self.summary["task_info"][task])
                if metric in metrics:
                    values[task].append(float(metrics[metric]))
        return dict(values)

    @functools.cached_property
    def simulated_clock(self) -> dict[int, float]:
        """Round -> the virtual clock's simulated seconds at its end (metrics.jsonl's
        ``simulated_clock_s``; empty for runs not timed)."""
        return {
            int(line["round"]): float(line["simulated_clock_s"])
            for line in self.lines
            if line.get("split") == "train" and line.get("simulated_clock_s") is not None
        }

    def time_to(self, targets: Mapping[str, float]) -> float | None:
        """The simulated seconds at the end of the first evaluated round whose Delta metric
        reaches ``targets[task]`` for every task (None: never, or no simulated time)."""
        curves, clock = self.curve(), self.simulated_clock
        info = self.summary["task_info"]
        for server_round in sorted(clock):
            reached = [
                _reaches(curves.get(task, {}).get(server_round), target, info[task])
                for task, target in targets.items()
            ]
            if targets and all(reached):
                return clock[server_round]
        return None

    def curve(self) -> dict[str, dict[int, float]]:
        """Task -> round -> Delta metric on the personal split (metrics.jsonl)."""
        curves: dict[str, dict[int, float]] = defaultdict(dict)
        for line in self.lines:
            if line.get("split") != "personal":
                continue
            for task, metrics in line["metrics"].items():
                metric, _ = delta_metric(self.summary["task_info"][task])
                if metric in metrics:
                    curves[task][int(line["round"])] = float(metrics[metric])
        return dict(curves)


def _reaches(value: float | None, target: float, task_info: Mapping[str, Any]) -> bool:
    """Whether a Delta metric's ``value`` (None: not evaluated) is at least as good as ``target``."""
    if value is None:
        return False
    return value >= target if delta_metric(task_info)[1] else value <= target


@dataclass
class Inputs:
    """The runs found, and those left out with the reason."""

    runs: list[Run]
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    tuning: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)


def find_summaries(dirs: Iterable[Path]) -> list[Path]:
    """Every ``summary.json`` under ``dirs`` (each may be a run directory itself), sorted."""
    found: set[Path] = set()
    for directory in dirs:
        if not directory.exists():
            raise ConfigError(
                "DIR", f"'{directory}' does not exist.", "give directories holding runs."
            )
        if directory.is_file() and directory.name == SUMMARY_FILE:
            found.add(directory.resolve())
        found.update(p.resolve() for p in directory.rglob(SUMMARY_FILE))
    return sorted(found)


def _strategy_hash(summary: Mapping[str, Any]) -> str:
    text = json.dumps(summary.get("config", {}).get("strategy"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def load_runs(dirs: Iterable[Path], include_tuning: bool = False) -> Inputs:
    """The runs under ``dirs`` (module docstring: grouping, what is left out and why)."""
    inputs = Inputs(runs=[])
    candidates: list[Run] = []
    for path in find_summaries(dirs):
        directory = path.parent
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            inputs.left_out.append((directory, f"unreadable summary.json ({err})"))
            continue
        reason = _unusable(summary)
        if reason:
            inputs.left_out.append((directory, reason))
            continue
        record = read_cell(directory, summary)
        if record is None and (directory / CELL_FILE).exists():
            inputs.left_out.append((directory, f"unreadable {CELL_FILE}"))
            continue
        cell = record.cell if record is not None else {}
        phase = cell.get("phase", "run")
        if phase == "tune" and not include_tuning:
            inputs.left_out.append((directory, "tuning run (validation partition)"))
            continue
        stored = record.delta_mtl if record is not None else summary.get("delta_mtl")
        scenario = (
            (record.scenario if record is not None else None)
            or summary.get("scenario")
            or scenario_of(summary.get("config", {}))
        )
        candidates.append(
            Run(
                directory=directory,
                summary=summary,
                scenario_id=str(scenario["id"]),
                scenario_name=str(scenario["name"]),
                strategy=str(cell.get("strategy") or summary["strategy"]),
                strategy_name=str(summary["strategy"]),
                seed=int(summary["seed"]),
                phase=phase,
                tuned=dict(cell.get("tuned") or {}),
                stored_delta=None if stored is None else float(stored),
                mtime=path.stat().st_mtime,
            )
        )
    _disambiguate(candidates)
    newest: dict[tuple[str, str, int], Run] = {}
    for run in sorted(candidates, key=lambda r: r.mtime):
        key = (run.scenario_id, run.strategy, run.seed)
        if key in newest:
            older = newest[key]
            inputs.left_out.append((older.directory, f"duplicate of {run.directory} (older)"))
        newest[key] = run
    inputs.runs = sorted(newest.values(), key=lambda r: (r.scenario_name, r.strategy, r.seed))
    for directory in dirs:
        for path in sorted(Path(directory).rglob(TUNING_FILE)):
            try:
                inputs.tuning.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                inputs.left_out.append((path, "unreadable tuning.json"))
    return inputs


def _unusable(summary: Any) -> str | None:
    """Why a summary cannot be used, or None."""
    if not isinstance(summary, dict):
        return "summary.json is not a mapping"
    if summary.get("schema_version") != SUMMARY_SCHEMA_VERSION:
        return f"summary schema_version {summary.get('schema_version')!r}, not {SUMMARY_SCHEMA_VERSION}"
    for key in ("strategy", "seed", "tasks", "task_info", "final"):
        if key not in summary:
            return f"summary.json lacks '{key}'"
    status = summary.get("status")
    if status is None:  # written before status existed: complete when every round ran
        completed = summary.get("rounds") == summary.get("config", {}).get("num_rounds")
        status = "completed" if completed else "unknown"
    if status != "completed":
        return f"did not complete (status: {status})"
    return None


def _disambiguate(runs: list[Run]) -> None:
    """Runs outside a suite whose strategy name has several configs in a scenario get labelled
    ``name@<hash of the strategy config>``."""
    variants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in runs:
        if run.phase == "run":
            variants[(run.scenario_id, run.strategy)].add(_strategy_hash(run.summary))
    for run in runs:
        if run.phase == "run" and len(variants[(run.scenario_id, run.strategy)]) > 1:
            run.strategy = f"{run.strategy}@{_strategy_hash(run.summary)}"
