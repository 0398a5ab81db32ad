"""The grouping solvers: the MILP against the enumeration oracle, TAG's selection, limits, errors."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from strategies.grouping.solvers import (
    GroupingSolution,
    InfeasibleGroupingError,
    grouping_objective,
    solve,
    solve_grouping,
    tag_score,
)


def random_affinity(tasks: int, seed: int) -> np.ndarray:
    """Standard normal gains: mixed signs, no structure."""
    return np.random.default_rng([seed, tasks]).normal(size=(tasks, tasks))


def planted_affinity(tasks: int, seed: int, noise: float = 0.5) -> np.ndarray:
    """+1 inside three shuffled blocks, -0.5 across, plus Gaussian noise."""
    rng = np.random.default_rng([seed, tasks, 1])
    label = np.arange(tasks) % 3
    rng.shuffle(label)
    inside = label[:, None] == label[None, :]
    return np.where(inside, 1.0, -0.5) + noise * rng.normal(size=(tasks, tasks))


def trunk_cost(costs: Any, size: int) -> float:
    if costs is None:
        return 1.0
    return float(costs) if np.ndim(costs) == 0 else float(costs[size - 1])


def assert_meets(groups: list[list[int]], tasks: int, **limits: Any) -> None:
    """``groups`` is a canonical grouping of ``tasks`` tasks within ``limits``."""
    assert all(g and g == sorted(set(g)) for g in groups)
    assert groups == sorted(groups, key=lambda g: (g[0], len(g), g))
    assert len({tuple(g) for g in groups}) == len(groups)  # distinct
    members = sorted(t for g in groups for t in g)
    if limits.get("overlap"):
        assert set(members) == set(range(tasks))
    else:
        assert members == list(range(tasks))
    if limits.get("num_groups") is not None:
        assert len(groups) == limits["num_groups"]
    if limits.get("max_groups") is not None:
        assert len(groups) <= limits["max_groups"]
    if limits.get("max_group_size") is not None:
        assert max(len(g) for g in groups) <= limits["max_group_size"]
    if limits.get("budget") is not None:
        spent = sum(trunk_cost(limits.get("costs"), len(g)) for g in groups)
        assert spent <= limits["budget"] + 1e-9


# Each setting: (largest T, limits as a function of T).
SETTINGS: dict[str, tuple[int, Callable[[int], dict[str, Any]]]] = {
    "free": (8, lambda T: {}),
    "num_groups": (8, lambda T: {"num_groups": math.ceil(T / 3)}),
    "max_groups": (8, lambda T: {"max_groups": 2}),
    "max_group_size": (8, lambda T: {"max_group_size": 2 + T % 2}),
    "budget_scalar": (8, lambda T: {"budget": 3.2, "costs": 1.5}),  # at most 2 trunks
    # convex in the size (a wider trunk for a bigger group): 1, 1.25, 2, 3.25, ...
    "budget_per_size": (
        8,
        lambda T: {"budget": 0.7 * T + 0.5, "costs": 1.0 + (np.arange(1, T + 1) - 1.0) ** 2 / 4},
    ),
    "size_and_number": (8, lambda T: {"max_group_size": 3, "num_groups": math.ceil(T / 3)}),
    "overlap_number": (5, lambda T: {"overlap": True, "num_groups": 2}),
    "overlap_size_max": (5, lambda T: {"overlap": True, "max_group_size": 3, "max_groups": 3}),
}
CASES = [(name, T) for name, (top, _) in SETTINGS.items() for T in range(2, top + 1)]


@pytest.mark.parametrize("formulation", ["columns", "slots"])
@pytest.mark.parametrize("draw", [random_affinity, planted_affinity], ids=["random", "planted"])
@pytest.mark.parametrize(("setting", "tasks"), CASES, ids=[f"{s}-T{t}" for s, t in CASES])
def test_milp_matches_the_enumeration_oracle(
    setting: str, tasks: int, draw: Callable[[int, int], np.ndarray], formulation: str
) -> None:
    limits = SETTINGS[setting][1](tasks)
    affinity = draw(tasks, 3)
    exact = solve_grouping(affinity, method="enumerate", **limits)
    found = solve_grouping(affinity, method="milp", formulation=formulation, **limits)
    assert found.objective == pytest.approx(exact.objective, abs=1e-6)
    assert found.optimal and exact.optimal
    assert found.objective == pytest.approx(grouping_objective(affinity, found.groups), abs=1e-12)
    assert_meets(found.groups, tasks, **limits)
    assert_meets(exact.groups, tasks, **limits)


def test_milp_recovers_planted_blocks() -> None:
    rng = np.random.default_rng(0)
    blocks = [sorted(b.tolist()) for b in np.split(rng.permutation(12), [3, 7])]  # sizes 3, 4, 5
    label = np.zeros(12, dtype=int)
    for index, block in enumerate(blocks):
        label[block] = index
    affinity = np.where(label[:, None] == label[None, :], 1.0, -1.0) + 0.1 * rng.normal(
        size=(12, 12)
    )
    assert solve(affinity) == sorted(blocks)


def test_solution_fields_and_determinism() -> None:
    affinity = random_affinity(7, seed=1)
    first = solve_grouping(affinity, max_group_size=3)
    again = solve_grouping(affinity, max_group_size=3)
    assert isinstance(first, GroupingSolution)
    assert (first.groups, first.objective) == (again.groups, again.objective)
    assert first.method == "milp" and first.optimal and "Optimal" in first.message
    assert first.seconds > 0
    assert solve(affinity, max_group_size=3) == first.groups


def test_the_diagonal_is_ignored() -> None:
    affinity = random_affinity(6, seed=2)
    reference = solve_grouping(affinity)
    for diagonal in (np.nan, 100.0, -100.0):
        changed = affinity.copy()
        np.fill_diagonal(changed, diagonal)
        result = solve_grouping(changed)
        assert (result.groups, result.objective) == (reference.groups, reference.objective)


# TAG: A[b, a] is b's gain onto a; score(a, G) = mean of A[b, a] over the other members b of G.
TAG_EXAMPLE = np.array(
    [
        [0.0, 0.9, -0.6],
        [0.3, 0.0, 0.7],
        [-0.3, 0.6, 0.0],
    ]
)


def test_tag_selection_by_hand() -> None:
    # Scores (task: score) per group: {0,1}: 0: 0.3, 1: 0.9; {0,2}: 0: -0.3, 2: -0.6;
    # {1,2}: 1: 0.6, 2: 0.7; {0,1,2}: 0: 0, 1: 0.75, 2: 0.05; a singleton: 0.
    # With at most 2 groups and overlap, {0,1} + {1,2} serves 0 at 0.3, 1 at 0.9, 2 at 0.7:
    # (0.3 + 0.9 + 0.7) / 3 = 1.9 / 3; the runner-up {0,1,2} + {1,2} gives (0 + 0.75 + 0.7) / 3.
    cover = solve_grouping(TAG_EXAMPLE, method="tag", overlap=True, max_groups=2)
    assert cover.groups == [[0, 1], [1, 2]]
    assert cover.objective == pytest.approx(1.9 / 3)
    # As a partition: {0} + {1,2} gives (0 + 0.6 + 0.7) / 3, {0,1} + {2} gives (0.3 + 0.9 + 0) / 3,
    # {0,1,2} gives 0.8 / 3 and {0,2} + {1} a negative score.
    partition = solve_grouping(TAG_EXAMPLE, method="tag", max_groups=2)
    assert partition.groups == [[0], [1, 2]]
    assert partition.objective == pytest.approx(1.3 / 3)
    assert tag_score(TAG_EXAMPLE, [[0, 1, 2], [1, 2]]) == pytest.approx(1.45 / 3)


def brute_force_tag(affinity: np.ndarray, **limits: Any) -> float:
    """The best tag_score over every collection of distinct subsets within ``limits``."""
    tasks = len(affinity)
    size = limits.get("max_group_size") or tasks
    subsets = [s for k in range(1, size + 1) for s in itertools.combinations(range(tasks), k)]
    most = limits.get("num_groups") or limits.get("max_groups") or tasks
    best = -math.inf
    for count in range(1, most + 1):
        for chosen in itertools.combinations(subsets, count):
            groups = [list(g) for g in chosen]
            members = sorted(t for g in groups for t in g)
            if set(members) != set(range(tasks)):
                continue
            if not limits.get("overlap") and len(members) != tasks:
                continue
            if limits.get("num_groups") not in (None, count):
                continue
            spent = sum(trunk_cost(limits.get("costs"), len(g)) for g in groups)
            if limits.get("budget") is not None and spent > limits["budget"] + 1e-9:
                continue
            best = max(best, tag_score(affinity, groups))
    return best


TAG_LIMITS = [
    {"max_groups": 2},
    {"num_groups": 3, "max_group_size": 2},
    {"budget": 3.5, "costs": [1.0, 1.5, 2.0, 3.0, 3.5]},
    {"overlap": True, "max_groups": 2},
    {"overlap": True, "num_groups": 3, "max_group_size": 3},
]


@pytest.mark.parametrize("limits", TAG_LIMITS, ids=[str(sorted(x)) for x in TAG_LIMITS])
@pytest.mark.parametrize("seed", [0, 1])
def test_tag_matches_brute_force(limits: dict[str, Any], seed: int) -> None:
    affinity = random_affinity(5, seed)
    found = solve_grouping(affinity, method="tag", **limits)
    assert found.objective == pytest.approx(brute_force_tag(affinity, **limits), abs=1e-9)
    assert found.objective == pytest.approx(tag_score(affinity, found.groups))
    assert_meets(found.groups, 5, **limits)


@pytest.mark.parametrize("formulation", ["columns", "slots"])
def test_node_limit_without_a_grouping_raises_timeout(formulation: str) -> None:
    # node_limit=0 stops HiGHS after presolve, before the root node: no grouping yet
    with pytest.raises(TimeoutError, match="no grouping within node_limit=0"):
        solve_grouping(
            random_affinity(8, seed=8), num_groups=2, node_limit=0, formulation=formulation
        )


def test_node_limit_with_a_grouping_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Two groups of 8 random tasks, slot formulation: HiGHS's root node finds a grouping but
    leaves a gap (0.43), so one node does not prove it optimal. Nodes, not seconds: the same
    outcome on any machine."""
    affinity = random_affinity(8, seed=8)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        found = solve_grouping(affinity, num_groups=2, node_limit=1, formulation="slots")
    assert not found.optimal
    assert_meets(found.groups, 8, num_groups=2)
    assert found.objective <= solve_grouping(affinity, num_groups=2, method="enumerate").objective
    assert "suboptimal" in caplog.text and "node_limit=1" in caplog.text


class StoppedByTime:
    """``scipy.optimize.milp`` as HiGHS answers when its time limit stops it: status 1, with the
    solution found so far (the real one, optimal or not) or none. Records the options it got."""

    def __init__(self, found: bool) -> None:
        from scipy import optimize  # noqa: PLC0415 - the real milp, before it is patched

        self.milp = optimize.milp
        self.found = found
        self.options: list[dict[str, Any]] = []

    def __call__(self, *args: Any, options: dict[str, Any], **kwargs: Any) -> Any:
        self.options.append(dict(options))
        result = self.milp(*args, options=options, **kwargs)
        result.status, result.mip_gap = 1, 0.5
        result.x = result.x if self.found else None
        return result


@pytest.mark.parametrize("found", [True, False], ids=["grouping-found", "none-found"])
def test_time_limit_reaches_highs_and_its_stop_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, found: bool
) -> None:
    """time_limit goes to HiGHS as its time limit; when HiGHS says the limit stopped it, the
    grouping found so far comes back not optimal with a warning, or TimeoutError when there is
    none. (HiGHS's answer is staged: a real time limit would make the test depend on the clock.)"""
    from scipy import optimize  # noqa: PLC0415 - the module solvers.py imports milp from

    stopped = StoppedByTime(found)
    monkeypatch.setattr(optimize, "milp", stopped)
    affinity = random_affinity(6, seed=6)
    if found:
        with caplog.at_level(logging.WARNING, logger="fedmtl"):
            solution = solve_grouping(affinity, num_groups=2, time_limit=3.0, node_limit=50)
        assert not solution.optimal
        assert_meets(solution.groups, 6, num_groups=2)
        assert "suboptimal" in caplog.text and "time_limit=3 s" in caplog.text
    else:
        with pytest.raises(TimeoutError, match="no grouping within time_limit=3 s"):
            solve_grouping(affinity, num_groups=2, time_limit=3.0, node_limit=50)
    assert stopped.options[0]["time_limit"] == 3.0 and stopped.options[0]["node_limit"] == 50


def test_infeasibility_found_by_the_solver() -> None:
    # 3 tasks have 7 distinct non-empty groups: 8 cannot be chosen; the size check passes it on.
    for method in ("milp", "enumerate", "tag"):
        with pytest.raises(InfeasibleGroupingError, match="num_groups=8"):
            solve_grouping(np.zeros((3, 3)), overlap=True, num_groups=8, method=method)


BAD_INPUTS: list[tuple[Any, dict[str, Any], str]] = [
    (np.zeros((2, 3)), {}, "affinity"),
    (np.zeros((2, 2, 2)), {}, "affinity"),
    (np.zeros((0, 0)), {}, "affinity"),
    ([["a", "b"], ["c", "d"]], {}, "affinity"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), {}, "affinity"),
    (np.array([[0.0, np.inf], [1.0, 0.0]]), {}, "affinity"),
    (np.zeros((4, 4)), {"num_groups": 0}, "num_groups"),
    (np.zeros((4, 4)), {"num_groups": 5}, "num_groups"),
    (np.zeros((4, 4)), {"num_groups": 2.0}, "num_groups"),
    (np.zeros((4, 4)), {"max_groups": 0}, "max_groups"),
    (np.zeros((4, 4)), {"num_groups": 3, "max_groups": 2}, "max_groups"),
    (np.zeros((4, 4)), {"max_group_size": 0}, "max_group_size"),
    (np.zeros((4, 4)), {"budget": 0.0}, "budget"),
    (np.zeros((4, 4)), {"budget": math.inf}, "budget"),
    (np.zeros((4, 4)), {"budget": 2.0, "costs": 0.0}, "costs"),
    (np.zeros((4, 4)), {"budget": 2.0, "costs": [1.0, -1.0, 1.0, 1.0]}, "costs"),
    (np.zeros((4, 4)), {"budget": 2.0, "costs": [1.0, 2.0]}, "costs"),
    (np.zeros((4, 4)), {"costs": 1.0}, "budget"),
    (np.zeros((4, 4)), {"method": "greedy"}, "method"),
    (np.zeros((4, 4)), {"time_limit": 0.0}, "time_limit"),
    (np.zeros((4, 4)), {"node_limit": -1}, "node_limit"),
    (np.zeros((4, 4)), {"node_limit": 1.5}, "node_limit"),
    (np.zeros((4, 4)), {"overlap": True}, "num_groups"),
    (np.zeros((4, 4)), {"overlap": True, "max_group_size": 2}, "max_groups"),
    (np.zeros((11, 11)), {"method": "enumerate"}, "enumerate"),
    (np.zeros((7, 7)), {"method": "enumerate", "overlap": True, "max_groups": 2}, "enumerate"),
    (np.zeros((20, 20)), {"method": "tag"}, "max_group_size"),
]


@pytest.mark.parametrize(("affinity", "limits", "named"), BAD_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(
    affinity: Any, limits: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        solve_grouping(affinity, **limits)


@pytest.mark.parametrize(
    "limits",
    [
        {"num_groups": 2, "max_group_size": 2},  # 2 groups of 2 cannot hold 5 tasks
        {"max_groups": 1, "max_group_size": 4},
        {"budget": 1.5, "max_group_size": 3},  # two trunks at 1 each are needed
        {"budget": 4.0, "costs": [1.0, 2.0, 3.0, 4.0, 5.0], "num_groups": 2},  # cost >= 1 + 4
    ],
)
def test_obvious_infeasibility_is_reported_before_solving(limits: dict[str, Any]) -> None:
    with pytest.raises(InfeasibleGroupingError, match="partition of T=5 tasks") as error:
        solve_grouping(np.zeros((5, 5)), **limits)
    assert all(name in str(error.value) for name in limits)


def test_objective_helpers_check_groups() -> None:
    affinity = TAG_EXAMPLE
    assert grouping_objective(affinity, [[0, 1], [2]]) == pytest.approx((0.9 + 0.3) / 2)
    with pytest.raises(ValueError, match="groups"):
        grouping_objective(affinity, [[0, 3]])
    with pytest.raises(ValueError, match="cover"):
        tag_score(affinity, [[0, 1]])


def test_solve_signature_is_the_contract() -> None:
    parameters = inspect.signature(solve).parameters
    assert [(p.name, p.default) for p in parameters.values()] == [
        ("affinity", inspect.Parameter.empty),
        ("num_groups", None),
        ("max_groups", None),
        ("max_group_size", None),
        ("overlap", False),
        ("budget", None),
        ("costs", None),
        ("method", "milp"),
    ]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters.values())


@pytest.mark.slow  # HiGHS to optimality on both formulations (about 2 s)
def test_column_formulation_proves_what_slots_cannot_within_a_node_limit() -> None:
    """Random affinities, T = 12 in 2 groups: the candidate-group program (picked by ``auto``)
    proves the optimum at the root node, where the slot program needs 21 nodes (measured without
    a limit): within one node it returns a grouping it has not proved optimal, no better."""
    affinity = random_affinity(12, seed=12)
    auto = solve_grouping(affinity, num_groups=2, node_limit=1)
    columns = solve_grouping(affinity, num_groups=2, node_limit=1, formulation="columns")
    assert auto.optimal and auto.groups == columns.groups
    slots = solve_grouping(affinity, num_groups=2, node_limit=1, formulation="slots")
    assert not slots.optimal
    assert slots.objective <= auto.objective + 1e-9


def test_unknown_formulation_is_named() -> None:
    with pytest.raises(ValueError, match="formulation"):
        solve_grouping(np.zeros((3, 3)), formulation="rows")
