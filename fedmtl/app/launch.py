"""Start a parsed experiment on its runtime: validate everything, build the two apps, run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmtl.app.client_app import make_client_app
from fedmtl.app.experiment import cached_experiment
from fedmtl.app.runtime import RUNTIMES, Apps, Shipment, set_offline_env
from fedmtl.app.server_app import make_server_app
from fedmtl.app.tracking import SUMMARY_FILE
from fedmtl.app.vectorized import BatchTrainer
from fedmtl.core.schema import ExperimentConfig


def run(config: ExperimentConfig) -> dict[str, Any]:
    """Run a parsed experiment on its runtime and return its summary.

    Validates everything first (dataset, partition, model, resources), so a bad config fails
    before Ray starts or any training happens.
    """
    set_offline_env()
    config_json = config.to_json()
    experiment = cached_experiment(config_json)
    runner = RUNTIMES.get(config.runtime.name, key="runtime.name").factory
    shipment = Shipment(experiment)
    apps = Apps(
        server=make_server_app(config_json),
        client=make_client_app(config_json, shipment),
        batch=BatchTrainer(config_json),
        shipment=shipment,
    )
    runner(apps, config.runtime.params, experiment.partition.num_silos)
    summary_path = Path(config.output_dir) / SUMMARY_FILE
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    result: dict[str, Any] = json.loads(summary_path.read_text())
    return result
