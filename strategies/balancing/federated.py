"""A weighting applied across the federation: to the per-task updates the silos send.

Silo s holding tasks T_s sends (``per_task`` mode) its trunk update split per task, D_{s,t}. Over the
round's silos:

    D_t = sum_{s holds t} n_{s,t} D_{s,t} / sum_{s holds t} n_{s,t}   (per-task update)
    J   = [D_t for the tasks t with a holder this round]              (T' x d, rows in task order)
    w   = weighting(J, L, tasks)                                      (:mod:`strategies.balancing`)
    Delta = J^T w                                                     (the combined trunk update)

L_t is the n_{s,t}-weighted mean of the holders' ``loss-before`` reports (the loss-based methods
need it). A task no silo holds this round has no row, and its weighting state stays as it was.

**Under silo-level DP** the rows are noised, D_t + n_t with n_t ~ N(0, s_t^2 I_d) independent
across tasks, so the Gramian of the noisy rows is biased on its diagonal only:
E[(D_t + n_t).(D_u + n_u)] = D_t.D_u + [t = u] d s_t^2. The aggregate update carries s_t^2
(``ClientUpdate.noise_variance``), and the Gramian weightings then get the debiased Gramian
G - diag(d s_t^2) (:func:`debiased_gramian`; its negative eigenvalues, where the correction
leaves some, clipped), while the direction stays J^T w on the noisy rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from fedmtl.core.records import Arrays
from strategies.balancing.linalg import gramian
from strategies.balancing.weighting import Weighting
from strategies.engine import Averager, ClientUpdate, per_task_rows, unflatten, weighted_mean

log = logging.getLogger("fedmtl")


def balanced_update(
    weighting: Weighting,
    tasks: Sequence[str],
    all_tasks: Sequence[str],
    updates: Sequence[ClientUpdate],
    trunk: Arrays,
    server_round: int,
    average: Averager = weighted_mean,
) -> tuple[Arrays | None, dict[str, float]]:
    """Delta = J^T w for the trunk arrays ``trunk`` over ``tasks`` (J from :func:`per_task_rows`,
    w from ``weighting``, whose state is keyed by each task's position in ``all_tasks``), and the
    task weights; None (and no weights) when no task has a holder or a needed loss is missing."""
    present, rows, losses = per_task_rows(tasks, updates, list(trunk), average)
    if not rows:
        return None, {}
    loss_tensor = None
    if weighting.needs_losses:
        loss_tensor = torch.tensor(losses, dtype=torch.float64)
        if not torch.isfinite(loss_tensor).all():
            log.warning("round %d: a task has no reported loss; trunk unchanged", server_round)
            return None, {}
    ids = [list(all_tasks).index(tasks[i]) for i in present]
    J = torch.stack(rows)
    variances = [
        max((u.noise_variance.get(tasks[i], 0.0) for u in updates), default=0.0) for i in present
    ]
    if any(v > 0 for v in variances) and weighting.uses_gramian:
        G = debiased_gramian(gramian(J), variances, J.shape[1])
        weights = weighting.weights_from_gramian(G, loss_tensor, ids).to(J.dtype)
        direction = weights @ J
    else:
        direction, weights = weighting(J, loss_tensor, ids)
    task_weights = {tasks[i]: float(w) for i, w in zip(present, weights, strict=True)}
    return unflatten(direction, trunk), task_weights


def debiased_gramian(G: torch.Tensor, variances: Sequence[float], dimension: int) -> torch.Tensor:
    """G - diag(d s_t^2): the Gramian of noisy rows made unbiased (module docstring), then made
    positive semi-definite again: subtracting from the diagonal alone can leave negative
    eigenvalues (a row that is mostly noise keeps its noisy inner products with the others), which
    the weightings' QPs refuse ("matrix P is not positive definite"). The nearest such matrix in
    Frobenius norm clips the eigenvalues at 1e-12 trace(G) / T (Higham 1988); where the
    corrected matrix is already positive semi-definite, that changes nothing."""
    corrected = G.clone().to(torch.float64)
    floor = 1e-12 * float(torch.trace(corrected)) / max(len(variances), 1)
    for t, variance in enumerate(variances):
        corrected[t, t] = corrected[t, t] - dimension * variance
    values, vectors = torch.linalg.eigh((corrected + corrected.T) / 2)
    if float(values.min()) >= floor:
        return corrected
    clipped = (vectors * values.clamp(min=floor)) @ vectors.T
    return (clipped + clipped.T) / 2
