"""Strategies compared on synthetic tasks with planted groups that compete for a trunk (in process).

Setting: ``experiment=synthetic_groups`` (6 tasks in 3 planted groups with independent features,
a [32, 4] trunk; 12 silos, each holding one planted pair and one task of another group),
``--rounds`` rounds, each seed in ``--seeds``. For every
strategy and seed it records each task's final personal primary metric M_t and the multi-task gain
over FedAvg on the same seed (Delta_MTL of Maninis et al. 2019, "Attentive Single-Tasking of
Multiple Tasks", CVPR, as docs/benchmark.md defines it, with FedAvg as the reference B instead of
single-task training):

    Delta_vs_fedavg = (1/T) sum_t s_t (M_t - B_t) / |B_t|  in percent, s_t = +1 (higher is better)

plus the bytes sent up and the wall time. Writes ``<name>.csv`` / ``.json`` (one row per strategy,
server learning rate and seed; ``--name`` defaults to ``compare_balancing``) and ``<name>.png``
(mean gain and its spread over seeds).

    python benchmarks/compare_balancing.py                               # every strategy, 3 seeds
    python benchmarks/compare_balancing.py --strategies fedavg mgda upgrad --seeds 0 --rounds 5
    python benchmarks/compare_balancing.py --server-lrs 1 3              # also with server lr 3
    python benchmarks/compare_balancing.py --overrides "model.hidden=[128,64]" --name compare_wide

A weighting whose weights sum to one (mean, MGDA, CAGrad, ...) steps by about one task's update,
while FedAvg's silo updates sum their tasks; ``--server-lrs`` shows how much of a gap is step size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from _common import write_results

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse, presets
from fedmtl.app.runtimes import set_offline_env

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "fedavg"
FLOOR = -100.0  # gains below this (a diverged run) are drawn at the floor and labelled


def run_one(
    strategy: str, seed: int, rounds: int, server_lr: float, extra: list[str], workdir: Path
) -> dict[str, Any]:
    """One in-process run; returns its final metrics, bytes, wall time and summary."""
    out = workdir / f"{strategy}-{server_lr}-{seed}"
    overrides = [
        "experiment=synthetic_groups",
        f"strategy={strategy}",
        f"strategy.server_optimizer.lr={server_lr}",
        "runtime=inprocess",
        "tracking=quiet",
        f"num_rounds={rounds}",
        f"seed={seed}",
        *extra,
    ]
    started = time.perf_counter()
    summary = run(parse(compose(overrides, out)))
    metrics = {
        task: summary["final"][task][summary["task_info"][task]["primary_metric"]]
        for task in summary["tasks"]
    }
    return {
        "metrics": metrics,
        "higher_is_better": {t: summary["task_info"][t]["higher_is_better"] for t in metrics},
        "bytes_up": summary["bytes_up"],
        "wall_time_s": time.perf_counter() - started,
        "summary": summary,
    }


def gain_percent(result: dict[str, Any], baseline: dict[str, Any]) -> float:
    """(1/T) sum_t s_t (M_t - B_t) / |B_t| in percent (tasks with B_t = 0 are skipped)."""
    gains = []
    for task, value in result["metrics"].items():
        reference = baseline["metrics"][task]
        if reference == 0:
            continue
        sign = 1.0 if result["higher_is_better"][task] else -1.0
        gains.append(sign * (value - reference) / abs(reference))
    return 100.0 * statistics.fmean(gains)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    matplotlib.use("Agg")

    keys = sorted({(r["strategy"], r["server_lr"]) for r in rows})
    means, spreads = [], []
    for key in keys:
        gains = [r["gain_vs_fedavg_pct"] for r in rows if (r["strategy"], r["server_lr"]) == key]
        means.append(statistics.fmean(gains))
        spreads.append(statistics.pstdev(gains))
    labels = [
        f"{s} (lr {lr:g})" + (" diverged" if m < FLOOR else "")
        for (s, lr), m in zip(keys, means, strict=True)
    ]
    shown = [max(m, FLOOR) for m in means]
    errors = [0.0 if m < FLOOR else e for m, e in zip(means, spreads, strict=True)]
    colors = ["tab:blue" if m >= 0 else "tab:red" for m in means]
    figure, axis = plt.subplots(figsize=(8, 0.3 * len(keys) + 1.5))
    axis.barh(labels, shown, xerr=errors, color=colors)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_xlabel(f"mean relative gain over FedAvg (%), +/- std over seeds (cut at {FLOOR:g}%)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=presets("strategy"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--server-lrs", nargs="+", type=float, default=[1.0])
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="extra config overrides, e.g. model.hidden=[32,4]",
    )
    parser.add_argument("--name", default="compare_balancing", help="stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            baseline = run_one(BASELINE, seed, args.rounds, 1.0, args.overrides, workdir)
            for strategy in args.strategies:
                for server_lr in args.server_lrs:
                    if strategy == BASELINE and server_lr == 1.0:
                        result = baseline
                    else:
                        result = run_one(
                            strategy, seed, args.rounds, server_lr, args.overrides, workdir
                        )
                    row = {
                        "strategy": strategy,
                        "server_lr": server_lr,
                        "seed": seed,
                        "gain_vs_fedavg_pct": round(gain_percent(result, baseline), 3),
                        **{f"final_{t}": round(v, 4) for t, v in result["metrics"].items()},
                        "bytes_up": result["bytes_up"],
                        "wall_time_s": round(result["wall_time_s"], 2),
                    }
                    print(row, flush=True)
                    rows.append(row)
    setting = {
        "experiment": "synthetic_groups",
        "rounds": args.rounds,
        "seeds": args.seeds,
        "overrides": args.overrides,
    }
    write_results(args.out, args.name, rows, setting=setting)
    plot(rows, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
