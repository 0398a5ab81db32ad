"""``fedmtl deploy``: certificates, node keys, demo tables and a local deployment to try.

A consortium's deployment (docs/deployment.md) runs Flower's own processes: a SuperLink with TLS and
SuperNode authentication, one SuperNode per silo with its own data, and ``flwr run``. This module
makes what they need with the ``cryptography`` package and starts them on this machine:

- ``fedmtl deploy certs DIR [--host NAME ...]``: a certificate authority (``ca.pem``, ``ca.key``)
  and the SuperLink's TLS certificate (``server.pem``, ``server.key``) for the given host names
  and addresses (default ``localhost``, ``127.0.0.1``, ``::1``).
- ``fedmtl deploy node-key DIR NAME``: a SuperNode's key pair (``NAME.key``, OpenSSH EC P-384
  private key, stays on the silo; ``NAME.pub``, registered with ``flwr supernode register``).
- ``fedmtl deploy demo-data DIR``: three small tables, each labelling a different subset of three
  tasks, and the feature schema they share (``schema.json``).
- ``fedmtl deploy local DIR``: all of the above in DIR, then a SuperLink on 127.0.0.1 with TLS and
  node authentication, the three SuperNodes registered and started with their own tables, and the
  ``flwr_tables`` experiment run to completion with ``flwr run`` (``--serve``: leave the
  deployment up and print the ``flwr run`` command instead, until Ctrl-C). Every process gets its
  own ``FLWR_HOME`` and log file in DIR and is stopped by its process id.

:class:`LocalDeployment` is the process manager behind ``fedmtl deploy local`` (and the
integration test).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmtl.app.flwr_config import run_config, to_toml
from fedmtl.app.runtime import OFFLINE_ENV
from fedmtl.datasets.schema import FeatureSchema

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CONNECTION = "fedmtl-local"
"""The name of the SuperLink connection ``fedmtl deploy local`` writes for the ``flwr`` CLI."""
DEMO_TASKS = {"score": "regression", "flag": "binary", "level": "multiclass"}
DEMO_SILO_TASKS = (("score", "flag"), ("flag", "level"), ("level", "score"))
"""The tasks each demo silo labels: a different pair per silo."""


# ------------------------------------------------------------------------ certificates and keys
@dataclass(frozen=True)
class Certificates:
    """The files of a SuperLink's TLS setup."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, content: bytes) -> Path:
    """Write a private key readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(content)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365
) -> Certificates:
    """A certificate authority and the SuperLink's certificate, valid for ``hosts`` (DNS names or
    IP addresses) for ``days`` days. Keys are EC P-384; private keys are written mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmtl deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    files = Certificates(
        ca_cert=directory / "ca.pem",
        ca_key=_write_private(directory / "ca.key", _pem_key(ca_key)),
        server_cert=directory / "server.pem",
        server_key=_write_private(directory / "server.key", _pem_key(server_key)),
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    return files


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format, EC P-384, as Flower expects)."""

    private: Path
    public: Path


def make_node_key(directory: Path, name: str) -> NodeKey:
    """``NAME.key`` (private, mode 0600: it stays on the silo) and ``NAME.pub`` (registered)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(
        directory / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )
    return NodeKey(private, public)


# ----------------------------------------------------------------------------------- demo data
def demo_tables(directory: Path, seed: int = 0, rows: int = 160) -> tuple[list[Path], Path]:
    """Three silos' CSV tables and the feature schema they share (``schema.json``).

    Features: five numeric columns (one with missing cells) and a categorical ``region``; tasks
    (:data:`DEMO_TASKS`) depend on the features; silo i labels :data:`DEMO_SILO_TASKS` [i] only
    (the first silo leaves the other target column out, the others leave its cells empty) and
    its inputs are shifted a little. The schema is fitted on all three tables, as a consortium
    would fit it on a reference sample they agree on."""
    import pandas as pd  # noqa: PLC0415 - heavy, only for tables

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for silo, tasks in enumerate(DEMO_SILO_TASKS):
        x = rng.normal(loc=0.3 * silo, size=(rows, 5))
        region = rng.choice(["north", "south", "east"], size=rows)
        shift = np.where(region == "north", 0.5, np.where(region == "south", -0.5, 0.0))
        score = x[:, 0] - 0.5 * x[:, 1] + shift + 0.1 * rng.normal(size=rows)
        flag = (x[:, 2] + x[:, 0] + 0.2 * rng.normal(size=rows) > 0.3 * silo).astype(int)
        level = np.digitize(x[:, 3] - x[:, 4], [-0.7, 0.7])
        frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(5)})
        frame.loc[rng.random(rows) < 0.05, "x4"] = np.nan
        frame["region"] = region
        labels = {"score": score, "flag": flag, "level": level}
        for task in DEMO_TASKS:
            if task in tasks:
                frame[task] = labels[task]
            elif silo > 0:
                frame[task] = np.nan  # an empty column: this silo labels none of the task
        frames.append(frame)
    paths = []
    for silo, frame in enumerate(frames):
        path = directory / f"silo{silo}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    union = pd.concat(frames, ignore_index=True)
    features = [*(f"x{i}" for i in range(5)), "region"]
    columns = {c: union[c].to_numpy() for c in features}
    columns["region"] = union["region"].to_numpy(dtype=object)
    for task in DEMO_TASKS:
        columns[task] = union[task].to_numpy(dtype=np.float64)
    schema = FeatureSchema.fit(
        columns,
        features,
        DEMO_TASKS,  # type: ignore[arg-type]
        np.arange(len(union)),
    )
    return paths, schema.save(directory / "schema.json")


# ---------------------------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class Started:
    """A process this deployment started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]


@dataclass
class LocalDeployment:
    """Flower's processes on 127.0.0.1, each with its own ``FLWR_HOME`` and log in ``directory``.

    Use as a context manager: every process it started, and every process below it, is stopped
    on exit by its id (SIGTERM, then SIGKILL after ``grace`` seconds), whatever happened. ``env`` adds to the
    environment of every process (e.g. ``PYTHONPATH``)."""

    directory: Path
    env: Mapping[str, str] = field(default_factory=dict)
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    grace: float = 10.0
    started: list[Started] = field(default_factory=list)
    superlink_port: int = 0
    certificates: Certificates | None = None

    def __enter__(self) -> LocalDeployment:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------------- helpers
    def home(self, name: str) -> Path:
        """The ``FLWR_HOME`` of process ``name``."""
        path = self.directory / "homes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def environment(self, name: str) -> dict[str, str]:
        env = {**os.environ, **OFFLINE_ENV, **self.env, "FLWR_HOME": str(self.home(name))}
        env["PYTHONUNBUFFERED"] = "1"
        # Flower's processes start their helpers (flower-superexec, ...) from PATH
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def command(self, program: str) -> str:
        return str(self.bin_dir / program)

    def start(self, name: str, args: Sequence[str], cwd: Path | None = None) -> Started:
        """Start ``args`` in a session of its own, logging to DIR/NAME.log."""
        log = self.directory / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(
            list(args),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.environment(name),
            cwd=cwd or self.directory,
            start_new_session=True,
        )
        started = Started(name, process, log, handle)
        self.started.append(started)
        return started

    def flwr(self, args: Sequence[str], timeout: float, cwd: Path | None = None) -> str:
        """Run the ``flwr`` CLI (its ``FLWR_HOME`` holds the SuperLink connection); its output.
        A non-zero exit is a RuntimeError with the output."""
        done = subprocess.run(
            [self.command("flwr"), *args],
            env=self.environment("cli"),
            cwd=cwd or self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(
                f"flwr {' '.join(args[:2])} exited with {done.returncode}:\n{output}"
            )
        return output

    # ------------------------------------------------------------------------------ processes
    def start_superlink(self, certificates: Certificates, timeout: float = 60.0) -> int:
        """The SuperLink with TLS and SuperNode authentication; its ServerApps run with the
        deployment directory as working directory. Writes the ``flwr`` CLI's connection
        (:data:`CONNECTION`); returns the port of its API."""
        self.certificates = certificates
        self.superlink_port = free_port()
        process = self.start(
            "superlink",
            [
                self.command("flower-superlink"),
                "--ssl-ca-certfile",
                str(certificates.ca_cert),
                "--ssl-certfile",
                str(certificates.server_cert),
                "--ssl-keyfile",
                str(certificates.server_key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.superlink_port),
                "--database",
                str(self.home("superlink") / "state.db"),
            ],
        )
        wait_for_port(self.superlink_port, timeout, process.process)
        (self.home("cli") / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "127.0.0.1:{self.superlink_port}"\n'
            f'root-certificates = "{certificates.ca_cert.resolve()}"\n'
        )
        return self.superlink_port

    def register(self, keys: Sequence[NodeKey], timeout: float = 60.0) -> list[str]:
        """``flwr supernode register`` for each key (concurrently): the SuperLink then accepts
        their SuperNodes."""
        with ThreadPoolExecutor(max_workers=max(1, len(keys))) as pool:
            return list(
                pool.map(
                    lambda key: self.flwr(
                        ["supernode", "register", str(key.public), CONNECTION], timeout
                    ),
                    keys,
                )
            )

    def start_supernode(
        self,
        name: str,
        key: NodeKey,
        node_config: Mapping[str, Any],
        max_retries: int | None = None,
    ) -> Started:
        """A SuperNode authenticating with ``key``, with ``node_config`` (its data and limits);
        ``max_retries``: connection attempts before it gives up (None: Flower's default)."""
        assert self.certificates is not None, "start the SuperLink first"
        retries = [] if max_retries is None else ["--max-retries", str(max_retries)]
        return self.start(
            name,
            [
                self.command("flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.superlink_port}",
                "--root-certificates",
                str(self.certificates.ca_cert),
                "--auth-supernode-private-key",
                str(key.private),
                "--node-config",
                node_config_arg(node_config),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                *retries,
            ],
        )

    def run(self, app: Path, run_config_file: Path, timeout: float) -> str:
        """``flwr run APP CONNECTION --run-config FILE --stream`` to the end; its output."""
        return self.flwr(
            ["run", str(app), CONNECTION, "--run-config", str(run_config_file), "--stream"],
            timeout,
        )

    def stop(self) -> None:
        """Stop every process started (and those below it), newest first; close their logs."""
        for started in reversed(self.started):
            _stop_tree(started.process, self.grace)
            started.handle.close()
        self.started.clear()


def descendants(pid: int) -> list[int]:
    """The ids of every process below ``pid`` in the process tree (Linux ``/proc``; empty
    elsewhere). Flower starts some of its helpers in sessions of their own, out of reach of a
    process-group signal."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_tree(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to ``process`` and every process below it, each by its id; SIGKILL to those
    still running after ``grace`` seconds (and to what they started meanwhile)."""
    pids = [process.pid, *descendants(process.pid)]  # before the leader's children lose it
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if _alive(pid)]
    _signal([*survivors, *(d for pid in survivors for d in descendants(pid))], signal.SIGKILL)
    process.wait(timeout=grace)


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` of a mapping: ``key=value`` pairs, strings quoted (TOML values)."""
    return " ".join(
        f"{key}={json.dumps(value) if isinstance(value, str) else value}"
        for key, value in node_config.items()
    )


# ----------------------------------------------------------------------------------------- CLI
def _local(args: argparse.Namespace) -> None:
    directory = Path(args.directory).resolve()
    certificates = make_certificates(directory / "certs")
    tables, schema = demo_tables(directory / "data")
    keys = [make_node_key(directory / "keys", f"silo{i}") for i in range(len(tables))]
    config_file = directory / "run.toml"
    overrides = [
        "experiment=flwr_tables",
        f"dataset.schema={schema}",
        f"partition.num_silos={len(tables)}",
        f"num_rounds={args.rounds}",
        *args.overrides,
    ]
    config_file.write_text(to_toml(run_config(overrides)))
    app = Path(args.app).resolve()
    with LocalDeployment(directory, env={"PYTHONPATH": str(app)}) as deployment:
        port = deployment.start_superlink(certificates)
        print(f"SuperLink on 127.0.0.1:{port} (TLS, node authentication); logs in {directory}")
        deployment.register(keys)
        for i, (key, table) in enumerate(zip(keys, tables, strict=True)):
            deployment.start_supernode(f"silo{i}", key, {"data-file": str(table), "silo-id": i})
            print(f"SuperNode silo{i}: registered, data-file={table}")
        command = (
            f"FLWR_HOME={deployment.home('cli')} flwr run {app} {CONNECTION} "
            f"--run-config {config_file} --stream"
        )
        if args.serve:
            print(f"\nthe deployment is up; try:\n  {command}\nCtrl-C stops every process.")
            try:
                while all(s.process.poll() is None for s in deployment.started):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return
        print(f"$ {command}")
        output = deployment.run(app, config_file, timeout=args.timeout)
        print(output)
        run_id = re.search(r"Successfully started run (\d+)", output)
        print(f"results: {directory / 'outputs' / 'flwr' / (run_id.group(1) if run_id else '')}")


def main(argv: list[str]) -> None:
    """``fedmtl deploy SUBCOMMAND ...`` (module docstring)."""
    parser = argparse.ArgumentParser(prog="fedmtl deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="a CA and the SuperLink's TLS certificate")
    certs.add_argument("directory")
    certs.add_argument(
        "--host",
        action="append",
        help="a DNS name or IP address SuperNodes use to reach the SuperLink (repeatable; "
        f"default {', '.join(DEFAULT_HOSTS)})",
    )
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")
    node = commands.add_parser("node-key", help="a SuperNode's authentication key pair")
    node.add_argument("directory")
    node.add_argument("name")
    data = commands.add_parser("demo-data", help="three demo silo tables and their schema")
    data.add_argument("directory")
    local = commands.add_parser("local", help="a local deployment with TLS and node auth")
    local.add_argument("directory")
    local.add_argument("--app", default=".", help="the fedmtl project directory (default .)")
    local.add_argument("--rounds", type=int, default=3)
    local.add_argument("--timeout", type=float, default=900.0, help="for flwr run (seconds)")
    local.add_argument("--serve", action="store_true", help="stay up until Ctrl-C")
    local.add_argument("overrides", nargs="*", help="more experiment overrides (key=value)")
    args = parser.parse_args(argv)
    if args.command == "certs":
        files = make_certificates(
            Path(args.directory), tuple(args.host or DEFAULT_HOSTS), args.days
        )
        print(f"CA: {files.ca_cert} (give it to every SuperNode), key {files.ca_key}")
        print(f"SuperLink: {files.server_cert}, key {files.server_key}")
    elif args.command == "node-key":
        key = make_node_key(Path(args.directory), args.name)
        print(f"private key: {key.private} (stays on this node)")
        print(f"public key: {key.public} (register it: flwr supernode register {key.public})")
    elif args.command == "demo-data":
        tables, schema = demo_tables(Path(args.directory))
        print("\n".join([*(f"table: {t}" for t in tables), f"schema: {schema}"]))
    else:
        _local(args)
