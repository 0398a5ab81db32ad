"""Round time and peak memory against the number of registered silos, with a fixed sample.

Each (runtime, silos) runs ``fedmtl run`` once in a fresh process (``benchmarks/_timed_run.py``)
on the ``synthetic`` dataset with ``--rows`` training rows per silo (so the dataset grows with the
silos and a silo's work does not change), ``--sampled`` silos trained and evaluated per round,
and records: start-up (to the end of round 1, less a typical round: experiment set-up, discovery
of every silo, round 1's warm-ups), the first round, the median of the later rounds, and the process's peak resident memory, with the memory
per registered silo above the smallest run. Writes ``benchmarks/results/scale.csv`` and ``.json``
(with the load average at the start).

    python benchmarks/scale.py                                   # 100 .. 10,000 silos
    python benchmarks/scale.py --silos 100 1000 --runtimes inprocess --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _common import quiet_machine_note, run_json, synthetic_run, write_results
from _timed_run import startup
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def overrides(runtime: str, silos: int, sampled: int, rows: int, rounds: int) -> list[str]:
    """A synthetic run with ``silos`` registered silos of ``rows`` training rows each, sampling
    ``sampled`` of them (fraction 1e-4 rounds up to one; the minimum then decides)."""
    return [
        *synthetic_run(runtime, silos, rows, rounds),
        "strategy.fraction_train=0.0001",
        f"strategy.min_train_nodes={sampled}",
        "strategy.fraction_evaluate=0.0001",
        f"strategy.min_evaluate_nodes={sampled}",
    ]


def measure(runtime: str, silos: int, sampled: int, rows: int, rounds: int) -> dict[str, Any]:
    args = overrides(runtime, silos, sampled, rows, rounds)
    result = run_json([str(HERE / "_timed_run.py"), json.dumps(args)])
    seconds = result["rounds_s"]
    typical = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "runtime": runtime,
        "silos": silos,
        "sampled": sampled,
        "rows_per_silo": rows,
        "rounds": rounds,
        "startup_s": round(startup(result, typical), 3),
        "first_round_s": round(seconds[0], 4),
        "median_later_round_s": round(statistics.median(seconds[1:]), 4)
        if len(seconds) > 1
        else None,
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "load_avg_end": round(result["load_avg"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["inprocess", "vectorized"])
    parser.add_argument("--silos", nargs="+", type=int, default=[100, 1000, 10000])
    parser.add_argument("--sampled", type=int, default=10)
    parser.add_argument("--rows", type=int, default=48, help="training rows per silo")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    note = quiet_machine_note()
    cells = [(r, s) for r in args.runtimes for s in args.silos]
    rows: list[dict[str, Any]] = []
    for runtime, silos in tqdm(cells, desc="runs", unit="run"):
        row = measure(runtime, silos, args.sampled, args.rows, args.rounds)
        smallest = next((r for r in rows if r["runtime"] == runtime), None)
        if smallest is not None and silos > smallest["silos"]:
            extra_mb = row["peak_rss_mb"] - smallest["peak_rss_mb"]
            row["kb_per_extra_silo"] = round(extra_mb * 1024 / (silos - smallest["silos"]), 2)
        else:
            row["kb_per_extra_silo"] = None
        tqdm.write(json.dumps(row))
        rows.append(row)
    write_results(args.out, "scale", rows, **note, command_args=vars(args) | {"out": None})


if __name__ == "__main__":
    main()
