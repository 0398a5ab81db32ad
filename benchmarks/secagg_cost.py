"""What SecAgg+ costs: bytes and time per round against plain aggregation, at 10 and 100 silos.

Runs FedAvg on ``synthetic`` data (every silo 48 training rows of 2 of the 6 tasks, the default
MLP), in process, ``--rounds`` rounds with ``privacy=none`` and ``privacy=secagg`` at each number of
silos, and writes one row per (silos, mode) to ``benchmarks/results/secagg_cost.csv`` and ``.json``:
bytes up and down per round, the median round's seconds (rounds 2 onwards), and the ratios to the
plain run. SecAgg+'s extra bytes are its key exchange (quadratic in the silos with
``num_shares: 1.0``), the masked vector (4 bytes per value and count, all tasks' slots) and the
unmasking shares; its extra time is the key agreement, Shamir sharing and the masks.

Flower's Shamir sharing (pycryptodome, in Python) makes every silo's share of the key exchange
O(neighbours x threshold): with every silo a neighbour (``num_shares: 1.0``) 100 silos take many
minutes per round on one core, so ``--num-shares`` sets SecAgg+'s neighbourhood per number of
silos (SecAgg+'s sparse graph; the threshold stays half of it).

    python benchmarks/secagg_cost.py --silos 10 100 --num-shares 1.0 0.1 --rounds 3
    python benchmarks/secagg_cost.py --silos 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import write_results

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse

RESULTS = Path(__file__).resolve().parent / "results"


def measure(silos: int, mode: str, rounds: int, num_shares: float = 1.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "runtime=inprocess", "tracking=quiet", "tracking.plots=false", "dataset=synthetic",
            f"dataset.num_samples={64 * silos}", f"partition.num_silos={silos}",
            "partition.assignment.k=2", f"num_rounds={rounds}", f"privacy={mode}",
            "strategy.evaluate_every=1000", "train.local_epochs=1",
            *([f"privacy.num_shares={num_shares}"] if mode != "none" else []),
        ]  # fmt: skip
        summary = run(parse(compose(overrides, out)))
        lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    return {
        "silos": silos,
        "privacy": mode,
        "num_shares": num_shares if mode != "none" else None,
        "rounds": rounds,
        "bytes_up_per_round": round(statistics.mean(r["bytes_up"] for r in train)),
        "bytes_down_per_round": round(statistics.mean(r["bytes_down"] for r in train)),
        "round_s": round(statistics.median(r["seconds"] for r in train[1:] or train), 3),
        "status": summary["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--num-shares", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    shares = args.num_shares + [args.num_shares[-1]] * (len(args.silos) - len(args.num_shares))
    for silos, num_shares in zip(args.silos, shares, strict=False):
        plain = measure(silos, "none", args.rounds)
        secure = measure(silos, "secagg", args.rounds, num_shares)
        for row in (plain, secure):
            row["bytes_up_ratio"] = round(
                row["bytes_up_per_round"] / plain["bytes_up_per_round"], 2
            )
            row["bytes_down_ratio"] = round(
                row["bytes_down_per_round"] / plain["bytes_down_per_round"], 2
            )
            row["time_ratio"] = round(row["round_s"] / plain["round_s"], 2)
            rows.append(row)
            print(row, flush=True)
    used = shares[: len(args.silos)]
    command = " ".join(
        ["python benchmarks/secagg_cost.py", "--silos", *map(str, args.silos), "--num-shares"]
    )
    command += " " + " ".join([*map(str, used), "--rounds", str(args.rounds)])
    write_results(args.out, "secagg_cost", rows, command=command)


if __name__ == "__main__":
    main()
