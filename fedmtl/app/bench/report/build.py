"""``fedmtl report DIR... --out OUT``: reads the runs under the directories
(:mod:`~fedmtl.app.bench.report.loading`), makes the tables
(:mod:`~fedmtl.app.bench.report.tables`) and writes into OUT ``tasks.csv``, ``strategies.csv``,
the PNGs (:mod:`~fedmtl.app.bench.report.plots`) and ``report.md``
(:mod:`~fedmtl.app.bench.report.markdown`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmtl.app.bench.report.loading import Inputs, load_runs
from fedmtl.app.bench.report.markdown import write_markdown
from fedmtl.app.bench.report.plots import OVERVIEW_FILE, delta_bars, scenario_figures
from fedmtl.app.bench.report.tables import (
    STRATEGY_COLUMNS,
    TASK_COLUMNS,
    ScenarioTable,
    scenario_tables,
    strategy_records,
    task_records,
    write_csv,
)
from fedmtl.app.bench.stats import BASELINE_STRATEGY, REFERENCE_STRATEGY
from fedmtl.core.errors import ConfigError


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    tables: list[ScenarioTable]
    inputs: Inputs


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
    write_csv(out / "tasks.csv", TASK_COLUMNS, task_records(tables))
    write_csv(out / "strategies.csv", STRATEGY_COLUMNS, strategy_records(tables))
    figures: dict[str, dict[str, str]] = {t.id: {} for t in tables}
    overview = None
    if plots:
        for table in tables:
            made = scenario_figures(table, out, pareto_tasks)
            figures[table.id] = {title: path.name for title, path in made.items()}
        overview = delta_bars(tables, out / OVERVIEW_FILE)
    write_markdown(
        out / "report.md",
        dirs=dirs,
        inputs=inputs,
        tables=tables,
        figures=figures,
        overview=overview,
        reference=reference,
        baseline=baseline,
    )
    return Report(tables, inputs)


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
