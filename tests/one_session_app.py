"""Every FMTL baseline through Flower's simulation engine in one Ray session: one ServerApp runs
the baselines one after another over the same simulated SuperNodes, each run under its own
``scope`` (the silos keep separate personal state per scope). For tests/test_baselines.py, run as
``python -m tests.baselines_app OUT_DIR`` from the repository root; each run writes its result
files to ``OUT_DIR/<strategy>``."""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.app import Context
from flwr.server import Grid, ServerApp

from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import cached_experiment
from fedmtl.app.run.server import run_server
from fedmtl.app.runtimes import RUNTIMES, Apps
from fedmtl.app.silo.client_app import make_client_app

BASELINES = (
    "local",
    "single_task",
    "fedprox",
    "fedper",
    "fedrep",
    "ditto",
    "fedamp",
    "matfl",
    "fedhca2",
)
OVERRIDES = ["experiment=smoke", "runtime=simulation", "runtime.ray_num_cpus=2"]
"""The scenario every baseline runs: the in-process tests' smoke experiment (4 silos, 2 rounds)."""


def config_json(strategy: str, out: Path) -> str:
    return parse(compose([*OVERRIDES, f"strategy={strategy}"], out / strategy)).to_json()


def baselines_server_app(out: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for strategy in BASELINES:
            run_server(grid, cached_experiment(config_json(strategy, out)), scope=strategy)

    return app


def main(out: Path) -> None:
    base = config_json("fedavg", out)  # the silos' side: dataset, partition and model
    apps = Apps(server=baselines_server_app(out), client=make_client_app(base))
    experiment = cached_experiment(base)
    simulate = RUNTIMES.get("simulation").factory
    simulate(apps, experiment.config.runtime.params, experiment.partition.num_silos)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
