"""``balanced``: task-aware trunk aggregation with gradient balancing; ``strategy.weighting``
chooses the balancing method (any of :data:`strategies.balancing.WEIGHTINGS`: ``mgda``,
``pcgrad``, ``cagrad``, ``upgrad``, ``famo``, ...; the presets ``strategy=mgda`` etc. set it).

Let silo s hold tasks T_s with n_{s,t} labelled training examples of task t, and send (``per_task``
mode) its trunk update split per task, D_{s,t} (see :class:`fedmtl.core.training.TrunkAttribution`).
Each round, over the silos that replied:

    D_t = sum_{s holds t} n_{s,t} D_{s,t} / sum_{s holds t} n_{s,t}        (per-task update)
    J   = [D_t for the tasks t with at least one holder this round]         (T' x d, rows in task order)
    w   = weighting(J, L, tasks)                                            (strategies.balancing)
    Delta = J^T w                                                           (the combined trunk update)

and the server optimizer applies Delta (:mod:`strategies.engine.server_opt`). L_t is task t's loss
of the round's global model, the n_{s,t}-weighted mean of the silos' ``loss-before`` reports (used
by the loss-based methods). Heads are averaged per task over their holders.

``balancing`` chooses where the method runs:

- ``server`` (default): silos send per-task updates (upload x |T_s|), the server balances them.
- ``local``: every silo balances its own tasks' gradients at every local step and sends one joint
  update; the server averages them weighted by examples (FedAvg): no extra upload.
- ``both``: silos balance locally and send per-task updates (their shares w_t g_t), the server
  balances again.

Degenerate rounds: a task no silo holds in the round has no row (its head and any weighting state
stay as they were); a round where no task has a holder keeps the trunk. With one task, w = [1].
Replies with NaN/Inf are rejected before aggregation (the engine's intake), so J is always finite.
``summary.json`` reports the method under the weighting's name (``strategy: mgda``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedmtl.core.records import Arrays, TrainReply, TrainRequest
from fedmtl.core.registry import NoParams, PluginConfig
from strategies.balancing import WeightingChoice, build_weighting, weighting_from
from strategies.balancing.federated import balanced_update
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    MethodSetup,
    Round,
    SiloMethod,
    SiloTask,
    SiloTools,
    SumRule,
    TrunkAndHeads,
    TrunkStep,
    train_received,
    weighted_mean_delta,
)

Balancing = Literal["server", "local", "both"]


def _equal_weights() -> PluginConfig:
    return PluginConfig("mean", NoParams())


@dataclass(frozen=True)
class BalancedParams(MethodParams):
    """The common parameters, the balancing method (``weighting``: a name, or ``{name, ...its
    parameters}`` such as ``{name: cagrad, c: 0.4}``) and where it runs (``balancing``)."""

    weighting: WeightingChoice = field(default_factory=_equal_weights)
    balancing: Balancing = "server"

    def label(self, name: str) -> str:
        return self.weighting.name


@dataclass(frozen=True)
class BalancedSiloParams:
    """The weighting a silo applies at every local step (``{name, ...}``; None: plain steps)."""

    weighting: dict[str, Any] | None = None


class BalancedSilo(SiloMethod):
    """Plain local training, or (``local``/``both``) with the weighting applied to the silo's
    tasks' trunk gradients at every step (a fresh instance per round, seeded by the round seed)."""

    Params = BalancedSiloParams
    params: BalancedSiloParams

    def batchable(self) -> str | None:
        if self.params.weighting is None:
            return None
        return (
            f"silo-side balancing ('{self.params.weighting.get('name')}') weighs each silo's tasks"
        )

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        step_weights = None
        if self.params.weighting is not None:
            spec = dict(self.params.weighting)
            name = spec.pop("name")
            step_weights = build_weighting(
                name, spec, seed=tools.seed, key="local-weighting"
            ).weights
        return train_received(tools, received, request, step_weights=step_weights)


class Balanced(TrunkAndHeads[BalancedParams]):
    """Per-task trunk updates combined by the balancing method ``weighting``."""

    silo = BalancedSilo

    def __init__(self, params: BalancedParams, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.weighting = weighting_from(params.weighting, seed=setup.seed)
        """The server's balancing method: its state lives across rounds."""

    def silo_task(self, server_round: int) -> SiloTask:
        # A loss-based server weighting (DWA, FAMO, ...) weighs tasks by each holder's loss of
        # the received model before training.
        losses = self.params.balancing != "local" and self.weighting.needs_losses
        if self.params.balancing == "server":
            return SiloTask("per_task", loss_before=losses)
        local = {"weighting": self.params.weighting.to_dict()}
        return SiloTask(
            "joint" if self.params.balancing == "local" else "per_task", local, loss_before=losses
        )

    def secure_sums(self, server_round: int) -> SumRule:
        """Per-task means D_t (and the n_{s,t}-weighted losses L_t where the weighting reads
        them), or FedAvg's n_s-weighted trunk with ``balancing: local``."""
        if self.params.balancing == "local":
            return SumRule("examples")
        return SumRule(needs_losses=self.weighting.needs_losses)

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        trunk = model.trunk()
        if self.params.balancing == "local":
            weights = [float(u.num_examples) for u in updates]
            return TrunkStep(weighted_mean_delta(updates, list(trunk), weights, self.average))
        tasks = list(self.tasks)
        direction, task_weights = balanced_update(
            self.weighting, tasks, tasks, updates, trunk, round_.number, self.average
        )
        return TrunkStep(direction, task_weights)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.weighting.load_state_dict(state["weighting"])
