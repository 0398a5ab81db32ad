"""The report's ``report.md``: how to read it, the tuning record (``tuning.json`` of a bench), per
scenario its setting, a missing-reference notice, the strategy and task tables and its figures,
the runs left out, and the provenance of the runs and of the report."""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmtl.app.bench.report.loading import Inputs, Run
from fedmtl.app.bench.report.tables import ScenarioTable
from fedmtl.app.bench.stats import BASELINE_STRATEGY, Spread
from fedmtl.app.run.provenance import provenance


def write_markdown(
    path: Path,
    *,
    dirs: Sequence[Path],
    inputs: Inputs,
    tables: Sequence[ScenarioTable],
    figures: Mapping[str, Mapping[str, str]],
    overview: Path | None,
    reference: str,
    baseline: str,
) -> None:
    """Write ``report.md`` to ``path``: ``figures`` maps a scenario id to its figures (title ->
    file name), ``overview`` is the Delta_MTL figure of every scenario (None when not drawn)."""
    lines = [
        "# fedmtl benchmark report",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} from "
        f"{len(inputs.runs)} runs in {', '.join(f'`{d}`' for d in dirs)}: "
        f"{len(tables)} scenarios. Tables as CSV: `tasks.csv`, `strategies.csv`.",
        "",
    ]
    if overview is not None:
        lines += [f"![Delta_MTL per strategy]({overview.name})", ""]
    lines += [
        HOW_TO_READ.format(reference=reference, baseline=baseline),
        *_tuning_section(inputs, path.parent),
    ]
    for table in tables:
        lines += _scenario_section(table, figures.get(table.id, {}))
    if inputs.left_out:
        lines += ["## Runs left out", ""]
        lines += [f"- `{where}`: {reason}" for where, reason in inputs.left_out]
        lines.append("")
    lines += _provenance_section(inputs.runs)
    path.write_text("\n".join(lines))


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
    private = [row for row in table.strategies if row.privacy != "none"]
    if private:
        spent = "; ".join(
            f"{row.strategy} `{row.privacy}`, epsilon {_num(row.epsilon, 2)}" for row in private
        )
        lines += [f"**Privacy** (the largest epsilon a run spent, at its delta): {spent}.", ""]
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
    timed = [row for row in table.strategies if math.isfinite(row.simulated_time_s)]
    if timed:
        lines += [
            "",
            "### Simulated time",
            "",
            "On the virtual clock (`system=...`, docs/systems.md): the run's simulated seconds, "
            f"and those until every task first reaches {base}'s final metric (same seed).",
            "",
            f"| strategy | simulated s | to {base}'s final s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {row.strategy} | {_num(row.simulated_time_s, 2)} | "
            f"{_num(row.time_to_target_s, 2)} |"
            for row in timed
        ]
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
