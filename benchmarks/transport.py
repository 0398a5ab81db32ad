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
from pathlib import Path

from _common import write_results
from _variants import variant_rows

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "float16", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    def base(seed: int) -> list[str]:
        return [
            "tracking.plots=false",
            f"seed={seed}",
            f"num_rounds={args.rounds}",
            *args.overrides,
        ]

    variants = {dtype: [f"strategy.update_dtype={dtype}"] for dtype in DTYPES}
    rows = variant_rows("update_dtype", variants, args.seeds, base)
    write_results(args.out, "transport", rows, command_args=vars(args) | {"out": None})


if __name__ == "__main__":
    main()
