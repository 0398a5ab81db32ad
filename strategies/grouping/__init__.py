"""Task grouping: which tasks should share a trunk (Wang, Pan & Yu 2024; Fifty et al. 2021).

- :mod:`~strategies.grouping.solvers`: the grouping program (MILP with HiGHS), TAG's network
  selection and an exact enumeration oracle: :func:`solve` / :func:`solve_grouping`.
"""

from strategies.grouping.solvers import (
    GroupingSolution,
    InfeasibleGroupingError,
    grouping_objective,
    solve,
    solve_grouping,
    tag_score,
)

__all__ = [
    "GroupingSolution",
    "InfeasibleGroupingError",
    "grouping_objective",
    "solve",
    "solve_grouping",
    "tag_score",
]
