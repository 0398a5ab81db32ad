"""Torch's intra-op threads per silo (``runtime.num_threads``) against the default experiment's
wall time, on an idle machine and beside busy processes.

For every number of busy processes in ``--busy`` (each a Python loop spinning one core, started
before and ended by process id after the measurements: another user's job on a shared machine),
every runtime in ``--runtimes`` and every thread count in ``--threads``, the default experiment
(digits, 12 silos holding 2 of 5 tasks each, FedAvg, the MLP) runs ``--rounds`` rounds in a fresh
process (``benchmarks/_timed_run.py``), ``--repeats`` times. A row holds the whole run's seconds
(after imports), the median round, the end of round 1 (start-up included) and the final mean
accuracy, which must not depend on the thread count beyond rounding.

Writes ``benchmarks/results/threads.csv`` (one row per busy count, runtime, threads and repeat)
and ``.json`` (also the load average at the start and, per busy count and runtime, the fastest
thread count by median run time).

    python benchmarks/threads.py                                  # busy 0 and 2; 1, 2 threads
    python benchmarks/threads.py --runtimes inprocess --threads 1 2 4 --busy 0 --rounds 5

Run it with nothing else busy: the idle rows are only idle on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import quiet_machine_note, run_json, write_results
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SPIN = """
import os
parent = os.getppid()
while os.getppid() == parent:  # ends with this script, however it ends
    for _ in range(1_000_000):
        pass
"""


@contextmanager
def busy_processes(count: int) -> Iterator[list[int]]:
    """``count`` processes spinning one core each, ended (by id) when the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield [p.pid for p in spinners]
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=30)


def measure(runtime: str, threads: int, rounds: int) -> dict[str, Any]:
    """One default experiment on ``runtime`` with ``threads`` torch threads per silo."""
    overrides = [
        f"runtime={runtime}",
        f"runtime.num_threads={threads}",
        f"num_rounds={rounds}",
        "tracking=quiet",
        "tracking.plots=false",
    ]
    result = run_json([str(HERE / "_timed_run.py"), json.dumps(overrides)])
    accuracies = [
        metrics["accuracy"] for metrics in result["final"].values() if "accuracy" in metrics
    ]
    return {
        "run_s": round(result["run_s"], 2),
        "round_s": round(statistics.median(result["rounds_s"]), 3),
        "first_round_end_s": round(result["first_round_end_s"], 2),
        "mean_accuracy": round(statistics.fmean(accuracies), 4),
        "load_avg_end": round(result["load_avg"], 2),
    }


def fastest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per busy count and runtime: the thread count with the lowest median run time."""
    best: list[dict[str, Any]] = []
    cells = sorted({(r["busy"], r["runtime"]) for r in rows})
    for busy, runtime in cells:
        times = {
            threads: statistics.median(
                r["run_s"]
                for r in rows
                if (r["busy"], r["runtime"], r["threads"]) == (busy, runtime, threads)
            )
            for threads in sorted({r["threads"] for r in rows})
        }
        winner = min(times, key=times.__getitem__)
        best.append({"busy": busy, "runtime": runtime, "threads": winner, "run_s": times})
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["inprocess", "vectorized", "simulation"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--busy", nargs="+", type=int, default=[0, os.cpu_count() or 1])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    note = quiet_machine_note()
    cells = [
        (busy, runtime, threads, repeat)
        for busy in args.busy
        for repeat in range(args.repeats)
        for runtime in args.runtimes
        for threads in args.threads
    ]
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(cells), desc="threads") as bar:
        for busy in args.busy:
            with busy_processes(busy):
                for _, runtime, threads, repeat in [c for c in cells if c[0] == busy]:
                    bar.set_postfix(busy=busy, runtime=runtime, threads=threads)
                    row = {"busy": busy, "runtime": runtime, "threads": threads, "repeat": repeat}
                    rows.append({**row, **measure(runtime, threads, args.rounds)})
                    bar.update()
    write_results(
        args.out,
        "threads",
        rows,
        **note,
        rounds=args.rounds,
        fastest=fastest(rows),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
    )


if __name__ == "__main__":
    main()
