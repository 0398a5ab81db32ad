"""Many runs through Flower's simulation engine in one Ray session: one ServerApp runs them one
after another over the same simulated SuperNodes, each under its own ``scope`` (the silos keep
separate personal state per scope). For tests/test_baselines.py, run as
``python -m tests.one_session_app OUT_DIR`` from the repository root; each run writes its result
files to ``OUT_DIR/<run>``.

The runs: every FMTL baseline, a balancing method with per-task trunk updates and a silo-side
weighting (``balancing=both``), and task grouping (affinity measured on the Ray workers, then one
trunk per group). A Ray session costs seconds to start: sharing one keeps the suite short."""

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
RUNS: dict[str, list[str]] = {
    **{name: [f"strategy={name}"] for name in BASELINES},
    "upgrad_both": ["strategy=upgrad", "strategy.balancing=both"],
    "grouping": ["strategy=grouping", "strategy.warmup_rounds=1"],
}
"""Each run's overrides of :data:`OVERRIDES`, by the name of its output folder."""
OVERRIDES = ["experiment=smoke", "runtime=simulation", "runtime.ray_num_cpus=2"]
"""The scenario every run shares: the in-process tests' smoke experiment (4 silos, 2 rounds)."""


def config_json(overrides: list[str], out: Path) -> str:
    return parse(compose([*OVERRIDES, *overrides], out)).to_json()


def one_session_server_app(out: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for name, overrides in RUNS.items():
            run_server(grid, cached_experiment(config_json(overrides, out / name)), scope=name)

    return app


def main(out: Path) -> None:
    base = config_json(["strategy=fedavg"], out / "fedavg")  # the silos' side: data and model
    apps = Apps(server=one_session_server_app(out), client=make_client_app(base))
    experiment = cached_experiment(base)
    simulate = RUNTIMES.get("simulation").factory
    simulate(apps, experiment.config.runtime.params, experiment.partition.num_silos)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
