"""Start a parsed experiment on its runtime: validate everything, build the two apps, run them."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

from fedmtl.app.run.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    STATE_FILE,
    check_resumable,
    load_checkpoint,
)
from fedmtl.app.run.experiment import Experiment, cached_experiment, is_local
from fedmtl.app.run.lock import run_lock
from fedmtl.app.run.server import make_server_app
from fedmtl.app.run.tracking import CURVES_FILE, METRICS_FILE, PARTITION_FILE, SUMMARY_FILE
from fedmtl.app.runtimes import RUNTIMES, Apps, Shipment, set_offline_env
from fedmtl.app.silo.batch import BatchTrainer
from fedmtl.app.silo.client_app import make_client_app
from fedmtl.app.silo.node import MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS, MAX_LOCAL_STEPS, Limits
from fedmtl.app.silo.toolkit import Silo
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig

log = logging.getLogger("fedmtl")


def run(config: ExperimentConfig) -> dict[str, Any]:
    """Run a parsed experiment on its runtime and return its summary.

    Validates everything first (dataset, partition, model, resources), so a bad config fails
    before Ray starts or any training happens.
    """
    set_offline_env()
    if is_local(config):
        raise ConfigError(
            "partition",
            "is local: each silo brings its own rows through its SuperNode's node config, which "
            "only a deployment has.",
            "start it with `flwr run` (docs/deployment.md), or choose another partition preset.",
        )
    resumed = config.resume is not None
    output_dir = Path(config.output_dir)
    # held until the run ends, or its process does: one run at a time in a directory
    with run_lock(output_dir, "resume" if resumed else "output_dir", create=not resumed):
        unfinished = check_output_dir(config)
        config_json = config.to_json()
        experiment = cached_experiment(config_json)
        check_simulated_silos(config, experiment)
        if unfinished:
            set_aside(output_dir, unfinished)
        runner = RUNTIMES.get(config.runtime.name, key="runtime.name").factory
        shipment = Shipment(experiment)
        # Flower's simulation runs the ServerApp in a thread, which a signal cannot interrupt:
        # the runtime sets this event on SIGINT/SIGTERM and the engine stops while it waits.
        stop = threading.Event() if config.runtime.name == "simulation" else None
        apps = Apps(
            server=make_server_app(config_json, stop),
            client=make_client_app(config_json, shipment),
            batch=BatchTrainer(config_json, Silo(config_json, shipment)),
            shipment=shipment,
            stop=stop,
        )
        runner(apps, config.runtime.params, experiment.partition.num_silos)
    summary_path = Path(config.output_dir) / SUMMARY_FILE
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    result: dict[str, Any] = json.loads(summary_path.read_text())
    return result


def check_simulated_silos(config: ExperimentConfig, experiment: Experiment) -> None:
    """The local training a simulation's silos would refuse, refused before the run: they hold
    the default limits of a node (:class:`~fedmtl.app.silo.node.Limits`), and each would refuse
    every train message beyond them, ending the run with ``too_few_replies`` after its first
    round. (The passes a method adds, like FedRep's head epochs, are checked by the silos.)"""
    limits, train = Limits(), config.train
    for key, value, most, node_key in (
        ("train.batch_size", train.batch_size, limits.max_batch_size, MAX_BATCH_SIZE),
        ("train.local_epochs", train.local_epochs, limits.max_local_epochs, MAX_LOCAL_EPOCHS),
        ("train.max_steps", train.max_steps or 0, limits.max_local_steps, MAX_LOCAL_STEPS),
    ):
        if value > most:
            raise ConfigError(
                key,
                f"is {value}, more than a simulated silo accepts ({node_key} {most}).",
                f"use at most {most}.",
            )
    if not experiment.partition.silos:
        return
    rows = max(silo.num_train for silo in experiment.partition.silos)
    steps = train.local_epochs * math.ceil(rows / train.batch_size)
    if train.max_steps is None and steps > limits.max_local_steps:
        raise ConfigError(
            "train.local_epochs",
            f"{train.local_epochs} epochs in batches of {train.batch_size} take {steps} steps on "
            f"the largest silo ({rows} training rows), more than a simulated silo accepts "
            f"({MAX_LOCAL_STEPS} {limits.max_local_steps}).",
            "lower train.local_epochs, raise train.batch_size, or cap train.max_steps.",
        )


RUN_FILES = (
    SUMMARY_FILE,
    METRICS_FILE,
    CHECKPOINT_DIR,
    PARTITION_FILE,
    CURVES_FILE,
    MODEL_FILE,
    "affinity.json",
    "affinity.png",
    "wandb",
)
"""What a run writes into its directory (the grouping method's affinity files among them)."""
UNFINISHED = "unfinished"


def check_output_dir(config: ExperimentConfig) -> list[str]:
    """A resumed run: its checkpoint is readable and its config is the run's own. A new run: its
    directory holds no checkpoint (a ConfigError otherwise, before any work, pointing at
    ``resume=DIR``). Returns the files a run that stopped before its first checkpoint left in
    the directory (nothing can resume it): the new run takes the directory, moving them aside
    (:func:`set_aside`) once its config has been checked."""
    output_dir = Path(config.output_dir)
    if config.resume is not None:
        if Path(config.resume).resolve() != output_dir.resolve():
            raise ConfigError(
                "resume", f"is {config.resume} but output_dir is {output_dir}.", "resume in place."
            )
        check_resumable(config.raw, load_checkpoint(output_dir))
        return []
    if (output_dir / CHECKPOINT_DIR / STATE_FILE).exists():
        raise ConfigError(
            "output_dir",
            f"{output_dir} already holds a run's results and its checkpoint.",
            f"choose another directory (hydra.run.dir=...), or continue that run with "
            f"`fedmtl run resume={output_dir}`.",
        )
    return [name for name in RUN_FILES if (output_dir / name).exists()]


def set_aside(output_dir: Path, names: list[str]) -> Path:
    """Move ``names`` (files of a run that stopped before its first checkpoint) from
    ``output_dir`` into ``output_dir/unfinished-<n>/``, the first n not taken."""
    n = 1
    while (output_dir / f"{UNFINISHED}-{n}").exists():
        n += 1
    aside = output_dir / f"{UNFINISHED}-{n}"
    aside.mkdir()
    for name in names:
        (output_dir / name).rename(aside / name)
    log.warning(
        "%s held the files of a run that stopped before its first checkpoint (%s): moved to "
        "%s; this run starts afresh",
        output_dir,
        ", ".join(names),
        aside,
    )
    return aside
