"""Real deployments on 127.0.0.1: Flower's own processes, TLS, SuperNode authentication; and
``flwr run .`` from the repository root on a simulation SuperLink (pyproject's own run config).

The first test starts every process itself (fedmtl.app.deploy.LocalDeployment, never the local
SuperLink that ``flwr run`` can spawn), each with its own FLWR_HOME, log file and ports: a
``flower-superlink`` with TLS (a CA and server certificate made with ``cryptography``) and
``--enable-supernode-auth``; three registered ``flower-supernode``s, each holding its own CSV
(written here) that labels a different pair of three tasks; and one SuperNode whose key was never
registered. ``flwr run --stream`` runs the ``flwr_tables`` experiment to completion. Then: the
stranger was refused, the round lines reached Flower's log stream (``flwr run --stream`` and
``flwr log``), the results are in the run's own directory, and they match an in-process run of
the same ServerApp and ClientApps on the same three tables within float tolerance. Every process
is stopped by its id in the ``finally`` of the context manager, and every wait has a hard timeout.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedmtl.app.deploy import (
    CONNECTION,
    LocalDeployment,
    free_port,
    make_certificates,
    make_node_key,
    wait_for_port,
)
from fedmtl.app.deploy.flwr_config import to_toml
from fedmtl.app.run.experiment import CONFIG_KEY
from fedmtl.app.run.server import make_server_app
from tests.support.deployments import local_config_json, local_grid, silo_tables
from tests.support.runs import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERRIDES = ("num_rounds=2", "strategy.evaluate_every=2", "train.max_steps=5")
"""Two rounds (the model carried across them), evaluated after the last one: four ClientApp
processes per SuperNode (Flower 1.42 starts one per message)."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.processes,
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="Flower's deployment commands missing"
    ),
]


def reference_run(config_json: str, tables: list[Path], output: Path) -> Path:
    """The same ServerApp and ClientApps in this process, each node naming its own table."""
    raw = json.loads(config_json)
    raw["output_dir"] = str(output)
    nodes = [{"data-file": str(path), "silo-id": i} for i, path in enumerate(tables)]
    grid = local_grid(config_json, nodes)
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    make_server_app(json.dumps(raw))(grid, context)
    return output


@pytest.mark.timeout(480)
def test_tls_authenticated_deployment_matches_an_in_process_run(tmp_path: Path) -> None:
    tables, schema = silo_tables(tmp_path / "data")
    config_json = local_config_json(schema, *OVERRIDES)
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(to_toml({CONFIG_KEY: config_json}))
    expected = reference_run(config_json, tables, tmp_path / "reference")

    deploy = tmp_path / "deployment"
    with LocalDeployment(deploy, env={"PYTHONPATH": str(ROOT)}, bin_dir=BIN) as deployment:
        deployment.start_superlink(make_certificates(deploy / "certs"), timeout=90)
        keys = [make_node_key(deploy / "keys", f"silo{i}") for i in range(len(tables))]
        deployment.register(keys, timeout=90)
        for i, (key, table) in enumerate(zip(keys, tables, strict=True)):
            deployment.start_supernode(f"silo{i}", key, {"data-file": str(table), "silo-id": i})
        stranger = deployment.start_supernode(
            "stranger", make_node_key(deploy / "keys", "stranger"), {"partition-id": 0}, 0
        )
        output = deployment.run(ROOT, run_toml, timeout=330)
        run_id = re.search(r"Successfully started run (\d+)", output)
        assert run_id, output
        logged = deployment.flwr(["log", run_id.group(1), CONNECTION, "--show"], timeout=60)
        assert stranger.process.wait(timeout=60) != 0

    assert "Failed to activate SuperNode" in stranger.log.read_text()
    assert "No SuperNode found with the given public key" in (deploy / "superlink.log").read_text()
    for text in (output, logged):  # fedmtl's round lines reach Flower's log stream
        assert "round 2/2: 3/3 updates" in text
    result = deploy / "outputs" / "flwr" / run_id.group(1)
    summary = json.loads((result / "summary.json").read_text())
    reference = json.loads((expected / "summary.json").read_text())
    assert summary["rejected"] == [] and summary["rounds"] == 2
    assert set(summary["final"]) == {"score", "flag", "level"}
    for task, metrics in reference["final"].items():
        for name, value in metrics.items():
            assert summary["final"][task][name] == pytest.approx(value, rel=1e-5, abs=1e-6)
    losses = [
        [r["metrics"][t]["loss"] for t in sorted(r["metrics"])]
        for r in read_jsonl(result / "metrics.jsonl")
        if r["split"] == "train"
    ]
    reference_losses = [
        [r["metrics"][t]["loss"] for t in sorted(r["metrics"])]
        for r in read_jsonl(expected / "metrics.jsonl")
        if r["split"] == "train"
    ]
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(420)
def test_flwr_run_from_the_repository_root_on_a_simulation_superlink(tmp_path: Path) -> None:
    """`flwr run .` with pyproject.toml's own run config (experiment=flwr_demo) against a SuperLink
    in simulation mode, Flower's local simulation (started here rather than by `flwr`, so that it
    gets its own port and is stopped by its id)."""
    with LocalDeployment(tmp_path, env={"PYTHONPATH": str(ROOT)}, bin_dir=BIN) as deployment:
        port = free_port()
        superlink = deployment.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--simulation",
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        wait_for_port(port, 90, superlink.process)
        (deployment.home("cli") / "config.toml").write_text(
            f'[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        output = deployment.flwr(["run", ".", "sim", "--stream"], timeout=330, cwd=ROOT)
    run_id = re.search(r"Successfully started run (\d+)", output)
    assert run_id and "round 5/5: 2/2 updates" in output, output
    summary = json.loads(
        (tmp_path / "outputs" / "flwr" / run_id.group(1) / "summary.json").read_text()
    )
    assert summary["rounds"] == 5 and summary["rejected"] == []
    assert summary["dataset"] == "synthetic" and set(summary["final"]) == {"t0", "t1", "t2", "t3"}
