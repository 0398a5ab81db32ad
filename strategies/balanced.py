"""Task-aware trunk aggregation with gradient balancing (one strategy per registered weighting).

Let silo s hold tasks T_s with n_{s,t} labelled training examples of task t, and send (``per_task``
mode) its trunk update split per task, D_{s,t} (see :class:`fedmtl.training.TrunkAttribution`).
Each round, over the silos that replied:

    D_t = sum_{s holds t} n_{s,t} D_{s,t} / sum_{s holds t} n_{s,t}        (per-task update)
    J   = [D_t for the tasks t with at least one holder this round]         (T' x d, rows in task order)
    w   = weighting(J, L, tasks)                                            (strategies.balancing)
    Delta = J^T w                                                           (the combined trunk update)

and the server optimizer applies Delta (:mod:`strategies.server_opt`). L_t is task t's loss of the
round's global model, the n_{s,t}-weighted mean of the silos' ``loss-before`` reports (used by the
loss-based weightings). Heads are averaged per task over their holders (base class).

``balancing`` chooses where the weighting runs:
- ``server`` (default): silos send per-task updates (upload x |T_s|), the server balances them.
- ``local``: every silo balances its own tasks' gradients at every local step and sends one joint
  update; the server averages them weighted by examples (FedAvg) - no extra upload.
- ``both``: silos balance locally and send per-task updates (their shares w_t g_t), the server
  balances again.

Degenerate rounds: a task no silo holds in the round has no row (its head and any weighting state
stay as they were); a round where no task has a holder keeps the trunk. With one task, w = [1].
Replies with NaN/Inf are rejected before aggregation (base class), so J is always finite.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from fedmtl.records import UpdateMode
from strategies.balancing import WEIGHTINGS, Weighting, build_weighting
from strategies.base import Arrays, ClientUpdate, StrategyParams, TaskAwareStrategy
from strategies.fedavg import weighted_mean_delta

log = logging.getLogger("fedmtl")


@dataclass(frozen=True)
class BalancedParams(StrategyParams):
    """The common strategy parameters plus where the weighting runs (``server``, ``local``,
    ``both``); each registered strategy adds its weighting's own parameters to these."""

    balancing: Literal["server", "local", "both"] = "server"


def flatten(arrays: Arrays, keys: list[str]) -> torch.Tensor:
    """The arrays ``keys`` concatenated into one float tensor (a row of J; a new copy)."""
    return torch.from_numpy(np.concatenate([arrays[k].reshape(-1) for k in keys]))


def unflatten(vector: torch.Tensor, like: Arrays) -> Arrays:
    """Split ``vector`` back into arrays shaped (and typed) like ``like``, in its key order."""
    values = vector.detach().cpu().numpy()
    out: Arrays = {}
    offset = 0
    for key, array in like.items():
        out[key] = values[offset : offset + array.size].reshape(array.shape).astype(array.dtype)
        offset += array.size
    return out


class Balanced(TaskAwareStrategy):
    """Per-task trunk updates combined by the weighting named ``weighting_name``."""

    weighting_name: ClassVar[str]
    params: BalancedParams

    @functools.cached_property
    def weighting_params(self) -> dict[str, Any]:
        """The weighting's own parameters (checked when the config was parsed)."""
        return weighting_params(self.params, self.weighting_name)

    @functools.cached_property
    def weighting(self) -> Weighting:
        """The server's weighting, built once: its state lives across rounds."""
        return build_weighting(
            self.weighting_name, self.weighting_params, seed=self.seed, key="strategy.params"
        )

    def update_mode(self) -> UpdateMode:
        return "joint" if self.params.balancing == "local" else "per_task"

    def client_weighting(self) -> tuple[str, dict[str, Any]] | None:
        if self.params.balancing == "server":
            return None
        return self.weighting_name, dict(self.weighting_params)

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> Arrays | None:
        if self.params.balancing == "local":
            return weighted_mean_delta(
                updates, list(trunk), [float(u.num_examples) for u in updates]
            )
        direction, self.round_task_weights = balanced_update(
            self.weighting, list(self.tasks), list(self.tasks), updates, trunk, server_round
        )
        return direction


def balanced_update(
    weighting: Weighting,
    tasks: list[str],
    all_tasks: list[str],
    updates: list[ClientUpdate],
    trunk: Arrays,
    server_round: int,
) -> tuple[Arrays | None, dict[str, float]]:
    """Delta = J^T w for the trunk arrays ``trunk`` over ``tasks`` (J from :func:`per_task_rows`,
    w from ``weighting``, whose state is keyed by each task's position in ``all_tasks``), and the
    task weights; None (and no weights) when no task has a holder or a needed loss is missing."""
    present, rows, losses = per_task_rows(tasks, updates, list(trunk))
    if not rows:
        return None, {}
    loss_tensor = None
    if weighting.needs_losses:
        loss_tensor = torch.tensor(losses, dtype=torch.float64)
        if not torch.isfinite(loss_tensor).all():
            log.warning("round %d: a task has no reported loss; trunk unchanged", server_round)
            return None, {}
    ids = [all_tasks.index(tasks[i]) for i in present]
    direction, weights = weighting(torch.stack(rows), loss_tensor, ids)
    task_weights = {tasks[i]: float(w) for i, w in zip(present, weights, strict=True)}
    return unflatten(direction, trunk), task_weights


def per_task_rows(
    tasks: list[str], updates: list[ClientUpdate], keys: list[str]
) -> tuple[list[int], list[torch.Tensor], list[float]]:
    """For each task with a holder among ``updates`` (in ``tasks`` order): its index in ``tasks``,
    D_t = sum_s n_{s,t} D_{s,t} / sum_s n_{s,t} flattened over ``keys``, and L_t, the same
    n_{s,t}-weighted mean of the holders' ``loss_before`` (NaN when none reported it)."""
    present, rows, losses = [], [], []
    for index, task in enumerate(tasks):
        holders = [
            (u.task_examples[task], u.task_deltas[task], u.loss_before.get(task))
            for u in updates
            if u.task_deltas is not None
            and task in u.task_deltas
            and u.task_examples.get(task, 0) > 0
        ]
        if not holders:
            continue
        total = float(sum(n for n, _, _ in holders))
        row = flatten(holders[0][1], keys) * (holders[0][0] / total)
        for n, deltas, _ in holders[1:]:
            row += flatten(deltas, keys) * (n / total)
        reported = [(n, loss) for n, _, loss in holders if loss is not None]
        count = sum(n for n, _ in reported)
        present.append(index)
        rows.append(row)
        losses.append(sum(n * loss for n, loss in reported) / count if count else float("nan"))
    return present, rows, losses


def weighting_params(params: BalancedParams, name: str) -> dict[str, Any]:
    """The fields of ``params`` that belong to weighting ``name``'s own parameters."""
    own = {f.name for f in dataclasses.fields(WEIGHTINGS.get(name).params)}
    return {k: v for k, v in dataclasses.asdict(params).items() if k in own}


def strategy_params_class(name: str) -> type[BalancedParams]:
    """``BalancedParams`` extended with the fields (and checks) of weighting ``name``'s params."""
    own = WEIGHTINGS.get(name).params
    clash = {f.name for f in dataclasses.fields(own)} & {
        f.name for f in dataclasses.fields(BalancedParams)
    }
    if clash:
        raise TypeError(f"weighting {name!r} parameters {sorted(clash)} clash with strategy params")
    hints = typing.get_type_hints(own)
    fields = [
        (
            f.name,
            hints[f.name],
            dataclasses.field(default=f.default)
            if f.default is not dataclasses.MISSING
            else dataclasses.field(default_factory=f.default_factory),
        )
        for f in dataclasses.fields(own)
    ]

    def __post_init__(self: Any) -> None:
        BalancedParams.__post_init__(self)
        own(**{f: getattr(self, f) for f, _, _ in fields})  # the weighting's own checks

    title = "".join(part.title() for part in name.split("_"))
    return dataclasses.make_dataclass(
        f"{title}StrategyParams",
        fields,
        bases=(BalancedParams,),
        frozen=True,
        namespace={"__post_init__": __post_init__, "__doc__": f"Parameters of strategy {name}."},
    )


def strategy_class(name: str) -> type[Balanced]:
    """The :class:`Balanced` subclass that combines per-task updates with weighting ``name``."""
    title = "".join(part.title() for part in name.split("_"))
    return type(f"{title}Strategy", (Balanced,), {"weighting_name": name, "__module__": __name__})
