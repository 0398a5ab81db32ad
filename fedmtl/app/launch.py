"""Start a parsed experiment on its runtime: validate everything, build the two apps, run them."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fedmtl.app.run.checkpoint import CHECKPOINT_DIR, check_resumable, load_checkpoint
from fedmtl.app.run.experiment import cached_experiment, is_local
from fedmtl.app.run.server import make_server_app
from fedmtl.app.run.tracking import METRICS_FILE, SUMMARY_FILE
from fedmtl.app.runtimes import RUNTIMES, Apps, Shipment, set_offline_env
from fedmtl.app.silo.batch import BatchTrainer
from fedmtl.app.silo.client_app import make_client_app
from fedmtl.app.silo.toolkit import Silo
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig


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
    check_output_dir(config)
    config_json = config.to_json()
    experiment = cached_experiment(config_json)
    runner = RUNTIMES.get(config.runtime.name, key="runtime.name").factory
    shipment = Shipment(experiment)
    # Flower's simulation runs the ServerApp in a thread, which a signal cannot interrupt: the
    # runtime sets this event on SIGINT/SIGTERM and the engine stops while it waits for replies.
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


RESULT_FILES = (SUMMARY_FILE, METRICS_FILE, CHECKPOINT_DIR)
"""What a run leaves in its directory: another run there would mix its files with these."""


def check_output_dir(config: ExperimentConfig) -> None:
    """A resumed run: its checkpoint is readable and its config is the run's own. A new run: its
    directory holds no other run's results (ConfigError otherwise, before any work)."""
    output_dir = Path(config.output_dir)
    if config.resume is not None:
        if Path(config.resume).resolve() != output_dir.resolve():
            raise ConfigError(
                "resume", f"is {config.resume} but output_dir is {output_dir}.", "resume in place."
            )
        check_resumable(config.raw, load_checkpoint(output_dir))
        return
    found = [name for name in RESULT_FILES if (output_dir / name).exists()]
    if found:
        raise ConfigError(
            "output_dir",
            f"{output_dir} already holds a run's results ({', '.join(found)}).",
            f"choose another directory (hydra.run.dir=...), or continue that run with "
            f"`fedmtl run resume={output_dir}`.",
        )
