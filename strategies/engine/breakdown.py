"""Breakdown points of the averaging rules, checked every round for every averaged group.

A rule averages k values of one coordinate, one per silo; up to f of them (``max_faulty``, the
faulty silos a run declares it must withstand per round) may be arbitrary. Yin, Chen, Ramchandran &
Bartlett 2018 ("Byzantine-robust distributed learning: towards optimal statistical rates", ICML)
bound the error of the two coordinate-wise rules while the faulty values are a minority of what
they keep:

- **median**: stays within the range of the honest values while f < k/2; it breaks down (a faulty
  value can be the result, arbitrarily far away) once k <= 2f.
- **trimmed mean** cutting c values at each end (``trim_count``, or c = floor(beta k) for
  ``trim_fraction`` beta): holds while c >= f and k >= 2c + 1 (the f faulty values can all be
  cut); it breaks down once c < f. With k <= 2c + 1 it is the median
  (:func:`strategies.engine.robust.trimmed_mean`), judged as such.
- **Krum and MultiKrum** (Blanchard et al. 2017): the selected update stays close to the honest
  ones while k > 2f + 2 (each value's k - f - 2 nearest others then include honest ones only in
  the majority); with k <= 2f + 2 the faulty updates can be selected.
- **Bulyan** (El Mhamdi et al. 2018): holds while k >= 4f + 3; with fewer values it is the
  coordinate-wise median (:func:`strategies.engine.robust.bulyan`), and reported as too few.
- **weighted mean**: breakdown point 0, one faulty value moves it arbitrarily far; a norm bound
  (``norm_bound``) limits how far, so with one the mean is not reported.

The groups the engine checks (:func:`averaged_groups`) are those a trunk-and-heads method averages:
the trunk over all the round's valid updates (k = their number) and each task's head over the
updates of its holders (k_t, often far fewer: with f faulty silos among a task's 4 holders, a
median breaks down at f = 2 whatever the federation's size). Methods that average other groups
(per task group, per silo) are judged on these counts all the same.

:class:`BreakdownWatch` logs one WARNING per group and run, naming the group, k, f and the fix,
counts the rounds each group was exposed and keeps them for ``summary.json``'s
``robust_warnings``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from strategies.engine.replies import ClientUpdate
from strategies.engine.robust import RobustRule, Trim

log = logging.getLogger("fedmtl")

TRUNK = "trunk"


def breakdown(
    rule: RobustRule, k: int, faulty: int, trim: Trim, norm_bound: float | None = None
) -> str | None:
    """Why ``rule`` over k values, up to ``faulty`` (f) of them arbitrary, can be taken over
    (module docstring), or None when it holds; with ``norm_bound`` the mean is bounded."""
    if faulty <= 0:
        return None
    if rule == "mean":
        if norm_bound is not None:
            return None
        return (
            f"the weighted mean of {k} updates has breakdown point 0: one faulty update moves it "
            "arbitrarily far"
        )
    if rule in ("krum", "multikrum"):
        if k > 2 * faulty + 2:
            return None
        return (
            f"{rule} of {k} updates can select faulty ones with {faulty} faulty "
            f"(it needs k > 2f + 2, k >= {2 * faulty + 3})"
        )
    if rule == "bulyan":
        if k >= 4 * faulty + 3:
            return None
        return (
            f"bulyan of {k} updates with {faulty} faulty needs k >= 4f + 3 = {4 * faulty + 3}: "
            "the coordinate-wise median is taken instead"
        )
    if rule == "median" or k <= 2 * trim.cut(k) + 1:
        if k > 2 * faulty:
            return None
        return (
            f"a coordinate-wise median of {k} updates breaks down with {faulty} faulty "
            f"(it needs k >= 2f + 1 = {2 * faulty + 1})"
        )
    cut = trim.cut(k)
    if cut >= faulty:
        return None
    return (
        f"the trimmed mean of {k} updates cuts {cut} per side, fewer than the {faulty} faulty "
        f"(it needs a cut c >= f = {faulty}, and k >= 2c + 1)"
    )


def averaged_groups(updates: Sequence[ClientUpdate], tasks: Sequence[str]) -> dict[str, int]:
    """k per averaged group: ``trunk`` over every update, and each task over the updates of its
    holders with labelled examples of it (as :func:`strategies.engine.aggregate_heads` takes
    them); a task without any is left out."""
    groups = {TRUNK: len(updates)} if updates else {}
    for task in tasks:
        k = sum(1 for u in updates if task in u.silo.tasks and u.task_examples.get(task, 0) > 0)
        if k:
            groups[task] = k
    return groups


def fix_for(rule: RobustRule, faulty: int) -> str:
    """What to change so that ``rule`` withstands ``faulty`` silos."""
    if rule == "mean":
        return "set strategy.robust=median or trimmed_mean, or strategy.norm_bound"
    needed = {"krum": 2 * faulty + 3, "multikrum": 2 * faulty + 3, "bulyan": 4 * faulty + 3}
    if rule in needed:
        return (
            f"give every task at least {needed[rule]} holders per round (more silos per task, "
            "e.g. partition.assignment.k), expect fewer faulty silos (strategy.max_faulty), or "
            "use strategy.robust=median"
        )
    cut = f"; with trimmed_mean, cut at least {faulty} per side (strategy.trim_count)"
    return (
        f"give every task at least {2 * faulty + 1} holders per round (more silos per task, "
        "e.g. partition.assignment.k), expect fewer faulty silos, or bound update norms "
        f"(strategy.norm_bound){cut if rule == 'trimmed_mean' else ''}"
    )


class BreakdownWatch:
    """Each round, the averaged groups whose rule ``max_faulty`` faulty silos could take over,
    and the trimmed-mean groups too small for ``trim_count`` (the median is taken there).

    ``warnings``: group -> ``{"reason", "fix", "rounds", "first_round", "min_k", "max_faulty"}`` (the
    rounds the group was exposed, the first, its smallest k), for ``summary.json``'s
    ``robust_warnings``; logged once per group and run."""

    def __init__(
        self,
        rule: RobustRule,
        trim: Trim,
        max_faulty: int | None,
        norm_bound: float | None = None,
    ) -> None:
        self.rule = rule
        self.trim = trim
        self.max_faulty = max_faulty
        self.norm_bound = norm_bound
        self.warnings: dict[str, dict[str, Any]] = {}

    def check(
        self, server_round: int, updates: Sequence[ClientUpdate], tasks: Sequence[str]
    ) -> None:
        """Judge the groups of a round's aggregated ``updates``."""
        for group, k in averaged_groups(updates, tasks).items():
            reason, fix = None, ""
            if self.max_faulty is not None:
                reason = breakdown(self.rule, k, self.max_faulty, self.trim, self.norm_bound)
                fix = fix_for(self.rule, self.max_faulty)
            if reason is None and self.rule == "trimmed_mean" and self.trim.falls_back(k):
                reason = (
                    f"{k} updates are too few to cut trim_count={self.trim.count} per side: "
                    "their median is taken"
                )
                fix = (
                    f"give every task more than {2 * (self.trim.count or 0)} holders per round, "
                    "or lower strategy.trim_count"
                )
            if reason is not None:
                self._note(server_round, group, k, reason, fix)

    def _note(self, server_round: int, group: str, k: int, reason: str, fix: str) -> None:
        seen = self.warnings.get(group)
        if seen is None:
            what = "the trunk" if group == TRUNK else f"the head of task {group!r}"
            log.warning(
                "round %d: %s (k=%d, max_faulty=%s): %s. Fix: %s.",
                server_round,
                what,
                k,
                self.max_faulty,
                reason,
                fix,
            )
            self.warnings[group] = {
                "reason": reason,
                "fix": fix,
                "rounds": 1,
                "first_round": server_round,
                "min_k": k,
                "max_faulty": self.max_faulty,
            }
            return
        seen["rounds"] += 1
        seen["min_k"] = min(seen["min_k"], k)

    def state_dict(self) -> dict[str, Any]:
        return {"warnings": {g: dict(w) for g, w in self.warnings.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.warnings = {g: dict(w) for g, w in state.get("warnings", {}).items()}
