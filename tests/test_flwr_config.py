"""Flower-native packaging: pyproject's [tool.flwr.app], the run config ``fedmtl flwr-config``
writes, the FAB's contents, and where a ``flwr run``'s ServerApp writes and logs."""

from __future__ import annotations

import io
import json
import logging
import os
import tomllib
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_files
from flwr.clientapp import ClientApp
from flwr.common.config import validate_config
from flwr.serverapp import ServerApp

from fedmtl.app import cli
from fedmtl.app.deploy.flwr_config import read_run_config, run_config, to_toml
from fedmtl.app.run import server as server_app
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import CONFIG_KEY
from fedmtl.app.run.server import for_flower_run
from fedmtl.app.run.tracking import Tracker
from fedmtl.app.silo import client_app
from fedmtl.core.errors import ConfigError
from fedmtl.core.rounds import RoundRecord
from fedmtl.core.schema import TrackingConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.datasets.schema import FeatureSchema
from tests.support.deployments import silo_tables

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_declares_the_flower_app() -> None:
    valid, errors, _ = validate_config(PYPROJECT, check_module=True, project_dir=ROOT)
    assert valid, errors
    app = PYPROJECT["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedmtl.app.run.server:app",
        "clientapp": "fedmtl.app.silo.client_app:app",
    }
    assert isinstance(server_app.app, ServerApp) and isinstance(client_app.app, ClientApp)


def test_pyproject_run_config_is_the_flwr_demo_experiment() -> None:
    """`flwr run .` runs what `fedmtl flwr-config experiment=flwr_demo` writes. After a change
    to configs/, paste that command's output into [tool.flwr.app.config]."""
    shipped = read_run_config(PYPROJECT["tool"]["flwr"]["app"]["config"])
    assert shipped == read_run_config(run_config(["experiment=flwr_demo"]))
    assert list(PYPROJECT["tool"]["flwr"]["app"]["config"]) == [CONFIG_KEY]


def test_the_fab_holds_the_code_and_configs_only() -> None:
    files = {}
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d != "outputs"]
        for name in names:
            path = Path(directory) / name
            files[path.relative_to(ROOT).as_posix()] = path
    fab, _ = build_fab_from_files(files)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    for needed in (
        "pyproject.toml",
        "fedmtl/app/silo/client_app.py",
        "fedmtl/app/run/server.py",
        "strategies/engine/loop.py",
        "partitions/manifest.py",
        "configs/config.yaml",
        "configs/experiment/flwr_demo.yaml",
    ):
        assert needed in names
    assert not {n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))}


def test_run_config_embeds_the_schema_and_sets_the_results_base(tmp_path: Path) -> None:
    _, schema = silo_tables(tmp_path)
    entries = run_config(
        ["experiment=flwr_tables", f"dataset.schema={schema}", f"hydra.run.dir={tmp_path}/r"]
    )
    raw = read_run_config(entries)
    assert raw["dataset"]["schema"] == FeatureSchema.load(schema).to_json()  # content, no path
    assert raw["output_dir"] == f"{tmp_path}/r"
    assert str(schema) not in entries[CONFIG_KEY]
    parse(raw)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            ["dataset=table", "dataset.path=/data/all.csv", "+dataset.targets.y=binary"],
            "dataset.path",
        ),
        (["partition=from_file", "partition.path=/runs/partition.json"], "partition.path"),
    ],
)
def test_run_config_refuses_files_the_silos_would_have_to_open(
    overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_config(overrides)
    assert info.value.key == key and "node config data-file" in info.value.fix


def test_the_toml_file_reads_back_as_the_entries() -> None:
    entries = {CONFIG_KEY: json.dumps({"a": 'it\'s "quoted"', "b": [1, 2]})}
    assert json.loads(tomllib.loads(to_toml(entries))[CONFIG_KEY]) == json.loads(
        entries[CONFIG_KEY]
    )
    odd = {CONFIG_KEY: json.dumps({"a": "'''"})}  # cannot be a literal string
    assert tomllib.loads(to_toml(odd))[CONFIG_KEY] == odd[CONFIG_KEY]


def test_fedmtl_flwr_config_writes_a_file_and_names_a_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.toml"
    cli.main(["flwr-config", "experiment=flwr_demo", "num_rounds=7", "-o", str(out)])
    raw = read_run_config(tomllib.loads(out.read_text()))
    assert raw["num_rounds"] == 7
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["flwr-config", "num_rounds=0"])
    assert exit_info.value.code == 2
    assert "num_rounds" in capsys.readouterr().err


def test_each_flwr_run_writes_to_a_directory_of_its_own(tmp_path: Path) -> None:
    config_json = json.dumps({"output_dir": str(tmp_path), "tracking": {"progress": True}})
    first = json.loads(for_flower_run(config_json, 11))
    assert first["output_dir"] == str(tmp_path / "11") and (tmp_path / "11").is_dir()
    assert first["tracking"]["progress"] is False  # Flower's log stream gets lines, not a bar
    json.loads(for_flower_run(config_json, 12))
    with pytest.raises(ConfigError, match="never overwritten"):
        for_flower_run(config_json, 11)


def test_without_a_progress_bar_each_round_is_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = TrackingConfig(wandb=False, progress=False, plots=False)
    tracker = Tracker(tmp_path, quiet, [TaskSpec.multiclass("t0", 3)], 3, {}, "run")
    record = RoundRecord(
        server_round=2,
        num_sampled=2,
        num_updates=2,
        rejected=[],
        train_loss={"t0": 0.5},
        personal={"t0": {"accuracy": 0.75, "loss": 0.5}},
        seconds=1.25,
    )
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        tracker.on_round(record)
    assert "round 2/3: 2/2 updates, 1.2s; t0: loss 0.5000, test accuracy 0.7500" in caplog.text
