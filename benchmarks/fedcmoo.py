"""FedCMOO's claim, checked small: a comparable Delta_MTL at a fraction of the bytes of per-task
uploads (Askin et al., AISTATS 2025), against FedAvg, UPGrad (per-task uploads) and FedMGDA+.

Setting: ``synthetic`` data (6 tasks in 3 planted groups, the default MLP), ``partition=iid_all``
(every silo labels every task, so UPGrad's silos send 6 trunk shares each), ``--silos`` silos,
``--rounds`` rounds, in process, each seed in ``--seeds``. For every variant and seed: Delta_MTL
against ``single_task`` on the same seed (:func:`fedmtl.app.bench.stats.summary_delta`, pooled
over the silos' test splits, in percent), the bytes sent up over the run and their ratio to
UPGrad's and FedAvg's. Variants: ``fedcmoo`` (randomised-SVD sketch, budget 1: about one trunk's
floats), ``fedcmoo_topk`` (top-k, budget 1) and ``fedcmoo_exact`` (``sketch=none``: the
exact per-task gradients, 6 trunks' floats, which isolates what compression costs). Writes
``benchmarks/results/fedcmoo.csv`` and ``.json``: one row per variant and seed, and one per
variant with the mean over seeds (``seed: mean``).

    python benchmarks/fedcmoo.py                          # 2 seeds, 20 rounds, 8 silos (~2 min)
    python benchmarks/fedcmoo.py --seeds 0 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import write_results

from fedmtl.app.bench.stats import summary_delta
from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse
from fedmtl.app.runtimes import set_offline_env

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, list[str]] = {
    "fedavg": ["strategy=fedavg"],
    "upgrad": ["strategy=upgrad"],
    "fedcmoo": ["strategy=fedcmoo"],
    "fedcmoo_topk": ["strategy=fedcmoo", "strategy.sketch=topk"],
    "fedcmoo_exact": ["strategy=fedcmoo", "strategy.sketch=none"],
    "fedmgda_plus": ["strategy=fedmgda_plus"],
}
REFERENCE = ["strategy=single_task"]


def run_one(overrides: list[str], seed: int, args: argparse.Namespace, out: Path) -> Any:
    setting = [
        "dataset=synthetic",
        f"dataset.num_samples={300 * args.silos}",
        "partition=iid_all",
        f"partition.num_silos={args.silos}",
        f"num_rounds={args.rounds}",
        f"seed={seed}",
        "runtime=inprocess",
        "tracking=quiet",
        "tracking.plots=false",
        "strategy.evaluate_every=1000",  # the last round only
    ]
    started = time.perf_counter()
    summary = run(parse(compose([*setting, *overrides], out)))
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silos", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            reference, _ = run_one(REFERENCE, seed, args, Path(tmp) / f"reference-{seed}")
            found = {}
            for name, overrides in VARIANTS.items():
                summary, seconds = run_one(overrides, seed, args, Path(tmp) / f"{name}-{seed}")
                assert summary["status"] == "completed", (name, seed, summary["status"])
                delta = summary_delta(summary, reference).value
                found[name] = (summary["bytes_up"], delta, seconds)
            for name, (bytes_up, delta, seconds) in found.items():
                rows.append(
                    {
                        "strategy": name,
                        "seed": seed,
                        "rounds": args.rounds,
                        "delta_mtl_pct": round(delta, 2) if delta is not None else None,
                        "bytes_up": bytes_up,
                        "bytes_up_vs_upgrad": round(bytes_up / found["upgrad"][0], 3),
                        "bytes_up_vs_fedavg": round(bytes_up / found["fedavg"][0], 3),
                        "wall_s": round(seconds, 1),
                    }
                )
    for name in VARIANTS:
        mine = [r for r in rows if r["strategy"] == name]
        rows.append(
            {
                "strategy": name,
                "seed": "mean",
                "rounds": args.rounds,
                **{
                    key: round(statistics.fmean(r[key] for r in mine), 3 if "vs" in key else 2)
                    for key in ("delta_mtl_pct", "bytes_up", "bytes_up_vs_upgrad")
                },
                "bytes_up_vs_fedavg": round(
                    statistics.fmean(r["bytes_up_vs_fedavg"] for r in mine), 3
                ),
                "wall_s": round(statistics.fmean(r["wall_s"] for r in mine), 1),
            }
        )
    write_results(
        args.out,
        "fedcmoo",
        rows,
        setting={"dataset": "synthetic", "partition": "iid_all", "silos": args.silos},
        reference="single_task",
    )


if __name__ == "__main__":
    main()
