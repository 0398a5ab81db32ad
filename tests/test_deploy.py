"""``fedmtl deploy``'s pieces: certificates, node keys, demo tables, node-config arguments and the
process manager (fedmtl/app/deploy/). The deployment itself: tests/test_deployment.py."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args

import fedmtl.app.deploy.command as deploy_command
import fedmtl.app.deploy.processes as deploy_processes
from fedmtl.app import cli
from fedmtl.app.deploy import (
    DEMO_SILO_TASKS,
    DEMO_TASKS,
    LocalDeployment,
    demo_tables,
    descendants,
    make_certificates,
    make_node_key,
    node_config_arg,
)
from fedmtl.app.deploy.processes import write_connection
from fedmtl.app.runtimes import OFFLINE_ENV, add_to_activate
from fedmtl.app.runtimes.environment import ACTIVATE_MARK
from fedmtl.app.runtimes.processes import Watch, command_line, listening
from fedmtl.datasets.schema import FeatureSchema


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_server_certificate_is_signed_by_the_ca_for_the_hosts(tmp_path: Path) -> None:
    files = make_certificates(tmp_path, hosts=("superlink.example.org", "10.0.0.5"), days=30)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    key = load_pem_private_key(files.server_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    for private in (files.ca_key, files.server_key):
        assert private.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_node_keys_are_what_flower_loads(tmp_path: Path) -> None:
    key = make_node_key(tmp_path, "silo0")
    private = load_ssh_private_key(key.private.read_bytes(), None)  # as flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert key.private.stat().st_mode & 0o077 == 0
    registered = try_load_public_key(key.public)  # as `flwr supernode register` does
    assert registered != try_load_public_key(make_node_key(tmp_path, "other").public)


def test_demo_tables_label_different_task_pairs(tmp_path: Path) -> None:
    tables, schema = demo_tables(tmp_path)
    assert [t.name for t in FeatureSchema.load(schema).targets] == list(DEMO_TASKS)
    for path, tasks in zip(tables, DEMO_SILO_TASKS, strict=True):
        frame = pd.read_csv(path)
        labelled = {t for t in DEMO_TASKS if t in frame and frame[t].notna().any()}
        assert labelled == set(tasks)


def test_node_config_argument_reads_back_as_flower_parses_it() -> None:
    config = {"data-file": "/data/my silo.csv", "silo-id": 2, "tasks": "a,b", "max-batch-size": 64}
    assert parse_config_args([node_config_arg(config)]) == config


def test_stop_ends_the_process_and_everything_below_it(tmp_path: Path) -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    with LocalDeployment(tmp_path, grace=5) as deployment:
        started = deployment.start("sleeper", [sys.executable, "-c", script])
        deadline = time.monotonic() + 30
        while not descendants(started.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        children = descendants(started.process.pid)
        assert children
    assert started.process.returncode is not None
    assert not [pid for pid in children if running(pid)]


def test_deploy_certs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["deploy", "certs", str(tmp_path), "--host", "link.example.org"])
    assert (tmp_path / "server.pem").is_file() and "ca.pem" in capsys.readouterr().out
    cli.main(["deploy", "node-key", str(tmp_path), "hospital-a"])
    assert (tmp_path / "hospital-a.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_processes_are_stopped_even_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), LocalDeployment(tmp_path, grace=5) as deployment:
        started = deployment.start("sleeper", ["sleep", "300"])
        raise RuntimeError("the test failed here")
    assert started.process.poll() is not None and not running(started.process.pid)


def test_the_connection_is_what_flwr_reads_and_other_connections_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "link.example.org:9093"\n'
    )
    ca = tmp_path / "ca.pem"
    written = write_connection("consortium", "127.0.0.1:4321", ca)
    assert written == tmp_path / "config.toml"
    connection = read_superlink_connection("consortium")
    assert connection is not None
    assert (connection.address, connection.root_certificates) == ("127.0.0.1:4321", str(ca))
    assert not connection.insecure
    mine = read_superlink_connection()  # the default one, untouched
    assert mine is not None and (mine.name, mine.address) == ("mine", "link.example.org:9093")


def test_an_activated_venv_has_the_offline_defaults(tmp_path: Path) -> None:
    """What `make install` adds to .venv/bin/activate: every offline default, once, and a value the
    shell already has wins."""
    script = tmp_path / "activate"
    script.write_text("# a venv's activate script\n")
    assert add_to_activate(script) and not add_to_activate(script)
    shell = f'source {script}; for k in {" ".join(OFFLINE_ENV)}; do echo "$k=${{!k}}"; done'
    printed = subprocess.run(
        ["bash", "-c", shell],
        env={"PATH": os.environ["PATH"], "WANDB_MODE": "online"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert dict(line.split("=", 1) for line in printed.split()) == {
        **OFFLINE_ENV,
        "WANDB_MODE": "online",
    }
    if (Path(sys.prefix) / ".installed").exists():  # this very venv, made by `make install`
        assert ACTIVATE_MARK in (Path(sys.prefix) / "bin" / "activate").read_text()


def test_stop_local_says_when_no_local_superlink_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the ports it listens on, never by name: ports nothing listens on end nothing."""
    monkeypatch.setattr(deploy_processes, "local_superlink_ports", lambda: (1, 2))
    monkeypatch.setattr(deploy_command, "local_superlink_ports", lambda: (1, 2))
    cli.main(["deploy", "stop-local"])
    assert (
        "no local SuperLink runs (nothing of yours listens on 127.0.0.1:1/2)"
        in capsys.readouterr().out
    )


def test_listening_finds_the_process_by_its_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listening(server.getsockname()[1]) == [os.getpid()]
        with socket.create_connection(server.getsockname()) as client:
            assert listening(client.getsockname()[1]) == []  # connected, not listening


def test_a_watch_ends_only_the_processes_it_claims_and_those_below_them() -> None:
    """What a simulation's watch does at its end: Ray's processes (claimed by the run's Ray
    directory in their command line) and their children die, orphaned or not; another child of
    this process (wandb's service, say) lives on."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    spawner = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(120)"
    claimed = subprocess.Popen([sys.executable, "-c", spawner, *sleeper, "fedmtl-ray-marker"])
    other = subprocess.Popen([*sleeper, "not-ours"])
    watch = Watch(lambda pid: "fedmtl-ray-marker" in command_line(pid), every=0.05)
    try:
        deadline = time.monotonic() + 60
        while len(descendants(claimed.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        [grandchild] = descendants(claimed.pid)
        watch.snapshot()
        ended = watch.stop(grace=5)
        assert sorted(ended) == sorted([claimed.pid, grandchild])
        claimed.wait(timeout=10)
        assert not running(grandchild)
        assert other.poll() is None and not running(claimed.pid)
    finally:
        for process in (claimed, other):
            process.kill()
            process.wait(timeout=10)
