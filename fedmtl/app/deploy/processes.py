"""Flower's processes on this machine: a SuperLink with TLS and node authentication, SuperNodes
with their own tables, ``flwr run``; each with its own ``FLWR_HOME`` and log, stopped by its
process id (:class:`LocalDeployment`, behind ``fedmtl deploy local`` and the integration test).
Also the user's side of it: a SuperLink connection in the ``flwr`` CLI's own config
(:func:`write_connection`), and the local SuperLink that a plain ``flwr run .`` leaves running
(:func:`stop_local_superlink`)."""

from __future__ import annotations

import contextlib
import json
import os
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

from flwr.cli import constant as flwr_cli
from flwr.cli.flower_config import write_superlink_connection
from flwr.cli.typing import SuperLinkConnection
from flwr.supercore.utils import get_flwr_home

from fedmtl.app.deploy.certificates import Certificates, NodeKey
from fedmtl.app.runtimes import OFFLINE_ENV
from fedmtl.app.runtimes.processes import alive, descendants, end, listening, send

CONNECTION = "fedmtl-local"
"""The name of the SuperLink connection ``fedmtl deploy local`` writes for the ``flwr`` CLI."""


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

    def flwr(
        self,
        args: Sequence[str],
        timeout: float,
        cwd: Path | None = None,
        stdout_only: bool = False,
    ) -> str:
        """Run the ``flwr`` CLI (its ``FLWR_HOME`` holds the SuperLink connection); its output
        (``stdout_only``: without stderr, e.g. for ``--format json``). A non-zero exit is a
        RuntimeError with the output."""
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
        return done.stdout if stdout_only else output

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

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``flwr supernode list`` shows ``count`` SuperNodes ``online`` (a started
        SuperNode is ``registered`` until its first connection succeeds); a TimeoutError names
        the statuses seen, a SuperNode that exits is a RuntimeError with its log."""
        deadline = time.monotonic() + timeout
        statuses: list[str] = []
        while True:
            listed = json.loads(
                self.flwr(
                    ["supernode", "list", CONNECTION, "--format", "json"], timeout, stdout_only=True
                )
            )
            statuses = [str(node.get("status")) for node in listed.get("nodes", [])]
            if statuses.count("online") >= count:
                return
            for started in self.started:
                if started.process.poll() is not None:
                    raise RuntimeError(
                        f"{started.name} exited with {started.process.returncode}; its log: "
                        f"{started.log}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{count} SuperNodes not online after {timeout:.0f} s (statuses: {statuses})"
                )
            time.sleep(1.0)

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


def _stop_tree(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to ``process`` and every process below it, each by its id; SIGKILL to those
    still running after ``grace`` seconds (and to what they started meanwhile)."""
    pids = [process.pid, *descendants(process.pid)]  # before the leader's children lose it
    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    send([*survivors, *(d for pid in survivors for d in descendants(pid))], signal.SIGKILL)
    process.wait(timeout=grace)


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``--node-config`` of a mapping: ``key=value`` pairs, strings quoted (TOML values)."""
    return " ".join(
        f"{key}={json.dumps(value) if isinstance(value, str) else value}"
        for key, value in node_config.items()
    )


def write_connection(name: str, address: str, root_certificates: Path) -> Path:
    """Add (or replace) the SuperLink connection ``name`` in the ``flwr`` CLI's config of this
    user (``$FLWR_HOME/config.toml``, else ``~/.flwr/config.toml``; Flower's own writer, other
    connections kept), so that ``flwr run . NAME`` reaches ``address`` over TLS; the file."""
    write_superlink_connection(
        SuperLinkConnection(name, address=address, root_certificates=str(root_certificates))
    )
    return get_flwr_home() / flwr_cli.FLOWER_CONFIG_FILE


def local_superlink_ports() -> tuple[int, int]:
    """The ports of the SuperLink that ``flwr run`` starts for its local simulation: its HTTP
    API and its Control API (Flower's defaults, 39091 and 39093, or
    ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT``)."""
    return int(flwr_cli.LOCAL_SUPERLINK_HTTP_API_PORT), int(flwr_cli.LOCAL_CONTROL_API_PORT)


def stop_local_superlink(grace: float = 10.0) -> list[int]:
    """End the local SuperLink that a plain ``flwr run .`` started in the background (it stays
    up after its runs) and every process below it (its ServerApps): the processes of this user
    listening on :func:`local_superlink_ports`, found by port, ended by id (SIGTERM, SIGKILL
    after ``grace`` seconds). The ids ended; none when no local SuperLink runs."""
    leaders = sorted({pid for port in local_superlink_ports() for pid in listening(port)})
    pids = [*leaders, *(child for pid in leaders for child in descendants(pid))]
    end(pids, grace)
    return pids
