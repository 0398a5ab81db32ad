"""What the figures show, read from their matplotlib artists (not pixels): ``fedmtl report``'s
intervals stay inside their metric's range and say when they were clipped, every strategy stays
visible when results are equal, the Pareto plot draws the front its legend names and its labels
never overprint; a run's ``learning_curves.png`` names its chance line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from fedmtl.app.bench.report.loading import load_runs
from fedmtl.app.bench.report.plots import (
    clipped,
    draw_bytes_pareto,
    draw_curves,
    draw_pareto,
    draw_task_bars,
    pareto_front,
    range_text,
)
from fedmtl.app.bench.report.tables import ScenarioTable, scenario_tables
from fedmtl.app.run.tracking import draw_learning_curves
from fedmtl.core.tasks import TaskSpec, metric_range
from tests.support.bench import write_run

HAND = {"id": "hand000001", "name": "hand", "excluded": []}
RESULTS = {  # strategy -> (accuracy of task a, MAE of task r) per seed
    "single_task": [(0.30, 0.50), (0.60, 0.40)],
    "fedavg": [(0.35, 0.45), (0.62, 0.38)],
    "sum": [(0.35, 0.45), (0.62, 0.38)],  # equal to fedavg's
    "mgda": [(0.36, 0.44), (0.63, 0.37)],
    "pcgrad": [(0.355, 0.445), (0.625, 0.375)],  # within 0.01 of fedavg and mgda
    "cagrad": [(0.20, 0.30), (0.40, 0.32)],
    "rlw": [(1.0, 0.0), (1.0, 0.0), (0.1, 0.9)],  # its spread reaches outside both ranges
}


def hand_table(root: Path, results: dict[str, list[tuple[float, float]]]) -> ScenarioTable:
    for strategy, seeds in results.items():
        for seed, (accuracy, mae) in enumerate(seeds):
            write_run(
                root / strategy / f"seed{seed}",
                strategy,
                seed,
                {"a": {"accuracy": accuracy, "loss": 0.5}, "r": {"mae": mae, "r2": 0.1}},
                scenario=HAND,
                rounds=4,
            )
    (table,) = scenario_tables(load_runs([root]).runs)
    return table


@pytest.fixture
def table(tmp_path: Path) -> ScenarioTable:
    return hand_table(tmp_path, RESULTS)


def close(fig: Any) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the figure chose its backend

    plt.close(fig)


def test_metric_ranges_and_clipping() -> None:
    assert metric_range("accuracy") == (0.0, 1.0) and metric_range("mae") == (0.0, math.inf)
    assert (range_text("accuracy"), range_text("mae"), range_text("r2")) == (
        "[0, 1]",
        ">= 0",
        "<= 1",
    )
    low, high, moved = clipped("accuracy", np.array([-1.5, 0.2]), np.array([2.2, 0.4]))
    assert low.tolist() == [0.0, 0.2] and high.tolist() == [1.0, 0.4] and moved
    assert not clipped("mae", np.array([0.1]), np.array([9.0]))[2]


def test_task_bars_clip_each_ci_to_its_metric_range_and_say_so(table: ScenarioTable) -> None:
    fig = draw_task_bars(table)
    for ax, task in zip(fig.axes, table.tasks, strict=True):
        cells = [row.tasks[table.tasks.index(task)] for row in table.strategies]
        bottom, top = metric_range(cells[0].metric)
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = bars.lines[2][0].get_segments()
        assert len(segments) == len(cells)
        for (start, end), cell in zip(segments, cells, strict=True):
            mean, half = cell.values.mean, cell.values.ci95
            assert start[1] == pytest.approx(max(bottom, mean - half))
            assert end[1] == pytest.approx(min(top, mean + half))
        assert f"95% CIs clipped to the range of {cells[0].metric}" in ax.get_title()
    close(fig)


def curve_lines(ax: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_keep_every_strategy_visible_and_name_identical_ones(table: ScenarioTable) -> None:
    fig = draw_curves(table)
    names = [row.strategy for row in table.strategies]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == names
    for ax, task in zip(fig.axes, table.tasks, strict=True):
        lines = curve_lines(ax)
        assert sorted(lines) == sorted(names)
        looks = {
            (str(ln.get_color()), ln.get_marker(), str(ln.get_linestyle())) for ln in lines.values()
        }
        assert len(looks) == len(names)  # no two alike, sum over fedavg included
        assert lines["sum"].get_markerfacecolor() == "none"  # hollow over fedavg's filled markers
        notes = [t.get_text().replace("\n", " ") for t in ax.texts]
        assert any("identical curves" in n and "fedavg = sum" in n for n in notes)
        # the bands: inside the metric's range, and the title says they were clipped
        bottom, top = metric_range(table.strategies[0].tasks[table.tasks.index(task)].metric)
        heights = np.concatenate([p.vertices[:, 1] for c in ax.collections for p in c.get_paths()])
        assert heights.min() >= bottom and heights.max() <= top
        assert "bands clipped" in ax.get_title()
    close(fig)


def test_pareto_draws_the_front_its_legend_names_and_labels_never_overprint(
    table: ScenarioTable,
) -> None:
    fig = draw_pareto(table)
    (ax,) = fig.axes
    points = [(row.tasks[0].values.mean, row.tasks[1].values.mean) for row in table.strategies]
    front = pareto_front(points, (True, False))
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto front"]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == [points[i] for i in front]
    assert line.get_marker() == "o" and line.get_markerfacecolor() == "none"  # a ring on each
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [line.get_label()]
    assert line.get_label().startswith(f"Pareto front ({len(front)})")
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == sorted(
        "sum (= fedavg)" if row.strategy == "sum" else row.strategy for row in table.strategies
    )
    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in labels]  # the text alone, not its leader line
    assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
    # the std bars inside both ranges (rlw's reach outside them), and the title says so
    for container in ax.containers:
        for collection, (bottom, top), axis in zip(
            container.lines[2], (metric_range("accuracy"), metric_range("mae")), (0, 1), strict=True
        ):
            ends = np.array(collection.get_segments())[:, :, axis]
            assert ends.min() >= bottom and ends.max() <= top
    assert "std bars clipped" in fig.get_suptitle()
    close(fig)


def test_a_front_of_equal_strategies_is_still_drawn(tmp_path: Path) -> None:
    """Two strategies with equal results form the front: a zero-length line, but both ringed."""
    fig = draw_pareto(hand_table(tmp_path, {k: RESULTS[k] for k in ("fedavg", "sum")}))
    (ax,) = fig.axes
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto front"]
    assert len(line.get_xdata()) == 2 and line.get_markersize() > 0
    assert fig.legends[0].get_texts()[0].get_text().startswith("Pareto front (2)")
    close(fig)


def test_learning_curves_legend_names_the_chance_line() -> None:
    rows = [
        {"round": k, "split": split, "metrics": {"a": {"accuracy": 0.4 + k / 10, "loss": 1.0 / k}}}
        for k in (1, 2, 3)
        for split in ("train", "personal", "global")
    ]
    fig = draw_learning_curves(rows, [TaskSpec.multiclass("a", 3)], chance={"a": 0.34})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "personal test splits", "global test set", "chance level", "train loss (right axis)"
    ]  # fmt: skip
    (chance,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "chance level"]
    assert list(chance.get_ydata()) == [0.34, 0.34]
    close(fig)


def test_bytes_pareto_rings_the_strategies_no_other_beats_on_bytes_and_delta_mtl(
    tmp_path: Path,
) -> None:
    megabytes = {"single_task": 3.0, "fedavg": 1.0, "mgda": 2.0, "cagrad": 0.5, "pcgrad": 2.5}
    hand_table(tmp_path, {k: RESULTS[k] for k in megabytes})
    for path in tmp_path.glob("*/seed*/summary.json"):
        summary = json.loads(path.read_text())
        summary["bytes_up"] = int(megabytes[summary["strategy"]] * 1e6)
        path.write_text(json.dumps(summary))
    (table,) = scenario_tables(load_runs([tmp_path]).runs)
    fig = draw_bytes_pareto(table)
    (ax,) = fig.axes
    points = {row.strategy: (row.bytes_up / 1e6, row.delta.mean) for row in table.strategies}
    assert {name: x for name, (x, _) in points.items()} == megabytes
    undominated = sorted(
        (x, y)
        for name, (x, y) in points.items()
        if not any(ox <= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points.values())
    )
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto front"]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == undominated
    assert points["cagrad"] in undominated and points["single_task"] not in undominated
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(megabytes)
    close(fig)
    (no_reference,) = scenario_tables(load_runs([tmp_path / "fedavg"]).runs)
    assert draw_bytes_pareto(no_reference) is None
