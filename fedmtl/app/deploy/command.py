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
  ``flwr_tables`` experiment run to completion with ``flwr run``. ``--serve``: leave the
  deployment up until Ctrl-C instead, write its SuperLink connection (``--connection``, default
  ``consortium``) into your ``flwr`` CLI's config and print the ``flwr run`` command to try. Every
  process gets its own ``FLWR_HOME`` and log file in DIR and is stopped by its process id.
- ``fedmtl deploy stop-local``: end the local SuperLink that a plain ``flwr run .`` starts in the
  background and leaves running, with its ServerApps (found by the ports it listens on).

:class:`LocalDeployment` is the process manager behind ``fedmtl deploy local`` (and the
integration test).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from fedmtl.app.deploy.certificates import DEFAULT_HOSTS, make_certificates, make_node_key
from fedmtl.app.deploy.demo import demo_tables
from fedmtl.app.deploy.flwr_config import run_config, to_toml
from fedmtl.app.deploy.processes import (
    CONNECTION,
    LocalDeployment,
    local_superlink_ports,
    stop_local_superlink,
    write_connection,
)


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
        if args.serve:
            deployment.wait_online(len(keys))
            _serve(deployment, args.connection, app, config_file)
            return
        command = (
            f"FLWR_HOME={deployment.home('cli')} flwr run {app} {CONNECTION} "
            f"--run-config {config_file} --stream"
        )
        print(f"$ {command}")
        output = deployment.run(app, config_file, timeout=args.timeout)
        print(output)
        run_id = re.search(r"Successfully started run (\d+)", output)
        print(f"results: {directory / 'outputs' / 'flwr' / (run_id.group(1) if run_id else '')}")


def _serve(deployment: LocalDeployment, connection: str, app: Path, config_file: Path) -> None:
    """Write the deployment's SuperLink connection for the user's ``flwr`` and wait for Ctrl-C
    (or for one of its processes to end)."""
    assert deployment.certificates is not None
    address = f"127.0.0.1:{deployment.superlink_port}"
    written = write_connection(connection, address, deployment.certificates.ca_cert)
    print(
        f"\nwrote the SuperLink connection {connection!r} to {written}:\n"
        f'  [superlink.{connection}]\n  address = "{address}"\n'
        f'  root-certificates = "{deployment.certificates.ca_cert}"\n'
        f"the deployment is up; try:\n"
        f"  flwr run {app} {connection} --run-config {config_file} --stream\n"
        "Ctrl-C stops every process.",
        flush=True,
    )
    try:
        while all(s.process.poll() is None for s in deployment.started):
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _stop_local() -> None:
    ended = stop_local_superlink()
    ports = "/".join(str(port) for port in local_superlink_ports())
    if ended:
        print(f"ended the local SuperLink and its processes: {' '.join(map(str, ended))}")
    else:
        print(f"no local SuperLink runs (nothing of yours listens on 127.0.0.1:{ports})")


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
    local.add_argument(
        "--connection",
        default="consortium",
        help="with --serve: the name of the SuperLink connection written to your flwr config "
        "(default consortium)",
    )
    local.add_argument("overrides", nargs="*", help="more experiment overrides (key=value)")
    commands.add_parser("stop-local", help="end the local SuperLink `flwr run .` left running")
    args, extra = parser.parse_known_args(argv)
    if args.command == "local" and all("=" in arg and not arg.startswith("-") for arg in extra):
        args.overrides += extra  # key=value overrides after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    elif args.command == "stop-local":
        _stop_local()
    else:
        _local(args)
