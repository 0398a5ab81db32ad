"""The figures of ``fedmtl report`` (:mod:`fedmtl.app.bench.report`), one PNG each:

- :func:`task_bars` (``tasks_<scenario>.png``): per task, each strategy's mean Delta metric with
  its 95% CI;
- :func:`delta_bars` (``delta_mtl.png``): per scenario, each strategy's mean Delta_MTL with its
  95% CI;
- :func:`curves` (``curves_<scenario>.png``): per task, each strategy's Delta metric against rounds
  (personal test splits), the mean over seeds with a band of +-1 standard deviation;
- :func:`pareto` (``pareto_<scenario>.png``): two tasks' metrics per strategy (mean, +-1 std
  bars), the strategies no other beats on both tasks ringed and joined as the Pareto front;
- :func:`bytes_pareto` (``bytes_<scenario>.png``): bytes sent up against Delta_MTL per strategy
  (mean, 95% CI bars), the strategies no other beats on both (fewer bytes, higher Delta_MTL) ringed
  and joined as the Pareto front.

Intervals (CIs, bands, std bars) are clipped to the range of their metric
(:func:`fedmtl.core.tasks.metric_range`: accuracy in [0, 1], MAE >= 0), and a panel says when it
clipped one: a t-based 95% CI over few seeds can reach far outside it (2 seeds: 12.7 standard
errors). Each strategy keeps one colour, marker and line style in every figure, so that strategies
with equal results stay visible (a curve identical to an earlier one is named so in its panel);
the Pareto plot's labels sit in a column beside the axes, joined to their points, so they never
overprint.

:func:`scenario_figures` draws a scenario's four. Each ``draw_*`` function returns the
matplotlib figure (its artists are what the tests check); the function named after it saves the
figure to a PNG and closes it.

matplotlib is imported when a figure is drawn (it is heavy, and only the report draws).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmtl.app.bench.report.tables import ScenarioTable
from fedmtl.core.tasks import metric_range

OVERVIEW_FILE = "delta_mtl.png"
"""The file of :func:`delta_bars` in the report's directory."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
LABEL_GAP_IN = 0.16
"""Vertical room of one label of the Pareto plot's label column, in inches."""


@dataclass(frozen=True)
class Style:
    """How one strategy is drawn in every figure of a scenario."""

    color: Any
    marker: str
    linestyle: str


def styles(strategies: Sequence[str]) -> dict[str, Style]:
    """A style per strategy, by its position: the colour cycles over 10, the marker over 7 and the
    line style over 4, so no two of the first 140 strategies look alike."""
    colors = _pyplot().get_cmap("tab10")
    return {
        name: Style(colors(i % 10), MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
        for i, name in enumerate(strategies)
    }


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - heavy, only when drawing a figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only when drawing a figure

    return plt


def _grid(count: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def _save(fig: Any | None, out: Path) -> Path | None:
    """Save ``fig`` to ``out`` (cropped to what is drawn: legends and labels beside the axes
    included) and close it; None when there is no figure."""
    if fig is None:
        return None
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def range_text(metric: str) -> str:
    """The range of ``metric`` in words: ``[0, 1]``, ``>= 0``, ``<= 1`` (empty when unbounded)."""
    low, high = metric_range(metric)
    if math.isfinite(low) and math.isfinite(high):
        return f"[{low:g}, {high:g}]"
    if math.isfinite(low):
        return f">= {low:g}"
    if math.isfinite(high):
        return f"<= {high:g}"
    return ""


def clipped(metric: str, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The interval ends ``low`` and ``high`` clipped to the range of ``metric``, and whether any
    end moved."""
    bottom, top = metric_range(metric)
    new_low, new_high = np.clip(low, bottom, top), np.clip(high, bottom, top)
    moved = bool(np.any(new_low > low) or np.any(new_high < high))  # False for NaN ends
    return new_low, new_high, moved


def _title(ax: Any, task: str, metric: str, higher: bool, clipped_what: str | None) -> None:
    """The panel's title: the task, its metric and direction; and, when ``clipped_what`` names
    intervals that were clipped, a line saying so."""
    title = f"{task}: {metric} ({'higher' if higher else 'lower'} is better)"
    if clipped_what:
        title += f"\n{clipped_what} clipped to the range of {metric}: {range_text(metric)}"
    ax.set_title(title, fontsize=9)


def draw_task_bars(table: ScenarioTable) -> Any | None:
    """One panel per task: each strategy's mean Delta metric, its 95% CI as error bars clipped to
    the metric's range."""
    if not table.tasks:
        return None
    fig, axes = _grid(len(table.tasks))
    labels = [r.strategy for r in table.strategies]
    for index, (ax, task) in enumerate(zip(axes, table.tasks, strict=True)):
        cells = [r.tasks[index] for r in table.strategies]
        means = np.array([c.values.mean for c in cells])
        errors = np.array([_finite(c.values.ci95) for c in cells])
        low, high, moved = clipped(cells[0].metric, means - errors, means + errors)
        yerr = np.vstack([means - low, high - means])
        ax.bar(range(len(labels)), means, yerr=yerr, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        metric, higher = cells[0].metric, cells[0].higher_is_better
        _title(ax, task, metric, higher, "95% CIs" if moved else None)
    fig.suptitle(f"{table.label}: per-task metric, mean and 95% CI over seeds")
    fig.tight_layout()
    return fig


def task_bars(table: ScenarioTable, out: Path) -> Path | None:
    """:func:`draw_task_bars` saved to ``out``."""
    return _save(draw_task_bars(table), out)


def draw_delta_bars(tables: Sequence[ScenarioTable]) -> Any | None:
    """One panel per scenario with Delta_MTL: each strategy's mean, 95% CI as error bars (None
    when no scenario has a Delta_MTL)."""
    shown = [t for t in tables if any(math.isfinite(r.delta.mean) for r in t.strategies)]
    if not shown:
        return None
    fig, axes = _grid(
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
    return fig


def delta_bars(tables: Sequence[ScenarioTable], out: Path) -> Path | None:
    """:func:`draw_delta_bars` saved to ``out``."""
    return _save(draw_delta_bars(tables), out)


def draw_curves(table: ScenarioTable) -> Any | None:
    """One panel per task: each strategy's Delta metric against rounds, mean over seeds and a band
    of +-1 std clipped to the metric's range (rounds every seed evaluated); one legend for the
    figure. A curve identical to an earlier one's is drawn over it dotted, with hollow markers
    (the earlier shows through), and the panel names the pair."""
    if not any(r.curves for r in table.strategies):
        return None
    fig, axes = _grid(len(table.tasks))
    style = styles([r.strategy for r in table.strategies])
    shown: set[str] = set()
    for index, (ax, task) in enumerate(zip(axes, table.tasks, strict=True)):
        cell = table.strategies[0].tasks[index]
        drawn: list[tuple[str, list[int], np.ndarray, np.ndarray]] = []
        for row in table.strategies:
            runs = row.curves.get(task, [])
            rounds = sorted(set.intersection(*(set(c) for c in runs))) if runs else []
            if rounds:
                values = np.array([[curve[r] for r in rounds] for curve in runs])
                drawn.append((row.strategy, rounds, values.mean(axis=0), values.std(axis=0)))
        twins = identical(drawn)
        moved_any = False
        for name, rounds, mean, std in drawn:
            look = style[name]
            low, high, moved = clipped(cell.metric, mean - std, mean + std)
            moved_any = moved_any or moved
            is_twin = name in twins
            shown.add(name)
            ax.plot(
                rounds,
                mean,
                color=look.color,
                marker=look.marker,
                linestyle=(0, (1, 2)) if is_twin else look.linestyle,
                linewidth=2.0 if is_twin else 1.2,
                markersize=8 if is_twin else 4,
                markerfacecolor="none" if is_twin else look.color,
                label=name,
            )
            ax.fill_between(rounds, low, high, color=look.color, alpha=0.15)
        if twins:
            groups: dict[str, list[str]] = {}
            for name, first in twins.items():
                groups.setdefault(first, [first]).append(name)
            note = "identical curves (the later dotted, hollow): " + "; ".join(
                " = ".join(group) for group in groups.values()
            )
            ax.annotate(
                textwrap.fill(note, 70),
                (0.0, 0.0),
                xycoords="axes fraction",
                xytext=(0, -36),  # below the tick labels and the axis label
                textcoords="offset points",
                fontsize=7,
                va="top",
            )
        _title(ax, task, cell.metric, cell.higher_is_better, "bands" if moved_any else None)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    names = [r.strategy for r in table.strategies if r.strategy in shown]
    handles = [
        _pyplot().Line2D(
            [], [], color=style[n].color, marker=style[n].marker, linestyle=style[n].linestyle
        )
        for n in names
    ]
    fig.suptitle(f"{table.label}: learning curves (personal test splits), mean +-1 std over seeds")
    fig.tight_layout()
    fig.legend(
        handles,
        names,
        loc="center left",
        fontsize=7,
        bbox_to_anchor=(1.0, 0.5),
    )
    return fig


def identical(
    drawn: Sequence[tuple[str, Sequence[int], np.ndarray, np.ndarray]],
) -> dict[str, str]:
    """Each strategy whose curve (rounds, mean and std) equals that of one drawn before it -> the
    first such strategy."""
    twins: dict[str, str] = {}
    for position, (name, rounds, mean, std) in enumerate(drawn):
        for other, other_rounds, other_mean, other_std in drawn[:position]:
            same = list(rounds) == list(other_rounds)
            if same and np.array_equal(mean, other_mean) and np.array_equal(std, other_std):
                twins[name] = twins.get(other, other)
                break
    return twins


def curves(table: ScenarioTable, out: Path) -> Path | None:
    """:func:`draw_curves` saved to ``out``."""
    return _save(draw_curves(table), out)


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


def draw_pareto(table: ScenarioTable, tasks: Sequence[str] | None = None) -> Any | None:
    """The two tasks' mean metrics per strategy (+-1 std bars clipped to the metrics' ranges), the
    Pareto front ringed and joined, each strategy's name in a column right of the axes joined to
    its point; the tasks are ``tasks`` or the scenario's first two (None when it has fewer than
    two)."""
    chosen = list(tasks) if tasks else table.tasks[:2]
    if len(chosen) != 2 or any(t not in table.tasks for t in chosen):
        return None
    first, second = (table.tasks.index(t) for t in chosen)
    rows = table.strategies
    height = max(4.5, LABEL_GAP_IN * len(rows) + 1.8)
    fig, ax = _pyplot().subplots(figsize=(7.5, height))
    # room below the axes for the axis label and the legend, above for a two-line title
    fig.subplots_adjust(left=0.12, right=0.7, bottom=0.8 / height, top=1 - 0.6 / height)
    style = styles([r.strategy for r in rows])
    cells = rows[0].tasks[first], rows[0].tasks[second]
    points = [(r.tasks[first].values.mean, r.tasks[second].values.mean) for r in rows]
    x, y = np.array(points).T if points else (np.zeros(0), np.zeros(0))
    x_std = np.array([_finite(r.tasks[first].values.std) for r in rows])
    y_std = np.array([_finite(r.tasks[second].values.std) for r in rows])
    x_low, x_high, x_moved = clipped(cells[0].metric, x - x_std, x + x_std)
    y_low, y_high, y_moved = clipped(cells[1].metric, y - y_std, y + y_std)
    for i, row in enumerate(rows):
        look = style[row.strategy]
        ax.errorbar(
            x[i],
            y[i],
            xerr=[[x[i] - x_low[i]], [x_high[i] - x[i]]],
            yerr=[[y[i] - y_low[i]], [y_high[i] - y[i]]],
            fmt=look.marker,
            color=look.color,
            capsize=3,
            label=row.strategy,
        )
    front = pareto_front(points, (cells[0].higher_is_better, cells[1].higher_is_better))
    _front_line(fig, ax, points, front, "no other strategy better on both tasks")
    for setter, cell in ((ax.set_xlabel, cells[0]), (ax.set_ylabel, cells[1])):
        setter(
            f"{cell.task} {cell.metric} ({'higher' if cell.higher_is_better else 'lower'} is better)"
        )
    moved = [c.metric for c, m in zip(cells, (x_moved, y_moved), strict=True) if m]
    title = f"{table.label}: two tasks per strategy (mean +-1 std over seeds)"
    if moved:
        ranges = " and ".join(f"{metric} {range_text(metric)}" for metric in dict.fromkeys(moved))
        title += f"\nstd bars clipped to the metric's range ({ranges})"
    fig.suptitle(title, fontsize=9)
    first_at: dict[tuple[float, float], str] = {}
    labels = []
    for point, row in zip(points, rows, strict=True):
        twin = first_at.setdefault(point, row.strategy)
        labels.append(row.strategy if twin == row.strategy else f"{row.strategy} (= {twin})")
    label_column(ax, points, labels, [style[r.strategy].color for r in rows])
    return fig


def _front_line(
    fig: Any, ax: Any, points: Sequence[tuple[float, float]], front: list[int], what: str
) -> None:
    """Ring the ``front`` points and join them (gid ``pareto front``), named in a legend below
    the axis label: ``Pareto front (n): {what}``."""
    if not front:
        return
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "k--",
        linewidth=0.8,
        marker="o",
        markersize=14,
        markerfacecolor="none",
        markeredgewidth=0.8,
        gid="pareto front",
        label=f"Pareto front ({len(front)}): {what}",
    )
    fig.legend(
        handles=[ax.get_lines()[-1]], fontsize=7, loc="lower left", bbox_to_anchor=(0.1, 0.0)
    )


def draw_bytes_pareto(table: ScenarioTable) -> Any | None:
    """Each strategy's mean MB sent up over the run against its mean Delta_MTL (95% CI bars),
    the strategies no other beats on both (fewer bytes and a higher Delta_MTL) ringed and joined
    as the Pareto front, each name in a column right of the axes joined to its point (None when
    no strategy has a Delta_MTL: no reference run)."""
    rows = [
        r for r in table.strategies if math.isfinite(r.delta.mean) and math.isfinite(r.bytes_up)
    ]
    if not rows:
        return None
    height = max(4.5, LABEL_GAP_IN * len(rows) + 1.8)
    fig, ax = _pyplot().subplots(figsize=(7.5, height))
    fig.subplots_adjust(left=0.12, right=0.7, bottom=0.8 / height, top=1 - 0.6 / height)
    style = styles([r.strategy for r in table.strategies])
    points = [(r.bytes_up / 1e6, r.delta.mean) for r in rows]
    for (x, y), row in zip(points, rows, strict=True):
        look = style[row.strategy]
        ax.errorbar(
            x, y, yerr=_finite(row.delta.ci95), fmt=look.marker, color=look.color, capsize=3,
            label=row.strategy,
        )  # fmt: skip
    front = pareto_front(points, (False, True))
    _front_line(fig, ax, points, front, "no other strategy sends fewer bytes for more Delta_MTL")
    ax.set_xlabel("MB sent up by the silos over the run (fewer is better)")
    ax.set_ylabel(f"Delta_MTL (%) vs {table.reference} (higher is better)")
    fig.suptitle(
        f"{table.label}: bytes up against Delta_MTL per strategy (mean, 95% CI over seeds)",
        fontsize=9,
    )
    label_column(ax, points, [r.strategy for r in rows], [style[r.strategy].color for r in rows])
    return fig


def bytes_pareto(table: ScenarioTable, out: Path) -> Path | None:
    """:func:`draw_bytes_pareto` saved to ``out``."""
    return _save(draw_bytes_pareto(table), out)


def label_column(
    ax: Any, points: Sequence[tuple[float, float]], labels: Sequence[str], colors: Sequence[Any]
) -> list[Any]:
    """Write ``labels`` in a column right of ``ax``, in the order of their points' heights and as
    near them as the room allows, each joined to its point by a thin line: at least
    :data:`LABEL_GAP_IN` apart, so that they never overprint (equal points included). Returns the
    annotations."""
    ax.autoscale_view()
    height_in = ax.get_position().height * ax.figure.get_figheight()
    finite = [all(math.isfinite(v) for v in p) for p in points]  # a point without a value
    wanted = [
        float(np.clip(ax.transLimits.transform(p)[1], 0.0, 1.0)) if ok else 0.0
        for p, ok in zip(points, finite, strict=True)
    ]
    order = sorted(range(len(points)), key=lambda i: (-wanted[i], i))  # top first
    gap = min(LABEL_GAP_IN / height_in, 1.0 / max(len(points) - 1, 1))
    heights = [wanted[i] for i in order]
    for k in range(len(heights)):  # downwards: each at least a gap below the one above
        heights[k] = min(heights[k], 1.0 if k == 0 else heights[k - 1] - gap)
    for k in reversed(range(len(heights))):  # upwards: each at least a gap above the one below
        heights[k] = max(heights[k], 0.0 if k == len(heights) - 1 else heights[k + 1] + gap)
    annotations = []
    for k, i in enumerate(order):
        line = {"arrowstyle": "-", "color": colors[i], "linewidth": 0.6, "alpha": 0.7}
        annotations.append(
            ax.annotate(
                labels[i],
                points[i] if finite[i] else (1.04, heights[k]),
                xycoords="data" if finite[i] else "axes fraction",
                xytext=(1.04, heights[k]),
                textcoords="axes fraction",
                va="center",
                fontsize=8,
                color=colors[i],
                annotation_clip=False,
                arrowprops=line if finite[i] else None,
            )
        )
    return annotations


def pareto(table: ScenarioTable, out: Path, tasks: Sequence[str] | None = None) -> Path | None:
    """:func:`draw_pareto` saved to ``out``."""
    return _save(draw_pareto(table, tasks), out)


def scenario_figures(
    table: ScenarioTable, out: Path, pareto_tasks: Sequence[str] | None = None
) -> dict[str, Path]:
    """Draw the scenario's figures into directory ``out``: title -> file, of those it has."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", table.label)  # the scenario label in file names
    made = {
        "per-task metric": task_bars(table, out / f"tasks_{stem}.png"),
        "learning curves": curves(table, out / f"curves_{stem}.png"),
        "two-task Pareto plot": pareto(table, out / f"pareto_{stem}.png", pareto_tasks),
        "bytes vs Delta_MTL Pareto plot": bytes_pareto(table, out / f"bytes_{stem}.png"),
    }
    return {title: path for title, path in made.items() if path is not None}
