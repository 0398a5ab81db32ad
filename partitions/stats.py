"""Statistics and pictures of a partition: what ``fedmtl partition`` writes and prints.

One row per silo (:func:`silo_stats`): its id, tasks, train and test sizes, the labelled (not
hidden) training examples of each task it holds, and per task the Jensen-Shannon divergence
JS(P_s || P) = 1/2 KL(P_s || M) + 1/2 KL(P || M), M = (P_s + P) / 2, in bits (so in [0, 1]),
between the label distribution P_s of the silo's samples (train and test, labelled in the dataset)
and the label distribution P of every labelled sample of the dataset. Classification tasks use
their classes; regression tasks use the 10 bins cut at the global deciles of the labels. The cell
is empty when the silo has no labelled sample of the task. (The divergence is scipy's
``jensenshannon`` distance squared.)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.spatial.distance import jensenshannon

from fedmtl.core.data import MultiTaskDataset
from partitions.manifest import Partition
from partitions.split import label_codes

STATS_FILE = "partition_stats.csv"
TASKS_PLOT = "partition_tasks.png"
LABELS_PLOT = "partition_labels.png"
TABLE_WIDTH = 100
"""``fedmtl partition`` prints tables at most this many columns wide."""
TASKS_CELL = 24
"""A silo's task names are printed when they fit this many characters, else their number."""
TEXT_CELL = 24
"""The widest cell holding a task's name beside a value (longer ones end in an ellipsis)."""
TASK_NAME_CELL = 40
"""The widest task name in the per-task table (longer ones end in an ellipsis)."""


def class_counts(dataset: MultiTaskDataset, indices: np.ndarray, task: str) -> np.ndarray:
    """Counts per class (or bin) of ``task`` over the samples ``indices`` labelled for it."""
    codes, size = label_codes(dataset, task)
    labelled = dataset.mask[:, dataset.task_names.index(task)].numpy()
    rows = np.asarray(indices, dtype=np.int64)
    return np.bincount(codes[rows[labelled[rows]]], minlength=size)


def js_divergence(counts: np.ndarray, reference: np.ndarray) -> float | None:
    """JS divergence in bits between two count vectors; None when ``counts`` is all zero."""
    if counts.sum() == 0:
        return None
    return float(jensenshannon(counts, reference, base=2) ** 2)


def silo_stats(dataset: MultiTaskDataset, partition: Partition) -> list[dict[str, Any]]:
    """The rows of ``partition_stats.csv`` (see the module docstring); keys ``silo``, ``tasks``,
    ``num_train``, ``num_test``, ``labelled_<task>``, ``js_<task>``."""
    everything = np.arange(dataset.num_samples)
    reference = {t: class_counts(dataset, everything, t) for t in dataset.task_names}
    rows = []
    for silo in partition.silos:
        labelled = silo.labelled_counts(dataset, "train")
        samples = np.concatenate([silo.train_indices, silo.test_indices])
        row: dict[str, Any] = {
            "silo": silo.id,
            "tasks": "+".join(silo.tasks),
            "num_train": silo.num_train,
            "num_test": silo.num_test,
        }
        row.update({f"labelled_{t}": labelled.get(t, 0) for t in dataset.task_names})
        row.update(
            {
                f"js_{t}": js_divergence(class_counts(dataset, samples, t), reference[t])
                for t in dataset.task_names
            }
        )
        rows.append(row)
    return rows


def mean_js(rows: list[dict[str, Any]], task: str) -> float:
    """The mean over silos of ``js_<task>`` (silos without a value left out)."""
    values = [r[f"js_{task}"] for r in rows if r[f"js_{task}"] is not None]
    return float(np.mean(values)) if values else float("nan")


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def print_table(rows: list[dict[str, Any]], title: str, console: Console | None = None) -> None:
    """Summaries of the rows on the console, each table narrower than :data:`TABLE_WIDTH`
    columns whatever the numbers of tasks and silos (the full table, one column per task, is
    ``partition_stats.csv``): one row per silo (its tasks, train and test sizes, labelled
    training examples over its tasks, mean and largest JS divergence over the tasks) and one row
    per task (the silos holding it, its labelled training examples, mean and largest JS
    divergence over the silos). JS to three decimals."""
    tasks = [key.removeprefix("labelled_") for key in rows[0] if key.startswith("labelled_")]
    console = console or Console()
    silos = Table(title=title)
    _add_column(silos, "silo")
    _add_column(silos, "tasks", TASKS_CELL)
    for column in ("train", "test", "labelled", "mean JS"):
        _add_column(silos, column)
    _add_column(silos, "max JS", TEXT_CELL)
    for row in rows:
        held = row["tasks"].split("+") if row["tasks"] else []
        named = ", ".join(held)
        if len(named) > TASKS_CELL:
            named = (
                f"all {len(tasks)}" if len(held) == len(tasks) else f"{len(held)} of {len(tasks)}"
            )
        values = {t: row[f"js_{t}"] for t in tasks if row[f"js_{t}"] is not None}
        silos.add_row(
            str(row["silo"]),
            named,
            str(row["num_train"]),
            str(row["num_test"]),
            str(sum(row[f"labelled_{t}"] for t in tasks)),
            _cell(float(np.mean(list(values.values()))) if values else None),
            _largest(values),
        )
    console.print(silos)
    per_task = Table(title="per task", caption="one column per task: partition_stats.csv")
    _add_column(per_task, "task", TASK_NAME_CELL)
    for column in ("silos", "labelled", "mean JS"):
        _add_column(per_task, column)
    _add_column(per_task, "max JS", TEXT_CELL)
    for task in tasks:
        values = {str(r["silo"]): r[f"js_{task}"] for r in rows if r[f"js_{task}"] is not None}
        per_task.add_row(
            task,
            str(sum(task in r["tasks"].split("+") for r in rows)),
            str(sum(r[f"labelled_{task}"] for r in rows)),
            _cell(mean_js(rows, task)) if values else "",
            _largest(values, "silo "),
        )
    console.print(per_task)


def _add_column(table: Table, name: str, text_width: int | None = None) -> None:
    """A column of numbers (right-aligned, never narrower than its header), or of text at most
    ``text_width`` characters wide (left-aligned; cut with an ellipsis rather than wrapped, so
    that each row keeps one line)."""
    if text_width is None:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    else:
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=text_width)


def _largest(values: dict[str, float], prefix: str = "") -> str:
    """The largest value and whose it is (``0.412 (silo 3)``); empty when none."""
    if not values:
        return ""
    name = max(values, key=lambda k: values[k])  # the first of equal ones
    return f"{values[name]:.3f} ({prefix}{name})"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def skewed_task(dataset: MultiTaskDataset, partition: Partition) -> str:
    """The task to show label distributions of: the split's ``task`` when it names one, else the
    first classification task, else the first task."""
    chosen = partition.config.get("split", {}).get("params", {}).get("task")
    if chosen in dataset.task_names:
        return str(chosen)
    classification = [t.name for t in dataset.tasks if t.kind != "regression"]
    return (classification or dataset.task_names)[0]


def plot_tasks(dataset: MultiTaskDataset, rows: list[dict[str, Any]], out: Path) -> Path:
    """Heatmap silo x task of labelled training examples (0 where the silo does not hold it)."""
    plt = _pyplot()
    counts = np.array([[r[f"labelled_{t}"] for t in dataset.task_names] for r in rows])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * counts.shape[1], 1.0 + 0.35 * counts.shape[0]))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xticks(range(counts.shape[1]), dataset.task_names, rotation=30, ha="right")
    ax.set_yticks(range(counts.shape[0]), [str(r["silo"]) for r in rows])
    ax.set_xlabel("task")
    ax.set_ylabel("silo")
    bright = 0.6 * max(int(counts.max()), 1)
    for (i, j), value in np.ndenumerate(counts):
        colour = "k" if value > bright else "w"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="labelled training examples")
    ax.set_title("Labelled training examples per silo and task")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_labels(dataset: MultiTaskDataset, partition: Partition, task: str, out: Path) -> Path:
    """Stacked bars: per silo, the share of each class (or decile bin) of ``task``."""
    plt = _pyplot()
    counts = np.array(
        [
            class_counts(dataset, np.concatenate([s.train_indices, s.test_indices]), task)
            for s in partition.silos
        ],
        dtype=np.float64,
    )
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(shares), 3.6))
    bottom = np.zeros(len(shares))
    colours = plt.get_cmap("tab10" if shares.shape[1] <= 10 else "tab20")
    silos = np.arange(len(shares))
    for c in range(shares.shape[1]):
        ax.bar(silos, shares[:, c], bottom=bottom, color=colours(c % colours.N), label=str(c))
        bottom += shares[:, c]
    kind = "decile bin" if dataset.task(task).kind == "regression" else "class"
    ax.set_xticks(silos, [str(i) for i in silos])
    ax.set_xlabel("silo")
    ax.set_ylabel(f"share of samples per {kind}")
    ax.set_title(f"Label distribution of '{task}' per silo")
    ax.legend(title=kind, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(
    dataset: MultiTaskDataset, partition: Partition, out: Path
) -> list[dict[str, Any]]:
    """Write ``partition_stats.csv`` and the two PNGs into ``out``; return the stats rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = silo_stats(dataset, partition)
    write_csv(rows, out / STATS_FILE)
    plot_tasks(dataset, rows, out / TASKS_PLOT)
    plot_labels(dataset, partition, skewed_task(dataset, partition), out / LABELS_PLOT)
    return rows


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - heavy, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only when plotting

    return plt
