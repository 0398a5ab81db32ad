"""Robust aggregation: example counts fixed at discovery, an update-norm bound, and robust rules
for averaging (pure functions; the engine applies them to every round's checked updates).

- **Counts.** The counts a silo announced at discovery (``SiloInfo``: n_s, n_{s,t}) replace those
  it reports with each update, so a silo cannot change its weight mid-run; with
  ``max_count_ratio`` r, a count above r times the median over the known silos (per task: over
  its holders) is capped there.
- **Norm bound.** With ``norm_bound`` b, an update whose norm ||Delta_s|| (all its arrays, per-task
  shares included) exceeds b times the round's median norm is ``clip``-ped to that norm (every
  array scaled by b median / ||Delta_s||) or ``reject``-ed.
- **Rules** (:func:`averager`): ``mean`` is the weighted mean sum_s w_s x_s / sum_s w_s;
  ``median`` the coordinate-wise median and ``trimmed_mean`` the coordinate-wise mean after
  cutting the ``trim_fraction`` largest and smallest values (both unweighted, Flower's
  ``aggregate_median`` and ``trim_mean``, as its FedMedian and FedTrimmedAvg).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from flwr.server.strategy.aggregate import aggregate_median
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedmtl.core.records import SiloInfo
from strategies.engine.replies import ClientUpdate

RobustRule = Literal["mean", "median", "trimmed_mean"]
NormRule = Literal["clip", "reject"]
Averager = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]
"""``(values, weights) -> average``: how one array is averaged over silos (``robust``)."""


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    total = float(sum(weights))
    return sum(
        (w / total * v for v, w in zip(values, weights, strict=True)),
        start=np.zeros_like(values[0], dtype=np.result_type(values[0], np.float32)),
    )


def averager(rule: RobustRule, trim_fraction: float = 0.1) -> Averager:
    """The averaging of one array over silos for ``rule`` (module docstring)."""
    if rule == "mean":
        return weighted_mean
    if rule == "median":
        return lambda values, weights: aggregate_median([([v], 1) for v in values])[0]
    return lambda values, weights: np.asarray(trim_mean(np.stack(values), trim_fraction))


def fixed_counts(
    update: ClientUpdate, announced: SiloInfo, cap: int | None, task_caps: Mapping[str, int]
) -> ClientUpdate:
    """The update with the counts its silo announced at discovery, capped."""
    num = announced.num_train if cap is None else min(announced.num_train, cap)
    tasks = {
        t: min(n, task_caps.get(t, n))
        for t, n in announced.train_per_task.items()
        if t in update.task_examples
    }
    return dataclasses.replace(update, num_examples=num, task_examples=tasks)


def count_caps(silos: Iterable[SiloInfo], ratio: float | None) -> tuple[int | None, dict[str, int]]:
    """r times the median n_s over the silos, and per task r times its holders' median n_{s,t}."""
    known = list(silos)
    if ratio is None or not known:
        return None, {}
    per_task: dict[str, list[int]] = {}
    for silo in known:
        for task, count in silo.train_per_task.items():
            per_task.setdefault(task, []).append(count)
    cap = int(ratio * statistics.median(s.num_train for s in known))
    return cap, {t: int(ratio * statistics.median(c)) for t, c in per_task.items()}


def update_norm(update: ClientUpdate) -> float:
    """||Delta_s||: over every array of the update (joint deltas and per-task shares)."""
    arrays = list(update.deltas.values())
    for shares in (update.task_deltas or {}).values():
        arrays += list(shares.values())
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def bound_norms(
    updates: list[ClientUpdate], factor: float, rule: NormRule
) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
    """Updates within ``factor`` times the round's median norm (the others clipped or rejected),
    and the rejected ones with the reason."""
    if not updates:
        return [], []
    norms = [update_norm(u) for u in updates]
    bound = factor * statistics.median(norms)
    kept, rejected = [], []
    for update, norm in zip(updates, norms, strict=True):
        if norm <= bound or norm == 0.0:
            kept.append(update)
        elif rule == "reject":
            rejected.append((update, f"update norm {norm:.3g} above the bound {bound:.3g}"))
        else:
            kept.append(scaled(update, bound / norm))
    return kept, rejected


def scaled(update: ClientUpdate, factor: float) -> ClientUpdate:
    """The update with every array multiplied by ``factor`` (dtypes kept)."""

    def scale(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v * factor).astype(v.dtype) for k, v in arrays.items()}

    shares = None
    if update.task_deltas is not None:
        shares = {t: scale(a) for t, a in update.task_deltas.items()}
    return dataclasses.replace(update, deltas=scale(update.deltas), task_deltas=shares)
