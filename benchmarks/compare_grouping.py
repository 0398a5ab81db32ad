"""Federated task grouping on synthetic tasks with planted groups: found groups and their accuracy.

Setting: ``experiment=synthetic_groups`` (6 tasks in 3 planted groups, groups 0 and 1 conflicting;
12 silos holding 3 random tasks each) for each seed in ``--seeds``. For every affinity estimator in
``--affinities`` it runs ``strategy=grouping`` (``--warmup`` rounds of one shared trunk, then one
trunk per group, ``--rounds`` in all) and records:

- the groups found and their adjusted Rand index (ARI) against ``planted_groups`` (1: identical,
  about 0: no better than a random grouping of the same sizes);
- as references, one shared trunk (``all_in_one``: ``fedavg``) and the planted groups given to the
  strategy (``planted``: ``strategy.groups``, no measurement) after the same warm-up;
- the multi-task gain over the all-in-one model (``fedavg``, one shared trunk) on the same seed,
  (1/T) sum_t s_t (M_t - B_t) / |B_t| in percent (as in ``compare_balancing.py``);
- bytes sent up and down, and the wall time.

Writes ``<name>.csv`` / ``.json`` (one row per estimator and seed, plus the ``fedavg`` rows) and
``<name>.png`` (ARI and gain per estimator, mean and spread over seeds).

    python benchmarks/compare_grouping.py                                  # 3 seeds, 30 rounds
    python benchmarks/compare_grouping.py --affinities tag --seeds 0 --rounds 8 --warmup 4
    python benchmarks/compare_grouping.py --overrides dataset.conflicting=false --name g_noconf
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from _common import write_results
from compare_balancing import gain_percent, run_one
from sklearn.metrics import adjusted_rand_score

from fedmtl.app.runtime import set_offline_env

RESULTS = Path(__file__).resolve().parent / "results"


def adjusted_rand(found: list[list[str]], planted: list[list[str]]) -> float:
    """ARI between two partitions of the same tasks (scikit-learn's ``adjusted_rand_score``)."""
    tasks = sorted(t for group in planted for t in group)
    label = {t: g for g, group in enumerate(planted) for t in group}
    found_label = {t: g for g, group in enumerate(found) for t in group}
    return float(adjusted_rand_score([label[t] for t in tasks], [found_label[t] for t in tasks]))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    matplotlib.use("Agg")

    names = sorted({r["affinity"] for r in rows if r["strategy"] == "grouping"})
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2))
    for axis, column, label in (
        (axes[0], "ari", "adjusted Rand index vs planted groups"),
        (axes[1], "gain_vs_all_in_one_pct", "gain over one shared trunk (%)"),
    ):
        values = [[r[column] for r in rows if r["affinity"] == n] for n in names]
        means = [statistics.fmean(v) for v in values]
        spreads = [statistics.pstdev(v) for v in values]
        axis.barh(names, means, xerr=spreads, color="tab:blue")
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_xlabel(label)
    figure.suptitle("Federated task grouping on synthetic planted groups (mean +/- std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--affinities", nargs="+", default=["transfer_gain", "tag", "update_similarity"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--grouping-overrides", nargs="*", default=[], help="for grouping only")
    parser.add_argument("--name", default="compare_grouping", help="stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            baseline = run_one("fedavg", seed, args.rounds, 1.0, args.overrides, workdir)
            planted = baseline["summary"]["dataset_info"]["planted_groups"]
            given = ",".join("[" + ",".join(g) + "]" for g in planted)
            for affinity in ["all_in_one", "planted", *args.affinities]:
                if affinity == "all_in_one":
                    result, groups = baseline, [sorted(t for g in planted for t in g)]
                else:
                    chosen = (
                        f"groups=[{given}]" if affinity == "planted" else f"affinity={affinity}"
                    )
                    extra = [
                        *args.overrides,
                        f"strategy.{chosen}",
                        f"strategy.warmup_rounds={args.warmup}",
                        *args.grouping_overrides,
                    ]
                    result = run_one("grouping", seed, args.rounds, 1.0, extra, workdir)
                    groups = result["summary"]["groups"]
                summary = result["summary"]
                row = {
                    "strategy": "fedavg" if affinity == "all_in_one" else "grouping",
                    "affinity": affinity,
                    "seed": seed,
                    "groups": " | ".join(",".join(g) for g in groups),
                    "ari": round(adjusted_rand(groups, planted), 4),
                    "gain_vs_all_in_one_pct": round(gain_percent(result, baseline), 3),
                    **{f"final_{t}": round(v, 4) for t, v in result["metrics"].items()},
                    "objective": (summary.get("grouping") or {}).get("objective"),
                    "bytes_up": result["bytes_up"],
                    "bytes_down": summary["bytes_down"],
                    "wall_time_s": round(result["wall_time_s"], 2),
                }
                print(row, flush=True)
                rows.append(row)
    setting = {
        "experiment": "synthetic_groups",
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "grouping_overrides": args.grouping_overrides,
    }
    write_results(args.out, args.name, rows, setting=setting)
    plot(rows, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
