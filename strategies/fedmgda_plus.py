"""``fedmgda_plus``: FedMGDA+ (Hu et al., IEEE TNSE 2022, "Federated Learning Meets Multi-objective
Optimization"): every silo's objective is one objective of a multi-objective problem, and the
server steps along a common descent direction of the silos' updates near FedAvg's weights.

With Delta_s the trunk update of silo s (trained - received; the paper's g_s = -Delta_s) and
lambda0_s = n_s / sum_r n_r FedAvg's weights over the round's S silos:

    u_s    = Delta_s / ||Delta_s||                               (``normalize: true``; else Delta_s)
    lambda = argmin_{lambda in simplex, ||lambda - lambda0||_inf <= epsilon} ||sum_s lambda_s u_s||^2
    Delta  = sum_s lambda_s u_s                                  (the trunk step, times eta)

and the server optimizer applies Delta (eta is ``strategy.server_optimizer.lr``: with normalized
updates the step is at most eta long). ``epsilon = 0`` (or below 1e-9) keeps lambda = lambda0: without
normalization that is FedAvg's aggregate exactly; ``epsilon >= 1`` leaves only the simplex, and
lambda is MGDA's minimum-norm point of the convex hull of the u_s. The paper's grid for epsilon:
0 to 1 (0.05 and 0.1 in most of its runs).

The quadratic program (S variables) is solved by quadprog on the trace-normalised Gramian of the
u_s plus a 1e-12 ridge (as :func:`strategies.balancing.mgda.min_norm_weights`); lambda is then
clipped to its box (the ridge leaves errors of order 1e-12).

Heads, in fedmtl's multi-task setting: the silos' objectives conflict only in the parameters they
share, so the min-norm step covers the trunk (the arrays every silo trains); each task's head (and
any other array of role ``task``) is FedAvg'd over the silos holding the task, weighted by n_{s,t}
(:class:`strategies.engine.TrunkAndHeads`), as the paper's one-model setting has no per-task part.
Silos train plainly (the sum of their tasks' losses) and send one joint update: no extra upload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import quadprog
import torch

from fedmtl.core.checks import booleans, non_negative
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    Round,
    TrunkAndHeads,
    TrunkStep,
    silo_rows,
    unflatten,
)

RIDGE = 1e-12
"""Added to the diagonal of the trace-normalised Gramian: quadprog needs it positive definite."""
NARROWEST = 1e-9
"""A smaller epsilon keeps lambda0: a box that narrow is within the solver's rounding of the
simplex constraint (and moves lambda by nothing that matters)."""


@dataclass(frozen=True)
class FedMGDAPlusParams(MethodParams):
    """The common parameters, the radius ``epsilon`` of the box around FedAvg's weights and whether
    each silo's update is ``normalize``-d to unit length first."""

    epsilon: float = 0.1
    normalize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "epsilon")
        booleans(self, "normalize")


def bounded_min_norm_weights(G: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """lambda = argmin lambda^T G lambda subject to sum lambda = 1, lower <= lambda <= upper (G
    symmetric positive semi-definite; the box must hold a point of the simplex)."""
    rows = G.shape[0]
    scale = float(np.trace(G)) / rows
    H = (G / scale if scale > 0 else np.zeros_like(G)) + RIDGE * np.eye(rows)
    ones = np.ones(rows)
    constraints = np.concatenate([ones[:, None], np.eye(rows), -np.eye(rows)], axis=1)
    bounds = np.concatenate([[1.0], lower, -upper])
    solution = quadprog.solve_qp(H, np.zeros(rows), constraints, bounds, meq=1)[0]
    return np.clip(solution, lower, upper)


def fedmgda_weights(rows: torch.Tensor, lambda0: np.ndarray, epsilon: float) -> np.ndarray:
    """FedMGDA+'s lambda for the update rows (S x d, float64) around ``lambda0`` (module docstring)."""
    if epsilon < NARROWEST:
        return lambda0
    G = (rows @ rows.T).numpy()
    lower = np.clip(lambda0 - epsilon, 0.0, 1.0)
    upper = np.clip(lambda0 + epsilon, 0.0, 1.0)
    return bounded_min_norm_weights((G + G.T) / 2, lower, upper)


class FedMGDAPlus(TrunkAndHeads[FedMGDAPlusParams]):
    """Trunk: the min-norm combination of the silos' (normalized) updates within epsilon of
    FedAvg's weights; heads per task over their holders."""

    def secure_sums(self, server_round: int) -> str:
        return "its weights come from the Gramian of the silos' own trunk updates (one per silo)"

    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        trunk = model.trunk()
        rows = silo_rows(updates, list(trunk))
        if self.params.normalize:
            norms = rows.norm(dim=1, keepdim=True)
            rows = torch.where(norms > 0, rows / norms.clamp(min=1e-300), rows)
        counts = np.array([float(u.num_examples) for u in updates])
        weights = fedmgda_weights(rows, counts / counts.sum(), self.params.epsilon)
        direction = torch.from_numpy(weights) @ rows
        return TrunkStep(unflatten(direction, trunk))
