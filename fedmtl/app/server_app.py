"""The Flower ServerApp: wires the experiment's config, model, strategy and result files.

The same app runs on every runtime: in-process, Flower's simulation engine, or a SuperLink.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedmtl.app.experiment import Experiment, cached_experiment, config_json_from
from fedmtl.app.tracking import PARTITION_FILE, SUMMARY_SCHEMA_VERSION, Tracker
from fedmtl.core import records
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import evaluate
from strategies import TaskAwareStrategy

log = logging.getLogger("fedmtl")


def run_server(grid: Grid, experiment: Experiment) -> dict[str, Any]:
    """Train for ``num_rounds`` on ``grid``, write the result files and return the summary."""
    cfg = experiment.config
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    experiment.partition.save(output_dir / PARTITION_FILE)
    tasks = list(experiment.dataset.tasks)
    tracker = Tracker(
        output_dir,
        cfg.tracking,
        tasks,
        cfg.num_rounds,
        run_config=dict(cfg.raw),
        run_name=f"{cfg.dataset.name}-{cfg.strategy.name}-seed{cfg.seed}",
    )
    strategy = experiment.new_strategy(observers=[tracker])
    model = experiment.new_model(strategy.model_groups)
    initial = records.to_array_record(records.state_arrays(model, model.exchanged_keys()))
    global_eval = GlobalEvaluator(experiment, tracker, strategy)
    started = time.perf_counter()
    try:
        strategy.start(
            grid,
            initial,
            num_rounds=cfg.num_rounds,
            timeout=strategy.params.reply_timeout_s,
            evaluate_fn=global_eval
            if global_eval.num_samples and strategy.has_global_model
            else None,
        )
    finally:
        summary = build_summary(experiment, strategy, time.perf_counter() - started)
        summary["global"] = global_eval.summary(experiment.dataset.tasks)
        strategy.write_artifacts(output_dir, plots=cfg.tracking.plots)
        tracker.finish(summary)
    return summary


class GlobalEvaluator:
    """Server-side evaluation of the global model on the partition's global held-out test set.

    Called by the strategy after every round (Flower's ``evaluate_fn``); it evaluates on the
    strategy's schedule (every ``evaluate_every`` rounds and the last), each task over the rows
    of the set labelled for it, with every task's head (on its group's trunk when the strategy's
    model has one trunk per task group); it hands the metrics to the tracker (split ``global``)
    and keeps their history for the summary.
    """

    def __init__(
        self, experiment: Experiment, tracker: Tracker, strategy: TaskAwareStrategy
    ) -> None:
        self.experiment = experiment
        self.data = experiment.global_test_data()
        self.num_samples = self.data.num_samples
        self.strategy = strategy
        self.tracker = tracker
        self.evaluate_every = strategy.params.evaluate_every
        self._models: dict[str, MultiTaskModel] = {}  # one per task grouping the run has used
        self.num_rounds = experiment.config.num_rounds
        self.tasks = {t.name: t for t in experiment.dataset.tasks}
        self.history: list[tuple[int, dict[str, dict[str, float]]]] = []

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round % self.evaluate_every and server_round != self.num_rounds:
            return None
        groups = self.strategy.model_groups
        key = json.dumps(groups, sort_keys=True)
        if key not in self._models:
            self._models[key] = self.experiment.new_model(groups)
        model = self._models[key]
        records.load_arrays(model, records.from_array_record(arrays))
        sums = evaluate(model, self.data)
        metrics = {
            task: self.tasks[task].finalize_metrics(task_sums)
            for task, task_sums in sums.items()
            if task_sums.get("n", 0) > 0
        }
        self.history.append((server_round, metrics))
        self.tracker.record_global(server_round, metrics)
        return records.flat_task_metrics(metrics)

    def summary(self, tasks: Sequence[TaskSpec]) -> dict[str, Any] | None:
        """``summary.json``'s ``global``: ``num_samples``, ``final``, ``final_round``, ``best``
        (None without a global test set)."""
        if not self.num_samples:
            return None
        return {
            "num_samples": self.num_samples,
            "final": self.history[-1][1] if self.history else {},
            "final_round": self.history[-1][0] if self.history else None,
            "best": best_per_task([m for _, m in self.history], tasks),
        }


def build_summary(
    experiment: Experiment, strategy: TaskAwareStrategy, wall_time_s: float
) -> dict[str, Any]:
    """The contents of ``summary.json`` (see the README for each field)."""
    cfg = experiment.config
    dataset = experiment.dataset
    chance = dataset.chance_levels()
    evaluated = [r for r in strategy.history if r.personal is not None]
    final = evaluated[-1].personal if evaluated else {}
    task_info = {t.name: {**t.info(), "chance": chance[t.name]} for t in dataset.tasks}
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "dataset": cfg.dataset.name,
        "strategy": cfg.strategy.name,
        "runtime": cfg.runtime.name,
        "seed": cfg.seed,
        "rounds": len(strategy.history),
        "tasks": dataset.task_names,
        "task_info": task_info,
        "final": final,
        "final_round": evaluated[-1].server_round if evaluated else None,
        "best": best_per_task([r.personal for r in evaluated if r.personal], dataset.tasks),
        "bytes_up": int(strategy.bytes_up),
        "bytes_down": int(strategy.bytes_down),
        "wall_time_s": float(wall_time_s),
        "num_silos": len(experiment.partition.silos),
        "holders": {t: experiment.partition.holders(t) for t in dataset.task_names},
        "rejected": strategy.rejections,
        **strategy.results(),
        "dataset_info": dataset.info,
        "config": dict(cfg.raw),
    }


def best_per_task(
    history: Sequence[dict[str, dict[str, float]]], tasks: Sequence[TaskSpec]
) -> dict[str, float]:
    """Per task, the best primary metric over the evaluated rounds' metrics in ``history``."""
    best: dict[str, float] = {}
    for task in tasks:
        metric = task.primary_metric
        values = [m[task.name][metric.name] for m in history if task.name in m]
        if values:
            best[task.name] = max(values) if metric.higher_is_better else min(values)
    return best


def make_server_app(default_config_json: str | None = None) -> ServerApp:
    """The ServerApp; the experiment config comes from the run config, else ``default_config_json``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        experiment = cached_experiment(config_json_from(context.run_config, default_config_json))
        run_server(grid, experiment)

    return app


app = make_server_app()
"""The ServerApp for deployment (``flwr run``): the config comes from the run config."""
