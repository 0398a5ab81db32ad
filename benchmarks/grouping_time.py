"""Solve time of the task-grouping program (MILP with HiGHS, TAG's selection) against tasks T.

For each T one affinity is drawn (``--structure``): ``planted`` (default): the tasks, shuffled, fall
into ceil(T / 4) blocks of about 4; A[i, k] = +1 inside a block and -0.5 across, plus N(0, 0.3^2)
noise; ``random``: i.i.d. N(0, 1) entries, no structure (the hard case for the MILP, whose LP
relaxation is then weak). Each method of ``--methods`` solves it under each setting of
``--settings``:

- ``free``: no limit; ``groups``: num_groups = ceil(T / 4) (the number of blocks);
- ``size``: max_group_size = 4.

``--formulations`` picks the MILP's formulations (``auto``, ``columns``, ``slots``; see
:func:`strategies.grouping.solvers.solve_grouping`). Per (method, formulation, setting, T) it
records the median wall time of ``--repeats`` solves (``GroupingSolution.seconds``, model building
included; a run stopped by ``--time-limit`` is not repeated), the method's objective, whether HiGHS
proved optimality (``optimal``) and found a grouping at all (``found``), the number of groups and
whether the planted blocks came back exactly (empty for ``random``).
TAG runs only where it has at most ``TAG_MAX_CANDIDATES`` candidate groups; the other cells are
listed as skipped. Writes ``<name>.csv`` / ``.json`` and ``<name>.png`` (seconds against T on a log
scale, time-limited runs marked; ``--name`` defaults to ``grouping_time``).

    python benchmarks/grouping_time.py                                   # the full grid
    python benchmarks/grouping_time.py --tasks 4 8 --methods milp --settings free --repeats 3
    python benchmarks/grouping_time.py --structure random --tasks 6 8 10 12 14 16 --methods milp \
        --formulations columns slots --settings free groups --repeats 1 --time-limit 30 \
        --name grouping_time_random
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from _common import write_results

from strategies.grouping.solvers import (
    COLUMNS_MAX_CANDIDATES,
    FORMULATIONS,
    TAG_MAX_CANDIDATES,
    solve_grouping,
)

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK = 4  # planted block size
SETTINGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "free": lambda tasks: {},
    "groups": lambda tasks: {"num_groups": math.ceil(tasks / BLOCK)},
    "size": lambda tasks: {"max_group_size": BLOCK},
}


def draw(structure: str, tasks: int, seed: int) -> tuple[np.ndarray, list[list[int]] | None]:
    """The affinity (T x T) and its planted blocks (sorted; None for ``random``)."""
    rng = np.random.default_rng([seed, tasks])
    if structure == "random":
        return rng.normal(size=(tasks, tasks)), None
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


def used_formulation(method: str, formulation: str, tasks: int, limits: dict[str, Any]) -> str:
    """The MILP formulation that ran (``auto`` resolved as the solver resolves it); "" for TAG."""
    if method != "milp":
        return ""
    if formulation != "auto":
        return formulation
    return "columns" if candidates(tasks, limits) <= COLUMNS_MAX_CANDIDATES else "slots"


def measure(
    method: str,
    formulation: str,
    setting: str,
    structure: str,
    tasks: int,
    seed: int,
    repeats: int,
    time_limit: float,
) -> dict[str, Any]:
    affinity, blocks = draw(structure, tasks, seed)
    limits = SETTINGS[setting](tasks)
    seconds: list[float] = []
    result: dict[str, Any] = {}
    for _ in range(repeats):
        try:
            solution = solve_grouping(
                affinity,
                method=method,
                time_limit=time_limit,
                formulation=formulation,
                **limits,
            )
        except TimeoutError:  # no grouping at all within the time limit
            seconds.append(time_limit)
            result = {"objective": None, "optimal": False, "found": False, "groups": 0}
            result["recovered"] = None if blocks is None else False
            break
        seconds.append(solution.seconds)
        result = {
            "objective": round(solution.objective, 6),
            "optimal": solution.optimal,
            "found": True,
            "groups": len(solution.groups),
            "recovered": None if blocks is None else solution.groups == blocks,
        }
        if not solution.optimal:
            break
    return {
        "method": method,
        "formulation": used_formulation(method, formulation, tasks, limits),
        "setting": setting,
        "structure": structure,
        "tasks": tasks,
        "repeats": len(seconds),
        "seconds": round(statistics.median(seconds), 4),
        **result,
    }


def plot(rows: list[dict[str, Any]], time_limit: float, structure: str, path: Path) -> None:
    matplotlib.use("Agg")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    limited_label = "time limit hit"
    for method, formulation, setting in sorted(
        {(r["method"], r["formulation"], r["setting"]) for r in rows}
    ):
        cells = [
            r
            for r in rows
            if (r["method"], r["formulation"], r["setting"]) == (method, formulation, setting)
        ]
        style = "-" if method == "milp" else "--"
        line = axis.plot(
            [r["tasks"] for r in cells],
            [r["seconds"] for r in cells],
            style,
            marker="o",
            label=f"{method} {formulation}, {setting}".replace("  ", " "),
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
    what = "planted blocks" if structure == "planted" else "random affinities"
    axis.set_title(f"Task grouping on {what} (time limit {time_limit:g} s, dotted)")
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
    parser.add_argument(
        "--formulations",
        nargs="+",
        choices=list(FORMULATIONS),
        default=["auto"],
        help="MILP formulations to time (auto: columns up to COLUMNS_MAX_CANDIDATES, else slots)",
    )
    parser.add_argument("--structure", choices=["planted", "random"], default="planted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="grouping_time", help="stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    skipped = []
    for tasks in args.tasks:
        for method in args.methods:
            for formulation in args.formulations if method == "milp" else ["auto"]:
                for setting in args.settings:
                    count = candidates(tasks, SETTINGS[setting](tasks))
                    if method == "tag" and count > TAG_MAX_CANDIDATES:
                        skipped.append({"method": method, "setting": setting, "tasks": tasks})
                        print(f"skip tag {setting} T={tasks}: {count:,} candidates", flush=True)
                        continue
                    rows.append(
                        measure(
                            method,
                            formulation,
                            setting,
                            args.structure,
                            tasks,
                            args.seed,
                            args.repeats,
                            args.time_limit,
                        )
                    )
                    print(json.dumps(rows[-1]), flush=True)
    write_results(
        args.out,
        args.name,
        rows,
        skipped=skipped,
        time_limit_s=args.time_limit,
        seed=args.seed,
        structure=args.structure,
    )
    plot(rows, args.time_limit, args.structure, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
