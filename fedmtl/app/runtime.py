"""Runtimes: where the ServerApp and the ClientApps of a run execute.

- ``inprocess``: every silo's ClientApp is called directly in this process through an
  :class:`InProcessGrid` (a Flower ``Grid``). No Ray, no sockets: for tests and tiny runs.
- ``vectorized``: in-process, but the train messages of a round that can be trained together go
  to one batched computation (:class:`VectorizedGrid`, :mod:`fedmtl.app.vectorized`); the others,
  and every other message, reach the ClientApp as in-process.
- ``simulation``: Flower's simulation engine on Ray, one virtual SuperNode per silo, with client
  resources (CPUs, GPU fraction) from the config; ``ray_address`` joins an existing Ray cluster.

All run the same ServerApp and ClientApp (:mod:`fedmtl.app.server_app`, :mod:`fedmtl.app.client_app`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedmtl.core.checks import int_at_least, non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry

try:  # Flower >= 1.42
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # Flower 1.41 has no task identity
    TaskIdentity = None  # type: ignore[assignment,misc]

log = logging.getLogger("fedmtl")

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_offline_env() -> None:
    """Offline-safe defaults; a value the user already set is kept."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


class Shipment:
    """An object the driver built that every client process needs: the run's experiment (dataset
    and partition).

    On the simulation runtime the driver puts it into Ray's object store once (:meth:`put`);
    from then on a pickled shipment carries only the reference, and each worker process fetches
    the object once (:meth:`get`, cached per process) instead of building it again: seconds of
    imports and partitioning per worker, and data files a worker machine may not have. Elsewhere
    :meth:`get` returns the object itself.
    """

    _fetched: ClassVar[dict[str, Any]] = {}  # per process: reference -> object

    def __init__(self, value: Any) -> None:
        self._value: Any = value
        self._ref: Any = None

    def put(self) -> None:
        """Put the object into Ray's object store (Ray must be initialised)."""
        import ray  # noqa: PLC0415 - heavy, only on the simulation runtime

        self._ref = ray.put(self._value)

    def get(self) -> Any:
        if self._value is not None:
            return self._value
        key = self._ref.hex()
        if key not in Shipment._fetched:
            import ray  # noqa: PLC0415 - heavy, only in Ray worker processes

            Shipment._fetched[key] = ray.get(self._ref)
        return Shipment._fetched[key]

    def __getstate__(self) -> dict[str, Any]:
        """Once in the object store, only the reference travels."""
        return {"_value": self._value if self._ref is None else None, "_ref": self._ref}


BatchTrain = Callable[[list[tuple[Message, Context]]], list[Message | None]]
"""Answers many train messages at once: ``[(message, node context)] -> [reply or None]``, None for
a message it leaves to the ClientApp (:class:`fedmtl.app.vectorized.BatchTrainer`)."""


@dataclass(frozen=True)
class Apps:
    """The ServerApp and the ClientApp of one run, the batched trainer the ``vectorized`` runtime
    hands a round's train messages to, and what the ClientApp's processes share with the driver
    (:class:`Shipment`)."""

    server: ServerApp
    client: ClientApp
    batch: BatchTrain | None = None
    shipment: Shipment | None = None


Runner = Callable[[Apps, Any, int], None]
"""A runtime: ``(apps, runtime params, number of silos) -> None``, running the apps to the end."""


@dataclass(frozen=True)
class SimulationParams:
    """Flower simulation engine (Ray) settings.

    ``num_cpus`` / ``num_gpus``: resources of one ClientApp (a GPU fraction such as 0.25 packs four
    clients on a GPU). ``ray_num_cpus``: CPUs the local Ray instance may use (null: all).
    ``ray_address``: address of an existing Ray cluster (``auto`` or ``host:port``); null starts a
    local one.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_num_cpus: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        positive(self, "num_cpus")
        non_negative(self, "num_gpus")
        if self.ray_num_cpus is not None:
            int_at_least(self, "ray_num_cpus", 1)


@dataclass(frozen=True)
class InProcessParams:
    """``device``: where the silos train: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class VectorizedParams(InProcessParams):
    """In-process, with the sampled silos of a round trained together (:mod:`fedmtl.core.vectorized`).

    ``device`` as for ``inprocess`` (one GPU at most). ``max_silos``: silos per batched
    computation (memory grows with it: parameters, gradients and optimizer state per silo; 0: the
    whole round at once). ``precision``: the forward pass in ``float32`` (results equal the
    sequential runtime's up to rounding) or autocast to ``bfloat16`` / ``float16`` (mixed
    precision; results then differ more).
    """

    max_silos: int = 256
    precision: Literal["float32", "bfloat16", "float16"] = "float32"

    def __post_init__(self) -> None:
        int_at_least(self, "max_silos", 0)


def client_device(runtime_name: str, params: Any) -> str:
    """The torch device a ClientApp trains on: CUDA only when this client was given a GPU.

    simulation: ``num_gpus > 0`` (Ray then makes the GPU visible to the client's actor);
    inprocess and vectorized: ``device`` (``auto`` picks CUDA when visible).
    """
    cuda = torch.cuda.is_available()
    if runtime_name == "simulation":
        return "cuda" if params.num_gpus > 0 and cuda else "cpu"
    if isinstance(params, InProcessParams) and params.device != "auto":
        return params.device
    return "cuda" if cuda else "cpu"


def check_device(params: InProcessParams) -> None:
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.device", "is cuda but no CUDA GPU is visible here.", "use auto or cpu."
        )


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


class InProcessGrid(Grid):
    """A Flower ``Grid`` that delivers each message by calling the ClientApp in this process.

    Node ``i`` (id ``NODE_ID_BASE + i``) holds silo ``i`` (node config ``partition-id``, as in
    Flower's simulation), or has ``node_configs[i]`` (e.g. a silo's own ``data-file``); each node
    keeps its own ``Context``, so ``context.state`` persists across rounds exactly as on a
    SuperNode. A ClientApp exception comes back as an error reply, as it would from a real node.
    """

    NODE_ID_BASE = 1000

    def __init__(
        self,
        client_app: Any,
        num_nodes: int,
        run_config: dict[str, Any],
        node_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.client_app = client_app
        if node_configs is None:
            node_configs = [
                {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
            ]
        self.contexts = {
            self.NODE_ID_BASE + i: Context(
                run_id=0,
                node_id=self.NODE_ID_BASE + i,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i, node_config in enumerate(node_configs)
        }
        self._run: Any = None
        self._replies: dict[str, Message] = {}
        self._pushed = 0
        _set_server_identity()

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _deliver(self, message: Message) -> Message:
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, "no such node"), reply_to=message)
        try:
            return self.client_app(message, context)
        except Exception as err:  # a failing client must not kill the run
            log.warning("node %s raised %s: %s", context.node_id, type(err).__name__, err)
            reason = f"{type(err).__name__}: {err}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            self._pushed += 1
            key = str(self._pushed)  # unique for the grid's lifetime, whatever was pulled
            self._replies[key] = self._deliver(message)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._deliver(message) for message in messages]


class VectorizedGrid(InProcessGrid):
    """An :class:`InProcessGrid` whose ``send_and_receive`` hands the train messages among the
    messages it is given to ``batch`` first, which answers those it can train together; every
    message it leaves (None), and every other message, is delivered to the ClientApp as
    in-process. Replies come back in the order of the messages."""

    def __init__(
        self, client_app: Any, num_nodes: int, run_config: dict[str, Any], batch: BatchTrain
    ) -> None:
        super().__init__(client_app, num_nodes, run_config)
        self.batch = batch

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies: list[Message | None] = [None] * len(messages)
        train = [
            i
            for i, message in enumerate(messages)
            if message.metadata.message_type == MessageType.TRAIN
            and message.metadata.dst_node_id in self.contexts
        ]
        if train:
            batch = [(messages[i], self.contexts[messages[i].metadata.dst_node_id]) for i in train]
            for i, reply in zip(train, self.batch(batch), strict=True):
                replies[i] = reply
        return [
            self._deliver(message) if reply is None else reply
            for message, reply in zip(messages, replies, strict=True)
        ]


def _set_server_identity() -> None:
    """Flower >= 1.42 stamps new messages with the process's task identity; set the server's, as
    Flower's own in-memory runtime does (older versions have no such identity)."""
    if TaskIdentity is None:
        return
    TaskIdentity.run_id = 0
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def _run_inprocess(apps: Apps, params: InProcessParams, num_silos: int) -> None:
    check_device(params)
    grid = InProcessGrid(apps.client, num_silos, run_config={})
    apps.server(
        grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    )


def _run_vectorized(apps: Apps, params: VectorizedParams, num_silos: int) -> None:
    check_device(params)
    if apps.batch is None:
        raise ValueError("the vectorized runtime needs Apps.batch (fedmtl.app.launch builds it)")
    grid = VectorizedGrid(apps.client, num_silos, run_config={}, batch=apps.batch)
    apps.server(
        grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    )


def _run_simulation(apps: Apps, params: SimulationParams, num_silos: int) -> None:
    # Ray and Flower's simulation engine take seconds to import: only simulated runs pay for it.
    from flwr.simulation import run_simulation  # noqa: PLC0415 - heavy (Ray), only for the simulation runtime

    check_resources(params)
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True}
    if params.ray_address is not None:
        init_args["address"] = params.ray_address
    elif params.ray_num_cpus is not None:
        init_args["num_cpus"] = params.ray_num_cpus
    backend_config = {
        "client_resources": {"num_cpus": params.num_cpus, "num_gpus": params.num_gpus},
        "init_args": init_args,
    }
    if apps.shipment is not None:
        _start_ray(init_args)
        apps.shipment.put()
    # Ray warns about a future change to GPU visibility for num_gpus=0 actors; nothing to act on.
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
    run_simulation(
        server_app=apps.server,
        client_app=apps.client,
        num_supernodes=num_silos,
        backend_config=backend_config,
    )


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


RUNTIMES: Registry[Runner] = Registry("runtime")
RUNTIMES.register("inprocess", params=InProcessParams)(_run_inprocess)
RUNTIMES.register("simulation", params=SimulationParams)(_run_simulation)
RUNTIMES.register("vectorized", params=VectorizedParams)(_run_vectorized)
