"""The ``vectorized`` runtime: in process, with a round's train messages handed to a batched
trainer first (:class:`fedmtl.app.silo.batch.BatchTrainer`, through :attr:`Apps.batch`); what it
leaves, and every other message, reaches the ClientApp as in-process."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from flwr.app import Context, Message, MessageType, RecordDict

from fedmtl.app.runtimes.apps import Apps, BatchTrain
from fedmtl.app.runtimes.environment import (
    DeviceParams,
    check_device,
    silo_threads,
    using_threads,
)
from fedmtl.app.runtimes.inprocess import InProcessGrid
from fedmtl.core.checks import int_at_least


@dataclass(frozen=True)
class VectorizedParams(DeviceParams):
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
        super().__post_init__()
        int_at_least(self, "max_silos", 0)


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


def run_vectorized(apps: Apps, params: VectorizedParams, num_silos: int) -> None:
    check_device(params)
    if apps.batch is None:
        raise ValueError("the vectorized runtime needs Apps.batch (fedmtl.app.launch builds it)")
    grid = VectorizedGrid(apps.client, num_silos, run_config={}, batch=apps.batch)
    with using_threads(silo_threads("vectorized", params)):
        apps.server(
            grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
