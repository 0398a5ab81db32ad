"""The figures of ``fedmtl report`` (:mod:`fedmtl.app.bench.report`), one PNG each:

- :func:`task_bars` (``tasks_<scenario>.png``): per task, each strategy's mean Delta metric with
  its 95% CI;
- :func:`delta_bars` (``delta_mtl.png``): per scenario, each strategy's mean Delta_MTL with its
  95% CI;
- :func:`curves` (``curves_<scenario>.png``): per task, each strategy's Delta metric against rounds
  (personal test splits), the mean over seeds with a band of +-1 standard deviation;
- :func:`pareto` (``pareto_<scenario>.png``): two tasks' metrics per strategy (mean, +-1 std
  bars), with the strategies no other beats on both tasks joined as the Pareto front.

:func:`scenario_figures` draws a scenario's three.

matplotlib is imported when a figure is drawn (it is heavy, and only the report draws).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmtl.app.bench.report.tables import ScenarioTable

OVERVIEW_FILE = "delta_mtl.png"
"""The file of :func:`delta_bars` in the report's directory."""


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - heavy, only when drawing a figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only when drawing a figure

    return plt


def _grid(count: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any, list[Any]]:
    plt = _pyplot()
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    return plt, fig, flat[:count]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def task_bars(table: ScenarioTable, out: Path) -> Path | None:
    """One panel per task: each strategy's mean Delta metric, 95% CI as error bars."""
    if not table.tasks:
        return None
    plt, fig, axes = _grid(len(table.tasks))
    labels = [r.strategy for r in table.strategies]
    for index, (ax, task) in enumerate(zip(axes, table.tasks, strict=True)):
        cells = [r.tasks[index] for r in table.strategies]
        means = [c.values.mean for c in cells]
        errors = [_finite(c.values.ci95) for c in cells]
        ax.bar(range(len(labels)), means, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        arrow = "higher" if cells[0].higher_is_better else "lower"
        ax.set_title(f"{task}: {cells[0].metric} ({arrow} is better)", fontsize=9)
    fig.suptitle(f"{table.label}: per-task metric, mean and 95% CI over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def delta_bars(tables: Sequence[ScenarioTable], out: Path) -> Path | None:
    """One panel per scenario with Delta_MTL: each strategy's mean, 95% CI as error bars (None
    when no scenario has a Delta_MTL)."""
    shown = [t for t in tables if any(math.isfinite(r.delta.mean) for r in t.strategies)]
    if not shown:
        return None
    plt, fig, axes = _grid(
        len(shown), width=5.0, height=0.35 * max(len(t.strategies) for t in shown) + 1.5
    )
    for ax, table in zip(axes, shown, strict=True):
        rows = [r for r in table.strategies if math.isfinite(r.delta.mean)]
        means = [r.delta.mean for r in rows]
        colors = ["tab:blue" if m >= 0 else "tab:red" for m in means]
        ax.barh(
            [r.strategy for r in rows],
            means,
            xerr=[_finite(r.delta.ci95) for r in rows],
            color=colors,
            capsize=3,
        )
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(table.label, fontsize=9)
        ax.set_xlabel(f"Delta_MTL (%) vs {table.reference}")
    fig.suptitle("Delta_MTL per strategy, mean and 95% CI over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def curves(table: ScenarioTable, out: Path) -> Path | None:
    """One panel per task: each strategy's Delta metric against rounds, mean over seeds and a band
    of +-1 std (rounds every seed evaluated)."""
    if not any(r.curves for r in table.strategies):
        return None
    plt, fig, axes = _grid(len(table.tasks))
    colors = plt.get_cmap("tab10")
    for index, (ax, task) in enumerate(zip(axes, table.tasks, strict=True)):
        for number, row in enumerate(table.strategies):
            runs = row.curves.get(task, [])
            rounds = sorted(set.intersection(*(set(c) for c in runs))) if runs else []
            if not rounds:
                continue
            values = np.array([[curve[r] for r in rounds] for curve in runs])
            mean, std = values.mean(axis=0), values.std(axis=0)
            color = colors(number % 10)
            ax.plot(rounds, mean, color=color, label=row.strategy, marker="o", markersize=3)
            ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.2)
        cell = table.strategies[0].tasks[index]
        arrow = "higher" if cell.higher_is_better else "lower"
        ax.set_title(f"{task}: {cell.metric} ({arrow} is better)", fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{table.label}: learning curves (personal test splits), mean +-1 std over seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pareto_front(points: Sequence[tuple[float, float]], higher: tuple[bool, bool]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (``higher``: whether a
    higher value is better on each), sorted by the first coordinate."""
    signs = [1.0 if h else -1.0 for h in higher]
    oriented = [(signs[0] * x, signs[1] * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(oriented):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(oriented)
            if j != i
        )
        if not dominated and math.isfinite(x) and math.isfinite(y):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto(table: ScenarioTable, out: Path, tasks: Sequence[str] | None = None) -> Path | None:
    """The two tasks' mean metrics per strategy (+-1 std bars), the Pareto front joined; the tasks
    are ``tasks`` or the scenario's first two (None when it has fewer than two)."""
    chosen = list(tasks) if tasks else table.tasks[:2]
    if len(chosen) != 2 or any(t not in table.tasks for t in chosen):
        return None
    first, second = (table.tasks.index(t) for t in chosen)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points, higher = [], (True, True)
    for row in table.strategies:
        a, b = row.tasks[first], row.tasks[second]
        higher = (a.higher_is_better, b.higher_is_better)
        points.append((a.values.mean, b.values.mean))
        ax.errorbar(
            a.values.mean,
            b.values.mean,
            xerr=_finite(a.values.std),
            yerr=_finite(b.values.std),
            fmt="o",
            capsize=3,
        )
        ax.annotate(row.strategy, (a.values.mean, b.values.mean), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    front = pareto_front(points, higher)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", linewidth=0.8,
                label="Pareto front")  # fmt: skip
        ax.legend(fontsize=8)
    cells = table.strategies[0].tasks
    for setter, index in ((ax.set_xlabel, first), (ax.set_ylabel, second)):
        cell = cells[index]
        setter(
            f"{cell.task} {cell.metric} ({'higher' if cell.higher_is_better else 'lower'} is better)"
        )
    ax.set_title(f"{table.label}: two tasks per strategy (mean +-1 std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def scenario_figures(
    table: ScenarioTable, out: Path, pareto_tasks: Sequence[str] | None = None
) -> dict[str, Path]:
    """Draw the scenario's figures into directory ``out``: title -> file, of those it has."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", table.label)  # the scenario label in file names
    made = {
        "per-task metric": task_bars(table, out / f"tasks_{stem}.png"),
        "learning curves": curves(table, out / f"curves_{stem}.png"),
        "two-task Pareto plot": pareto(table, out / f"pareto_{stem}.png", pareto_tasks),
    }
    return {title: path for title, path in made.items() if path is not None}
