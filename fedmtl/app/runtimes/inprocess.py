"""The ``inprocess`` runtime: every silo's ClientApp called directly in this process through an
:class:`InProcessGrid` (a Flower ``Grid``). No Ray, no sockets: for tests and tiny runs."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid

from fedmtl.app.runtimes.apps import Apps
from fedmtl.app.runtimes.environment import (
    DeviceParams,
    check_device,
    silo_threads,
    using_threads,
)

try:  # Flower >= 1.42
    from flwr.supercore.task_identity import TaskIdentity
except ImportError:  # Flower 1.41 has no task identity
    TaskIdentity = None  # type: ignore[assignment,misc]

log = logging.getLogger("fedmtl")


@dataclass(frozen=True)
class InProcessParams(DeviceParams):
    """``runtime=inprocess``: ``device`` and ``num_threads``."""


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


def _set_server_identity() -> None:
    """Flower >= 1.42 stamps new messages with the process's task identity; set the server's, as
    Flower's own in-memory runtime does (older versions have no such identity)."""
    if TaskIdentity is None:
        return
    TaskIdentity.run_id = 0
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def run_inprocess(apps: Apps, params: InProcessParams, num_silos: int) -> None:
    check_device(params)
    grid = InProcessGrid(apps.client, num_silos, run_config={})
    with using_threads(silo_threads("inprocess", params)):
        apps.server(
            grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
