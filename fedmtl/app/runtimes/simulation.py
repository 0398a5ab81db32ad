"""The ``simulation`` runtime: Flower's simulation engine on Ray, one virtual SuperNode per silo,
with client resources (CPUs, GPU fraction) from the config; ``ray_address`` joins an existing Ray
cluster. The driver's experiment reaches the workers through Ray's object store (:class:`Shipment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmtl.app.runtimes.apps import Apps
from fedmtl.app.runtimes.environment import check_threads
from fedmtl.app.runtimes.processes import Watch, command_line
from fedmtl.core.checks import int_at_least, non_negative, positive
from fedmtl.core.errors import ConfigError


@dataclass(frozen=True)
class SimulationParams:
    """Flower simulation engine (Ray) settings.

    ``num_cpus`` / ``num_gpus``: resources of one ClientApp (a GPU fraction such as 0.25 packs four
    clients on a GPU). ``ray_num_cpus``: CPUs the local Ray instance may use (null: all).
    ``ray_address``: address of an existing Ray cluster (``auto`` or ``host:port``); null starts a
    local one. ``num_threads``: torch's intra-op threads in each ClientApp's worker (null: its
    CPU share ``num_cpus``, at least 1).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_num_cpus: int | None = None
    ray_address: str | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        check_threads(self)
        positive(self, "num_cpus")
        non_negative(self, "num_gpus")
        if self.ray_num_cpus is not None:
            int_at_least(self, "ray_num_cpus", 1)


log = logging.getLogger("fedmtl")

RAY_GRACE_S = 5.0
"""How long the processes of a local Ray get to end after SIGTERM, before SIGKILL."""
RAY_CONNECT_TIMEOUT_S = 5.0
RAY_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
"""Where a running local Ray cluster writes its address (what ``address="auto"`` looks up)."""


def check_ray_address(address: str) -> None:
    """A ConfigError unless a Ray cluster answers at ``address`` (``auto``: the cluster named by
    ``RAY_ADDRESS`` or the local cluster file) within a few seconds: joining an address where
    nothing listens would otherwise wait for many minutes."""
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target and RAY_CLUSTER_FILE.is_file():
            target = RAY_CLUSTER_FILE.read_text().strip()
        if not target or target == "auto":
            raise ConfigError(
                "runtime.ray_address",
                "is auto but no running Ray cluster was found (no RAY_ADDRESS, no local cluster).",
                "start one (`ray start --head`), give its host:port, or set it to null for a local one.",
            )
    host, _, port = target.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), RAY_CONNECT_TIMEOUT_S):
            return
    except (OSError, ValueError) as err:
        raise ConfigError(
            "runtime.ray_address",
            f"no Ray cluster answers at {target!r} ({err}).",
            "check the head node's host:port (ray status), or set it to null for a local Ray.",
        ) from None


def check_resources(params: SimulationParams) -> None:
    """Refuse requests that would leave Ray waiting forever: resources a local Ray cannot give,
    or the address of a cluster that does not answer."""
    if params.ray_address is not None:
        check_ray_address(params.ray_address)
        return
    if params.num_gpus > 0 and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.num_gpus",
            f"asks for {params.num_gpus} GPU per client but no CUDA GPU is visible here.",
            "set runtime.num_gpus=0 to train on CPUs.",
        )
    available = params.ray_num_cpus or os.cpu_count() or 1
    if params.num_cpus > available:
        raise ConfigError(
            "runtime.num_cpus",
            f"asks for {params.num_cpus} CPUs per client but Ray has {available}.",
            f"set runtime.num_cpus to at most {available}.",
        )


def run_simulation(apps: Apps, params: SimulationParams, num_silos: int) -> None:
    """Run the apps on Flower's simulation engine. A local Ray gets a temporary directory of its
    own (removed afterwards) and every process it started is ended by its id when the run ends,
    however it ends. SIGINT or SIGTERM asks the ServerApp to stop (``apps.stop``: the engine stops
    while it waits for replies and writes ``status: interrupted``); a second one stops at once."""
    # Ray and Flower's simulation engine take seconds to import: only simulated runs pay for it.
    from flwr.simulation import run_simulation as flower_simulation  # noqa: PLC0415 - heavy (Ray), only for the simulation runtime

    check_resources(params)
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True}
    temp_dir = None
    if params.ray_address is not None:
        init_args["address"] = params.ray_address
    else:
        temp_dir = tempfile.mkdtemp(prefix="fedmtl-ray-")  # short: Ray's sockets live in it
        init_args["_temp_dir"] = temp_dir
        if params.ray_num_cpus is not None:
            init_args["num_cpus"] = params.ray_num_cpus
    backend_config = {
        "client_resources": {"num_cpus": params.num_cpus, "num_gpus": params.num_gpus},
        "init_args": init_args,
    }
    # A local Ray's processes are ours: those this process starts whose command line names the
    # run's Ray directory (gcs_server, raylet, ...), and everything below them (the workers).
    watch = None
    if temp_dir is not None:
        ray_dir = temp_dir
        watch = Watch(lambda pid: ray_dir in command_line(pid))
    try:
        if apps.shipment is not None:
            _start_ray(init_args)
            apps.shipment.put()
        # Ray warns about a future change to GPU visibility for num_gpus=0 actors.
        warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
        with stopping_on_signals(apps.stop):  # after ray.init, which installs handlers of its own
            flower_simulation(
                server_app=apps.server,
                client_app=apps.client,
                num_supernodes=num_silos,
                backend_config=backend_config,
            )
    finally:
        if watch is not None and temp_dir is not None:
            _end_local_ray(watch, temp_dir)


@contextlib.contextmanager
def stopping_on_signals(stop: threading.Event | None) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` (the ServerApp, in Flower's thread, stops at
    its next wait for replies); a second signal raises KeyboardInterrupt here, at once. Outside
    the main thread (where signals cannot be handled), or without an event, nothing changes."""
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_to_stop(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(f"signal {signum} again")
        stop.set()
        log.warning("stopping the run after the replies in flight (signal again to stop at once)")

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _end_local_ray(watch: Watch, temp_dir: str) -> None:
    """Shut the local Ray down, end by id every process it started that still runs (a worker
    busy with a task outlives ``ray.shutdown``, orphaned), then remove its temp dir."""
    import ray  # noqa: PLC0415 - heavy, only on the simulation runtime

    if ray.is_initialized():
        ray.shutdown()
    left = watch.stop(grace=RAY_GRACE_S)
    if left:
        log.debug("ended %d processes left by this run's Ray", len(left))
    _remove(temp_dir, RAY_GRACE_S)


def _remove(directory: str, grace: float) -> None:
    """Remove ``directory``, trying again for up to ``grace`` seconds: a Ray process that is
    ending may still write its last log lines into it while it is removed."""
    deadline = time.monotonic() + grace
    while True:
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.exists(directory):
            return
        if time.monotonic() > deadline:
            log.warning(
                "could not remove Ray's temporary directory %s; remove it by hand", directory
            )
            return
        time.sleep(0.2)


def _start_ray(init_args: dict[str, Any]) -> None:
    """Start (or join) Ray as Flower's Ray backend would, so that the driver can put objects into
    the object store before the simulation starts: workers get the driver's ``sys.path`` as their
    ``PYTHONPATH`` (a worker machine's environment knows nothing of it) and no dashboard."""
    import ray  # noqa: PLC0415 - heavy, only on the simulation runtime

    if ray.is_initialized():
        return
    paths = [*sys.path, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
    ray.init(
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
        **{"include_dashboard": False, **init_args},
    )
