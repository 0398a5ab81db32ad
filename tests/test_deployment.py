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

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
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
)
from fedmtl.app.deploy.flwr_config import to_toml
from fedmtl.app.deploy.processes import Started
from fedmtl.app.run.checkpoint import load_model_arrays
from fedmtl.app.run.experiment import CONFIG_KEY
from fedmtl.app.run.server import make_server_app
from fedmtl.app.runtimes import OFFLINE_ENV
from fedmtl.app.runtimes.processes import alive, descendants, end, listening, send
from tests.support.deployments import local_config_json, local_grid, silo_tables
from tests.support.runs import fedmtl_process, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT_HEARTBEAT = ROOT / "tests" / "support" / "short_heartbeat"
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


def start_silos(deployment: LocalDeployment, deploy: Path, tables: list[Path]) -> None:
    """A SuperLink with TLS and node authentication, and one registered SuperNode per table."""
    deployment.start_superlink(make_certificates(deploy / "certs"), timeout=90)
    keys = [make_node_key(deploy / "keys", f"silo{i}") for i in range(len(tables))]
    deployment.register(keys, timeout=90)
    for i, (key, table) in enumerate(zip(keys, tables, strict=True)):
        deployment.start_supernode(f"silo{i}", key, {"data-file": str(table), "silo-id": i})


@pytest.mark.timeout(600)
def test_tls_authenticated_deployment_matches_an_in_process_run(tmp_path: Path) -> None:
    """A TLS deployment with SuperNode authentication (a stranger's key is refused) runs the
    apps as this process does, to the losses of every round; then, on the same processes, one
    round of SecAgg+ (privacy=secagg: each stage a message of its own, its state in the node's context
    across ClientApp processes) ends with the plain run's model within the quantization bound
    K delta w_max / W (about 1e-5 with these tables; asserted at 1e-4)."""
    tables, schema = silo_tables(tmp_path / "data")
    config_json = local_config_json(schema, *OVERRIDES)
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(to_toml({CONFIG_KEY: config_json}))
    secagg_toml = tmp_path / "secagg.toml"
    lean = ("num_rounds=1", "train.max_steps=3")
    secagg_toml.write_text(
        to_toml({CONFIG_KEY: local_config_json(schema, *lean, "privacy=secagg")})
    )
    expected = reference_run(config_json, tables, tmp_path / "reference")
    expected_lean = reference_run(local_config_json(schema, *lean), tables, tmp_path / "lean")

    deploy = tmp_path / "deployment"
    with LocalDeployment(deploy, env={"PYTHONPATH": str(ROOT)}, bin_dir=BIN) as deployment:
        start_silos(deployment, deploy, tables)
        stranger = deployment.start_supernode(
            "stranger", make_node_key(deploy / "keys", "stranger"), {"partition-id": 0}, 0
        )
        output = deployment.run(ROOT, run_toml, timeout=330)
        run_id = re.search(r"Successfully started run (\d+)", output)
        assert run_id, output
        logged = deployment.flwr(["log", run_id.group(1), CONNECTION, "--show"], timeout=60)
        assert stranger.process.wait(timeout=60) != 0
        secure_output = deployment.run(ROOT, secagg_toml, timeout=330)

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

    secure_id = re.search(r"Successfully started run (\d+)", secure_output)
    assert secure_id and "round 1/1: 3/3 updates" in secure_output, secure_output[-3000:]
    secure_result = deploy / "outputs" / "flwr" / secure_id.group(1)
    secure_summary = json.loads((secure_result / "summary.json").read_text())
    assert secure_summary["status"] == "completed" and secure_summary["rejected"] == []
    assert secure_summary["privacy"]["mode"] == "secagg"
    secure, _ = load_model_arrays(secure_result / "model.safetensors")
    plain, _ = load_model_arrays(expected_lean / "model.safetensors")
    assert secure.keys() == plain.keys()
    for key, value in plain.items():
        assert np.max(np.abs(secure[key] - value)) <= 1e-4, key


@pytest.mark.timeout(900)
def test_a_silo_killed_mid_run_rejoins_after_a_restart_and_the_run_carries_on(
    tmp_path: Path,
) -> None:
    """kill -9 one SuperNode (and its ClientApp processes) right after round 1 of a FedPer run
    that needs all three silos: the SuperLink answers for it (Node Unavailable, in `rejected`
    under its silo), the round waits for it, and the node, restarted with its key and state-dir
    once the SuperLink has noticed, rejoins under its node id; every round then aggregates three
    updates, the silo's personal heads keep being saved, the SuperLink and the other silos run
    on, and the run completes. Flower's heartbeat runs at its shortest interval here
    (tests/support/short_heartbeat): the SuperLink notices the dead node after about 20 s."""
    tables, schema = silo_tables(tmp_path / "data")
    overrides = [
        "num_rounds=2", "strategy=fedper", "strategy.evaluate_every=2", "train.max_steps=3",
        "strategy.wait_for_nodes_s=400", "strategy.round_retries=1",
    ]  # fmt: skip
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(to_toml({CONFIG_KEY: local_config_json(schema, *overrides)}))
    deploy = tmp_path / "deployment"
    path = os.pathsep.join([str(ROOT), str(SHORT_HEARTBEAT)])
    with LocalDeployment(deploy, env={"PYTHONPATH": path}, bin_dir=BIN) as deployment:
        deployment.start_superlink(make_certificates(deploy / "certs"), timeout=90)
        keys = [make_node_key(deploy / "keys", f"silo{i}") for i in range(len(tables))]
        deployment.register(keys, timeout=90)

        def start(i: int) -> Started:
            config = {"data-file": str(tables[i]), "silo-id": i, "state-dir": str(deploy / "state")}
            return deployment.start_supernode(f"silo{i}", keys[i], config)

        silos = [start(i) for i in range(len(tables))]
        command = [str(BIN / "flwr"), "run", str(ROOT), CONNECTION, "--run-config", str(run_toml)]
        run = subprocess.Popen(
            [*command, "--stream"], env=deployment.environment("cli"), cwd=deploy,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deployment.started.append(Started("flwr-run", run, deploy / "flwr-run.log", io.BytesIO()))
        lines: list[str] = []
        killed = restarted = False
        assert run.stdout is not None
        for line in run.stdout:  # the test's timeout bounds this loop
            lines.append(line)
            if not killed and "round 1/2" in line:
                victim = silos[2].process
                send([victim.pid, *descendants(victim.pid)], signal.SIGKILL)
                victim.wait(timeout=30)
                killed = True
            if killed and not restarted and "Node Unavailable" in line:
                silos[2] = start(2)  # the SuperLink has noticed: it may come back
                restarted = True
        assert run.wait(timeout=60) == 0, "".join(lines)[-4000:]
        output = "".join(lines)
        assert restarted, output
        assert deployment.started[0].process.poll() is None  # the SuperLink runs on
        assert all(silo.process.poll() is None for silo in silos)
    run_id = re.search(r"Successfully started run (\d+)", output)
    assert run_id, output
    result = deploy / "outputs" / "flwr" / run_id.group(1)
    summary = json.loads((result / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["silos_participated"] == [0, 1, 2]
    assert any(r["silo"] == 2 and "Node Unavailable" in r["reason"] for r in summary["rejected"]), (
        summary["rejected"]
    )
    rounds = [r for r in read_jsonl(result / "metrics.jsonl") if r["split"] == "train"]
    assert [r["num_updates"] for r in rounds] == [3, 3]
    saved = sorted(p.name for p in (deploy / "state" / "silo-2").glob("round-*.safetensors"))
    assert saved == [f"round-{r}.safetensors" for r in (1, 2)]  # before and after


def _local_superlink_env(home: Path) -> dict[str, str]:
    """What a user's activated shell has, with ports and a Flower home of the test's own: the
    local SuperLink that ``flwr run`` starts listens there (never on Flower's default ports,
    which another run on this machine may hold)."""
    return {
        **os.environ,
        **OFFLINE_ENV,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }


def _listening(env: dict[str, str]) -> list[int]:
    """The processes listening on the local SuperLink's ports of ``env``, and those below them."""
    ports = (env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"], env["FLWR_LOCAL_CONTROL_API_PORT"])
    leaders = sorted({pid for port in ports for pid in listening(int(port))})
    return [*leaders, *(child for pid in leaders for child in descendants(pid))]


@pytest.mark.timeout(480)
def test_flwr_run_from_the_repository_root_on_the_local_superlink(tmp_path: Path) -> None:
    """``flwr run .`` as the README has it (pyproject's own run config, experiment=flwr_demo):
    ``flwr`` starts its local SuperLink in the background and returns once the run is submitted;
    the SuperLink runs on, ``flwr log`` follows the run to its end, the results land in
    ``outputs/flwr/<run id>/`` of the directory the SuperLink was started from, and ``fedmtl
    deploy stop-local`` ends the SuperLink and every process below it."""
    env = _local_superlink_env(tmp_path / "home")
    try:
        submitted = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        run_id = re.search(r"Successfully started run (\d+)", submitted.stdout)
        assert submitted.returncode == 0 and run_id, (submitted.stdout, submitted.stderr)
        superlink = _listening(env)
        assert superlink, "the local SuperLink should run on after `flwr run` returned"
        followed = subprocess.run(
            [str(BIN / "flwr"), "log", run_id.group(1)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert "round 5/5: 2/2 updates" in followed.stdout, followed.stdout[-3000:]
        summary_file = tmp_path / "outputs" / "flwr" / run_id.group(1) / "summary.json"
        summary = json.loads(summary_file.read_text())
        assert summary["rounds"] == 5 and summary["rejected"] == []
        assert summary["dataset"] == "synthetic" and set(summary["final"]) == {
            "t0",
            "t1",
            "t2",
            "t3",
        }
        assert summary["runtime"] == "flwr run" and summary["status"] == "completed"
        assert summary["provenance"]["threads_per_silo"] is None  # the nodes' own business

        stopped = subprocess.run(
            [sys.executable, "-m", "fedmtl.app.cli", "deploy", "stop-local"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert stopped.returncode == 0 and "ended the local SuperLink" in stopped.stdout
        assert not any(alive(pid) for pid in superlink) and _listening(env) == []
    finally:
        end(_listening(env), grace=5)


@pytest.mark.timeout(600)
def test_deploy_local_serve_writes_the_connection_flwr_uses(tmp_path: Path) -> None:
    """``fedmtl deploy local DIR --serve`` writes the SuperLink connection ``consortium`` into the
    user's ``flwr`` config, keeping the user's own, and stays up; ``flwr`` reaches the deployment
    through it over TLS (its three SuperNodes online; a run over such a connection is the TLS test
    above); SIGTERM then stops every process the deployment started."""
    user_home = tmp_path / "user-flwr"
    user_home.mkdir()
    (user_home / "config.toml").write_text(
        '[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "x:1"\n'
    )
    directory = tmp_path / "deployment"
    args = ["deploy", "local", str(directory), "--app", str(ROOT), "--serve", "--rounds", "1"]
    with fedmtl_process(
        [*args, "train.max_steps=2"], tmp_path / "logs", FLWR_HOME=str(user_home)
    ) as serving:
        stdout = tmp_path / "logs" / "stdout.txt"
        deadline = time.monotonic() + 240
        while "the deployment is up" not in stdout.read_text():
            assert serving.poll() is None, (tmp_path / "logs" / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, stdout.read_text()
            time.sleep(0.5)
        connections = tomllib.loads((user_home / "config.toml").read_text())["superlink"]
        assert connections["mine"] == {"address": "x:1"} and connections["default"] == "mine"
        port = connections["consortium"]["address"].rsplit(":", 1)[1]
        assert connections["consortium"]["root-certificates"] == str(directory / "certs" / "ca.pem")
        command = re.search(r"flwr run (\S+) (\S+) --run-config (\S+) --stream", stdout.read_text())
        assert command and command.group(2) == "consortium"
        assert Path(command.group(3)) == directory / "run.toml"
        listed = subprocess.run(  # the connection reaches the SuperLink over TLS, as flwr run does
            [str(BIN / "flwr"), "supernode", "list", "consortium", "--format", "json"],
            env={**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(user_home)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stdout + listed.stderr
        nodes = json.loads(listed.stdout)["nodes"]
        assert [node["status"] for node in nodes] == ["online"] * 3

        started = descendants(serving.pid)
        serving.send_signal(signal.SIGTERM)
        assert serving.wait(timeout=60) == 0
        assert not any(alive(pid) for pid in started)
        assert listening(int(port)) == []
