"""Results of a run: ``metrics.jsonl``, ``summary.json``, a learning-curve PNG, wandb and a progress bar.

``metrics.jsonl`` has one JSON object per line, each with ``round`` and ``split``:
- ``split: "train"``: ``metrics`` = task -> {"loss"} (silo train losses, example-weighted; plus
  "weight", the task's weight w_t in the trunk update, for the balancing strategies), plus
  ``num_sampled``, ``num_updates``, ``num_rejected``, ``bytes_up``, ``bytes_down``, ``seconds``,
  and (when the virtual clock times the round) ``simulated_time_s``, the round's simulated time,
  ``simulated_clock_s``, the run's so far, and ``stragglers``, the silos past the deadline (when any).
- ``split: "personal"``: ``metrics`` = task -> metric -> value, pooled over the silos' own test splits.
- ``split: "silo"``: the same for one silo (``silo`` = its id), on its own tasks.
- ``split: "global"``: task -> metric -> value of the global model on the partition's global
  held-out test set (only when ``partition.global_test_fraction > 0``), every task over the rows
  labelled for it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fedmtl.app.run.checkpoint import atomic_write_text
from fedmtl.core.rounds import RoundRecord
from fedmtl.core.schema import TrackingConfig
from fedmtl.core.tasks import TaskSpec

log = logging.getLogger("fedmtl")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_SCHEMA_VERSION = 1
"""Version of ``summary.json``'s layout: raised when a field is renamed, removed or changes meaning
(adding a field keeps it), so that tools reading many runs can tell layouts apart."""
PARTITION_FILE = "partition.json"
CURVES_FILE = "learning_curves.png"


class Tracker:
    """Round observer that writes the result files, logs to wandb and drives the progress bar."""

    def __init__(
        self,
        output_dir: Path,
        cfg: TrackingConfig,
        tasks: list[TaskSpec],
        num_rounds: int,
        run_config: dict[str, Any],
        run_name: str,
        resume_round: int = 0,
    ) -> None:
        """``resume_round`` > 0: the run goes on after that round; ``metrics.jsonl`` keeps its
        lines up to it (later ones belong to rounds being redone) and grows from there."""
        self.output_dir = output_dir
        self.cfg = cfg
        self.tasks = tasks
        self.num_rounds = num_rounds
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = output_dir / METRICS_FILE
        kept = ""
        if resume_round and self.metrics_path.exists():
            rows, dropped = read_metric_lines(self.metrics_path)
            if dropped:
                log.warning(
                    "%s: %d unreadable line(s) dropped (%s); the checkpoint after round %d "
                    "decides what the run goes on from",
                    self.metrics_path,
                    len(dropped),
                    ", ".join(f"line {n}" for n in dropped[:5]),
                    resume_round,
                )
            kept = "".join(json.dumps(row) + "\n" for row in rows if row["round"] <= resume_round)
        atomic_write_text(self.metrics_path, kept)
        self.progress = tqdm(
            total=num_rounds,
            initial=resume_round,
            desc="rounds",
            unit="round",
            disable=not cfg.progress,
        )
        self.wandb_run = self._start_wandb(run_config, run_name) if cfg.wandb else None
        self._global: dict[int, dict[str, dict[str, float]]] = {}

    def _start_wandb(self, run_config: dict[str, Any], run_name: str) -> Any:
        mode = self.cfg.wandb_mode
        if mode == "disabled":
            return None
        try:
            import wandb  # noqa: PLC0415 - heavy, only when wandb is on

            return wandb.init(
                project=self.cfg.wandb_project,
                group=self.cfg.wandb_group,
                name=run_name,
                mode=mode,
                dir=str(self.output_dir),
                config=run_config,
                reinit="finish_previous",
            )
        except Exception as err:  # wandb must never kill a run
            log.warning("wandb disabled for this run: %s", err)
            return None

    @staticmethod
    def _train_metrics(record: RoundRecord) -> dict[str, dict[str, float]]:
        metrics: dict[str, dict[str, float]] = {}
        for task, loss in record.train_loss.items():
            metrics.setdefault(task, {})["loss"] = loss
        for task, weight in record.task_weights.items():
            metrics.setdefault(task, {})["weight"] = weight
        return metrics

    def record_global(self, server_round: int, metrics: dict[str, dict[str, float]]) -> None:
        """Global test metrics of ``server_round``, written with that round's other lines."""
        self._global[server_round] = metrics

    def on_round(self, record: RoundRecord) -> None:
        lines: list[dict[str, Any]] = [
            {
                "round": record.server_round,
                "split": "train",
                "metrics": self._train_metrics(record),
                "num_sampled": record.num_sampled,
                "num_updates": record.num_updates,
                "num_rejected": len(record.rejected),
                "bytes_up": record.bytes_up,
                "bytes_down": record.bytes_down,
                "seconds": record.seconds,
                **({"privacy": record.privacy} if record.privacy else {}),
            }
        ]
        if record.simulated_time_s is not None:  # the virtual clock's (strategies.engine.system)
            lines[0]["simulated_time_s"] = record.simulated_time_s
            lines[0]["simulated_clock_s"] = record.simulated_clock_s
        if record.stragglers:
            lines[0]["stragglers"] = list(record.stragglers)
        if record.suspect:  # why the round's losses suggest the model diverged
            lines[0]["suspect"] = list(record.suspect)
        if record.personal is not None:
            lines.append(
                {"round": record.server_round, "split": "personal", "metrics": record.personal}
            )
            for silo, metrics in sorted(record.per_silo.items()):
                lines.append(
                    {
                        "round": record.server_round,
                        "split": "silo",
                        "silo": silo,
                        "metrics": metrics,
                    }
                )
        global_metrics = self._global.pop(record.server_round, None)
        if global_metrics is not None:
            lines.append(
                {"round": record.server_round, "split": "global", "metrics": global_metrics}
            )
        with self.metrics_path.open("a") as handle:
            for line in lines:
                handle.write(json.dumps(line) + "\n")
        if self.wandb_run is not None:
            flat: dict[str, float] = {
                f"train/{t}/{k}": v
                for t, values in self._train_metrics(record).items()
                for k, v in values.items()
            }
            for split, split_metrics in (("personal", record.personal), ("global", global_metrics)):
                for task, task_metrics in (split_metrics or {}).items():
                    flat.update({f"{split}/{task}/{k}": v for k, v in task_metrics.items()})
            flat.update({"bytes_up": record.bytes_up, "bytes_down": record.bytes_down})
            self.wandb_run.log(flat, step=record.server_round)
        self.progress.update(1)
        if not self.cfg.progress:  # no bar to show the round: one log line (Flower's log stream)
            log.info("%s", round_line(record, self.tasks, self.num_rounds))
        if record.personal:
            self.progress.set_postfix(
                {
                    t.name: f"{record.personal[t.name][t.primary_metric.name]:.3f}"
                    for t in self.tasks
                    if t.name in record.personal
                },
                refresh=False,
            )

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and the plot; close wandb and the progress bar."""
        self.progress.close()
        atomic_write_text(
            self.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=_json_default)
        )
        if self.cfg.plots:
            chance = {t: info["chance"] for t, info in summary.get("task_info", {}).items()}
            plot_learning_curves(
                self.metrics_path, self.tasks, self.output_dir / CURVES_FILE, chance=chance
            )
        if self.wandb_run is not None:
            self.wandb_run.summary.update(
                {
                    f"final/{t}/{k}": v
                    for t, m in summary.get("final", {}).items()
                    for k, v in m.items()
                }
            )
            self.wandb_run.finish()


def round_line(record: RoundRecord, tasks: list[TaskSpec], num_rounds: int) -> str:
    """One line for a round: its updates, each task's train loss and pooled test primary metric."""
    parts = [
        f"round {record.server_round}/{num_rounds}: {record.num_updates}/{record.num_sampled} "
        f"updates, {record.seconds:.1f}s"
    ]
    for task in tasks:
        values = []
        if task.name in record.train_loss:
            values.append(f"loss {record.train_loss[task.name]:.4f}")
        metric = task.primary_metric.name
        if record.personal and metric in record.personal.get(task.name, {}):
            values.append(f"test {metric} {record.personal[task.name][metric]:.4f}")
        if values:
            parts.append(f"{task.name}: {', '.join(values)}")
    return "; ".join(parts)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, without the lines that cannot be read (a line torn by a
    kill during an append: :func:`read_metric_lines`)."""
    return read_metric_lines(path)[0]


def read_metric_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a ``metrics.jsonl`` and the numbers (from 1) of the lines left out: lines that
    are not UTF-8 JSON objects with an integer ``round`` (a process killed while appending leaves
    a torn last line; bytes appended by anything else are not fedmtl's). Blank lines are
    skipped."""
    rows: list[dict[str, Any]] = []
    dropped: list[int] = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            dropped.append(number)
            continue
        server_round = row.get("round") if isinstance(row, dict) else None
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            dropped.append(number)
            continue
        rows.append(row)
    return rows, dropped


def plot_learning_curves(
    metrics_path: Path, tasks: list[TaskSpec], out: Path, chance: dict[str, float] | None = None
) -> Path:
    """:func:`draw_learning_curves` of ``metrics_path``'s lines, saved to ``out``."""
    fig = draw_learning_curves(read_metrics(metrics_path), tasks, chance)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def draw_learning_curves(
    rows: list[dict[str, Any]], tasks: list[TaskSpec], chance: dict[str, float] | None = None
) -> Any:
    """One panel per task: primary metric on the personal split and, when there is one, on the
    global test set, the chance level (dotted grey), and train loss against rounds (right axis);
    one legend for the figure names every kind of line. Returns the matplotlib figure."""
    plt = _pyplot()
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    legend_rows = 1 if cols > 1 else 2  # the legend's four entries, in one row or two
    room = 0.3 * legend_rows + 0.1  # inches below the panels for the legend
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows + room), squeeze=False)
    legend: dict[str, Any] = {}  # label -> the first line drawn with it
    for ax, task in zip(axes.flat, tasks, strict=False):
        metric = task.primary_metric.name
        personal, global_ = (
            [
                (r["round"], r["metrics"][task.name][metric])
                for r in rows
                if r["split"] == split and task.name in r["metrics"]
            ]
            for split in ("personal", "global")
        )
        train = [
            (r["round"], r["metrics"][task.name]["loss"])
            for r in rows
            if r["split"] == "train" and "loss" in r["metrics"].get(task.name, {})
        ]
        if personal:
            rounds, values = zip(*personal, strict=True)
            ax.plot(rounds, values, marker="o", color="tab:blue", label="personal test splits")
        if global_:
            rounds, values = zip(*global_, strict=True)
            ax.plot(rounds, values, marker="s", color="tab:green", label="global test set")
        if chance and task.name in chance:
            ax.axhline(chance[task.name], color="grey", linestyle=":", label="chance level")
        ax.set_title(f"{task.name} ({task.kind})")
        ax.set_xlabel("round")
        ax.set_ylabel(f"test {metric}", color="tab:blue")
        lines = list(ax.get_lines())
        if train:
            twin = ax.twinx()
            rounds, losses = zip(*train, strict=True)
            twin.plot(
                rounds, losses, color="tab:orange", alpha=0.7, label="train loss (right axis)"
            )
            twin.set_ylabel("train loss", color="tab:orange")
            lines += twin.get_lines()
        for line in lines:
            legend.setdefault(line.get_label(), line)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Per-task learning curves")
    fig.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=4 // legend_rows, fontsize=8
    )
    fig.tight_layout(rect=(0.0, room / fig.get_figheight(), 1.0, 1.0))
    return fig


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - heavy, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only when plotting

    return plt
