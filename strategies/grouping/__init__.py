"""Task grouping: which tasks should share a trunk (Wang, Pan & Yu 2024; Fifty et al. 2021).

- :mod:`~strategies.grouping.affinity`: affinity estimators (:data:`AFFINITIES`: ``transfer_gain``,
  ``tag``, ``update_similarity``) and their combination over silos and rounds.
- :mod:`~strategies.grouping.solvers`: the grouping program (MILP with HiGHS), TAG's network
  selection and an exact enumeration oracle: :func:`solve` / :func:`solve_grouping`.
- :mod:`~strategies.grouping.method`: the federated pipeline, method ``grouping``
  (warm-up with affinity measurement, grouping, one trunk per group).
"""

from strategies.grouping.affinity import AFFINITIES, AffinityAccumulator
from strategies.grouping.method import Grouping, GroupingParams
from strategies.grouping.solvers import (
    GroupingSolution,
    InfeasibleGroupingError,
    grouping_objective,
    solve,
    solve_grouping,
    tag_score,
)

__all__ = [
    "AFFINITIES",
    "AffinityAccumulator",
    "Grouping",
    "GroupingParams",
    "GroupingSolution",
    "InfeasibleGroupingError",
    "grouping_objective",
    "solve",
    "solve_grouping",
    "tag_score",
]
