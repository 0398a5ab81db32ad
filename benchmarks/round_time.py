"""Wall time per federated round against the number of silos, for each runtime.

Runs the default experiment (digits, random 2 of 5 tasks per silo, task-aware FedAvg) with result
files only, and writes one row per (runtime, silos) to ``benchmarks/results/round_time.csv`` and
``.json``: the server's wall time, the start-up before round 1 (silo discovery, which on
``simulation`` includes starting Ray's actors), the first round, the median of the later rounds,
and the bytes sent each way.

    python benchmarks/round_time.py                          # 4, 12 and 32 silos, both runtimes
    python benchmarks/round_time.py --runtimes inprocess --silos 8 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def measure(runtime: str, num_silos: int, num_rounds: int, workdir: Path) -> dict[str, Any]:
    """Run ``fedmtl run`` once in a fresh process and read its result files."""
    out = workdir / f"{runtime}-{num_silos}"
    command = [
        sys.executable, "-m", "fedmtl.app.cli", "run",
        f"runtime={runtime}", "tracking=quiet", f"num_rounds={num_rounds}",
        f"partition.num_silos={num_silos}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if r["split"] == "train"]
    return {
        "runtime": runtime,
        "silos": num_silos,
        "rounds": num_rounds,
        "wall_time_s": round(summary["wall_time_s"], 3),
        "startup_s": round(summary["wall_time_s"] - sum(seconds), 3),
        "first_round_s": round(seconds[0], 3),
        "median_later_round_s": round(statistics.median(seconds[1:]), 3)
        if len(seconds) > 1
        else None,
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["inprocess", "simulation"])
    parser.add_argument("--silos", nargs="+", type=int, default=[4, 12, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for runtime in args.runtimes:
            for num_silos in args.silos:
                row = measure(runtime, num_silos, args.rounds, Path(workdir))
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_results(args.out, "round_time", rows)


if __name__ == "__main__":
    main()
