"""The aggregation math that methods share: weighted means, per-task heads and rows, and the flat
vectors that balancing methods work on.

Notation: silo s holds tasks T_s with n_{s,t} labelled training examples of task t (``task_examples``)
and n_s training rows (``num_examples``); Delta_s is its joint update, Delta h_{s,t} its head update
of task t and D_{s,t} task t's share of its trunk update (``per_task`` mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedmtl.core.records import Arrays
from strategies.engine.model import GlobalModel
from strategies.engine.replies import ClientUpdate
from strategies.engine.robust import Averager, average_group, weighted_mean


def weighted_mean_delta(
    updates: Sequence[ClientUpdate],
    keys: Sequence[str],
    weights: Sequence[float],
    average: Averager = weighted_mean,
) -> Arrays | None:
    """sum_s w_s Delta_s[k] / sum_s w_s for each key (or ``average``'s robust rule); None when
    the weights sum to zero."""
    if float(sum(weights)) <= 0:
        return None
    averaged = average_group(average, [[u.deltas[k] for k in keys] for u in updates], weights)
    return {
        k: value.astype(updates[0].deltas[k].dtype) for k, value in zip(keys, averaged, strict=True)
    }


def aggregate_heads(
    model: GlobalModel,
    updates: Sequence[ClientUpdate],
    tasks: Sequence[str],
    average: Averager = weighted_mean,
) -> Arrays:
    """New task parameters (role ``task``: heads, and any other array only one task uses) of
    ``model``: h_t + sum_s n_{s,t} Delta h_{s,t} / sum_s n_{s,t} (or ``average``'s robust rule),
    over the updates whose silo holds t and has labelled examples of it; a task with no such
    update is left out."""
    arrays = model.arrays
    new: Arrays = {}
    for task in tasks:
        holders = [u for u in updates if task in u.silo.tasks and u.task_examples.get(task, 0) > 0]
        if not holders:
            continue
        weights = [float(u.task_examples[task]) for u in holders]
        keys = model.task_keys(task)
        deltas = average_group(average, [[u.deltas[k] for k in keys] for u in holders], weights)
        for key, delta in zip(keys, deltas, strict=True):
            new[key] = (arrays[key] + delta).astype(arrays[key].dtype)
    return new


def mean_train_loss(updates: Sequence[ClientUpdate], tasks: Sequence[str]) -> dict[str, float]:
    """Per task, the silos' train losses averaged with weights n_{s,t}."""
    result = {}
    for task in tasks:
        pairs = [
            (u.task_examples[task], u.train_loss[task]) for u in updates if task in u.train_loss
        ]
        total = sum(n for n, _ in pairs)
        if total > 0:
            result[task] = sum(n * loss for n, loss in pairs) / total
    return result


def flatten(arrays: Arrays, keys: Sequence[str]) -> torch.Tensor:
    """The arrays ``keys`` concatenated into one float tensor (a row of J; a new copy)."""
    return torch.from_numpy(np.concatenate([arrays[k].reshape(-1) for k in keys]))


def silo_rows(updates: Sequence[ClientUpdate], keys: Sequence[str]) -> torch.Tensor:
    """The silos' joint updates of ``keys`` as the rows of one float64 matrix (S x d, one row
    per update, in order): the methods that weigh silos rather than tasks work on it."""
    return torch.stack([flatten(u.deltas, keys).to(torch.float64) for u in updates])


def unflatten(vector: torch.Tensor, like: Arrays) -> Arrays:
    """Split ``vector`` back into arrays shaped (and typed) like ``like``, in its key order."""
    values = vector.detach().cpu().numpy()
    out: Arrays = {}
    offset = 0
    for key, array in like.items():
        out[key] = values[offset : offset + array.size].reshape(array.shape).astype(array.dtype)
        offset += array.size
    return out


def per_task_rows(
    tasks: Sequence[str],
    updates: Sequence[ClientUpdate],
    keys: Sequence[str],
    average: Averager = weighted_mean,
) -> tuple[list[int], list[torch.Tensor], list[float]]:
    """For each task with a holder among ``updates`` (in ``tasks`` order): its index in ``tasks``,
    D_t = sum_s n_{s,t} D_{s,t} / sum_s n_{s,t} flattened over ``keys`` (or ``average``'s robust
    rule), and L_t, the same n_{s,t}-weighted mean of the holders' ``loss_before`` (NaN when none
    reported it)."""
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
        if average is weighted_mean:  # in place: one flattened copy at a time (d may be 1e7)
            total = float(sum(n for n, _, _ in holders))
            row = flatten(holders[0][1], keys) * (holders[0][0] / total)
            for n, deltas, _ in holders[1:]:
                row += flatten(deltas, keys) * (n / total)
        else:
            values = [flatten(deltas, keys).numpy() for _, deltas, _ in holders]
            row = torch.from_numpy(average(values, [float(n) for n, _, _ in holders]))
        reported = [(n, loss) for n, _, loss in holders if loss is not None]
        count = sum(n for n, _ in reported)
        present.append(index)
        rows.append(row)
        losses.append(sum(n * loss for n, loss in reported) / count if count else float("nan"))
    return present, rows, losses
