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
  cutting the c largest and c smallest of the k values at each coordinate (both unweighted,
  Flower's ``aggregate_median`` and ``trim_mean``, as its FedMedian and FedTrimmedAvg). The cut
  (:class:`Trim`) is c = floor(beta k) for a ``trim_fraction`` beta, or exactly ``trim_count``
  values per side; with k <= 2c + 1 values there is nothing left to average but the middle, and
  the rule is the median (equal to the trimmed mean at k = 2c + 1).
- **Selection rules** (Flower's ``aggregate_krum`` and ``aggregate_bulyan``, as its Krum,
  MultiKrum and Bulyan strategies; f = ``max_faulty``): ``krum`` (Blanchard, El Mhamdi, Guerraoui
  & Stainer 2017, "Machine learning with adversaries: Byzantine tolerant gradient descent",
  NeurIPS) scores each value x_i by sum_{j in N_i} ||x_i - x_j||^2 over its k - f - 2 nearest
  others N_i and returns the value of least score; ``multikrum`` returns the weighted mean
  sum_{i in S} w_i x_i / sum_{i in S} w_i of the m = k - f values of least score S (El Mhamdi,
  Guerraoui & Rouault 2018, "The hidden vulnerability of distributed learning in Byzantium",
  ICML); ``bulyan`` (the same paper) picks theta = k - 2f values by Krum one after another, then at
  each coordinate averages the beta = theta - 2f of them closest to their coordinate-wise median.
  Bulyan needs k >= 4f + 3 values; with fewer the rule is the coordinate-wise median. Each
  compares a silo's whole update in a group (:func:`average_group`): its trunk arrays over every
  update, a task's head arrays over its holders, or, for a balancing method, a task's flattened
  trunk share D_{s,t} over its holders.
The breakdown points of the rules: :mod:`strategies.engine.breakdown`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum, aggregate_median
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedmtl.core.records import SiloInfo
from strategies.engine.replies import ClientUpdate

RobustRule = Literal["mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan"]
SELECTION_RULES = ("krum", "multikrum", "bulyan")
"""The rules that select whole updates assuming ``max_faulty`` of them are faulty."""
NormRule = Literal["clip", "reject"]
Averager = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]
"""``(values, weights) -> average``: how one array is averaged over silos (``robust``)."""


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    total = float(sum(weights))
    return sum(
        (w / total * v for v, w in zip(values, weights, strict=True)),
        start=np.zeros_like(values[0], dtype=np.result_type(values[0], np.float32)),
    )


@dataclass(frozen=True)
class Trim:
    """How many of k values ``trimmed_mean`` cuts at each end: exactly ``count`` when it is set,
    else c = floor(``fraction`` k) (Flower's rule)."""

    fraction: float = 0.1
    count: int | None = None

    def cut(self, k: int) -> int:
        """c, the values cut at each end of k."""
        return self.count if self.count is not None else int(self.fraction * k)

    def falls_back(self, k: int) -> bool:
        """Whether k values are too few to cut ``count`` at each end (k <= 2c): the median is
        taken instead."""
        return self.count is not None and k <= 2 * self.count


def median(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The coordinate-wise median of ``values`` (unweighted; Flower's ``aggregate_median``)."""
    return np.asarray(aggregate_median([([v], 1) for v in values])[0])


def trimmed_mean(trim: Trim) -> Averager:
    """The coordinate-wise mean of the values left after cutting ``trim.cut(k)`` of the k values
    at each end (Flower's ``trim_mean``); the median when k <= 2c + 1 (module docstring)."""

    def average(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        k = len(values)
        cut = trim.cut(k)
        if k <= 2 * cut + 1:
            return median(values, weights)
        # Flower cuts int(fraction * k) per side: (c + 1/2) / k gives exactly c, and stays
        # below 1/2 because k > 2c + 1.
        return np.asarray(trim_mean(np.stack(values), (cut + 0.5) / k))

    return average


@dataclass(frozen=True)
class Selection:
    """A rule that selects whole updates (``krum``, ``multikrum`` or ``bulyan``; module
    docstring) against f = ``faulty`` faulty silos: Flower's ``aggregate_krum`` (MultiKrum keeping
    the k - f of least score) or ``aggregate_bulyan`` over Krum, the median when k < 4f + 3.
    :meth:`group` compares each silo's arrays of a group as one vector (as Flower's strategies
    compare whole models); called on one array per silo, it averages that array alone."""

    rule: RobustRule
    faulty: int

    def group(
        self, values: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
    ) -> list[np.ndarray]:
        """The group's arrays (``values[s]``: silo s's, in one order) chosen by the rule."""
        results = [(list(v), w) for v, w in zip(values, weights, strict=True)]
        faulty = self.faulty
        if self.rule == "bulyan":
            if len(results) < 4 * faulty + 3:
                return [np.asarray(a) for a in aggregate_median(results)]  # type: ignore[arg-type]
            chosen = aggregate_bulyan(results, faulty, aggregate_krum, to_keep=0)  # type: ignore[arg-type]
        else:
            keep = max(1, len(results) - faulty) if self.rule == "multikrum" else 0
            chosen = aggregate_krum(results, faulty, keep)  # type: ignore[arg-type]
        return [np.asarray(a) for a in chosen]

    def __call__(self, values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        return self.group([[v] for v in values], weights)[0]


def average_group(
    average: Averager, values: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """The arrays of one group (``values[s]``: silo s's, in one order) averaged over silos: a
    :class:`Selection` compares each silo's arrays as one vector; the other rules, coordinate-wise,
    average each array on its own."""
    if not values[0]:
        return []
    if isinstance(average, Selection):
        return average.group(values, weights)
    return [average([v[i] for v in values], weights) for i in range(len(values[0]))]


def averager(
    rule: RobustRule, trim_fraction: float = 0.1, trim_count: int | None = None, faulty: int = 0
) -> Averager:
    """The averaging of one array over silos for ``rule`` (module docstring); ``trim_fraction``
    and ``trim_count`` set the cut of ``trimmed_mean`` (:class:`Trim`), ``faulty`` the f of the
    selection rules."""
    if rule == "mean":
        return weighted_mean
    if rule == "median":
        return median
    if rule in SELECTION_RULES:
        return Selection(rule, faulty)
    return trimmed_mean(Trim(trim_fraction, trim_count))


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
