"""Solve time of the task-grouping program (MILP with HiGHS, TAG's selection) against tasks T.

For each T one affinity with planted blocks is drawn: the tasks, shuffled, fall into ceil(T / 4)
blocks of about 4; A[i, k] = +1 inside a block and -0.5 across, plus N(0, 0.3^2) noise. Each method
of ``--methods`` solves it under each setting of ``--settings``:

- ``free``: no limit; ``groups``: num_groups = ceil(T / 4) (the number of blocks);
- ``size``: max_group_size = 4.

Per (method, setting, T) it records the median wall time of ``--repeats`` solves
(``GroupingSolution.seconds``, model building included; a run stopped by ``--time-limit`` is not
repeated), the method's objective, whether HiGHS proved optimality (``optimal``) and found a
grouping at all (``found``), the number of groups and whether the planted blocks came back exactly.
TAG runs only where it has at most ``TAG_MAX_CANDIDATES`` candidate groups; the other cells are
listed as skipped. Writes ``grouping_time.csv`` / ``.json`` and ``grouping_time.png`` (seconds
against T on a log scale, time-limited runs marked).

    python benchmarks/grouping_time.py                                   # the full grid
    python benchmarks/grouping_time.py --tasks 4 8 --methods milp --settings free --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import write_results

from strategies.grouping.solvers import TAG_MAX_CANDIDATES, solve_grouping

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 4  # planted block size
SETTINGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "free": lambda tasks: {},
    "groups": lambda tasks: {"num_groups": math.ceil(tasks / BLOCK)},
    "size": lambda tasks: {"max_group_size": BLOCK},
}


def planted(tasks: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """The affinity (T x T) and its planted blocks (sorted)."""
    rng = np.random.default_rng([seed, tasks])
    blocks = np.array_split(rng.permutation(tasks), math.ceil(tasks / BLOCK))
    label = np.zeros(tasks, dtype=int)
    for index, block in enumerate(blocks):
        label[block] = index
    affinity = np.where(label[:, None] == label[None, :], 1.0, -0.5)
    affinity += 0.3 * rng.normal(size=(tasks, tasks))
    return affinity, sorted(sorted(b.tolist()) for b in blocks)


def candidates(tasks: int, limits: dict[str, Any]) -> int:
    """TAG's number of candidate groups."""
    largest = limits.get("max_group_size", tasks)
    return sum(math.comb(tasks, s) for s in range(1, largest + 1))


def measure(
    method: str, setting: str, tasks: int, seed: int, repeats: int, time_limit: float
) -> dict[str, Any]:
    affinity, blocks = planted(tasks, seed)
    limits = SETTINGS[setting](tasks)
    seconds: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(repeats):
        try:
            solution = solve_grouping(affinity, method=method, time_limit=time_limit, **limits)
        except TimeoutError:  # no grouping at all within the time limit
            seconds.append(time_limit)
            result = {"objective": None, "optimal": False, "found": False, "groups": 0}
            result["recovered"] = False
            break
        seconds.append(solution.seconds)
        result = {
            "objective": round(solution.objective, 6),
            "optimal": solution.optimal,
            "found": True,
            "groups": len(solution.groups),
            "recovered": solution.groups == blocks,
        }
        if not solution.optimal:
            break
    return {
        "method": method,
        "setting": setting,
        "tasks": tasks,
        "repeats": len(seconds),
        "seconds": round(statistics.median(seconds), 4),
        **result,
    }


def plot(rows: list[dict[str, Any]], time_limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    limited_label = "time limit hit"
    for method, setting in sorted({(r["method"], r["setting"]) for r in rows}):
        cells = [r for r in rows if (r["method"], r["setting"]) == (method, setting)]
        style = "-" if method == "milp" else "--"
        line = axis.plot(
            [r["tasks"] for r in cells],
            [r["seconds"] for r in cells],
            style,
            marker="o",
            label=f"{method}, {setting}",
        )
        limited = [r for r in cells if not r["optimal"]]
        if limited:
            axis.scatter(
                [r["tasks"] for r in limited],
                [r["seconds"] for r in limited],
                s=120,
                marker="x",
                color=line[0].get_color(),
                zorder=3,
                label=limited_label,
            )
            limited_label = "_nolegend_"
    axis.axhline(time_limit, color="grey", linewidth=0.8, linestyle=":")
    axis.set_yscale("log")
    axis.set_xlabel("tasks T")
    axis.set_ylabel("solve time (s), median over repeats")
    axis.set_title(f"Task grouping on planted blocks (time limit {time_limit:g} s, dotted)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", type=int, default=[5, 10, 15, 20, 30, 40])
    parser.add_argument("--methods", nargs="+", choices=["milp", "tag"], default=["milp", "tag"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per solve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    skipped = []
    for tasks in args.tasks:
        for method in args.methods:
            for setting in args.settings:
                count = candidates(tasks, SETTINGS[setting](tasks))
                if method == "tag" and count > TAG_MAX_CANDIDATES:
                    skipped.append({"method": method, "setting": setting, "tasks": tasks})
                    print(f"skip tag {setting} T={tasks}: {count:,} candidate groups", flush=True)
                    continue
                rows.append(
                    measure(method, setting, tasks, args.seed, args.repeats, args.time_limit)
                )
                print(json.dumps(rows[-1]), flush=True)
    write_results(
        args.out,
        "grouping_time",
        rows,
        skipped=skipped,
        time_limit_s=args.time_limit,
        seed=args.seed,
    )
    plot(rows, args.time_limit, args.out / "grouping_time.png")


if __name__ == "__main__":
    main()
