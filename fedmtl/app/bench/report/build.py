"""``fedmtl report DIR... --out OUT``: tables, statistics and plots from any run directories.

Every ``summary.json`` under the given directories is a run (a ``fedmtl bench`` output, a sweep of
``fedmtl run``, or a mix). Runs are grouped by scenario (``summary.json``'s ``scenario``; computed
from its config for older runs, :mod:`fedmtl.app.scenario`), strategy (the suite's label, else the
strategy's name, with ``@<hash>`` of its config when one name has several configs in a scenario)
and seed. Left out, and listed: runs that did not complete, tuning runs (``--include-tuning``
keeps them), and duplicates of a (scenario, strategy, seed) (the newest is kept).

Writes into OUT:

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
  ``bytes_down``, ``tuned``;
- ``report.md``: the same tables in Markdown, per scenario, with how to read them, the tuning
  record (``tuning.json`` of a bench), the missing references, the left-out runs and provenance;
- PNGs: per scenario, bars with 95% CIs per task (``tasks_<scenario>.png``), learning curves with
  a band of +-1 std over seeds (``curves_<scenario>.png``) and a two-task Pareto plot
  (``pareto_<scenario>.png``); Delta_MTL per strategy for every scenario (``delta_mtl.png``).

The statistics (Delta_MTL, the CI, the paired test and why it is a t-test) are those of
:mod:`fedmtl.app.bench.stats`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import hashlib
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmtl.app.bench.report import plots as report_plots
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
    summary_delta_metrics,
)
from fedmtl.app.provenance import provenance
from fedmtl.app.scenario import scenario_of
from fedmtl.app.tracking import METRICS_FILE, SUMMARY_FILE, SUMMARY_SCHEMA_VERSION, read_metrics
from fedmtl.core.errors import ConfigError

TUNING_FILE = "tuning.json"
TASK_COLUMNS = (
    "scenario", "strategy", "task", "metric", "mean", "std", "ci95", "n_seeds", "scenario_id",
    "higher_is_better", "worst_silo", "p10_silo", "primary_metric", "primary_mean",
    "primary_std", "global_mean", "p_vs_baseline",
)  # fmt: skip
STRATEGY_COLUMNS = (
    "scenario", "strategy", "n_seeds", "delta_mtl_mean", "delta_mtl_ci95", "bytes_up",
    "wall_time_s", "scenario_id", "delta_mtl_std", "rank", "mean_task_rank",
    "gain_vs_baseline_mean", "test_score", "mean_difference", "p_vs_baseline", "n_pairs",
    "bytes_down", "tuned",
)  # fmt: skip


# ------------------------------------------------------------------------------------ the runs
@dataclass
class Run:
    """One run directory as the report sees it."""

    directory: Path
    summary: dict[str, Any]
    scenario_id: str
    scenario_name: str
    strategy: str
    strategy_name: str
    seed: int
    phase: str
    tuned: dict[str, Any]
    mtime: float

    @property
    def metrics(self) -> dict[str, float]:
        """Task -> final Delta metric (pooled over the silos' own test splits)."""
        return summary_delta_metrics(self.summary)[0]

    @functools.cached_property
    def lines(self) -> list[dict[str, Any]]:
        """The run's ``metrics.jsonl`` lines (none when the file is missing), read once."""
        path = self.directory / METRICS_FILE
        return read_metrics(path) if path.exists() else []

    @functools.cached_property
    def silo_values(self) -> dict[str, list[float]]:
        """Task -> each holding silo's Delta metric at the last evaluated round (metrics.jsonl)."""
        lines = [r for r in self.lines if r.get("split") == "silo"]
        if not lines:
            return {}
        last = max(r["round"] for r in lines)
        values: dict[str, list[float]] = defaultdict(list)
        for line in lines:
            if line["round"] != last:
                continue
            for task, metrics in line["metrics"].items():
                metric, _ = delta_metric(self.summary["task_info"][task])
                if metric in metrics:
                    values[task].append(float(metrics[metric]))
        return dict(values)

    def curve(self) -> dict[str, dict[int, float]]:
        """Task -> round -> Delta metric on the personal split (metrics.jsonl)."""
        curves: dict[str, dict[int, float]] = defaultdict(dict)
        for line in self.lines:
            if line.get("split") != "personal":
                continue
            for task, metrics in line["metrics"].items():
                metric, _ = delta_metric(self.summary["task_info"][task])
                if metric in metrics:
                    curves[task][int(line["round"])] = float(metrics[metric])
        return dict(curves)


@dataclass
class Inputs:
    """The runs found, and those left out with the reason."""

    runs: list[Run]
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    tuning: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)


def find_summaries(dirs: Iterable[Path]) -> list[Path]:
    """Every ``summary.json`` under ``dirs`` (each may be a run directory itself), sorted."""
    found: set[Path] = set()
    for directory in dirs:
        if not directory.exists():
            raise ConfigError(
                "DIR", f"'{directory}' does not exist.", "give directories holding runs."
            )
        if directory.is_file() and directory.name == SUMMARY_FILE:
            found.add(directory.resolve())
        found.update(p.resolve() for p in directory.rglob(SUMMARY_FILE))
    return sorted(found)


def _strategy_hash(summary: Mapping[str, Any]) -> str:
    text = json.dumps(summary.get("config", {}).get("strategy"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def load_runs(dirs: Iterable[Path], include_tuning: bool = False) -> Inputs:
    """The runs under ``dirs`` (module docstring: grouping, what is left out and why)."""
    inputs = Inputs(runs=[])
    candidates: list[Run] = []
    for path in find_summaries(dirs):
        directory = path.parent
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            inputs.left_out.append((directory, f"unreadable summary.json ({err})"))
            continue
        reason = _unusable(summary)
        if reason:
            inputs.left_out.append((directory, reason))
            continue
        block = summary.get("bench") or {}
        cell = block.get("cell") or {}
        phase = cell.get("phase", "run")
        if phase == "tune" and not include_tuning:
            inputs.left_out.append((directory, "tuning run (validation partition)"))
            continue
        scenario = summary.get("scenario") or scenario_of(summary.get("config", {}))
        candidates.append(
            Run(
                directory=directory,
                summary=summary,
                scenario_id=str(scenario["id"]),
                scenario_name=str(scenario["name"]),
                strategy=str(cell.get("strategy") or summary["strategy"]),
                strategy_name=str(summary["strategy"]),
                seed=int(summary["seed"]),
                phase=phase,
                tuned=dict(cell.get("tuned") or {}),
                mtime=path.stat().st_mtime,
            )
        )
    _disambiguate(candidates)
    newest: dict[tuple[str, str, int], Run] = {}
    for run in sorted(candidates, key=lambda r: r.mtime):
        key = (run.scenario_id, run.strategy, run.seed)
        if key in newest:
            older = newest[key]
            inputs.left_out.append((older.directory, f"duplicate of {run.directory} (older)"))
        newest[key] = run
    inputs.runs = sorted(newest.values(), key=lambda r: (r.scenario_name, r.strategy, r.seed))
    for directory in dirs:
        for path in sorted(Path(directory).rglob(TUNING_FILE)):
            try:
                inputs.tuning.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                inputs.left_out.append((path, "unreadable tuning.json"))
    return inputs


def _unusable(summary: Any) -> str | None:
    """Why a summary cannot be used, or None."""
    if not isinstance(summary, dict):
        return "summary.json is not a mapping"
    if summary.get("schema_version") != SUMMARY_SCHEMA_VERSION:
        return f"summary schema_version {summary.get('schema_version')!r}, not {SUMMARY_SCHEMA_VERSION}"
    for key in ("strategy", "seed", "tasks", "task_info", "final"):
        if key not in summary:
            return f"summary.json lacks '{key}'"
    status = summary.get("status")
    if status is None:  # written before status existed: complete when every round ran
        completed = summary.get("rounds") == summary.get("config", {}).get("num_rounds")
        status = "completed" if completed else "unknown"
    if status != "completed":
        return f"did not complete (status: {status})"
    return None


def _disambiguate(runs: list[Run]) -> None:
    """Runs outside a suite whose strategy name has several configs in a scenario get labelled
    ``name@<hash of the strategy config>``."""
    variants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in runs:
        if run.phase == "run":
            variants[(run.scenario_id, run.strategy)].add(_strategy_hash(run.summary))
    for run in runs:
        if run.phase == "run" and len(variants[(run.scenario_id, run.strategy)]) > 1:
            run.strategy = f"{run.strategy}@{_strategy_hash(run.summary)}"


# ---------------------------------------------------------------------------------- the tables
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
    strategy_name: str
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
    """The strategy label of ``name``'s runs (the label equal to the name first)."""
    labels = sorted({r.strategy for r in runs if r.strategy_name == name})
    if not labels:
        return None
    return name if name in labels else labels[0]


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
        elif run.summary.get("delta_mtl") is not None:
            deltas[run.seed] = float(run.summary["delta_mtl"])
            source = "computed" if source == "computed" else "stored"
    gains = {
        r.seed: summary_delta(r.summary, bases[r.seed].summary).value
        for r in runs
        if r.seed in bases
    }
    row = StrategyRow(
        strategy=strategy,
        strategy_name=runs[0].strategy_name,
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


# ------------------------------------------------------------------------------------- writing
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
                }
            )
    return records


def write_csv(path: Path, columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> Path:
    """``records`` as CSV with ``columns`` (NaN and None as empty cells)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(record[k]) for k in columns})
    return path


def _num(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_std(spread_: Spread, digits: int = 4) -> str:
    if spread_.n == 0:
        return "-"
    if spread_.n == 1:
        return _num(spread_.mean, digits)
    return f"{_num(spread_.mean, digits)} ± {_num(spread_.std, digits)}"


def _ci(spread_: Spread, digits: int = 4) -> str:
    if not math.isfinite(spread_.ci95):
        return "-"
    low, high = spread_.mean - spread_.ci95, spread_.mean + spread_.ci95
    return f"[{_num(low, digits)}, {_num(high, digits)}]"


def _p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


def _mb(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value / 1e6:.2f}"


HOW_TO_READ = """## How to read this report

- **Per task** the metric is the task's *Delta metric*: accuracy for classification (higher is
  better), mean absolute error for regression (lower is better), pooled over the silos' own test
  splits at the last evaluation (`summary.json`'s `final`). The primary metric (R^2 for
  regression) is shown beside it. Values are the mean ± sample standard deviation over seeds,
  and the 95% confidence interval of the mean, mean ± t(0.975, n-1) s / sqrt(n) (Student's t).
- **Worst silo** / **10th-percentile silo**: at the last evaluation, over the silos holding the
  task (their own test splits), the worst value and the value 10% of the silos do worse than
  (10th percentile of accuracy, 90th of MAE), each averaged over seeds.
- **Delta_MTL (%)** = (100/T) sum_t s_t (M_t - M_t^ST) / |M_t^ST| over the T tasks, against the
  `{reference}` run of the same scenario and seed (s_t = +1 when higher is better, else -1): the
  mean relative gain over training one model per task. Blank when that run is missing (listed
  under the scenario). **Gain vs {baseline}** is the same formula with `{baseline}` as reference.
- **Rank**: by mean Delta_MTL (by the gain over `{baseline}` when no strategy has Delta_MTL),
  1 = best. **Mean task rank**: each task ranks the strategies by its mean metric; the mean of
  those ranks (FMTL-Bench's view, needs no reference).
- **p vs {baseline}**: two-sided paired t-test on the same seeds (`scipy.stats.ttest_rel`), of the
  per-seed Delta_MTL against `{baseline}`'s (of the gain over `{baseline}` against 0 when there is
  no reference); per task, of the task metric. A t-test rather than Wilcoxon's signed-rank test:
  with 5 seeds Wilcoxon's smallest two-sided p-value is 2/2^5 = 0.0625, so it could never reject
  at 5%. The t-test assumes roughly normal differences, which 5 numbers cannot confirm: read its
  p-values as a guide, and no correction for testing many strategies is applied.
- **Bytes** are model arrays sent up (silos to server) and down over the run, in MB; wall time is
  the run's training time in seconds (means over seeds).
"""


def _tuning_section(inputs: Inputs, out: Path) -> list[str]:
    lines = ["## Tuning", ""]
    if not inputs.tuning:
        lines.append(
            "No tuning record (`tuning.json`) in the inputs: every run used its config's own "
            "hyperparameters."
        )
        return [*lines, ""]
    for path, record in inputs.tuning:
        lines += [
            f"From `{_relative(path, out)}` (suite `{record.get('suite')}`): validation partition "
            f"with `partition.validation_fraction={record.get('validation_fraction')}` (each "
            "silo's validation rows carved out of its training rows; no test row is used), seeds "
            f"{record.get('seeds')}. Criterion: {record.get('criterion')}.",
            "",
            "| scenario | strategy | grid | chosen | score of each point (mean Delta_MTL % vs anchor) |",
            "|---|---|---|---|---|",
        ]
        for scenario, strategies in record.get("scenarios", {}).items():
            for label, entry in strategies.items():
                grid = ", ".join(f"`{k}` in {v}" for k, v in entry.get("grid", {}).items())
                chosen = ", ".join(f"`{k}={v}`" for k, v in entry.get("chosen", {}).items())
                scores = "; ".join(
                    f"{_describe(p['values'])}: {_num(p['mean'] if p['mean'] is not None else math.nan, 2)}"
                    for p in entry.get("points", [])
                )
                lines.append(
                    f"| {scenario} | {label} | {grid} | {chosen or 'defaults'} | {scores} |"
                )
        lines.append("")
    return lines


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve().parent))
    except ValueError:
        return str(path)


def _scenario_section(table: ScenarioTable, figures: Mapping[str, str]) -> list[str]:
    config = table.runs[0].summary.get("config", {})
    partition = config.get("partition", {})
    lines = [
        f"## Scenario `{table.label}` (id `{table.id}`)",
        "",
        f"Dataset `{config.get('dataset', {}).get('name')}`, "
        f"{table.runs[0].summary.get('num_silos')} silos, "
        f"partition {_partition_text(partition)}, {config.get('num_rounds')} rounds; "
        f"tasks {', '.join(table.tasks)}; seeds {sorted({r.seed for r in table.runs})}.",
        "",
    ]
    if not table.reference_seeds:
        lines += [
            f"**Delta_MTL reference missing:** no `{table.reference}` run of this scenario, so "
            f"Delta_MTL is blank (where a bench stored one, it is shown). Run strategy "
            f"`{table.reference}` on the same scenario and seeds to fill it in.",
            "",
        ]
    elif table.missing_reference:
        lines += [
            f"**Delta_MTL reference incomplete:** no `{table.reference}` run for seeds "
            f"{table.missing_reference}; Delta_MTL uses the other seeds.",
            "",
        ]
    if table.baseline is None:
        lines += [f"No `{BASELINE_STRATEGY}` run: no gain or paired test against it.", ""]
    base = table.baseline or BASELINE_STRATEGY
    lines += [
        "### Strategies",
        "",
        f"| rank | strategy | seeds | Delta_MTL % | 95% CI | gain vs {base} % | "
        f"p vs {base} | mean task rank | MB up | MB down | wall s | tuned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(table.strategies, key=lambda r: (not math.isfinite(r.rank), r.rank)):
        stored = " (stored)" if row.delta_source == "stored" else ""
        lines.append(
            f"| {_num(row.rank, 1)} | {row.strategy} | {len(row.seeds)} | "
            f"{_mean_std(row.delta, 2)}{stored} | {_ci(row.delta, 2)} | {_mean_std(row.gain, 2)} | "
            f"{_p(row.test.p_value) if row.test else '-'} | {_num(row.mean_task_rank, 2)} | "
            f"{_mb(row.bytes_up)} | {_mb(row.bytes_down)} | {_num(row.wall_time_s, 1)} | "
            f"{row.tuned or '-'} |"
        )
    lines += [
        "",
        "### Tasks",
        "",
        f"| task | metric | strategy | mean ± std | 95% CI | worst silo | 10th-pct silo | "
        f"primary | p vs {base} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, task in enumerate(table.tasks):
        for row in table.strategies:
            cell = row.tasks[index]
            arrow = "↑" if cell.higher_is_better else "↓"
            primary = f"{cell.primary_metric} {_mean_std(cell.primary)}"
            lines.append(
                f"| {task} | {cell.metric} {arrow} | {row.strategy} | {_mean_std(cell.values)} | "
                f"{_ci(cell.values)} | {_num(cell.worst_silo)} | {_num(cell.p10_silo)} | "
                f"{primary} | {_p(cell.p_vs_baseline)} |"
            )
    lines.append("")
    for title, name in figures.items():
        lines += [f"![{title}]({name})", ""]
    return lines


def _partition_text(partition: Mapping[str, Any]) -> str:
    if "path" in partition:
        return f"from `{partition['path']}`"
    assignment = partition.get("assignment", {}).get("name")
    split = partition.get("split", {}).get("name")
    return f"`{assignment}` x `{split}`"


def _git_text(git: Mapping[str, Any] | None) -> str:
    if not git:
        return "unknown"
    return git["commit"][:12] + (" (uncommitted changes)" if git.get("dirty") else "")


def _versions_text(versions: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (versions or {}).items()) or "unknown"


def _machine_text(machine: Mapping[str, Any] | None) -> str:
    if not machine:
        return "unknown"
    cuda = f", CUDA {machine['cuda']}" if machine.get("cuda") else ""
    return f"{machine.get('cpus')} CPUs, {machine.get('platform')}{cuda}"


def _provenance_section(runs: Sequence[Run]) -> list[str]:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        record = run.summary.get("provenance") or {}
        counts[("commit", _git_text(record.get("git")))] += 1
        counts[("versions", _versions_text(record.get("versions")))] += 1
        counts[("machine", _machine_text(record.get("machine")))] += 1
    here = provenance()
    lines = ["## Provenance", "", "Of the runs (number of runs in brackets):", ""]
    lines += [f"- {kind}: {value} ({count})" for (kind, value), count in sorted(counts.items())]
    lines += [
        "",
        f"Of this report: commit {_git_text(here['git'])}; {_versions_text(here['versions'])}; "
        f"{_machine_text(here['machine'])}.",
        "",
    ]
    return lines


def file_label(label: str) -> str:
    """A scenario label as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    tables: list[ScenarioTable]
    inputs: Inputs
    files: list[Path]


def build_report(
    dirs: Sequence[Path],
    out: Path,
    include_tuning: bool = False,
    pareto_tasks: Sequence[str] | None = None,
    plots: bool = True,
    reference: str = REFERENCE_STRATEGY,
    baseline: str = BASELINE_STRATEGY,
) -> Report:
    """Read the runs under ``dirs`` and write the report into ``out`` (module docstring)."""
    inputs = load_runs(dirs, include_tuning=include_tuning)
    if not inputs.runs:
        raise ConfigError(
            "DIR",
            f"no completed run (summary.json) under {[str(d) for d in dirs]}.",
            "give the output directory of `fedmtl bench` or of `fedmtl run`s.",
        )
    out.mkdir(parents=True, exist_ok=True)
    tables = scenario_tables(inputs.runs, reference=reference, baseline=baseline)
    files = [
        write_csv(out / "tasks.csv", TASK_COLUMNS, task_records(tables)),
        write_csv(out / "strategies.csv", STRATEGY_COLUMNS, strategy_records(tables)),
    ]
    figures: dict[str, dict[str, str]] = {t.id: {} for t in tables}
    if plots:
        for table in tables:
            stem = file_label(table.label)
            made = {
                "per-task metric": report_plots.task_bars(table, out / f"tasks_{stem}.png"),
                "learning curves": report_plots.curves(table, out / f"curves_{stem}.png"),
                "two-task Pareto plot": report_plots.pareto(
                    table, out / f"pareto_{stem}.png", pareto_tasks
                ),
            }
            figures[table.id] = {k: p.name for k, p in made.items() if p is not None}
            files += [p for p in made.values() if p is not None]
        delta = report_plots.delta_bars(tables, out / "delta_mtl.png")
        if delta is not None:
            files.append(delta)
    lines = [
        "# fedmtl benchmark report",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} from "
        f"{len(inputs.runs)} runs in {', '.join(f'`{d}`' for d in dirs)}: "
        f"{len(tables)} scenarios. Tables as CSV: `tasks.csv`, `strategies.csv`.",
        "",
    ]
    if any(p.name == "delta_mtl.png" for p in files):
        lines += ["![Delta_MTL per strategy](delta_mtl.png)", ""]
    lines += [
        HOW_TO_READ.format(reference=reference, baseline=baseline),
        *_tuning_section(inputs, out),
    ]
    for table in tables:
        lines += _scenario_section(table, figures[table.id])
    if inputs.left_out:
        lines += ["## Runs left out", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in inputs.left_out]
        lines.append("")
    lines += _provenance_section(inputs.runs)
    (out / "report.md").write_text("\n".join(lines))
    files.append(out / "report.md")
    return Report(tables, inputs, files)


def main(argv: list[str]) -> int:
    """``fedmtl report DIR... --out OUT``; exit status 2 when no run is found."""
    parser = argparse.ArgumentParser(
        prog="fedmtl report",
        description="Tables, statistics and plots from run directories (any summary.json below).",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="directories holding runs")
    parser.add_argument("--out", required=True, type=Path, help="where the report goes")
    parser.add_argument("--include-tuning", action="store_true", help="also report the tuning runs")
    parser.add_argument(
        "--pareto-tasks", nargs=2, metavar="TASK", help="the two tasks of the Pareto plot"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--reference", default=REFERENCE_STRATEGY, help="Delta_MTL's reference strategy"
    )
    parser.add_argument("--baseline", default=BASELINE_STRATEGY, help="the tested-against strategy")
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.dirs,
            args.out,
            include_tuning=args.include_tuning,
            pareto_tasks=args.pareto_tasks,
            plots=not args.no_plots,
            reference=args.reference,
            baseline=args.baseline,
        )
    except ConfigError as err:
        print(f"fedmtl report: {err}", file=sys.stderr)
        return 2
    print(
        f"report: {len(report.inputs.runs)} runs, {len(report.tables)} scenarios "
        f"({len(report.inputs.left_out)} left out) -> {args.out / 'report.md'}"
    )
    for table in report.tables:
        if not table.reference_seeds:
            print(f"  {table.label}: no '{table.reference}' run: Delta_MTL is blank")
    return 0
