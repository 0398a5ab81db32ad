"""Server aggregation time of each gradient-balancing weighting against tasks T and parameters d.

For each (T, d) a random float32 J (T x d) is drawn once; each method's ``Weighting.__call__``
(Gramian, solver and d = J^T w) is timed as the median of ``--repeats`` calls after one warm-up call
on a 1000-column slice of J (solver set-up, e.g. cvxpy's compilation, is thus excluded). The
Gramian alone is timed too (float64-accumulated; blockwise float32 products for large J). Cells whose J exceeds ``--max-gb`` are skipped. Writes
``benchmarks/results/balancing_time.csv`` and ``.json``.

    python benchmarks/balancing_time.py                                  # the full grid
    python benchmarks/balancing_time.py --methods mean mgda --tasks 2 10 --dims 1e4 1e5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import write_results

from strategies.balancing import WEIGHTINGS, build_weighting
from strategies.balancing.linalg import gramian

RESULTS = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_cell(methods: list[str], tasks: int, dim: int, repeats: int) -> list[dict[str, Any]]:
    """One row per method for a random float32 J of ``tasks`` x ``dim``."""
    J = torch.randn(tasks, dim, generator=torch.Generator().manual_seed(tasks * 7 + dim))
    losses = torch.linspace(1.0, 2.0, tasks)
    gramian_s = median_time(lambda: gramian(J), repeats)
    rows = []
    for name in methods:
        weighting = build_weighting(name)
        weighting(J[:, :1000], losses=losses)  # warm-up: imports, solver set-up
        seconds = median_time(lambda w=weighting: w(J, losses=losses), repeats)  # type: ignore[misc]
        rows.append(
            {
                "method": name,
                "tasks": tasks,
                "dim": dim,
                "repeats": repeats,
                "call_s": round(seconds, 5),
                "gramian_s": round(gramian_s, 5) if weighting.uses_gramian else 0.0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=WEIGHTINGS.names())
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 5, 10, 20, 40])
    parser.add_argument("--dims", nargs="+", type=float, default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=2.0, help="skip cells whose J is larger")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    skipped = []
    for dim in (int(d) for d in args.dims):
        for tasks in args.tasks:
            if tasks * dim * 4 > args.max_gb * 1e9:
                skipped.append({"tasks": tasks, "dim": dim})
                print(f"skip T={tasks} d={dim}: J is over {args.max_gb} GB", flush=True)
                continue
            rows.extend(measure_cell(args.methods, tasks, dim, args.repeats))
    write_results(args.out, "balancing_time", rows, skipped=skipped)


if __name__ == "__main__":
    main()
