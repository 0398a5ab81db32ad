"""``fedmtl`` with a ClientApp whose simulation worker dies: silo 1's process exits (``os._exit``)
on its train message of round 2, as a crashed Ray worker would. For the Ray crash test
(tests/test_faults.py), run as ``python -m tests.crash_app run ...`` from the repository root."""

from __future__ import annotations

import os
import sys

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmtl.app import launch
from fedmtl.app.cli import main
from fedmtl.app.runtimes import Shipment
from fedmtl.app.silo.client_app import make_client_app
from fedmtl.core import records
from fedmtl.core.records import TrainRequest

CRASH_SILO, CRASH_ROUND = 1, 2


def crashing_client_app(
    default_config_json: str | None = None, shipment: Shipment | None = None
) -> ClientApp:
    """fedmtl's ClientApp, but silo :data:`CRASH_SILO`'s worker dies in round :data:`CRASH_ROUND`."""
    inner = make_client_app(default_config_json, shipment)
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return inner(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        request = TrainRequest.from_config(records.request_parts(msg.content)[1])
        silo = context.node_config.get("partition-id")
        if silo == CRASH_SILO and request.server_round == CRASH_ROUND:
            os._exit(1)
        return inner(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return inner(msg, context)

    return app


if __name__ == "__main__":
    launch.make_client_app = crashing_client_app  # type: ignore[assignment]
    main(sys.argv[1:])
