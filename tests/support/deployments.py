"""Deployments: :func:`silo_tables` (three silos' own tables and their schema),
:func:`local_config_json` (a ``partition=local`` experiment over them), :func:`local_grid` (their
ClientApps behind an in-process grid, each node naming its own table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmtl.app.deploy import demo_tables
from fedmtl.app.deploy.flwr_config import run_config
from fedmtl.app.run.experiment import CONFIG_KEY
from fedmtl.app.runtimes import InProcessGrid
from fedmtl.app.silo.client_app import make_client_app


def silo_tables(directory: Path) -> tuple[list[Path], Path]:
    """Three silos' own CSV tables, each labelling a different pair of the tasks score, flag and
    level, and the feature schema they share (what ``fedmtl deploy demo-data`` writes)."""
    return demo_tables(directory)


def local_config_json(schema: Path, *overrides: str) -> str:
    """The config JSON (``fedmtl-config``) of the ``flwr_tables`` experiment: ``partition=local``
    with ``schema`` embedded, as ``fedmtl flwr-config`` writes it."""
    entries = run_config(["experiment=flwr_tables", f"dataset.schema={schema}", *overrides])
    return entries[CONFIG_KEY]


def local_grid(
    config_json: str, node_configs: list[dict[str, Any]], sent: bool = True
) -> InProcessGrid:
    """The fedmtl ClientApp of each node behind an in-process grid, node i with
    ``node_configs[i]``; ``sent``: the config comes from the run config (as with ``flwr run``),
    else it is the app's own."""
    app = make_client_app(None if sent else config_json)
    run_cfg = {CONFIG_KEY: config_json} if sent else {}
    return InProcessGrid(app, len(node_configs), run_cfg, node_configs=node_configs)
