"""Benchmarks: :func:`write_run` writes a hand-made run directory (``summary.json``,
``metrics.jsonl``) of :data:`BENCH_TASKS`; :class:`FakeRunner` stands in for
``fedmtl.app.launch.run`` in a bench.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.app.run.scenario import scenario_of
from fedmtl.core.schema import ExperimentConfig, PartitionConfig

BENCH_TASKS = {"a": "multiclass", "r": "regression"}
"""The tasks of hand-made runs: ``a`` (classification: accuracy), ``r`` (regression: MAE)."""


def write_run(
    directory: Path,
    strategy: str,
    seed: int,
    final: Mapping[str, Mapping[str, float]],
    *,
    silos: Mapping[int, Mapping[str, Mapping[str, float]]] | None = None,
    scenario: Mapping[str, Any] | None = None,
    completed: bool = True,
    bench: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """A hand-made run of :data:`BENCH_TASKS` in ``directory``: ``summary.json`` (schema 1) with
    ``final`` (task -> metric -> value) and ``metrics.jsonl`` with a personal line per round
    (round k holds ``final`` times k / rounds) and, at the last round, a line per silo of
    ``silos`` (silo -> task -> metric -> value). Returns the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    task_info = {
        task: {
            "kind": kind,
            "num_classes": 3 if kind == "multiclass" else None,
            "primary_metric": "r2" if kind == "regression" else "accuracy",
            "higher_is_better": True,
            "chance": 0.0,
        }
        for task, kind in BENCH_TASKS.items()
    }
    raw = dict(config or {"dataset": {"name": "hand"}, "num_rounds": rounds, "seed": seed})
    summary: dict[str, Any] = {
        "schema_version": 1,
        "dataset": "hand",
        "strategy": strategy,
        "seed": seed,
        "rounds": rounds,
        "tasks": list(BENCH_TASKS),
        "task_info": task_info,
        "final": {t: dict(m) for t, m in final.items()},
        "bytes_up": 1000 * (seed + 1),
        "bytes_down": 2000,
        "wall_time_s": 1.5,
        "num_silos": len(silos or {}) or 2,
        "global": None,
        "config": raw,
        "scenario": dict(scenario or {"id": "hand000001", "name": "hand", "excluded": []}),
        "delta_mtl": None,
        "status": "completed" if completed else "crashed",
    }
    if bench is not None:
        summary["bench"] = dict(bench)
    lines = [
        {
            "round": k,
            "split": "personal",
            "metrics": {t: {n: v * k / rounds for n, v in m.items()} for t, m in final.items()},
        }
        for k in range(1, rounds + 1)
    ]
    lines += [
        {"round": rounds, "split": "silo", "silo": silo, "metrics": metrics}
        for silo, metrics in (silos or {}).items()
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (directory / "summary.json").write_text(json.dumps(summary))
    return summary


@dataclass
class FakeRunner:
    """Stands in for :func:`fedmtl.app.launch.run` in a bench: writes a completed run of
    :data:`BENCH_TASKS` into the config's ``output_dir`` without training, with accuracy of ``a`` =
    0.5 + ``train.lr`` + 0.01 seed (+ ``bonus[strategy]``) and MAE of ``r`` = 1 - ``train.lr``, and
    records every config. A ``crash`` cell ((strategy, seed, validation?)) writes an incomplete
    summary and raises, as a crashed run does."""

    crash: set[tuple[str, int, bool]] = field(default_factory=set)
    bonus: dict[str, float] = field(default_factory=dict)
    calls: list[ExperimentConfig] = field(default_factory=list)

    def __call__(self, config: ExperimentConfig) -> dict[str, Any]:
        self.calls.append(config)
        validation = isinstance(config.partition, PartitionConfig) and (
            config.partition.validation_fraction > 0
        )
        lr = config.train.lr
        label = config.strategy.params.label(config.strategy.name)  # as summary.json names it
        accuracy = 0.5 + lr + 0.01 * config.seed + self.bonus.get(label, 0.0)
        final = {"a": {"accuracy": accuracy}, "r": {"mae": 1.0 - lr, "r2": 0.01}}
        crashed = (label, config.seed, validation) in self.crash
        summary = write_run(
            Path(config.output_dir),
            label,
            config.seed,
            final,
            config=dict(config.raw),
            scenario=scenario_of(config.raw),
            completed=not crashed,
        )
        if crashed:
            raise RuntimeError("the fake run crashed")
        return summary
