"""Federated task grouping: measure affinity during a warm-up, solve for groups, one trunk per group.

Pipeline (method ``grouping``):

1. **Warm-up** (rounds 1..W, ``warmup_rounds``): one shared trunk. Silos measure the affinity
   estimator (:mod:`strategies.grouping.affinity`) among the tasks they hold during local training
   (``transfer_gain``, ``tag``), or the server computes it from the per-task updates
   (``update_similarity``). The server combines the reports over silos (weighted by examples) and
   rounds (:class:`AffinityAccumulator`), and fills pairs no silo covered by the ``uncovered`` rule.
2. **Grouping** (end of round W): the groups maximise the grouping program under the resource
   limits (:func:`strategies.grouping.solvers.solve_grouping`: ``solver``, ``num_groups``,
   ``max_groups``, ``max_group_size``, ``budget``, ``costs``, ``time_limit_s``). Groups partition
   the tasks (a task is trained in exactly one group).
3. **Grouped training** (rounds W+1..): the model gets one trunk per group, ``trunks.<group>.*``,
   each a copy of the warmed-up shared trunk (with its server-optimizer moments); each task's head
   attaches to its group's trunk. A silo receives only the trunks of its tasks' groups (and its
   tasks' heads). Each group's trunk update is computed from the silos holding one of its tasks:

   - ``weighting: null``: Delta_g = sum_s m_{s,g} Delta_{s,g} / sum_s m_{s,g}, the silos' joint
     updates of trunk g weighted by m_{s,g} = sum_{t in g} n_{s,t} (their labelled examples of the
     group's tasks): FedAvg inside the group;
   - ``weighting: <name>`` or ``{name, ...its parameters}`` (any of
     :data:`strategies.balancing.WEIGHTINGS`): silos send per-task updates and, per group,
     Delta_g = J_g^T w_g with J_g the aggregated per-task updates D_t of the group's tasks and w_g
     from the weighting (one instance, with its own state, per group; see
     :mod:`strategies.balancing.federated`).

   The same rule combines the single trunk during the warm-up (all tasks in one group).

If the solver stops at its time limit without any feasible grouping, the run goes on with every
task in one group and says so in the log and in ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from fedmtl.core.checks import int_at_least, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import Arrays, SiloInfo, TrainReply, TrainRequest
from strategies.balancing import Weighting, WeightingChoice, weighting_from
from strategies.balancing.federated import balanced_update
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    MethodSetup,
    ReplyError,
    Round,
    SiloMethod,
    SiloTask,
    SiloTools,
    SumRule,
    TrunkAndHeads,
    TrunkStep,
    per_task_rows,
    train_received,
    weighted_mean_delta,
)
from strategies.grouping.affinity import (
    AFFINITIES,
    AffinityAccumulator,
    UncoveredRule,
    cosine_pairs,
    silo_probe,
)
from strategies.grouping.report import HEATMAP_FILE, matrix_json, plot_affinity, write_affinity
from strategies.grouping.solvers import GroupingSolution, solve_grouping

log = logging.getLogger("fedmtl")

_LIMITS = ("num_groups", "max_groups", "max_group_size", "budget", "costs")


@dataclass(frozen=True)
class GroupingParams(MethodParams):
    """``strategy=grouping``: the affinity estimator, the warm-up, the grouping program's limits
    and the trunk update inside each group (see the module docstring; ``weighting``: null, a
    weighting's name or ``{name, ...its parameters}``)."""

    affinity: str = "transfer_gain"
    affinity_every: int = 5
    warmup_rounds: int = 5
    uncovered: UncoveredRule = "zero"
    solver: Literal["milp", "enumerate", "tag"] = "milp"
    num_groups: int | None = None
    max_groups: int | None = None
    max_group_size: int | None = None
    budget: float | None = None
    costs: float | list[float] | None = None
    time_limit_s: float = 60.0
    node_limit: int | None = None
    weighting: WeightingChoice | None = None
    groups: list[list[str]] | None = None

    renamed_keys: ClassVar[dict[str, str]] = {"weighting_params": "weighting"}

    def __post_init__(self) -> None:
        super().__post_init__()
        AFFINITIES.get(self.affinity, key="affinity")
        int_at_least(self, "affinity_every", 1)
        int_at_least(self, "warmup_rounds", 1)
        positive(self, "time_limit_s")
        for name in ("num_groups", "max_groups", "max_group_size"):
            if getattr(self, name) is not None:
                int_at_least(self, name, 1)
        if self.budget is not None:
            positive(self, "budget")
        if self.node_limit is not None:
            int_at_least(self, "node_limit", 0)

    def check_experiment(self, task_names: Sequence[str], num_rounds: int) -> None:
        if self.groups is not None:
            given = [t for group in self.groups for t in group]
            if sorted(given) != sorted(task_names) or not all(self.groups):
                raise ConfigError(
                    "strategy.groups",
                    f"{self.groups} is not a partition of the tasks {list(task_names)} into "
                    "non-empty groups.",
                    "list every task in exactly one group, or set groups to null to solve for them.",
                )
        if self.warmup_rounds >= num_rounds:
            raise ConfigError(
                "strategy.warmup_rounds",
                f"is {self.warmup_rounds}, but the run has {num_rounds} rounds: the groups would "
                "never be trained.",
                "lower warmup_rounds or raise num_rounds.",
            )
        try:  # the limits' feasibility does not depend on the affinity values
            self.solve(np.zeros((len(task_names), len(task_names))))
        except (ValueError, TimeoutError) as err:
            named = [n for n in _LIMITS if n in str(err)]
            raise ConfigError(
                f"strategy.{named[0]}" if named else "strategy",
                f"the grouping limits cannot be met for {len(task_names)} tasks: {err}",
                "relax num_groups, max_groups, max_group_size or budget.",
            ) from None

    def solve(self, affinity: np.ndarray) -> GroupingSolution:
        """The grouping program on ``affinity`` under these limits (always a partition)."""
        return solve_grouping(
            affinity,
            num_groups=self.num_groups,
            max_groups=self.max_groups,
            max_group_size=self.max_group_size,
            overlap=False,
            budget=self.budget,
            costs=self.costs,
            method=self.solver,
            time_limit=self.time_limit_s,
            node_limit=self.node_limit,
        )


@dataclass(frozen=True)
class GroupingSiloParams:
    """The affinity estimator a silo measures during local training (None: none), on the batch
    of every ``every``-th local step."""

    affinity: str | None = None
    every: int = 1


def affinity_key(source: str, target: str) -> str:
    """The method-metrics key of a measured S_{source->target}."""
    return f"affinity/{source}/{target}"


class GroupingSilo(SiloMethod):
    """Plain training; during the warm-up, with the affinity probe measuring at its steps and the
    mean per ordered pair of the silo's tasks in the reply's method metrics."""

    Params = GroupingSiloParams
    params: GroupingSiloParams

    def batchable(self) -> str | None:
        if self.params.affinity is None:
            return None
        return f"the affinity probe ('{self.params.affinity}') takes lookahead steps"

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        if self.params.affinity is None:
            return train_received(tools, received, request)
        probe = silo_probe(self.params.affinity, tools.model, tools.data, self.params.every)
        reply = train_received(tools, received, request, probe=probe)
        measured = {affinity_key(s, t): value for (s, t), value in probe.means().items()}
        return dataclasses.replace(reply, method_metrics=measured)


class Grouping(TrunkAndHeads[GroupingParams]):
    """Affinity warm-up, then one trunk per task group (see the module docstring)."""

    silo = GroupingSilo

    def __init__(self, params: GroupingParams, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.estimator = AFFINITIES.get(params.affinity).factory()
        self.accumulator = AffinityAccumulator(list(self.tasks))
        self.affinity_history: list[tuple[int, np.ndarray]] = []
        """Each warm-up round's own estimate (its reports only), for ``affinity.json``."""
        self.weightings: dict[str, Weighting] = {}
        """One weighting per group (``""``: the shared trunk of the warm-up), built on first use."""
        self.groups: dict[str, tuple[str, ...]] | None = None
        """The groups, once formed (the model then has one trunk per group)."""
        self.grouped_at: int | None = None
        self.solution: GroupingSolution | None = None
        self.fallback: str | None = None
        self.never_held_together: list[tuple[str, str]] = []
        """Pairs of tasks that no known silo holds together (no silo can measure them)."""

    @property
    def warming_up(self) -> bool:
        return self.groups is None

    @property
    def measuring(self) -> bool:
        """Whether affinity is measured this round: during the warm-up, unless groups are given."""
        return self.warming_up and self.params.groups is None

    def silo_task(self, server_round: int) -> SiloTask:
        per_task = self.params.weighting is not None or (
            self.measuring and self.estimator.needs_per_task
        )
        probe: dict[str, Any] = {}
        if self.measuring and self.estimator.on_silos:
            probe = {"affinity": self.params.affinity, "every": self.params.affinity_every}
        return SiloTask("per_task" if per_task else "joint", probe)

    def secure_sums(self, server_round: int) -> SumRule:
        """Sums suffice: each group's trunk is a mean weighted by the silos' rows of its tasks
        (``served``), or balanced over per-task means D_t; the affinities silos measure are summed
        weighted by min(n_{s,a}, n_{s,b}), so each warm-up round adds one federation-wide report
        per pair (the plain run adds one per silo)."""
        names = list(self.tasks)
        metrics: dict[str, tuple[str, ...]] = {}
        if self.measuring and self.estimator.on_silos:
            metrics = {affinity_key(a, b): (a, b) for a in names for b in names if a != b}
        weighting = self.params.weighting
        needs_losses = (
            weighting is not None and weighting_from(weighting, seed=self.seed).needs_losses
        )
        return SumRule(
            "served", joint_trunk=weighting is None, metrics=metrics, needs_losses=needs_losses
        )

    def check_update(self, update: ClientUpdate) -> None:
        """Measured affinities only for ordered pairs of the silo's own tasks."""
        for key in update.method_metrics:
            parts = key.split("/")
            own = update.silo.tasks
            if len(parts) != 3 or parts[0] != "affinity" or parts[1] == parts[2]:
                raise ReplyError(f"unexpected method metric {key!r}")
            if parts[1] not in own or parts[2] not in own:
                raise ReplyError(
                    f"affinity {parts[1]}->{parts[2]} between tasks the silo does not hold"
                )

    # ------------------------------------------------------------------ aggregation
    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        server_round = round_.number
        self.never_held_together = never_together(list(self.tasks), round_.silos)
        trunk = model.trunk()
        if self.groups is None:
            if self.measuring:
                self._observe(server_round, updates, list(trunk))
            return self._group_update(server_round, "", list(self.tasks), trunk, updates)
        delta: Arrays = {}
        task_weights: dict[str, float] = {}
        for group, members in self.groups.items():
            group_trunk = {k: trunk[k] for k in model.group_keys(group)}
            part = self._group_update(server_round, group, list(members), group_trunk, updates)
            delta.update(part.delta or {})
            task_weights.update(part.task_weights)
        return TrunkStep(delta or None, task_weights)

    def _group_update(
        self,
        server_round: int,
        group: str,
        members: list[str],
        trunk: Arrays,
        updates: list[ClientUpdate],
    ) -> TrunkStep:
        """The update of one trunk shared by ``members`` (module docstring, step 3)."""
        examples = [sum(u.task_examples.get(t, 0) for t in members) for u in updates]
        holders = [u for u, n in zip(updates, examples, strict=True) if n > 0]
        if not holders:
            return TrunkStep(None)
        if self.params.weighting is None:
            weights = [float(n) for n in examples if n > 0]
            return TrunkStep(weighted_mean_delta(holders, list(trunk), weights, self.average))
        delta, task_weights = balanced_update(
            self._weighting(group),
            members,
            list(self.tasks),
            holders,
            trunk,
            server_round,
            self.average,
        )
        return TrunkStep(delta, task_weights)

    def _weighting(self, group: str) -> Weighting:
        """The balancing method of ``group``'s trunk, built on first use."""
        if group not in self.weightings:
            assert self.params.weighting is not None
            self.weightings[group] = weighting_from(self.params.weighting, seed=self.seed)
        return self.weightings[group]

    def _observe(
        self, server_round: int, updates: list[ClientUpdate], trunk_keys: list[str]
    ) -> None:
        """Add the round's affinity reports (silos' measurements, or update similarity) to the
        running estimate, and keep the round's own estimate in :attr:`affinity_history`."""
        names = list(self.tasks)
        reports: list[tuple[str, str, float, float]] = [
            (
                source,
                target,
                value,
                float(min(u.task_examples.get(source, 0), u.task_examples.get(target, 0))),
            )
            for u in updates
            for (source, target), value in _measured(u).items()
        ]
        if self.estimator.needs_per_task:
            present, rows, _ = per_task_rows(names, updates, trunk_keys)
            reports += [
                (names[present[a]], names[present[b]], cosine, 1.0)
                for (a, b), cosine in cosine_pairs(rows).items()
            ]
        this_round = AffinityAccumulator(names)
        for report in reports:
            self.accumulator.add(*report)
            this_round.add(*report)
        self.affinity_history.append((server_round, this_round.estimate()))

    def finish(self, round_: Round, model: GlobalModel) -> GlobalModel:
        """At the end of the warm-up, the groups are formed (:meth:`form_groups`)."""
        if round_.number == self.params.warmup_rounds:
            return self.form_groups(round_.number, model)
        return model

    # ------------------------------------------------------------------ grouping
    def form_groups(self, server_round: int, model: GlobalModel) -> GlobalModel:
        """Choose the groups (given, or solved on the combined affinity) and give each group a
        copy of the trunk and of its server-optimizer moments."""
        names = list(self.tasks)
        self.groups = {
            f"g{n}": tuple(names[t] for t in group)
            for n, group in enumerate(self._choose_groups(names))
        }
        self.grouped_at = server_round
        grouped, copies = model.grouped(self.groups)
        self.server_optimizer.split_state(copies)
        log.info("round %d: task groups %s", server_round, list(self.groups.values()))
        return grouped

    def _choose_groups(self, names: list[str]) -> list[list[int]]:
        if self.params.groups is not None:
            return [[names.index(t) for t in group] for group in self.params.groups]
        uncovered = self.accumulator.uncovered()
        if uncovered:
            log.warning(
                "no silo measured task pairs %s during the warm-up (never held together: %s); "
                "rule %r fills them",
                uncovered,
                self.never_held_together,
                self.params.uncovered,
            )
        try:
            self.solution = self.params.solve(self.accumulator.filled(self.params.uncovered))
        except TimeoutError as err:
            self.fallback = f"{err}; every task trains in one group"
            log.error("task grouping failed: %s", self.fallback)
            return [list(range(len(names)))]
        log.info(
            "grouping objective %.4g (%s, %.2fs%s)",
            self.solution.objective,
            self.params.solver,
            self.solution.seconds,
            "" if self.solution.optimal else ", NOT proven optimal",
        )
        return self.solution.groups

    # ------------------------------------------------------------------ results
    def results(self) -> dict[str, Any]:
        solution = self.solution
        return {
            "groups": None
            if self.groups is None
            else [list(members) for members in self.groups.values()],
            "grouping": {
                "round": self.grouped_at,
                "source": self._source(),
                "affinity": self.params.affinity,
                "solver": self.params.solver,
                "objective": None if solution is None else solution.objective,
                "solver_seconds": None if solution is None else solution.seconds,
                "optimal": None if solution is None else solution.optimal,
                "message": self.fallback or (None if solution is None else solution.message),
                "uncovered_rule": self.params.uncovered,
                "uncovered_pairs": [list(p) for p in self.accumulator.uncovered()],
                "never_held_together": [list(p) for p in self.never_held_together],
            },
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        solution = None if self.solution is None else asdict(self.solution)
        return {
            **super().state_dict(),
            "groups": None if self.groups is None else {g: list(t) for g, t in self.groups.items()},
            "never_held_together": [list(p) for p in self.never_held_together],
            "accumulator": {
                "sums": self.accumulator.sums,
                "weights": self.accumulator.weights,
                "reports": self.accumulator.reports,
            },
            "affinity_history": [[r, estimate] for r, estimate in self.affinity_history],
            "weightings": {group: w.state_dict() for group, w in self.weightings.items()},
            "grouped_at": self.grouped_at,
            "solution": solution,
            "fallback": self.fallback,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        groups = state["groups"]
        self.groups = None if groups is None else {g: tuple(t) for g, t in groups.items()}
        self.never_held_together = [(a, b) for a, b in state["never_held_together"]]
        for name, values in state["accumulator"].items():
            setattr(self.accumulator, name, np.array(values))
        self.affinity_history = [(int(r), np.array(m)) for r, m in state["affinity_history"]]
        self.weightings.clear()
        for group, weighting_state in state["weightings"].items():
            self._weighting(group).load_state_dict(weighting_state)
        self.grouped_at = state["grouped_at"]
        solution = state["solution"]
        self.solution = None if solution is None else GroupingSolution(**solution)
        self.fallback = state["fallback"]

    def _source(self) -> str | None:
        """Where the groups came from: ``given`` (``groups``), ``solver`` or ``fallback``."""
        if self.groups is None:
            return None
        if self.params.groups is not None:
            return "given"
        return "fallback" if self.fallback else "solver"

    def write_artifacts(self, output_dir: Path, plots: bool = True) -> None:
        if self.params.groups is not None:
            return  # nothing was measured
        names = list(self.tasks)
        estimate = self.accumulator.estimate()
        groups = None
        if self.groups is not None:
            groups = [[names.index(t) for t in ts] for ts in self.groups.values()]
        report = {
            "tasks": names,
            "convention": "matrix[i][j] = S_{i->j}: effect on target task j (column) of "
            "training with source task i (row); null = no measurement",
            **self.results()["grouping"],
            "groups": None if groups is None else [[names[t] for t in g] for g in groups],
            "estimate": matrix_json(estimate),
            "solved_on": matrix_json(self.accumulator.filled(self.params.uncovered)),
            "weights": self.accumulator.weights.tolist(),
            "reports": self.accumulator.reports.tolist(),
            "per_round": [
                {"round": r, "estimate": matrix_json(m)} for r, m in self.affinity_history
            ],
        }
        write_affinity(output_dir, report)
        if plots:
            title = f"{self.params.affinity} affinity S_(i->j), warm-up of {self.grouped_at} rounds"
            plot_affinity(estimate, names, groups, output_dir / HEATMAP_FILE, title)


def never_together(tasks: Sequence[str], silos: Sequence[SiloInfo]) -> list[tuple[str, str]]:
    """Pairs of ``tasks`` that none of ``silos`` holds together (no silo can measure them)."""
    return [
        (a, b)
        for a, b in itertools.combinations(tasks, 2)
        if not any(a in s.tasks and b in s.tasks for s in silos)
    ]


def _measured(update: ClientUpdate) -> dict[tuple[str, str], float]:
    """The affinities S_{i->j} a silo measured (checked by :meth:`Grouping.check_update`)."""
    pairs = {}
    for key, value in update.method_metrics.items():
        _, source, target = key.split("/")
        pairs[(source, target)] = value
    return pairs
