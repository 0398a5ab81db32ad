"""Compressed updates: bytes up and final metrics of UPGrad uncompressed, with top-k at 0.1 and
with QSGD (127 levels), both with error feedback.

A small synthetic experiment in process (8 silos, 4 tasks, 20 rounds: about a minute of one core
per seed), each variant for each seed; one row per (variant, seed) in
``benchmarks/results/compression.csv`` and ``.json``: bytes up and down, each task's final primary
metric, the bytes up relative to the uncompressed run of the same seed and the largest change of
a final metric from it.

    python benchmarks/compression.py                  # seeds 0 and 1
    python benchmarks/compression.py --seeds 0 --rounds 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import write_results
from _variants import variant_rows

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENT = [
    "strategy=upgrad",
    "dataset=synthetic",
    "dataset.num_samples=2000",
    "dataset.num_tasks=4",
    "dataset.num_groups=2",
    "partition.num_silos=8",
    "tracking.plots=false",
]
VARIANTS = {
    "none": [],
    "topk_0.1": ["strategy.compression=topk", "strategy.compression_ratio=0.1"],
    "qsgd_127": ["strategy.compression=qsgd", "strategy.qsgd_levels=127"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    def base(seed: int) -> list[str]:
        return [*EXPERIMENT, f"seed={seed}", f"num_rounds={args.rounds}"]

    rows = variant_rows("compression", VARIANTS, args.seeds, base)
    write_results(args.out, "compression", rows, command_args=vars(args) | {"out": None})


if __name__ == "__main__":
    main()
