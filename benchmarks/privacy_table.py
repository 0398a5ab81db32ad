"""The privacy block of every run of a privacy bench: one row per run (scenario, strategy, seed)
with its status, mode, epsilon at delta, noise multiplier and clipping norm, from each run's
``summary.json``; written beside the suite's report.

    python benchmarks/privacy_table.py runs/privacy_tv16 benchmarks/results/privacy_tv16/privacy.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any


def rows(runs: Path) -> list[dict[str, Any]]:
    out = []
    for summary in sorted(runs.glob("runs/*/*/seed*/summary.json")):
        seed_dir = summary.parent
        data = json.loads(summary.read_text())
        privacy = data.get("privacy", {})
        per_silo = privacy.get("rounds_per_silo") or {}
        out.append(
            {
                "scenario": seed_dir.parent.parent.name,
                "strategy": seed_dir.parent.name,
                "seed": seed_dir.name.removeprefix("seed"),
                "status": data["status"],
                "mode": privacy.get("mode"),
                "epsilon": privacy.get("epsilon"),
                "delta": privacy.get("delta"),
                "noise_multiplier": privacy.get("noise_multiplier"),
                "clip_norm": privacy.get("clip_norm"),
                "rounds": max(map(int, per_silo.values())) if per_silo else data.get("rounds"),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the bench's --out directory")
    parser.add_argument("out", type=Path, help="the CSV to write")
    args = parser.parse_args()
    table = rows(args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"wrote {args.out} ({len(table)} runs)")


if __name__ == "__main__":
    main()
