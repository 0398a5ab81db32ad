"""The task-grouping program: which tasks share a trunk, given a task-affinity matrix.

The affinity A (T x T) holds A[i, k] = S_{i->k}, the gain of task k from training with task i (row
= source, column = target, as TAG's lookahead affinity Z_{i->k}, Fifty et al. 2021, and Wang, Pan &
Yu's transfer gain S_{i->k}, arXiv 2402.15328, are indexed). Its diagonal is ignored everywhere (it
may hold NaN). A grouping is a collection of non-empty, distinct groups that covers every task:
each task in exactly one group (a partition, the default) or in at least one (``overlap=True``).

Objective (Wang, Pan & Yu 2024, "Towards Principled Task Grouping for Multi-Task Learning",
arXiv 2402.15328): a group g is worth

    value(g) = (1/|g|) sum_{i != k in g} A[i, k]        (0 for a singleton),

and a grouping the sum of its groups' values (:func:`grouping_objective`), maximised subject to
these optional resource limits:

- ``num_groups``: exactly that many groups; ``max_groups``: at most that many;
- ``max_group_size``: at most that many tasks in a group;
- ``budget``: the summed cost of the groups' trunks is at most ``budget``, where ``costs`` prices a
  trunk: ``None`` (every trunk costs 1, so the budget caps the number of groups), a scalar (every
  trunk costs that), or a 1-D array of length T whose ``costs[s - 1]`` is the cost of a trunk that
  serves a group of s tasks (a wider trunk for a bigger group, or c0 + s * c_head for one shared
  trunk plus a head per task).

Methods: ``"milp"`` (exact, a mixed-integer linear program solved by HiGHS), ``"enumerate"`` (brute
force over every grouping, small T only: the tests' oracle) and ``"tag"`` (TAG's network selection,
Fifty et al. 2021, whose objective is :func:`tag_score`). :func:`solve_grouping` returns a
:class:`GroupingSolution`; :func:`solve` only its groups.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

log = logging.getLogger("fedmtl")

METHODS = ("milp", "enumerate", "tag")
ENUMERATE_MAX_TASKS = 10  # Bell(10) = 115,975 partitions
ENUMERATE_MAX_TASKS_OVERLAP = 6
ENUMERATE_MAX_COLLECTIONS = 1_000_000  # collections of subsets a cover enumeration may visit
TAG_MAX_CANDIDATES = 200_000
COLUMNS_MAX_CANDIDATES = 70_000  # "milp" picks the candidate-group formulation up to here
FORMULATIONS = ("auto", "columns", "slots")
MILP_MAX_VARIABLES = 2_000_000
TOL = 1e-9  # slack on budget comparisons (sums of float costs)

Matrix = NDArray[np.float64]
Indices = NDArray[np.int64]


class InfeasibleGroupingError(ValueError):
    """No grouping meets the limits (the message lists them)."""


@dataclass(frozen=True)
class GroupingSolution:
    """A solved grouping program.

    ``groups``: each group sorted, the groups sorted by (first task, size, tasks). ``objective``: the
    method's objective at ``groups`` (:func:`grouping_objective` for ``milp`` and ``enumerate``,
    :func:`tag_score` for ``tag``). ``seconds``: wall time of the solve (model building included).
    ``optimal``: False when a time or node limit stopped HiGHS before it proved optimality.
    ``message``: the solver's status in words.
    """

    groups: list[list[int]]
    objective: float
    seconds: float
    method: str
    optimal: bool
    message: str


@dataclass(frozen=True)
class _Limits:
    """When HiGHS stops before proving optimality: ``time_limit`` seconds of wall time, or
    ``node_limit`` branch-and-bound nodes (HiGHS's ``mip_max_nodes``); None: no such limit."""

    time_limit: float | None = None
    node_limit: int | None = None

    def options(self) -> dict[str, float | int]:
        """The limits as ``scipy.optimize.milp`` options."""
        named = {"time_limit": self.time_limit, "node_limit": self.node_limit}
        return {k: v for k, v in named.items() if v is not None}

    def stopped(self, result: Any) -> str | None:
        """The limit that stopped HiGHS before it proved optimality (``time_limit=3 s``,
        ``node_limit=10``), or None when no limit did.

        scipy reports HiGHS's time limit as status 1, and its node limit (model status "solution
        limit") as status 4, which is also any failure scipy does not recognise: the node limit
        stopped it when one was set and the node count reached it (there is no count when it
        stopped before the root node)."""
        if result.status == 1 and self.time_limit is not None:
            return f"time_limit={self.time_limit:g} s"
        if (
            result.status == 4
            and self.node_limit is not None
            and (result.mip_node_count or 0) >= self.node_limit
        ):
            return f"node_limit={self.node_limit}"
        return None


@dataclass(frozen=True)
class _Problem:
    """A validated program: A with a zero diagonal and each limit made explicit.

    ``max_count`` bounds the number of groups (``num_groups`` when given); ``cost[s]`` is the cost
    of a trunk for s tasks (``cost[0]`` unused); ``budget`` is inf without a budget.
    """

    A: Matrix
    num_groups: int | None
    max_count: int
    max_size: int
    overlap: bool
    budget: float
    cost: Matrix
    limits: str

    @property
    def tasks(self) -> int:
        return len(self.A)

    def count_ok(self, count: int) -> bool:
        return count == self.num_groups if self.num_groups is not None else count <= self.max_count


def check_affinity(affinity: ArrayLike) -> Matrix:
    """A float64 copy of the T x T affinity with its diagonal set to 0 (the diagonal is ignored).

    Off-diagonal entries must be finite; the diagonal may be finite or NaN.
    """
    try:
        A = np.array(affinity, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"affinity must be a T x T array of numbers: {error}") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        raise ValueError(
            f"affinity must be a square T x T matrix with T >= 1, got shape {A.shape}."
        )
    off_diagonal = ~np.eye(len(A), dtype=bool)
    if not np.isfinite(A[off_diagonal]).all() or np.isinf(np.diag(A)).any():
        raise ValueError(
            "affinity must be finite off the diagonal (the diagonal is ignored and may be NaN); "
            "replace the NaN/Inf gains, e.g. by 0 for an unmeasured pair."
        )
    np.fill_diagonal(A, 0.0)
    return A


def group_value(A: Matrix, group: Sequence[int]) -> float:
    """(1/|g|) sum_{i != k in g} A[i, k] for an affinity with a zero diagonal (0 for a singleton)."""
    members = list(group)
    return float(A[np.ix_(members, members)].sum() / len(members))


def grouping_objective(affinity: ArrayLike, groups: Sequence[Sequence[int]]) -> float:
    """Wang, Pan & Yu's objective: sum over the groups g of (1/|g|) sum_{i != k in g} A[i, k]."""
    A = check_affinity(affinity)
    return sum(group_value(A, g) for g in _check_groups(groups, len(A)))


def tag_score(affinity: ArrayLike, groups: Sequence[Sequence[int]]) -> float:
    """TAG's selection objective (Fifty et al. 2021, "Efficiently Identifying Task Groupings for
    Multi-Task Learning", NeurIPS): (1/T) sum_a max_{G chosen, a in G} score(a, G).

    score(a, G) = mean of A[b, a] over the other members b of G: how much a gains from its
    group-mates. A singleton scores 0 by convention (no mate, no gain). ``groups`` must cover every
    task.
    """
    A = check_affinity(affinity)
    checked = _check_groups(groups, len(A))
    best = np.full(len(A), -np.inf)
    for group, scores in zip(checked, _member_scores(A, checked), strict=True):
        best[group] = np.maximum(best[group], scores)
    if np.isinf(best).any():
        missing = np.flatnonzero(np.isinf(best)).tolist()
        raise ValueError(
            f"groups must cover every task for tag_score; tasks {missing} are in none."
        )
    return float(best.mean())


def solve_grouping(
    affinity: ArrayLike,
    *,
    num_groups: int | None = None,
    max_groups: int | None = None,
    max_group_size: int | None = None,
    overlap: bool = False,
    budget: float | None = None,
    costs: ArrayLike | None = None,
    method: str = "milp",
    time_limit: float | None = None,
    node_limit: int | None = None,
    formulation: str = "auto",
) -> GroupingSolution:
    """The best grouping of the T tasks of ``affinity`` under the limits (module docstring).

    ``method``:

    - ``"milp"``: Wang, Pan & Yu's program as an exact mixed-integer linear program for HiGHS
      (``scipy.optimize.milp``) in one of two ``formulation``s: ``columns``, a binary per
      candidate group (:func:`_solve_columns`; a strong LP relaxation, used by ``auto`` up to
      ``COLUMNS_MAX_CANDIDATES`` candidate groups, i.e. T <= 16 without ``max_group_size``), or
      ``slots``, fixed-size group slots with linearised pair products (:func:`_solve_slots`;
      polynomial in T, for larger programs, but its LP relaxation is weak on unstructured
      affinities).
    - ``"enumerate"``: every grouping meeting the limits, scored one by one; exact and slow, for
      T <= 10 (partitions) or T <= 6 (``overlap=True``). Ties go to the first grouping visited.
    - ``"tag"``: TAG's network selection: the groups that maximise :func:`tag_score` under the
      same limits, an exact HiGHS program over every candidate group of up to ``max_group_size``
      tasks (at most ``TAG_MAX_CANDIDATES`` of them).

    Limits on the HiGHS methods (``enumerate`` ignores them): ``time_limit``, seconds of wall time
    (the result then depends on the machine's speed and load), and ``node_limit``, an integer >= 0
    of branch-and-bound nodes (HiGHS's ``mip_max_nodes``; 0 stops it after presolve, before the
    root node; the result is the same on every machine, for the same HiGHS). When a limit stops
    HiGHS after it found a feasible grouping, that grouping is returned with ``optimal=False`` and
    a warning in the ``fedmtl`` log naming the limit; with none found it raises ``TimeoutError``.

    Raises ``ValueError`` on bad input (the message names the argument) and
    :class:`InfeasibleGroupingError` (a ``ValueError``) when no grouping meets the limits. With
    ``overlap=True`` one of ``num_groups``, ``max_groups`` or ``budget`` is required. The result is
    deterministic.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    if formulation not in FORMULATIONS:
        raise ValueError(
            f"formulation must be one of {', '.join(FORMULATIONS)}; got {formulation!r}."
        )
    limits = _Limits(
        time_limit=None if time_limit is None else _positive("time_limit", time_limit),
        node_limit=None if node_limit is None else _integer("node_limit", node_limit, 0),
    )
    problem = _problem(affinity, num_groups, max_groups, max_group_size, overlap, budget, costs)
    _check_sizes(problem)
    start = time.perf_counter()
    if method == "enumerate":
        groups, optimal, message = _solve_enumerate(problem)
    elif method == "milp":
        columns = formulation == "columns" or (
            formulation == "auto" and _candidate_count(problem) <= COLUMNS_MAX_CANDIDATES
        )
        solver = _solve_columns if columns else _solve_slots
        groups, optimal, message = solver(problem, limits)
    else:
        groups, optimal, message = _solve_tag(problem, limits)
    seconds = time.perf_counter() - start
    ordered = sorted((sorted(g) for g in groups), key=lambda g: (g[0], len(g), g))
    score = tag_score if method == "tag" else grouping_objective
    return GroupingSolution(
        groups=ordered,
        objective=score(problem.A, ordered),
        seconds=seconds,
        method=method,
        optimal=optimal,
        message=message,
    )


def solve(
    affinity: ArrayLike,
    num_groups: int | None = None,
    max_groups: int | None = None,
    max_group_size: int | None = None,
    overlap: bool = False,
    budget: float | None = None,
    costs: ArrayLike | None = None,
    method: str = "milp",
) -> list[list[int]]:
    """The groups of :func:`solve_grouping` (no time limit)."""
    return solve_grouping(
        affinity,
        num_groups=num_groups,
        max_groups=max_groups,
        max_group_size=max_group_size,
        overlap=overlap,
        budget=budget,
        costs=costs,
        method=method,
    ).groups


# --- input checks --------------------------------------------------------------------------------


def _integer(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.integer | np.floating)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _check_groups(groups: Sequence[Sequence[int]], tasks: int) -> list[list[int]]:
    checked = [[int(t) for t in g] for g in groups]
    for group in checked:
        if not group or len(set(group)) != len(group) or min(group) < 0 or max(group) >= tasks:
            raise ValueError(
                f"groups must be non-empty lists of distinct tasks in [0, {tasks}), got {group}."
            )
    return checked


def _trunk_costs(costs: ArrayLike | None, tasks: int) -> Matrix:
    """cost[s] for s = 1..T (cost[0] = 0, unused) from ``costs`` (None, a scalar or length T)."""
    try:
        given = np.asarray(1.0 if costs is None else costs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"costs must be a number or an array of numbers: {error}") from None
    if given.ndim not in (0, 1) or (given.ndim == 1 and given.shape != (tasks,)):
        raise ValueError(
            f"costs must be a scalar or a 1-D array of length T = {tasks} (costs[s - 1] prices a "
            f"trunk for s tasks), got shape {given.shape}."
        )
    if not (np.isfinite(given).all() and (given > 0).all()):
        raise ValueError(f"costs must be finite and > 0, got {given.tolist()}.")
    return np.concatenate([[0.0], np.broadcast_to(given, (tasks,))])


def _problem(
    affinity: ArrayLike,
    num_groups: int | None,
    max_groups: int | None,
    max_group_size: int | None,
    overlap: bool,
    budget: float | None,
    costs: ArrayLike | None,
) -> _Problem:
    A = check_affinity(affinity)
    T = len(A)
    exact = None if num_groups is None else _integer("num_groups", num_groups, 1)
    if exact is not None and not overlap and exact > T:
        raise ValueError(
            f"num_groups must be in [1, T] = [1, {T}] for a partition, got {exact}; lower it "
            "(or set overlap=True)."
        )
    most = None if max_groups is None else _integer("max_groups", max_groups, 1)
    if exact is not None and most is not None and exact > most:
        raise ValueError(
            f"num_groups={exact} exceeds max_groups={most}; give one of them, or num_groups <= "
            "max_groups."
        )
    size = T if max_group_size is None else min(_integer("max_group_size", max_group_size, 1), T)
    if budget is None and costs is not None:
        raise ValueError(
            "costs only prices trunks under a budget: pass budget= too, or drop costs."
        )
    limit = math.inf if budget is None else _positive("budget", budget)
    cost = _trunk_costs(costs, T)
    if overlap and exact is None and most is None and budget is None:
        raise ValueError(
            "overlap=True needs a limit on the number of groups, else a cover can add overlapping "
            "groups without end: pass num_groups= or max_groups= (or budget=)."
        )
    subsets = sum(math.comb(T, s) for s in range(1, size + 1)) if overlap else T
    if exact is not None:
        count = exact
    else:  # at most: max_groups, the distinct groups there are, and the trunks the budget buys
        count = subsets if most is None else min(most, subsets)
        if budget is not None:
            count = min(count, math.floor(limit / cost[1 : size + 1].min() + TOL))
    words = [f"{'cover (overlap=True)' if overlap else 'partition'} of T={T} tasks"]
    words += [f"{k}={v}" for k, v in (("num_groups", exact), ("max_groups", most)) if v is not None]
    if max_group_size is not None:
        words.append(f"max_group_size={max_group_size}")
    if budget is not None:
        priced = "1 per trunk" if costs is None else np.round(np.asarray(costs), 6).tolist()
        words.append(f"budget={budget:g} with costs={priced}")
    return _Problem(A, exact, count, size, bool(overlap), limit, cost, ", ".join(words))


def _check_sizes(problem: _Problem) -> None:
    """Raise :class:`InfeasibleGroupingError` when no group sizes can meet the limits.

    Dynamic programme over (groups, tasks held): best[k, t] is the least trunk cost of k groups of
    sizes in [1, max_group_size] holding t tasks in all (t capped at T for a cover). A partition
    exists iff some allowed k has best[k, T] <= budget (any sizes summing to T are a partition).
    For a cover it is a necessary condition (a minimal cover has at most T groups and costs less;
    the C(T, s) limit on distinct groups is left to the solver).
    """
    p, T = problem, problem.tasks
    top = min(p.max_count, T)
    best = np.full((top + 1, T + 1), np.inf)
    best[0, 0] = 0.0
    for k in range(1, top + 1):
        for s in range(1, p.max_size + 1):
            np.minimum(best[k, s:], best[k - 1, : T + 1 - s] + p.cost[s], out=best[k, s:])
            if p.overlap:
                best[k, T] = min(best[k, T], best[k - 1, T + 1 - s :].min() + p.cost[s])
    exact = p.num_groups is not None and not p.overlap
    counts = [top] if exact else range(1, top + 1)  # top = num_groups <= T for an exact partition
    if not counts or min(best[k, T] for k in counts) > p.budget + TOL:
        raise InfeasibleGroupingError(f"no grouping meets the limits: {p.limits}.")


# --- enumeration (the oracle) --------------------------------------------------------------------


def _mask_groups(masks: Sequence[int], tasks: int) -> list[list[int]]:
    return [[i for i in range(tasks) if mask >> i & 1] for mask in masks]


def _set_partitions(rest: int, max_size: int, max_blocks: int) -> Iterator[list[int]]:
    """Every partition of the bit set ``rest`` into at most ``max_blocks`` blocks of at most
    ``max_size`` bits, each once: the block of the lowest bit left is chosen first, then the rest
    is partitioned (the order of restricted growth strings)."""
    if rest == 0:
        yield []
        return
    if max_blocks == 0:
        return
    low = rest & -rest
    others = rest ^ low
    sub = others
    while True:
        block = sub | low
        if block.bit_count() <= max_size:
            for tail in _set_partitions(rest ^ block, max_size, max_blocks - 1):
                yield [block, *tail]
        if sub == 0:
            return
        sub = (sub - 1) & others


def _solve_enumerate(p: _Problem) -> tuple[list[list[int]], bool, str]:
    """Score every grouping that meets the limits; keep the first best one."""
    T = p.tasks
    largest = ENUMERATE_MAX_TASKS_OVERLAP if p.overlap else ENUMERATE_MAX_TASKS
    if p.tasks > largest:
        raise ValueError(
            f"method='enumerate' handles T <= {ENUMERATE_MAX_TASKS} tasks for a partition and "
            f"T <= {ENUMERATE_MAX_TASKS_OVERLAP} with overlap=True, got T={T}; use method='milp'."
        )
    masks = range(1, 1 << T)
    value = {m: group_value(p.A, g) for m, g in zip(masks, _mask_groups(masks, T), strict=True)}
    cost = {m: p.cost[m.bit_count()] for m in masks}
    if p.overlap:
        candidates = _covers(p, [m for m in masks if m.bit_count() <= p.max_size])
    else:
        candidates = _set_partitions((1 << T) - 1, p.max_size, p.max_count)
    best: list[int] | None = None
    best_value, seen = -math.inf, 0
    for blocks in candidates:
        if not p.count_ok(len(blocks)) or sum(cost[b] for b in blocks) > p.budget + TOL:
            continue
        seen += 1
        total = sum(value[b] for b in blocks)
        if total > best_value:
            best, best_value = blocks, total
    if best is None:
        raise InfeasibleGroupingError(f"no grouping meets the limits: {p.limits}.")
    return _mask_groups(best, T), True, f"enumerated {seen} feasible groupings"


def _covers(p: _Problem, subsets: list[int]) -> Iterator[list[int]]:
    """Every collection of distinct ``subsets`` of an allowed size that covers all tasks, by size
    of the collection, then in lexicographic order of the subsets."""
    counts = [p.num_groups] if p.num_groups is not None else range(1, p.max_count + 1)
    visits = sum(math.comb(len(subsets), k) for k in counts)
    if visits > ENUMERATE_MAX_COLLECTIONS:
        raise ValueError(
            f"method='enumerate' would visit {visits:,} collections of groups (limit "
            f"{ENUMERATE_MAX_COLLECTIONS:,}); lower max_groups, num_groups or max_group_size, or "
            "use method='milp'."
        )
    full = (1 << p.tasks) - 1
    for k in counts:
        for chosen in itertools.combinations(subsets, k):
            covered = 0
            for mask in chosen:
                covered |= mask
            if covered == full:
                yield list(chosen)


# --- MILP ----------------------------------------------------------------------------------------


class _Program:
    """A program in ``scipy.optimize.milp``'s form, built block by block; every variable is in
    [0, 1] and minimised against its objective coefficient."""

    def __init__(self) -> None:
        self.size = 0
        self.rows = 0
        self._objective: list[Matrix] = []
        self._integral: list[Indices] = []
        self._entries: list[tuple[Indices, Indices, Matrix]] = []
        self._bounds: list[tuple[Matrix, Matrix]] = []

    def variables(self, objective: ArrayLike, integral: bool) -> Indices:
        """New variables with these objective coefficients; their indices."""
        coefficients = np.atleast_1d(np.asarray(objective, dtype=np.float64))
        index = np.arange(self.size, self.size + coefficients.size)
        self.size += coefficients.size
        self._objective.append(coefficients)
        self._integral.append(np.full(coefficients.size, int(integral)))
        return index

    def new_rows(self, count: int, lower: ArrayLike, upper: ArrayLike) -> Indices:
        """``count`` new rows lower <= . <= upper (broadcast); their indices (fill with entries)."""
        self._bounds.append(
            (
                np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)),
                np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)),
            )
        )
        self.rows += count
        return np.arange(self.rows - count, self.rows)

    def entries(self, row: ArrayLike, col: ArrayLike, val: ArrayLike) -> None:
        """Coefficients val[e] of x[col[e]] in row[e] (repeated entries add up)."""
        rows = np.asarray(row, dtype=np.int64).ravel()
        cols = np.asarray(col, dtype=np.int64).ravel()
        vals = np.asarray(val, dtype=np.float64)
        vals = np.broadcast_to(vals, cols.shape) if vals.ndim == 0 else vals.ravel()
        self._entries.append((rows, cols, vals))

    def constrain(
        self, row: ArrayLike, col: ArrayLike, val: ArrayLike, lower: ArrayLike, upper: ArrayLike
    ) -> None:
        """New rows r = 0, 1, ..., max(row): lower[r] <= sum_{e: row[e] = r} val[e] x[col[e]] <=
        upper[r]."""
        local = np.asarray(row, dtype=np.int64).ravel()
        self.entries(self.new_rows(int(local.max()) + 1, lower, upper)[local], col, val)

    def dense(self, cols: ArrayLike, val: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> None:
        """One row per row of ``cols`` (r x w): lower <= sum_j val[j] x[cols[., j]] <= upper."""
        block = np.atleast_2d(np.asarray(cols, dtype=np.int64))
        if block.size:
            r, w = block.shape
            values = np.broadcast_to(np.asarray(val, dtype=np.float64), (r, w))
            self.constrain(np.repeat(np.arange(r), w), block, values, lower, upper)

    def solve(self, limits: _Limits, presolve: bool = True) -> Any:
        """HiGHS (exact: mip_rel_gap = 0, stopped only by ``limits``) on the program; scipy's
        OptimizeResult."""
        from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: PLC0415 - heavy (0.4 s), only when grouping solves
        from scipy.sparse import coo_array  # noqa: PLC0415 - with scipy.optimize, only when grouping solves

        rows, cols, vals = (np.concatenate(part) for part in zip(*self._entries, strict=True))
        keep = vals != 0
        matrix = coo_array((vals[keep], (rows[keep], cols[keep])), shape=(self.rows, self.size))
        lower, upper = (np.concatenate(part) for part in zip(*self._bounds, strict=True))
        options: dict[str, float | bool] = {"mip_rel_gap": 0.0, "presolve": presolve}
        options.update(limits.options())
        return milp(
            np.concatenate(self._objective),
            integrality=np.concatenate(self._integral),
            bounds=Bounds(0.0, 1.0),
            constraints=LinearConstraint(matrix.tocsr(), lower, upper),
            options=options,
        )


def _highs_result(p: _Problem, result: Any, method: str, limits: _Limits) -> bool:
    """Whether HiGHS proved optimality; raise when it found no grouping."""
    if result.status == 0:
        return True
    if result.status == 2:
        raise InfeasibleGroupingError(f"no grouping meets the limits: {p.limits}.")
    limit = limits.stopped(result)
    if limit is None:
        raise RuntimeError(f"HiGHS failed on the grouping program ({method}): {result.message}")
    if result.x is None:
        raise TimeoutError(
            f"method={method!r} found no grouping within {limit} ({p.limits}); raise it."
        )
    log.warning(
        "grouping (%s) stopped at %s before proving optimality (gap %.3g): the groups may be "
        "suboptimal",
        method,
        limit,
        result.mip_gap,
    )
    return False


def _slot_count(p: _Problem, s: int) -> int:
    """How many groups of s >= 2 tasks an optimal grouping can hold: a partition has at most T // s
    (and, with exactly k groups, at most (T - k) // (s - 1), the other groups holding a task each);
    a cover at most C(T, s) (distinct groups); both at most the group count and the budget allow."""
    T = p.tasks
    if p.overlap:
        count = math.comb(T, s)
    else:
        count = T // s if p.num_groups is None else (T - p.num_groups) // (s - 1)
    if math.isfinite(p.budget):
        count = min(count, math.floor(p.budget / p.cost[s] + TOL))
    return min(count, p.max_count)


def _candidate_count(p: _Problem) -> int:
    """The number of candidate groups: subsets of 1..max_group_size tasks."""
    return sum(math.comb(p.tasks, s) for s in range(1, p.max_size + 1))


def _candidates(p: _Problem, limit: int, method: str) -> list[Indices]:
    """Every candidate group, one (n_s, s) array of task indices per size s = 1..max_group_size;
    ValueError when there are more than ``limit``."""
    total = _candidate_count(p)
    if total > limit:
        raise ValueError(
            f"method={method!r} would enumerate {total:,} candidate groups (limit {limit:,}); "
            "lower T or set max_group_size."
        )
    return [
        np.array(list(itertools.combinations(range(p.tasks), s)), dtype=np.int64)
        for s in range(1, p.max_size + 1)
    ]


def _select(
    p: _Problem,
    candidates: list[Indices],
    values: list[Matrix],
    limits: _Limits,
    method: str,
) -> tuple[list[list[int]], bool, str]:
    """Choose candidate groups, a binary y_G worth values[G] each, maximising the chosen values:
    sum_{G ni a} y_G = 1 for each task a (partition) or >= 1 (cover; chosen groups are distinct
    by construction), sum_G y_G = num_groups or <= max_groups, sum_G cost(|G|) y_G <= budget.
    Solved by HiGHS without presolve: on this wide program (T rows, one column per candidate) its
    presolve took 25 s at T = 15 where the solve took under 1 s."""
    program = _Program()
    tasks = program.new_rows(p.tasks, 1.0, np.inf if p.overlap else 1.0)
    chosen = []
    for members, value in zip(candidates, values, strict=True):
        y = program.variables(-value, integral=True)
        program.entries(tasks[members.ravel()], np.repeat(y, members.shape[1]), 1.0)
        chosen.append(y)
    _count_and_budget(p, program, candidates, chosen)
    result = program.solve(limits, presolve=False)
    optimal = _highs_result(p, result, method, limits)
    groups = _chosen_groups(candidates, chosen, result.x)
    return groups, optimal, str(result.message)


def _chosen_groups(candidates: list[Indices], chosen: list[Indices], x: Matrix) -> list[list[int]]:
    """The candidate groups whose binaries are set in the solution ``x``."""
    return [
        group.tolist()
        for members, y in zip(candidates, chosen, strict=True)
        for group in members[x[y] > 0.5]
    ]


def _count_and_budget(
    p: _Problem, program: _Program, candidates: list[Indices], chosen: list[Indices]
) -> None:
    """The number-of-groups and budget rows over the candidates' binaries ``chosen``."""
    every = np.concatenate(chosen)
    if p.num_groups is not None or p.max_count < (len(every) if p.overlap else p.tasks):
        program.dense([every], 1.0, p.num_groups or 0, p.max_count)
    if math.isfinite(p.budget):
        prices = np.concatenate(
            [np.full(len(y), p.cost[m.shape[1]]) for m, y in zip(candidates, chosen, strict=True)]
        )
        program.dense([every], prices, -np.inf, p.budget)


def _without_redundant_singletons(p: _Problem, groups: list[list[int]]) -> list[list[int]]:
    """In a cover without ``num_groups``, a singleton of a task that a larger chosen group holds
    is worth 0 and serves nothing: drop it."""
    if not p.overlap or p.num_groups is not None:
        return groups
    elsewhere = {i for g in groups if len(g) > 1 for i in g}
    return [g for g in groups if len(g) > 1 or g[0] not in elsewhere]


def _solve_columns(p: _Problem, limits: _Limits) -> tuple[list[list[int]], bool, str]:
    """Wang, Pan & Yu's program over candidate groups: a binary y_G per subset G of 1..max_group_size
    tasks, worth value(G) = (1/|G|) sum_{i != k in G} A[i, k], chosen by :func:`_select` (a set
    partitioning, or covering, program). Exact; its LP relaxation is much tighter than the slot
    formulation's (T = 12 random tasks in 2 groups: 0.1 s against 15 s), but it has one column per
    candidate group (65,535 at T = 16)."""
    candidates = _candidates(p, COLUMNS_MAX_CANDIDATES, "milp")
    values = [p.A[m[:, :, None], m[:, None, :]].sum(axis=(1, 2)) / m.shape[1] for m in candidates]
    groups, optimal, message = _select(p, candidates, values, limits, "milp")
    return _without_redundant_singletons(p, groups), optimal, message


def _solve_slots(p: _Problem, limits: _Limits) -> tuple[list[list[int]], bool, str]:
    """Wang, Pan & Yu's program as a MILP with group slots of fixed size, solved by HiGHS.

    Group sizes are fixed per slot so that 1/|g| is a constant. Singletons are worth 0 and are one
    binary u_i per task ("{i} is a group"). For each size s in 2..max_group_size there are
    n_s slots (:func:`_slot_count`); slot g of size s_g has binaries y_g (used) and X_ig (task i in
    g) with sum_i X_ig = s_g y_g, and, per pair i < k with c_ik = A[i, k] + A[k, i] != 0, a
    continuous z_ikg in [0, 1] standing for X_ig X_kg, worth c_ik / s_g. Because z only enters the
    objective, one side of the product's linearisation suffices: the maximisation pushes z up when
    c_ik > 0, so z <= X_ig, z <= X_kg make z = min(X_ig, X_kg); it pushes z down when c_ik < 0, so
    z >= X_ig + X_kg - 1 makes z = max(0, X_ig + X_kg - 1). The valid cut
    sum_k z_ikg <= (s_g - 1) X_ig (a member has s_g - 1 mates) tightens the LP relaxation.

    Constraints: coverage u_i + sum_g X_ig = 1 (partition) or >= 1 (cover); number of groups
    sum u + sum y = num_groups or <= max_groups; budget cost(1) sum u + sum_g cost(s_g) y_g <=
    budget. Symmetry among the slots of one size: y_g >= y_{g+1}, and the smallest task of slot g
    precedes that of slot g + 1: X_{i,g+1} <= sum_{j<i} X_jg (strictly, as slots of a partition are
    disjoint) or sum_{j<=i} X_jg (cover: distinct slots may share their smallest task). Distinct
    groups (cover only; slots of different sizes differ anyway): two used slots g, h of a size
    differ in a task, d_igh <= X_ig, d_igh <= 1 - X_ih, sum_i d_igh >= y_g + y_h - 1.
    """
    T = p.tasks
    first, second = np.triu_indices(T, 1)
    gain = p.A[first, second] + p.A[second, first]
    pairs = np.flatnonzero(gain != 0)
    first, second, gain = first[pairs], second[pairs], gain[pairs]
    up = gain > 0
    sizes = [s for s in range(2, p.max_size + 1) for _ in range(_slot_count(p, s))]
    variables = T + len(sizes) * (1 + T + len(gain))
    if p.overlap:
        variables += sum(math.comb(sizes.count(s), 2) * T for s in set(sizes))
    if variables > MILP_MAX_VARIABLES:
        raise ValueError(
            f"the grouping MILP would have {variables:,} variables (limit {MILP_MAX_VARIABLES:,}); "
            "set max_group_size, max_groups or num_groups to shrink it."
        )

    program = _Program()
    alone = program.variables(np.zeros(T), integral=True)
    slots: list[tuple[int, int, Indices]] = []  # (size, y, X)
    ones = np.ones(T)
    precede = np.tril_indices(T, 0 if p.overlap else -1)
    for s in sizes:
        y = int(program.variables(0.0, integral=True)[0])
        X = program.variables(np.zeros(T), integral=True)
        z = program.variables(-gain / s, integral=False)
        program.constrain(np.zeros(T + 1), [*X, y], [*ones, -s], 0.0, 0.0)
        program.dense(np.c_[z[up], X[first[up]]], [1.0, -1.0], -np.inf, 0.0)
        program.dense(np.c_[z[up], X[second[up]]], [1.0, -1.0], -np.inf, 0.0)
        program.dense(np.c_[z[~up], X[first[~up]], X[second[~up]]], [1.0, -1.0, -1.0], -1.0, np.inf)
        if len(z):
            rows = np.concatenate([first, second, np.arange(T)])
            cols = np.concatenate([z, z, X])
            vals = np.concatenate([np.ones(2 * len(z)), np.full(T, 1.0 - s)])
            program.constrain(rows, cols, vals, -np.inf, 0.0)
        for y_other, X_other in (slot[1:] for slot in slots if p.overlap and slot[0] == s):
            d = program.variables(np.zeros(T), integral=False)
            program.dense(np.c_[d, X_other], [1.0, -1.0], -np.inf, 0.0)
            program.dense(np.c_[d, X], [1.0, 1.0], -np.inf, 1.0)
            program.dense([[*d, y_other, y]], [*ones, -1.0, -1.0], -1.0, np.inf)
        if slots and slots[-1][0] == s:
            _, y_prev, X_prev = slots[-1]
            program.dense([[y, y_prev]], [1.0, -1.0], -np.inf, 0.0)
            rows = np.concatenate([np.arange(T), precede[0]])
            cols = np.concatenate([X, X_prev[precede[1]]])
            vals = np.concatenate([ones, -np.ones(len(precede[0]))])
            program.constrain(rows, cols, vals, -np.inf, 0.0)
        slots.append((s, y, X))

    used = np.array([y for _, y, _ in slots], dtype=np.int64)
    members = np.array([X for _, _, X in slots], dtype=np.int64).reshape(len(slots), T)
    program.dense(np.c_[alone, members.T], 1.0, 1.0, np.inf if p.overlap else 1.0)
    if p.num_groups is not None or p.max_count < (T + len(slots) if p.overlap else T):
        low = p.num_groups if p.num_groups is not None else 0
        program.dense([[*alone, *used]], 1.0, low, p.max_count)
    if math.isfinite(p.budget):
        prices = np.concatenate([np.full(T, p.cost[1]), [p.cost[s] for s, _, _ in slots]])
        program.dense([[*alone, *used]], prices, -np.inf, p.budget)

    result = program.solve(limits)
    optimal = _highs_result(p, result, "milp", limits)
    x = result.x > 0.5
    groups = [[i] for i in range(T) if x[alone[i]]]
    groups += [np.flatnonzero(x[X]).tolist() for _, y, X in slots if x[y]]
    return _without_redundant_singletons(p, groups), optimal, str(result.message)


# --- TAG -----------------------------------------------------------------------------------------


def _member_scores(A: Matrix, groups: Sequence[Sequence[int]]) -> list[Matrix]:
    """score(a, G) for each member a of each group G: the mean of A[b, a] over the others b."""
    return [A[np.ix_(g, g)].sum(axis=0) / max(len(g) - 1, 1) for g in groups]


def _solve_tag(p: _Problem, limits: _Limits) -> tuple[list[list[int]], bool, str]:
    """TAG's network selection (Fifty et al. 2021) as an exact program over candidate groups.

    Candidates: every subset G of 1..max_group_size tasks, with a binary y_G (G chosen). Partition:
    sum_{G ni a} y_G = 1 for each task a, and the score is (1/T) sum_G y_G sum_{a in G}
    score(a, G). Cover: a continuous x_aG <= y_G (G serves a) with sum_{G ni a} x_aG = 1 for each
    task a, maximising (1/T) sum x_aG score(a, G); for fixed y the best x serves each task from
    its best chosen group (an assignment, integral at a vertex), and coverage follows. Both: the
    number of groups sum y_G = num_groups or <= max_groups, the budget sum cost(|G|) y_G <= budget.
    Chosen groups are distinct by construction. In a cover without ``num_groups``, chosen groups
    that are no task's best are dropped (the score is unchanged). A partition is solved by
    :func:`_select`; both run HiGHS without presolve (up to ``TAG_MAX_CANDIDATES`` candidates).
    """
    T = p.tasks
    candidates = _candidates(p, TAG_MAX_CANDIDATES, "tag")
    scores = [
        p.A[m[:, :, None], m[:, None, :]].sum(axis=1) / max(m.shape[1] - 1, 1) for m in candidates
    ]
    if not p.overlap:
        values = [score.sum(axis=1) / T for score in scores]
        return _select(p, candidates, values, limits, "tag")
    program = _Program()
    tasks = program.new_rows(T, 1.0, 1.0)  # each task served once
    chosen = []
    for members, score in zip(candidates, scores, strict=True):
        y = program.variables(np.zeros(len(members)), integral=True)
        x = program.variables(-score.ravel() / T, integral=False)
        program.dense(np.c_[x, np.repeat(y, members.shape[1])], [1.0, -1.0], -np.inf, 0.0)
        program.entries(tasks[members.ravel()], x, 1.0)
        chosen.append(y)
    _count_and_budget(p, program, candidates, chosen)
    result = program.solve(limits, presolve=False)
    optimal = _highs_result(p, result, "tag", limits)
    groups = _chosen_groups(candidates, chosen, result.x)
    if p.num_groups is None:
        groups.sort(key=lambda g: (g[0], len(g), g))
        best = np.full(T, -np.inf)
        served: list[int] = [0] * T
        for index, (group, member_scores) in enumerate(
            zip(groups, _member_scores(p.A, groups), strict=True)
        ):
            for a, score in zip(group, member_scores, strict=True):
                if score > best[a]:
                    best[a], served[a] = score, index
        groups = [groups[i] for i in sorted(set(served))]
    return groups, optimal, str(result.message)
