"""The report's tables: per scenario, one row per strategy and per strategy x task, and the two
CSV files made of them.

- ``tasks.csv``: one row per scenario x strategy x task: ``scenario``, ``strategy``, ``task``,
  ``metric`` (the task's Delta metric: accuracy, or MAE for regression), ``mean``, ``std``,
  ``ci95``, ``n_seeds``, then ``scenario_id``, ``higher_is_better``, ``worst_silo``, ``p10_silo``
  (means over seeds), ``primary_metric`` with its ``primary_mean`` / ``primary_std``,
  ``global_mean`` (the global model on the global test set, when there is one) and
  ``p_vs_baseline`` (paired t-test of the task metric against FedAvg on the same seeds);
- ``strategies.csv``: one row per scenario x strategy: ``scenario``, ``strategy``, ``n_seeds``,
  ``delta_mtl_mean``, ``delta_mtl_ci95``, ``bytes_up``, ``wall_time_s``, then ``scenario_id``,
  ``delta_mtl_std``, ``rank``, ``mean_task_rank``, ``gain_vs_baseline_mean`` (Delta_MTL with
  FedAvg as the reference), ``test_score``, ``mean_difference``, ``p_vs_baseline``, ``n_pairs``,
  ``bytes_down``, ``tuned``, ``privacy`` (the runs' privacy mode, ``summary.json``'s ``privacy``),
  ``epsilon`` (the largest the runs spent at their delta; blank without DP),
  ``simulated_time_s`` (the runs' simulated seconds on the virtual clock, ``system=...``) and
  ``time_to_target_s`` (the simulated seconds until every task's Delta metric first reaches the
  baseline's final one (FedAvg's run of the same seed), mean over the seeds that reach it;
  blank when none does).

The statistics (Delta_MTL, the CI, the paired test and why it is a t-test) are those of
:mod:`fedmtl.app.bench.stats`.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.app.bench.report.loading import Run
from fedmtl.app.bench.stats import (
    BASELINE_STRATEGY,
    REFERENCE_STRATEGY,
    PairedTest,
    Spread,
    delta_metric,
    paired_test,
    ranks,
    silo_quantiles,
    spread,
    summary_delta,
)

TASK_COLUMNS = (
    "scenario", "strategy", "task", "metric", "mean", "std", "ci95", "n_seeds", "scenario_id",
    "higher_is_better", "worst_silo", "p10_silo", "primary_metric", "primary_mean",
    "primary_std", "global_mean", "p_vs_baseline",
)  # fmt: skip
STRATEGY_COLUMNS = (
    "scenario", "strategy", "n_seeds", "delta_mtl_mean", "delta_mtl_ci95", "bytes_up",
    "wall_time_s", "scenario_id", "delta_mtl_std", "rank", "mean_task_rank",
    "gain_vs_baseline_mean", "test_score", "mean_difference", "p_vs_baseline", "n_pairs",
    "bytes_down", "tuned", "privacy", "epsilon", "simulated_time_s", "time_to_target_s",
)  # fmt: skip


@dataclass
class TaskRow:
    """One scenario x strategy x task."""

    task: str
    metric: str
    higher_is_better: bool
    values: Spread
    worst_silo: float
    p10_silo: float
    primary_metric: str
    primary: Spread
    global_mean: float
    p_vs_baseline: float


@dataclass
class StrategyRow:
    """One scenario x strategy."""

    strategy: str
    seeds: list[int]
    delta: Spread
    delta_source: str
    gain: Spread
    test: PairedTest | None
    test_score: str
    bytes_up: float
    bytes_down: float
    wall_time_s: float
    tuned: str
    privacy: str = "none"
    epsilon: float = math.nan
    simulated_time_s: float = math.nan
    time_to_target_s: float = math.nan
    rank: float = math.nan
    mean_task_rank: float = math.nan
    tasks: list[TaskRow] = field(default_factory=list)
    curves: dict[str, list[dict[int, float]]] = field(default_factory=dict)


@dataclass
class ScenarioTable:
    """Everything the report shows for one scenario."""

    id: str
    name: str
    label: str
    runs: list[Run]
    strategies: list[StrategyRow]
    tasks: list[str]
    reference: str
    baseline: str | None
    reference_seeds: list[int]
    missing_reference: list[int]

    def row(self, strategy: str) -> StrategyRow:
        return next(r for r in self.strategies if r.strategy == strategy)


def _pick(runs: Sequence[Run], name: str) -> str | None:
    """The strategy label of ``name``'s runs (the label equal to the name first), or ``name``
    itself when it is a label (one entry of a strategy listed twice, e.g. with two models)."""
    if any(r.strategy == name for r in runs):
        return name
    labels = sorted({r.strategy for r in runs if r.strategy_name == name})
    if not labels:
        return None
    return name if name in labels else labels[0]


def _privacy(run: Run) -> Mapping[str, Any]:
    """A run's ``privacy`` block (``mode: none`` for runs written before it existed)."""
    block = run.summary.get("privacy")
    return block if isinstance(block, Mapping) else {"mode": "none"}


def _mean(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def scenario_tables(
    runs: Sequence[Run],
    reference: str = REFERENCE_STRATEGY,
    baseline: str = BASELINE_STRATEGY,
) -> list[ScenarioTable]:
    """The per-scenario tables of ``runs`` (module docstring)."""
    by_scenario: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_scenario[run.scenario_id].append(run)
    names: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        names[run.scenario_name].add(run.scenario_id)
    tables = []
    for scenario_id, members in by_scenario.items():
        name = members[0].scenario_name
        label = name if len(names[name]) == 1 else f"{name}@{scenario_id}"
        tables.append(_scenario_table(scenario_id, name, label, members, reference, baseline))
    return sorted(tables, key=lambda t: t.label)


def _scenario_table(
    scenario_id: str,
    name: str,
    label: str,
    runs: list[Run],
    reference: str,
    baseline: str,
) -> ScenarioTable:
    tasks = list(runs[0].summary["tasks"])
    ref_label = _pick(runs, reference)
    base_label = _pick(runs, baseline)
    seeds = sorted({r.seed for r in runs})
    by_key = {(r.strategy, r.seed): r for r in runs}
    refs = {s: by_key[(ref_label, s)] for s in seeds if ref_label and (ref_label, s) in by_key}
    bases = {s: by_key[(base_label, s)] for s in seeds if base_label and (base_label, s) in by_key}
    strategies = sorted({r.strategy for r in runs}, key=lambda s: _order(s, base_label, ref_label))
    rows = []
    for strategy in strategies:
        own = sorted((r for r in runs if r.strategy == strategy), key=lambda r: r.seed)
        rows.append(_strategy_row(strategy, own, tasks, refs, bases, base_label))
    table = ScenarioTable(
        id=scenario_id,
        name=name,
        label=label,
        runs=runs,
        strategies=rows,
        tasks=tasks,
        reference=ref_label or reference,
        baseline=base_label,
        reference_seeds=sorted(refs),
        missing_reference=[s for s in seeds if s not in refs],
    )
    _rank(table)
    return table


def _order(strategy: str, baseline: str | None, reference: str | None) -> tuple[int, str]:
    return (0 if strategy == baseline else 2 if strategy == reference else 1, strategy)


def _strategy_row(
    strategy: str,
    runs: list[Run],
    tasks: list[str],
    refs: Mapping[int, Run],
    bases: Mapping[int, Run],
    base_label: str | None,
) -> StrategyRow:
    deltas: dict[int, float | None] = {}
    source = "none"
    for run in runs:
        if run.seed in refs:
            deltas[run.seed] = summary_delta(run.summary, refs[run.seed].summary).value
            source = "computed"
        elif run.stored_delta is not None:
            deltas[run.seed] = run.stored_delta
            source = "computed" if source == "computed" else "stored"
    gains = {
        r.seed: summary_delta(r.summary, bases[r.seed].summary).value
        for r in runs
        if r.seed in bases
    }
    row = StrategyRow(
        strategy=strategy,
        seeds=[r.seed for r in runs],
        delta=spread([v for v in deltas.values() if v is not None]),
        delta_source=source,
        gain=spread([v for v in gains.values() if v is not None]),
        test=None,
        test_score="",
        bytes_up=_mean(r.summary.get("bytes_up") for r in runs),
        bytes_down=_mean(r.summary.get("bytes_down") for r in runs),
        wall_time_s=_mean(r.summary.get("wall_time_s") for r in runs),
        tuned=_tuned_text(runs),
        privacy=", ".join(sorted({str(_privacy(r).get("mode", "none")) for r in runs})),
        epsilon=max(
            (float(e) for r in runs if (e := _privacy(r).get("epsilon")) is not None),
            default=math.nan,
        ),
        simulated_time_s=_mean(r.summary.get("simulated_time_s") for r in runs),
        time_to_target_s=_mean(r.time_to(bases[r.seed].metrics) for r in runs if r.seed in bases),
    )
    row.tasks = [_task_row(task, runs, bases, strategy != base_label) for task in tasks]
    curves: dict[str, list[dict[int, float]]] = defaultdict(list)
    for run in runs:
        for task, curve in run.curve().items():
            curves[task].append(curve)
    row.curves = dict(curves)
    if strategy != base_label and bases:
        row.test, row.test_score = _test(deltas, gains, bases, refs)
    return row


def _test(
    deltas: Mapping[int, float | None],
    gains: Mapping[int, float | None],
    bases: Mapping[int, Run],
    refs: Mapping[int, Run],
) -> tuple[PairedTest | None, str]:
    """The paired test against the baseline: on Delta_MTL per seed where both have it (the
    reference exists), else on the gain over the baseline (Delta_MTL with the baseline as the
    reference: the baseline's own score is then 0 on every seed)."""
    paired = [
        (delta, summary_delta(bases[s].summary, refs[s].summary).value)
        for s, delta in deltas.items()
        if delta is not None and s in bases and s in refs
    ]
    both = [(a, b) for a, b in paired if b is not None]
    if len(both) >= 2:
        return paired_test([a for a, _ in both], [b for _, b in both]), "delta_mtl"
    kept = [g for g in gains.values() if g is not None]
    if len(kept) >= 2:
        return paired_test(kept, [0.0] * len(kept)), "gain_vs_baseline"
    return None, ""


def _task_row(task: str, runs: list[Run], bases: Mapping[int, Run], test: bool) -> TaskRow:
    """The task's Delta metric over seeds, silo quantiles, primary metric, global test value and
    (``test``) the paired t-test against the baseline runs ``bases`` of the same seeds."""
    info = runs[0].summary["task_info"][task]
    metric, higher = delta_metric(info)
    primary = str(info.get("primary_metric", metric))
    values = {r.seed: r.metrics.get(task) for r in runs}
    worst, p10 = [], []
    for run in runs:
        silo = run.silo_values.get(task, [])
        if silo:
            w, p = silo_quantiles(silo, higher)
            worst.append(w)
            p10.append(p)
    global_values = [
        ((r.summary.get("global") or {}).get("final") or {}).get(task, {}).get(metric) for r in runs
    ]
    pairs = [
        (v, bases[s].metrics.get(task))
        for s, v in values.items()
        if v is not None and s in bases and bases[s].metrics.get(task) is not None
    ]
    p_value = math.nan
    if test and len(pairs) >= 2:
        p_value = paired_test([a for a, _ in pairs], [float(b or 0.0) for _, b in pairs]).p_value
    return TaskRow(
        task=task,
        metric=metric,
        higher_is_better=higher,
        values=spread([v for v in values.values() if v is not None]),
        worst_silo=_mean(worst),
        p10_silo=_mean(p10),
        primary_metric=primary,
        primary=spread(
            [
                r.summary["final"].get(task, {}).get(primary)
                for r in runs
                if task in r.summary["final"]
            ]
        ),
        global_mean=_mean(global_values),
        p_vs_baseline=p_value,
    )


def _tuned_text(runs: Sequence[Run]) -> str:
    texts = sorted({", ".join(f"{k}={v}" for k, v in r.tuned.items()) for r in runs} - {""})
    return "; ".join(texts)


def _rank(table: ScenarioTable) -> None:
    """``rank``: by mean Delta_MTL (by mean gain over the baseline when no strategy has Delta);
    ``mean_task_rank``: the mean over tasks of the strategy's rank by the task's mean metric."""
    rows = table.strategies
    has_delta = any(math.isfinite(r.delta.mean) for r in rows)
    scores = {r.strategy: (r.delta.mean if has_delta else r.gain.mean) for r in rows}
    for strategy, rank in ranks(scores).items():
        table.row(strategy).rank = rank
    per_task: dict[str, list[float]] = defaultdict(list)
    for index in range(len(table.tasks)):
        higher = rows[0].tasks[index].higher_is_better
        task_ranks = ranks({r.strategy: r.tasks[index].values.mean for r in rows}, higher)
        for strategy, rank in task_ranks.items():
            per_task[strategy].append(rank)
    for row in rows:
        row.mean_task_rank = _mean(per_task[row.strategy])


# ------------------------------------------------------------------------------------ the CSVs
def _cell(value: Any) -> Any:
    """A CSV cell: NaN and None as empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def task_records(tables: Sequence[ScenarioTable]) -> list[dict[str, Any]]:
    """The rows of ``tasks.csv`` (module docstring)."""
    records = []
    for table in tables:
        for row in table.strategies:
            for task in row.tasks:
                records.append(
                    {
                        "scenario": table.label,
                        "strategy": row.strategy,
                        "task": task.task,
                        "metric": task.metric,
                        "mean": task.values.mean,
                        "std": task.values.std,
                        "ci95": task.values.ci95,
                        "n_seeds": task.values.n,
                        "scenario_id": table.id,
                        "higher_is_better": task.higher_is_better,
                        "worst_silo": task.worst_silo,
                        "p10_silo": task.p10_silo,
                        "primary_metric": task.primary_metric,
                        "primary_mean": task.primary.mean,
                        "primary_std": task.primary.std,
                        "global_mean": task.global_mean,
                        "p_vs_baseline": task.p_vs_baseline,
                    }
                )
    return records


def strategy_records(tables: Sequence[ScenarioTable]) -> list[dict[str, Any]]:
    """The rows of ``strategies.csv`` (module docstring)."""
    records = []
    for table in tables:
        for row in table.strategies:
            test = row.test
            records.append(
                {
                    "scenario": table.label,
                    "strategy": row.strategy,
                    "n_seeds": len(row.seeds),
                    "delta_mtl_mean": row.delta.mean,
                    "delta_mtl_ci95": row.delta.ci95,
                    "bytes_up": row.bytes_up,
                    "wall_time_s": row.wall_time_s,
                    "scenario_id": table.id,
                    "delta_mtl_std": row.delta.std,
                    "rank": row.rank,
                    "mean_task_rank": row.mean_task_rank,
                    "gain_vs_baseline_mean": row.gain.mean,
                    "test_score": row.test_score,
                    "mean_difference": test.mean_difference if test else None,
                    "p_vs_baseline": test.p_value if test else None,
                    "n_pairs": test.n if test else None,
                    "bytes_down": row.bytes_down,
                    "tuned": row.tuned,
                    "privacy": row.privacy,
                    "epsilon": row.epsilon if math.isfinite(row.epsilon) else None,
                    "simulated_time_s": row.simulated_time_s,
                    "time_to_target_s": row.time_to_target_s,
                }
            )
    return records


def write_csv(path: Path, columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> None:
    """``records`` as CSV with ``columns`` (NaN and None as empty cells)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(record[k]) for k in columns})
