"""A faulty silo's side of fault injection (:mod:`fedmtl.faults`): its reply corrupted.

Every runtime's silo answers through here (the ClientApp one message at a time, the vectorized
runtime's batch trainer for the silos it trained together), so a fault acts alike on
``inprocess``, ``vectorized`` and ``simulation``: the honest reply becomes an
:class:`~fedmtl.faults.Update` (its deltas and per-task trunk shares by their keys on the wire,
its counts), the fault corrupts it with the (seed, silo, round) generator, and the reply is
rebuilt around it (losses, steps and the method's numbers unchanged). A fault that replays the
silo's first update keeps it in the node's state (``context.state``, per scope), as the silo
keeps its other state; a resumed run starts that memory afresh.
"""

from __future__ import annotations

import dataclasses

from flwr.app import RecordDict

from fedmtl.core import records
from fedmtl.core.records import TrainReply
from fedmtl.faults import Fault, FaultContext, Update, round_rng, same_layout

FAULT_STATE = "fedmtl.fault"
"""Node-state record of a faulty silo's first update (per scope)."""


def as_update(reply: TrainReply) -> Update:
    """The arrays and counts of ``reply`` as a fault sees them."""
    return Update(reply.wire_arrays(), reply.num_examples, dict(reply.task_examples))


def with_update(reply: TrainReply, update: Update) -> TrainReply:
    """``reply`` with the arrays and counts of ``update``."""
    arrays = {key: update.arrays[key] for key in reply.wire_arrays()}
    return dataclasses.replace(
        reply.with_wire_arrays(arrays),
        num_examples=update.num_examples,
        task_examples=dict(update.task_examples),
    )


def corrupt_reply(
    fault: Fault,
    reply: TrainReply,
    state: RecordDict,
    scope: str,
    seed: int,
    silo_id: int,
    server_round: int,
) -> TrainReply:
    """The reply the faulty silo ``silo_id`` sends in ``server_round`` instead of ``reply``."""
    honest = as_update(reply)
    key = f"{FAULT_STATE}/{scope}" if scope else FAULT_STATE
    first = None
    if fault.remembers_first and key in state.array_records:
        first = Update(records.from_array_record(state.array_records[key]), 0.0, {})
    context = FaultContext(round_rng(seed, silo_id, server_round), server_round, first)
    corrupted = fault.corrupt(honest, context)
    if fault.remembers_first and (first is None or not same_layout(first.arrays, honest.arrays)):
        state.array_records[key] = records.to_array_record(honest.arrays)
    return with_update(reply, corrupted)
