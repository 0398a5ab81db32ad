"""What a runtime runs: the two apps of a run (:class:`Apps`) and the runner signature."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


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
a message it leaves to the ClientApp (:class:`fedmtl.app.silo.batch.BatchTrainer`)."""


@dataclass(frozen=True)
class Apps:
    """The ServerApp and the ClientApp of one run, the batched trainer the ``vectorized`` runtime
    hands a round's train messages to, what the ClientApp's processes share with the driver
    (:class:`Shipment`), and the event that asks the ServerApp to stop (set by a runtime whose
    ServerApp does not run in the main thread, on SIGINT or SIGTERM; the ServerApp was built
    with it)."""

    server: ServerApp
    client: ClientApp
    batch: BatchTrain | None = None
    shipment: Shipment | None = None
    stop: threading.Event | None = None


Runner = Callable[[Apps, Any, int], None]
"""A runtime: ``(apps, runtime params, number of silos) -> None``, running the apps to the end."""
