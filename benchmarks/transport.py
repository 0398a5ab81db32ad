"""Updates sent in float16 or bfloat16: bytes up and the effect on final metrics.

Runs the default experiment (digits, 12 silos x 2 of 5 tasks, FedAvg, 25 rounds) in-process with
``strategy.update_dtype`` float32, float16 and bfloat16 for each seed, and writes one row per
(dtype, seed) to ``benchmarks/results/transport.csv`` and ``.json``: bytes up and down, and each
task's final primary metric with its difference from the float32 run of the same seed.

    python benchmarks/transport.py                            # 3 seeds
    python benchmarks/transport.py --seeds 0 --rounds 5 --overrides dataset=synthetic
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import write_results
from tqdm import tqdm

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "float16", "bfloat16")


def measure(dtype: str, seed: int, rounds: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "runtime=inprocess", "tracking=quiet", "tracking.plots=false", f"seed={seed}",
            f"num_rounds={rounds}", f"strategy.update_dtype={dtype}", *extra,
        ]  # fmt: skip
        summary = run(parse(compose(overrides, out)))
    row: dict[str, Any] = {
        "update_dtype": dtype,
        "seed": seed,
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
    }
    for task in summary["tasks"]:
        metric = summary["task_info"][task]["primary_metric"]
        row[f"{task}_{metric}"] = round(summary["final"][task][metric], 5)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    cells = [(seed, dtype) for seed in args.seeds for dtype in DTYPES]
    for seed, dtype in tqdm(cells, desc="runs", unit="run"):
        row = measure(dtype, seed, args.rounds, args.overrides)
        full = next((r for r in rows if r["seed"] == seed and r["update_dtype"] == "float32"), row)
        metrics = [k for k in row if k not in ("update_dtype", "seed", "bytes_up", "bytes_down")]
        row["bytes_up_vs_float32"] = round(row["bytes_up"] / full["bytes_up"], 4)
        row["max_abs_metric_change"] = round(max(abs(row[k] - full[k]) for k in metrics), 5)
        tqdm.write(json.dumps(row))
        rows.append(row)
    write_results(args.out, "transport", rows, command_args=vars(args) | {"out": None})


if __name__ == "__main__":
    main()
