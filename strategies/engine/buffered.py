"""Buffered asynchronous aggregation (``system.mode: buffered``): FedBuff (Nguyen et al.,
AISTATS 2022, "Federated Learning with Buffered Asynchronous Aggregation").

Up to C (``system.concurrency``) silos train at once, each from the global model of the moment it
was sent. Each reply reaches the server at its simulated time t_send + t_s (the virtual clock,
:mod:`strategies.engine.system`); the server takes the replies in that order (ties by silo id) and,
once K (``system.buffer_size``) are in, aggregates them: update i, sent tau_i aggregations ago, is
scaled by its staleness weight

    s(tau_i) = (1 + tau_i)^(-a)        (``system.staleness_exponent`` a; FedBuff's a = 0.5)

and the method aggregates the scaled updates as it aggregates a synchronous round's, task-aware:
per task over its holders, e.g. h_t <- h_t + sum_i n_{i,t} s(tau_i) Delta h_{i,t} / sum_i n_{i,t}.
One aggregation is one round; then the idle online silos are sent the new model until C train
again. With K = C = every silo and a = 0 every round is a synchronous FedAvg round. An update whose
layout no longer fits the global model (a method that formed task groups, or changed its update
mode, since its silo was sent the model) is refused when it arrives (``rejected``).

:class:`Buffer` holds the updates in flight (checked when their replies came, kept until their
simulated arrival) and the number of aggregations so far; both are in the engine's checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from fedmtl.core.records import Arrays, SiloInfo
from fedmtl.core.training import UpdateMode
from strategies.engine.model import GlobalModel
from strategies.engine.replies import ClientUpdate


@dataclass(frozen=True)
class InFlight:
    """An update on its way: when it reaches the server (simulated seconds), the aggregations
    done when its silo was sent the model, and the update (checked against what it received)."""

    arrival: float
    version: int
    update: ClientUpdate


class Buffer:
    """FedBuff's updates in flight and the aggregations so far (module docstring)."""

    def __init__(self) -> None:
        self.in_flight: list[InFlight] = []
        self.version = 0

    def busy(self) -> set[int]:
        """The silos (ids) whose update is on its way: they are not sent the model again."""
        return {job.update.silo.silo_id for job in self.in_flight}

    def add(self, arrival: float, update: ClientUpdate) -> None:
        """An update sent at the current version that arrives at ``arrival``."""
        self.in_flight.append(InFlight(arrival, self.version, update))

    def take(self, count: int) -> list[InFlight]:
        """The ``count`` first updates to arrive (ties by silo id), out of the buffer."""
        self.in_flight.sort(key=lambda job: (job.arrival, job.update.silo.silo_id))
        taken, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        return taken

    def staleness(self, job: InFlight) -> int:
        """tau: the aggregations since ``job``'s silo was sent the model."""
        return self.version - job.version

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "in_flight": [
                {"arrival": job.arrival, "version": job.version, "update": asdict(job.update)}
                for job in self.in_flight
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.version = int(state["version"])
        self.in_flight = [
            InFlight(float(job["arrival"]), int(job["version"]), _update(job["update"]))
            for job in state["in_flight"]
        ]


def _update(values: Mapping[str, Any]) -> ClientUpdate:
    """A :class:`ClientUpdate` back from ``dataclasses.asdict`` (through a checkpoint)."""
    silo = dict(values["silo"])
    return ClientUpdate(
        **{
            **values,
            "silo": SiloInfo(**{**silo, "tasks": tuple(silo["tasks"])}),
            "contributors": tuple(values["contributors"]),
        }
    )


def scaled(update: ClientUpdate, weight: float) -> ClientUpdate:
    """``update`` with its deltas (and per-task trunk shares) times ``weight``, s(tau)."""
    if weight == 1.0:
        return update

    def times(arrays: Arrays) -> Arrays:
        return {k: (v * weight).astype(v.dtype) for k, v in arrays.items()}

    task_deltas = update.task_deltas
    return replace(
        update,
        deltas=times(update.deltas),
        task_deltas=None if task_deltas is None else {t: times(d) for t, d in task_deltas.items()},
    )


def fits(update: ClientUpdate, model: GlobalModel, update_mode: UpdateMode) -> bool:
    """Whether ``update`` (sent some aggregations ago) fits ``model`` and the round's update
    mode: each of its arrays is one of the model's, of the same shape, and it has per-task trunk
    shares exactly when the mode is ``per_task``."""
    arrays = model.arrays
    same = all(k in arrays and arrays[k].shape == v.shape for k, v in update.deltas.items())
    return same and (update.task_deltas is not None) == (update_mode == "per_task")
