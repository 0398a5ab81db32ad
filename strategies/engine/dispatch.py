"""Dispatch: one round's messages of one kind (train or evaluate), each carrying the arrays its
silo receives and the round's request, with the bytes of model arrays counted."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from fedmtl.core import records
from fedmtl.core.records import Arrays, SiloInfo
from fedmtl.core.training import UpdateMode
from strategies.engine.model import GlobalModel

Configure = Callable[[SiloInfo, Arrays, int], ConfigRecord | None]
"""``(silo, arrays, bytes) -> its message's config``, or None: the silo is not sent the message."""


@dataclass(frozen=True)
class Dispatch:
    """One round's messages of one kind and what they carried: the round's global model, the
    arrays each node received, the bytes of model arrays sent (in all, and to each node) and
    (train) the layout the replies' trunk updates must have."""

    server_round: int
    messages: list[Message]
    model: GlobalModel
    sent: dict[int, Arrays]
    bytes_down: int
    update_mode: UpdateMode = "joint"
    node_bytes: dict[int, int] = field(default_factory=dict)
    unasked: frozenset[int] = frozenset()
    """The sampled silos (ids) that were not sent the message (their config was None)."""


def dispatch(
    server_round: int,
    model: GlobalModel,
    shared: ArrayRecord,
    nodes: list[int],
    silos: dict[int, SiloInfo],
    payload: Callable[[SiloInfo], Arrays],
    config: ConfigRecord,
    message_type: str,
    update_mode: UpdateMode = "joint",
    configure: Configure | None = None,
) -> Dispatch:
    """Messages carrying to each node the arrays ``payload`` gives its silo and ``config`` (or
    the config ``configure`` gives it; a node it gives None is not sent anything). A global array
    sent unchanged (the same object) goes as its entry of ``shared``, the model serialised once
    for every node."""
    messages, sent, sizes, unasked = [], {}, {}, set()
    for node in nodes:
        arrays = payload(silos[node])
        record = ArrayRecord(
            {
                key: shared[key]
                if model.arrays.get(key) is value
                else records.to_array_record({key: value})[key]
                for key, value in arrays.items()
            }
        )
        nbytes = record.count_bytes()
        own = config if configure is None else configure(silos[node], arrays, nbytes)
        if own is None:
            unasked.add(silos[node].silo_id)
            continue
        sent[node] = arrays
        sizes[node] = nbytes
        messages.append(
            Message(
                records.request_content(record, own),
                dst_node_id=node,
                message_type=message_type,
                group_id=str(server_round),
            )
        )
    size = sum(sizes.values())
    return Dispatch(
        server_round, messages, model, sent, size, update_mode, sizes, frozenset(unasked)
    )


UNAVAILABLE = (
    ErrorCode.NODE_UNAVAILABLE,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    ErrorCode.MESSAGE_UNAVAILABLE,
)
"""Error codes of a reply the SuperLink writes itself: the node went offline (no heartbeat) or
the message or its reply expired. Not the silo's doing: such a node is not ignored for the run."""


def answered_nodes(messages: Iterable[Message]) -> dict[str, int]:
    """Message id -> its destination node, for messages already sent (the grid sets their ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages}


def answered_node(reply: Message, destinations: dict[str, int]) -> int:
    """The node whose reply ``reply`` is: its sender, or, for an error the SuperLink writes in
    place of a node's reply (sender ``SUPERLINK_NODE_ID``: the node went offline), the
    destination of the message it answers (``destinations``: :func:`answered_nodes`)."""
    sender = reply.metadata.src_node_id
    if sender != SUPERLINK_NODE_ID:
        return sender
    return destinations.get(reply.metadata.reply_to_message_id, sender)


def unavailable(reply: Message) -> bool:
    """Whether ``reply`` is an error the SuperLink wrote because the node or message is gone."""
    return reply.has_error() and reply.error.code in UNAVAILABLE
