"""Intake: a round's replies checked, made robust and pooled, before any method sees them.

- **Train replies** (:func:`take_updates`): each reply parsed, its compressed arrays decoded
  (:func:`fedmtl.core.compression.decode`), and checked against what its silo was sent (:func:`~strategies.engine.replies.check_train_reply`, then the method's own
  :meth:`~strategies.engine.Method.check_update`); its example counts replaced by those the silo
  announced at discovery (capped by ``max_count_ratio``); updates beyond ``norm_bound`` times the
  round's median norm clipped or rejected (:mod:`strategies.engine.robust`). A refused reply is
  logged, listed (round, node, silo, reason) and left out: it never reaches the global model.
- **Evaluate replies** (:func:`pool_evaluations`): each silo's additive statistics of its own
  tasks, summed over silos per task, then turned into metrics, so pooled ("personal") metrics are
  exact over every silo's test rows.

Both keep, for the refused replies that carried non-finite numbers, the losses those replies
report per task (``non_finite``: silo id -> task -> loss, a non-finite one as +inf): evidence
that the model diverged (:mod:`strategies.engine.divergence`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, RecordDict

from fedmtl.core import records
from fedmtl.core.records import EvaluateReply, SiloInfo, TrainReply
from fedmtl.core.tasks import TaskSpec
from strategies.engine.dispatch import Dispatch, answered_node, answered_nodes
from strategies.engine.params import MethodParams
from strategies.engine.replies import (
    REPLY_ERRORS,
    ClientUpdate,
    check_evaluate_reply,
    check_train_reply,
    client_error,
    has_non_finite,
    reported_test_losses,
    reported_train_losses,
)
from strategies.engine.robust import bound_norms, count_caps, fixed_counts

log = logging.getLogger("fedmtl")


def rejection(server_round: int, node: int, silo: SiloInfo | None, reason: str) -> dict[str, Any]:
    """A refused reply as ``summary.json``'s ``rejected`` lists it (and the log says it)."""
    log.warning("round %d, node %s: %s", server_round, node, reason)
    return {
        "round": server_round,
        "node": node,
        "silo": silo.silo_id if silo else None,
        "reason": reason,
    }


@dataclass(frozen=True)
class Intake:
    """A training round's usable updates (by silo id), the replies refused, the bytes received
    (counted for every reply with content, accepted or not) and the losses reported by the
    refused replies that carried non-finite numbers (silo id -> task -> loss)."""

    updates: list[ClientUpdate]
    rejected: list[dict[str, Any]]
    bytes_up: int
    bytes_down: int = 0
    """Bytes sent besides the round's train messages (SecAgg+'s stages)."""
    non_finite: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def contributors(self) -> int:
        """How many silos' updates the round aggregates (an aggregate update counts its own)."""
        return sum(len(u.contributors) or 1 for u in self.updates)


def take_updates(
    sent: Dispatch,
    replies: Iterable[Message],
    silos: Mapping[int, SiloInfo],
    params: MethodParams,
    check_update: Callable[[ClientUpdate], None],
) -> Intake:
    """The checked, count-fixed and norm-bounded updates of the replies to ``sent`` (module
    docstring)."""
    server_round = sent.server_round
    rejected: list[dict[str, Any]] = []
    updates: list[ClientUpdate] = []
    non_finite: dict[int, dict[str, float]] = {}
    received = 0
    destinations = answered_nodes(sent.messages)
    for reply in replies:
        node = answered_node(reply, destinations)
        if reply.has_content():
            received += records.update_bytes(reply.content)
        try:
            if reply.has_error():
                raise client_error(reply.error.reason or "")
            silo = silos[node]
            parsed = TrainReply.from_content(reply.content)
            update = check_train_reply(
                node,
                parsed,
                sent.sent[node],
                silo,
                sent.update_mode,
                sent.model.serves,
                params.compression_spec(),
            )
            check_update(update)
            updates.append(update)
        except REPLY_ERRORS as err:
            reason = f"train reply rejected: {err}"
            rejected.append(rejection(server_round, node, silos.get(node), reason))
            non_finite.update(_non_finite(reply, silos.get(node), reported_train_losses))
    updates.sort(key=lambda u: u.silo.silo_id)
    cap, task_caps = count_caps(silos.values(), params.max_count_ratio)
    updates = [fixed_counts(u, silos[u.node_id], cap, task_caps) for u in updates]
    if params.norm_bound is not None:
        updates, refused = bound_norms(updates, params.norm_bound, params.norm_rule)
        for update, reason in refused:
            rejected.append(rejection(server_round, update.node_id, update.silo, reason))
    return Intake(updates, rejected, received, non_finite=non_finite)


def _non_finite(
    reply: Message, silo: SiloInfo | None, losses: Callable[[RecordDict], dict[str, float]]
) -> dict[int, dict[str, float]]:
    """``{silo id: the losses it reports for its tasks}`` when the refused ``reply`` of a known
    silo carried non-finite numbers, else nothing."""
    if silo is None or not reply.has_content() or not has_non_finite(reply.content):
        return {}
    return {silo.silo_id: {t: v for t, v in losses(reply.content).items() if t in silo.tasks}}


@dataclass(frozen=True)
class Evaluation:
    """Pooled personal metrics of one evaluation (None when no silo reported), each silo's own
    metrics, the replies refused and the test losses reported by the refused replies that carried
    non-finite numbers (silo id -> task -> loss)."""

    personal: dict[str, dict[str, float]] | None
    per_silo: dict[int, dict[str, dict[str, float]]]
    rejected: list[dict[str, Any]]
    non_finite: dict[int, dict[str, float]] = field(default_factory=dict)


def pool_evaluations(
    sent: Dispatch,
    replies: Iterable[Message],
    silos: Mapping[int, SiloInfo],
    tasks: Mapping[str, TaskSpec],
) -> Evaluation:
    """Each task's statistics summed over the silos that evaluated it, then its metrics; a task
    none of them has a labelled test row of (possible where labels are sparse) has none."""
    pooled: dict[str, dict[str, float]] = {}
    per_silo: dict[int, dict[str, dict[str, float]]] = {}
    rejected: list[dict[str, Any]] = []
    non_finite: dict[int, dict[str, float]] = {}

    destinations = answered_nodes(sent.messages)

    def order(reply: Message) -> int:
        silo = silos.get(answered_node(reply, destinations))
        return silo.silo_id if silo else -1

    for reply in sorted(replies, key=order):
        node = answered_node(reply, destinations)
        try:
            if reply.has_error():
                raise client_error(reply.error.reason or "")
            silo = silos[node]
            stats = check_evaluate_reply(EvaluateReply.from_content(reply.content), silo).stats
        except REPLY_ERRORS as err:
            reason = f"evaluate reply rejected: {err}"
            rejected.append(rejection(sent.server_round, node, silos.get(node), reason))
            non_finite.update(_non_finite(reply, silos.get(node), reported_test_losses))
            continue
        per_silo[silo.silo_id] = {
            task: tasks[task].finalize_metrics(task_stats) for task, task_stats in stats.items()
        }
        for task, task_stats in stats.items():
            target = pooled.setdefault(task, {})
            for key, value in task_stats.items():
                target[key] = target.get(key, 0.0) + value
    personal = {
        task: spec.finalize_metrics(pooled[task])
        for task, spec in tasks.items()  # in the dataset's task order
        if pooled.get(task, {}).get("n", 0.0) > 0
    }
    return Evaluation(personal or None, per_silo, rejected, non_finite)
