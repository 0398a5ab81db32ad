"""The Flower ServerApp: wires the experiment's config, model, strategy and result files.

The same app runs on every runtime: in-process, Flower's simulation engine, or a SuperLink. Started
by ``flwr run`` (the config comes from the run config), it writes its results to
``<output_dir>/<run id>/`` (a directory it creates: a run never overwrites another's results) and
sends fedmtl's log, one INFO line per round instead of a progress bar, to Flower's log stream
(``flwr run --stream``, ``flwr log``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import console_handler
from flwr.serverapp import Grid, ServerApp

from fedmtl.app.run.checkpoint import (
    RunState,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
    save_model,
    should_checkpoint,
)
from fedmtl.app.run.experiment import CONFIG_KEY, Experiment, cached_experiment, config_json_from
from fedmtl.app.run.lock import run_lock
from fedmtl.app.run.provenance import provenance
from fedmtl.app.run.scenario import scenario_of
from fedmtl.app.run.tracking import PARTITION_FILE, SUMMARY_SCHEMA_VERSION, Tracker
from fedmtl.app.runtimes import silo_threads
from fedmtl.core import records
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import SiloCheckpoint
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import evaluate
from strategies.engine import Engine, GlobalModel, RunContext, RunStopped

log = logging.getLogger("fedmtl")


def run_server(
    grid: Grid,
    experiment: Experiment,
    runtime: str | None = None,
    scope: str = "",
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train for ``num_rounds`` on ``grid`` (after the checkpoint of the run it resumes, if
    any), write the result files and return the summary; ``runtime``: what started the run, for
    the summary (default: the configured runtime); ``scope``: the run's name on the silos when
    several runs share the nodes one after another (each keeps its own silo state); ``stop``:
    once set, the run ends while it waits for replies, with ``status: interrupted`` and its last
    checkpoint intact (for a ServerApp that does not run in the main thread, which a signal
    cannot interrupt)."""
    cfg = experiment.config
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = load_checkpoint(Path(cfg.resume)) if cfg.resume else None
    done = previous.server_round if previous else 0
    experiment.partition.save(output_dir / PARTITION_FILE)
    tracker = Tracker(
        output_dir,
        cfg.tracking,
        list(experiment.dataset.tasks),
        cfg.num_rounds,
        run_config=dict(cfg.raw),
        run_name=f"{cfg.dataset.name}-{experiment.method_label}-seed{cfg.seed}",
        resume_round=done,
    )
    global_eval = GlobalEvaluator(experiment, tracker)
    checkpointer = Checkpointer(experiment, global_eval, previous)
    context = RunContext(
        scope=scope,
        checkpoint=SiloCheckpoint(done, done),
        observers=[tracker],
        evaluate_global=global_eval if global_eval.num_samples else None,
        on_round_end=checkpointer,
        stop=stop,
    )
    engine = experiment.new_engine(context)
    if previous is None:
        start = global_model(experiment.new_model(engine.method.initial_groups()))
    else:
        log.info("resuming %s after round %d", output_dir, done)
        engine.load_state_dict(previous.engine)
        global_eval.load_state_dict(previous.evaluator)
        start = global_model(experiment.new_model(previous.groups), previous.model)
    checkpointer.sound = (done, start)
    status = "crashed"  # until the loop ends or stops with a reason
    try:
        engine.run(grid, start, cfg.num_rounds, first_round=done + 1)
        status = final_status(engine, experiment.num_silos)
    except RunStopped as stopped:
        log.error("the run stopped: %s", stopped)
        status = stopped.status
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary = build_summary(experiment, engine, checkpointer.wall_time_s())
        summary["runtime"] = runtime or cfg.runtime.name
        summary["provenance"]["threads_per_silo"] = (
            None if runtime else silo_threads(cfg.runtime.name, cfg.runtime.params)
        )
        summary["global"] = global_eval.summary(experiment.dataset.tasks)
        summary["status"] = status
        summary["completed"] = status == "completed"
        summary["resumed_from"] = checkpointer.resumed_from
        summary["checkpoint_round"] = checkpointer.saved_round
        if status == "diverged":
            summary["divergence"]["model_round"] = checkpointer.save_sound_model()
        engine.method.write_artifacts(output_dir, plots=cfg.tracking.plots)
        tracker.finish(summary)
    if status != "completed":
        log.error("run status: %s", status)
    return summary


def global_model(network: MultiTaskModel, arrays: records.Arrays | None = None) -> GlobalModel:
    """The server's global model for ``network``: its exchanged arrays (or ``arrays``, e.g. a
    checkpoint's), its task groups and the roles it declares for them."""
    keys = network.exchanged_keys()
    values = records.state_arrays(network, keys) if arrays is None else dict(arrays)
    roles = network.roles()
    return GlobalModel(values, network.groups, {k: roles[k] for k in values})


class Checkpointer:
    """Called by the engine after each round (:data:`strategies.engine.RoundEnd`): saves the
    run's state after the rounds :func:`should_checkpoint` picks, and the final model after the
    last (:mod:`~fedmtl.app.run.checkpoint`).

    A round the engine calls unsound (its losses suggest the model diverged,
    :mod:`strategies.engine.divergence`) is never saved: a checkpoint due then is saved after the
    next sound round instead, so the last checkpoint on disk always holds a sound model. It keeps
    the last sound model (``sound``: its round and model) for a run that stops as ``diverged``,
    whose ``model.safetensors`` is that model (:meth:`save_sound_model`)."""

    def __init__(
        self, experiment: Experiment, global_eval: GlobalEvaluator, previous: RunState | None
    ) -> None:
        self.config = experiment.config
        self.label = experiment.method_label
        self.global_eval = global_eval
        self.started = time.perf_counter()
        self.earlier_s = previous.wall_time_s if previous else 0.0
        self.resumed_from = [*previous.resumed_from, previous.server_round] if previous else []
        self.saved_round = previous.server_round if previous else None
        self.sound: tuple[int, GlobalModel] | None = None
        self.owed = False  # a checkpoint was due in a suspect round

    def wall_time_s(self) -> float:
        """The run's wall time: this process's and that of the runs it resumes."""
        return self.earlier_s + time.perf_counter() - self.started

    def __call__(
        self,
        server_round: int,
        model: GlobalModel,
        state: Callable[[], dict[str, Any]],
        sound: bool = True,
    ) -> int | None:
        cfg = self.config
        due = should_checkpoint(server_round, cfg.checkpoint_every, cfg.num_rounds)
        if not sound:
            if due:
                self.owed = True
                log.warning(
                    "round %d is suspect: no checkpoint (the last saved is round %s)",
                    server_round,
                    self.saved_round,
                )
            return None
        self.sound = (server_round, model)
        if not (due or self.owed):
            return None
        self.owed = False
        run_dir = Path(cfg.output_dir)
        saved = RunState(
            server_round=server_round,
            config=dict(cfg.raw),
            model=model.arrays,
            groups=model.groups,
            engine=state(),
            evaluator=self.global_eval.state_dict(),
            wall_time_s=self.wall_time_s(),
            resumed_from=self.resumed_from,
        )
        save_checkpoint(run_dir, saved)
        self.saved_round = server_round
        if server_round == cfg.num_rounds:
            meta = {"strategy": self.label, "round": str(server_round)}
            save_model(run_dir, model.arrays, model.groups, meta)
        return server_round

    def save_sound_model(self) -> int | None:
        """A diverged run's ``model.safetensors``: its last sound model (the metadata's ``round``
        says which; ``status`` is ``diverged``); returns that round (None: none known)."""
        if self.sound is None:
            return None
        server_round, model = self.sound
        meta = {"strategy": self.label, "round": str(server_round), "status": "diverged"}
        save_model(Path(self.config.output_dir), model.arrays, model.groups, meta)
        return server_round


def final_status(engine: Engine, num_silos: int) -> str:
    """``completed``, or why not: ``no_updates_aggregated`` (no round aggregated any update),
    ``silos_missing`` (a configured silo never connected)."""
    if not engine.participants:
        return "no_updates_aggregated"
    connected = {info.silo_id for info in engine.roster.silos.values()}
    if set(range(num_silos)) - connected:
        return "silos_missing"
    return "completed"


class GlobalEvaluator:
    """Server-side evaluation of the global model on the partition's global held-out test set.

    Called by the engine after every round (:data:`strategies.engine.GlobalEvaluation`, for
    methods with one global model); it evaluates on the method's schedule (every
    ``evaluate_every`` rounds and the last), each task over the rows of the set labelled for it,
    with every task's head (on its group's trunk when the model has one trunk per task group); it
    hands the metrics to the tracker (split ``global``) and keeps their history for the summary.
    """

    def __init__(self, experiment: Experiment, tracker: Tracker) -> None:
        self.experiment = experiment
        self.data = experiment.global_test_data()
        self.num_samples = self.data.num_samples
        self.tracker = tracker
        self.evaluate_every = experiment.config.strategy.params.evaluate_every
        self._models: dict[str, MultiTaskModel] = {}  # one per task grouping the run has used
        self.num_rounds = experiment.config.num_rounds
        self.tasks = {t.name: t for t in experiment.dataset.tasks}
        self.history: list[tuple[int, dict[str, dict[str, float]]]] = []

    def __call__(self, server_round: int, model: GlobalModel) -> dict[str, dict[str, float]] | None:
        if server_round % self.evaluate_every and server_round != self.num_rounds:
            return None
        key = json.dumps(model.groups, sort_keys=True)
        if key not in self._models:
            self._models[key] = self.experiment.new_model(model.groups)
        network = self._models[key]
        records.load_arrays(network, model.arrays)
        sums = evaluate(network, self.data)
        metrics = {
            task: self.tasks[task].finalize_metrics(task_sums)
            for task, task_sums in sums.items()
            if task_sums.get("n", 0) > 0
        }
        self.history.append((server_round, metrics))
        self.tracker.record_global(server_round, metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[r, metrics] for r, metrics in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(r), metrics) for r, metrics in state["history"]]

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


def build_summary(experiment: Experiment, engine: Engine, wall_time_s: float) -> dict[str, Any]:
    """The contents of ``summary.json`` (see the README for each field)."""
    cfg = experiment.config
    dataset = experiment.dataset
    chance = dataset.chance_levels()
    evaluated = [r for r in engine.history if r.personal is not None]
    final = evaluated[-1].personal if evaluated else {}
    task_info = {t.name: {**t.info(), "chance": chance[t.name]} for t in dataset.tasks}
    connected = list(engine.roster.silos.values())
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "dataset": cfg.dataset.name,
        "strategy": experiment.method_label,
        "seed": cfg.seed,
        "rounds": len(engine.history),
        "tasks": dataset.task_names,
        "task_info": task_info,
        "final": final,
        "final_round": evaluated[-1].server_round if evaluated else None,
        "best": best_per_task([r.personal for r in evaluated if r.personal], dataset.tasks),
        "bytes_up": int(engine.bytes_up),
        "bytes_down": int(engine.bytes_down),
        "wall_time_s": float(wall_time_s),
        "simulated_time_s": engine.simulated_time_s,
        "num_silos": experiment.num_silos,
        "silos_participated": sorted(engine.participants),
        "silos_missing": sorted(
            set(range(experiment.num_silos)) - {info.silo_id for info in connected}
        ),
        "holders": {  # as the silos announced them: only silos that connected
            t: sorted(info.silo_id for info in connected if t in info.tasks)
            for t in dataset.task_names
        },
        "rejected": engine.rejections,
        "privacy": engine.privacy_results(),
        "fault": experiment.fault_summary(),
        "robust_warnings": {group: dict(w) for group, w in engine.breakdowns.warnings.items()},
        "divergence": engine.divergence.summary(),
        **engine.method.results(),
        "dataset_info": dataset.info,
        "config": dict(cfg.raw),
        "scenario": scenario_of(cfg.raw),
        "delta_mtl": None,  # always null (schema 1): a bench writes Delta_MTL to bench_cell.json
        "provenance": provenance(),
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


def make_server_app(
    default_config_json: str | None = None, stop: threading.Event | None = None
) -> ServerApp:
    """The ServerApp; the experiment config comes from the run config, else ``default_config_json``;
    ``stop``: see :func:`run_server`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config_json = config_json_from(context.run_config, default_config_json)
        if not context.run_config.get(CONFIG_KEY):  # started by fedmtl, which holds the lock
            run_server(grid, cached_experiment(config_json), stop=stop)
            return
        log_to_flower()  # started by `flwr run`: the run directory's lock is this app's to take
        config_json = for_flower_run(config_json, context.run_id)
        raw = json.loads(config_json)
        key = "resume" if raw.get("resume") else "output_dir"
        with run_lock(Path(raw["output_dir"]), key):
            run_server(grid, cached_experiment(config_json), FLWR_RUN, stop=stop)

    return app


def log_to_flower() -> None:
    """fedmtl's INFO log through Flower's console handler, which ``flwr run --stream`` and
    ``flwr log`` read."""
    log.setLevel(logging.INFO)
    if console_handler not in log.handlers:
        log.addHandler(console_handler)


FLWR_RUN = "flwr run"
"""``summary.json``'s ``runtime`` for a run started by ``flwr run`` (Flower's simulation or a
deployment: the ServerApp cannot tell which)."""


def for_flower_run(config_json: str, run_id: int) -> str:
    """The config of a ``flwr run``: results in ``<output_dir>/<run_id>/`` (created here, so that no
    run overwrites another's; a resumed run goes on in its own directory) and no progress bar
    (its lines would clutter Flower's log)."""
    raw = json.loads(config_json)
    raw.setdefault("tracking", {})["progress"] = False
    if raw.get("resume"):
        check_resumable(raw, load_checkpoint(Path(raw["resume"])))
        raw["output_dir"] = raw["resume"]
        log.info("run %s: resumes %s", run_id, Path(raw["resume"]).resolve())
        return json.dumps(raw)
    run_dir = Path(raw.get("output_dir") or ".") / str(run_id)
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConfigError(
            "output_dir",
            f"{run_dir} exists: the results of run {run_id} are never overwritten.",
            "move it away, or start a new run.",
        ) from None
    log.info("run %s: results in %s", run_id, run_dir.resolve())
    raw["output_dir"] = str(run_dir)
    return json.dumps(raw)


app = make_server_app()
"""The ServerApp for deployment (``flwr run``): the config comes from the run config."""
