"""``fedcmoo``: FedCMOO (Askin et al., AISTATS 2025, "Federated Communication-Efficient
Multi-Objective Optimization"): silos send one joint update and a compressed sketch of their
per-task gradients; the server estimates the task Gramian from the sketches and a balancing method
turns it into the task weights the silos train with.

Each round r, silo s (tasks T_s, k = |T_s|) receives the model and the weights w^(r):

1. the first local step's per-task trunk gradients J_s = [g_{s,t}]_{t in T_s} (k x d, at the
   received model, on the step's batch) are compressed (``sketch``, about ``budget`` x d
   floats; :mod:`strategies.sketch`): ``randsvd``, a rank-r randomised SVD of J_s^T folded into
   a near-square matrix; ``topk``, its largest entries; ``none``, J_s itself;
2. it trains with trunk gradient sum_{t in T_s} T w_t g_t at every step (T w = 1 for uniform w:
   the plain sum of task losses; heads get their own task's gradient) and sends the update.

The server averages the trunk updates (FedAvg's w_s = n_s, or ``silo_weighting: uniform`` as the
authors' code) and the heads per task over their holders, then estimates

    D_t = sum_{s holds t} n_{s,t} Jhat_{s,t} / sum_{s holds t} n_{s,t},   Ghat = D D^T

from the decompressed sketches Jhat_s and sets w^(r+1) = weighting(Ghat) (``weighting``, any
Gramian weighting of :data:`strategies.balancing.WEIGHTINGS`; default ``mgda``, the paper's
min-norm objective). A task no silo sketched keeps its weight; the others share the rest.
w^(1) = 1/T.

Where this differs from the authors' code: they approach the min-norm weights by projected
gradient steps warm-started from the last round's (``scale_n_iter``, ``scale_lr``); here the
weighting solves its problem (``mgda``: exactly). Their default also scales each head's gradient
by w_t (``scale_decoders``); here heads keep their own task's gradient, as fedmtl's local
balancing does. And two choices fedmtl makes where one round is one exchange: the paper's
round has two (sketches up, weights down, then training); here the sketches travel with the
update, so the weights a silo trains with in round r come from the sketches of round r - 1 (one
round late; round 1 trains with 1/T). And the estimate is the authors' one-way ("direct") one,
Ghat = D D^T of the decompressed sketches: their two-way correction needs a second exchange in
the round (the compressed sum sent back to the silos). Bytes up are what travels: the update plus the sketch
arrays (``update_bytes``), against k x d of the per-task shares that UPGrad's silos send.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmtl.core.checks import positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import Arrays, SiloInfo, TrainReply, TrainRequest
from fedmtl.core.registry import PluginConfig
from strategies.balancing import WEIGHTINGS, WeightingChoice, weighting_from
from strategies.balancing.linalg import gramian
from strategies.engine import (
    AveragingParams,
    ClientUpdate,
    GlobalModel,
    MethodSetup,
    Purpose,
    ReplyError,
    Round,
    SiloMethod,
    SiloTask,
    SiloTools,
    TrunkAndHeads,
    TrunkStep,
    silo_weights,
    train_reply,
    weighted_mean_delta,
)
from strategies.sketch import SKETCHES, SketchKind, compress, decompress, sketch_shapes

ROW = "sketch-row/"
"""Method metric ``sketch-row/<task>``: the row of the silo's sketch that holds task's gradient."""


def _mgda() -> PluginConfig:
    return PluginConfig("mgda", WEIGHTINGS.parse("mgda", {}))


@dataclass(frozen=True)
class FedCMOOParams(AveragingParams):
    """FedAvg's parameters, the weighting that reads the estimated Gramian (``weighting``), the
    sketch (``sketch``) and its size in floats per trunk parameter (``budget``)."""

    weighting: WeightingChoice = field(default_factory=_mgda)
    sketch: SketchKind = "randsvd"
    budget: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "budget")
        if self.sketch not in SKETCHES:
            raise ConfigError(
                "sketch",
                f"must be one of {list(SKETCHES)}, got {self.sketch!r}.",
                "use randsvd (the paper's), topk, or none (the exact per-task gradients).",
            )
        factory = WEIGHTINGS.get(self.weighting.name).factory
        if not factory.uses_gramian or factory.needs_losses:
            raise ConfigError(
                "weighting",
                f"'{self.weighting.name}' does not weigh tasks by their Gramian alone: FedCMOO "
                "estimates the Gramian only.",
                "use mgda (the paper's), upgrad, cagrad, nash_mtl, ... (docs/balancing.md).",
            )


@dataclass(frozen=True)
class FedCMOOSiloParams:
    """The trunk multipliers T w_t by task, and the sketch the silo sends."""

    weights: dict[str, float] = field(default_factory=dict)
    sketch: str = "randsvd"
    budget: float = 1.0

    def __post_init__(self) -> None:
        positive(self, "budget")
        if self.sketch not in SKETCHES:
            raise ConfigError("sketch", f"must be one of {list(SKETCHES)}.")
        bad = {t: w for t, w in self.weights.items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ConfigError("weights", f"must be finite numbers >= 0, got {bad}.")


class FedCMOOSilo(SiloMethod):
    """Trains with trunk gradient sum_t T w_t g_t and sketches the first step's g_t (module
    docstring)."""

    Params = FedCMOOSiloParams
    params: FedCMOOSiloParams

    def batchable(self) -> str | None:
        return "FedCMOO's silos weigh their tasks' gradients and sketch them"

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        names = [task.name for task in tools.data.tasks]
        first: list[tuple[torch.Tensor, list[int]]] = []

        def step_weights(J: torch.Tensor, losses: torch.Tensor, tasks: Any) -> torch.Tensor:
            if not first:
                first.append((J.detach().clone(), list(tasks)))
            return torch.tensor([self.params.weights[names[i]] for i in tasks], dtype=J.dtype)

        tools.load(received)
        before = tools.losses_before(request)
        result = tools.train(request, step_weights=step_weights)
        trained = tools.arrays(list(received))
        metrics: dict[str, float] = {}
        arrays: Arrays = {}
        if first:
            J, tasks = first[0]
            metrics = {ROW + names[i]: float(row) for row, i in enumerate(tasks)}
            with tools.seeded():  # the randomised SVD's test matrix
                arrays = compress(J.numpy(), self.params.sketch, self.params.budget)
        return train_reply(
            tools.data, received, trained, result, before, request.update_dtype, metrics, arrays
        )


class FedCMOO(TrunkAndHeads[FedCMOOParams]):
    """FedAvg's trunk and heads; task weights for the next round from the sketched Gramian."""

    silo = FedCMOOSilo

    def __init__(self, params: FedCMOOParams, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.weighting = weighting_from(params.weighting, seed=setup.seed)
        self.task_weights = np.full(len(self.tasks), 1.0 / len(self.tasks))
        """w^(r), the weights the silos train with this round."""
        self.widths: dict[int, list[str]] = {}
        """The trunk arrays each silo was sent for training (its sketch's columns)."""

    def silo_task(self, server_round: int) -> SiloTask:
        scale = len(self.tasks)
        weights = {t: scale * float(w) for t, w in zip(self.tasks, self.task_weights, strict=True)}
        params = {"weights": weights, "sketch": self.params.sketch}
        return SiloTask("joint", {**params, "budget": self.params.budget})

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        arrays = super().arrays_for(silo, model, purpose)
        if purpose == "train":
            self.widths[silo.silo_id] = [k for k in arrays if model.is_shared(k)]
        return arrays

    def secure_sums(self, server_round: int) -> str:
        return "its Gramian is estimated from each silo's own sketch of its task gradients"

    def check_update(self, update: ClientUpdate) -> None:
        """The sketch's rows name the silo's own tasks once each, and its arrays have the shapes
        and ranges its compression gives the silo's trunk and row count."""
        rows: dict[str, int] = {}
        for key, value in update.method_metrics.items():
            task = key.removeprefix(ROW)
            if not key.startswith(ROW) or task not in update.silo.tasks:
                raise ReplyError(f"unexpected method metric {key!r}")
            rows[task] = int(value)
        if sorted(rows.values()) != list(range(len(rows))) or any(
            float(rows[t]) != update.method_metrics[ROW + t] for t in rows
        ):
            raise ReplyError(f"sketch rows {rows} are not 0 to {len(rows) - 1}")
        keys = self.widths.get(update.silo.silo_id, [])
        width = sum(update.sent[k].size for k in keys if k in update.sent)
        expected = sketch_shapes(self.params.sketch, self.params.budget, len(rows), width)
        found = {k: (v.shape, v.dtype.kind) for k, v in update.method_arrays.items()}
        if rows and found != expected:
            raise ReplyError(f"sketch arrays {found} differ from those expected {expected}")
        if not rows and found:
            raise ReplyError(f"sketch arrays {sorted(found)} without sketch rows")
        indices = update.method_arrays.get("sketch.indices")
        if indices is not None and (
            indices.min(initial=0) < 0 or indices.max(initial=0) >= len(rows) * width
        ):
            raise ReplyError("sketch indices outside the sketched matrix")

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        trunk = model.trunk()
        used = {t: float(w) for t, w in zip(self.tasks, self.task_weights, strict=True)}
        weights = silo_weights(updates, self.params.silo_weighting)
        delta = weighted_mean_delta(updates, list(trunk), weights, self.average)
        present, G = self.estimate(model, updates)
        if present:
            found = self.weighting.weights_from_gramian(G, None, present).numpy()
            share = self.task_weights[present].sum()
            self.task_weights = self.task_weights.copy()
            self.task_weights[present] = found * share
        return TrunkStep(delta, used)

    def estimate(self, model: GlobalModel, updates: list[ClientUpdate]) -> tuple[list[int], Any]:
        """The positions (in task order) of the tasks some silo sketched and Ghat = D D^T over
        them (module docstring)."""
        trunk = model.trunk()
        offsets = dict(zip(trunk, np.cumsum([0] + [a.size for a in trunk.values()]), strict=False))
        size = sum(a.size for a in trunk.values())
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, float] = {}
        for update in updates:
            rows = {k.removeprefix(ROW): int(v) for k, v in update.method_metrics.items()}
            if not rows:
                continue
            keys = self.widths[update.silo.silo_id]
            columns = np.concatenate(
                [np.arange(offsets[k], offsets[k] + trunk[k].size) for k in keys]
            )
            J = decompress(update.method_arrays, self.params.sketch, len(rows), len(columns))
            for task, row in rows.items():
                n = float(update.task_examples[task])
                full = sums.setdefault(task, np.zeros(size))
                full[columns] += n * J[row]
                counts[task] = counts.get(task, 0.0) + n
        present = [i for i, t in enumerate(self.tasks) if counts.get(t, 0.0) > 0]
        if not present:
            return [], None
        names = list(self.tasks)
        D = torch.from_numpy(np.stack([sums[names[i]] / counts[names[i]] for i in present]))
        return present, gramian(D)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "task_weights": self.task_weights.tolist(),
            "weighting": self.weighting.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.task_weights = np.array(state["task_weights"], dtype=np.float64)
        self.weighting.load_state_dict(state["weighting"])
