"""The Flower ServerApp: wires the experiment's config, model, strategy and result files.

The same app runs on every runtime: in-process, Flower's simulation engine, or a SuperLink.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmtl import records
from fedmtl.experiment import Experiment, cached_experiment, config_json_from
from fedmtl.tracking import PARTITION_FILE, Tracker
from strategies import STRATEGIES, TaskAwareStrategy

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
    strategy_cls = STRATEGIES.get(cfg.strategy.name).factory
    strategy: TaskAwareStrategy = strategy_cls(
        cfg.strategy.params, tasks, cfg.train, seed=cfg.seed, observers=[tracker]
    )
    model = experiment.new_model()
    initial = records.to_array_record(records.state_arrays(model, model.exchanged_keys()))
    started = time.perf_counter()
    try:
        strategy.start(
            grid, initial, num_rounds=cfg.num_rounds, timeout=strategy.params.reply_timeout_s
        )
    finally:
        summary = build_summary(experiment, strategy, time.perf_counter() - started)
        tracker.finish(summary)
    return summary


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
        "dataset": cfg.dataset.name,
        "strategy": cfg.strategy.name,
        "runtime": cfg.runtime.name,
        "seed": cfg.seed,
        "rounds": len(strategy.history),
        "tasks": dataset.task_names,
        "task_info": task_info,
        "final": final,
        "final_round": evaluated[-1].server_round if evaluated else None,
        "best": _best(strategy, dataset.tasks),
        "bytes_up": int(strategy.bytes_up),
        "bytes_down": int(strategy.bytes_down),
        "wall_time_s": float(wall_time_s),
        "num_silos": len(experiment.partition.silos),
        "holders": {t: experiment.partition.holders(t) for t in dataset.task_names},
        "rejected": strategy.rejections,
        "dataset_info": dataset.info,
        "config": dict(cfg.raw),
    }


def _best(strategy: TaskAwareStrategy, tasks: Any) -> dict[str, float]:
    """Per task, the best primary metric over the evaluated rounds."""
    best: dict[str, float] = {}
    for task in tasks:
        metric = task.primary_metric
        values = [
            r.personal[task.name][metric.name]
            for r in strategy.history
            if r.personal and task.name in r.personal
        ]
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
