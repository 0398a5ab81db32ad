"""Federated task grouping on synthetic tasks with planted groups: found groups and their accuracy.

Setting: ``experiment=synthetic_groups`` (6 tasks in 3 planted groups of 2 whose features are
independent, so the groups compete for the preset's narrow [32, 4] trunk; 12 silos, each holding
one planted pair and one task of another group, so every pair of tasks is measured) for each seed
in ``--seeds``. For every affinity estimator in ``--affinities`` it runs ``strategy=grouping``
(``--warmup`` rounds of one shared trunk, then one trunk per group, ``--rounds`` in all) and
records:

- the groups found and their adjusted Rand index (ARI) against ``planted_groups`` (1: identical,
  about 0: no better than a random grouping of the same sizes);
- references (``--references``) trained after the same warm-up: ``all_in_one`` (one shared trunk:
  ``fedavg``, always run), ``planted`` (the planted groups given as ``strategy.groups``, no
  measurement), ``crossed`` (as many groups of the same sizes, the tasks dealt round-robin so that
  every group mixes planted groups: {t0,t3} {t1,t4} {t2,t5}) and ``singletons`` (one trunk per
  task, twice the trunks);
- the multi-task gain over the all-in-one model on the same seed (the paired gain),
  (1/T) sum_t s_t (M_t - B_t) / |B_t| in percent (as in ``compare_balancing.py``);
- bytes sent up and down, and the wall time.

Per estimator and reference it prints and records (``summary`` in the JSON) the ARI on each seed,
whether it is 1 on every seed, the mean paired gain with its sample standard deviation over the
seeds, and the paired difference to the planted groups (mean, standard deviation, seeds above).
Writes ``<name>.csv`` / ``.json`` (one row per run) and ``<name>.png`` (ARI and gain per estimator
and reference, mean and standard deviation over seeds).

    python benchmarks/compare_grouping.py                                  # 5 seeds, 30 rounds
    python benchmarks/compare_grouping.py --affinities tag --seeds 0 --rounds 8 --warmup 4
    python benchmarks/compare_grouping.py --overrides dataset.conflict=0.5 --name g_conflict05
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from _common import write_results
from compare_balancing import gain_percent, run_one
from sklearn.metrics import adjusted_rand_score

from fedmtl.app.runtimes import set_offline_env

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCES = ("planted", "crossed", "singletons")


def adjusted_rand(found: list[list[str]], planted: list[list[str]]) -> float:
    """ARI between two partitions of the same tasks (scikit-learn's ``adjusted_rand_score``)."""
    tasks = sorted(t for group in planted for t in group)
    label = {t: g for g, group in enumerate(planted) for t in group}
    found_label = {t: g for g, group in enumerate(found) for t in group}
    return float(adjusted_rand_score([label[t] for t in tasks], [found_label[t] for t in tasks]))


def reference_groups(name: str, planted: list[list[str]]) -> list[list[str]]:
    """The groups of reference ``name``: ``planted``, ``crossed`` (the planted tasks dealt
    round-robin into as many groups, so that each group mixes planted groups) or ``singletons``."""
    tasks = [t for group in planted for t in group]
    if name == "planted":
        return planted
    if name == "crossed":
        return [tasks[g :: len(planted)] for g in range(len(planted))]
    if name == "singletons":
        return [[t] for t in tasks]
    raise ValueError(f"unknown reference {name!r}; choose from {REFERENCES}")


def std(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per estimator or reference: ARI per seed, whether it is 1 on every seed, the mean paired
    gain over one shared trunk with its sample standard deviation over the seeds and, when the
    planted groups ran, the paired difference to them (gain minus the planted gain, per seed)."""
    planted = {r["seed"]: r["gain_vs_all_in_one_pct"] for r in rows if r["affinity"] == "planted"}
    summary = []
    for name in dict.fromkeys(r["affinity"] for r in rows):
        mine = [r for r in rows if r["affinity"] == name]
        gains = [r["gain_vs_all_in_one_pct"] for r in mine]
        mean, spread = statistics.fmean(gains), std(gains)
        entry = {
            "affinity": name,
            "seeds": [r["seed"] for r in mine],
            "ari": [r["ari"] for r in mine],
            "ari_is_1_on_every_seed": all(r["ari"] == 1.0 for r in mine),
            "gain_mean_pct": round(mean, 3),
            "gain_std_pct": round(spread, 3),
            "gain_at_least_twice_std": mean > 0 and mean >= 2 * spread,
        }
        if planted and all(r["seed"] in planted for r in mine):
            minus = [r["gain_vs_all_in_one_pct"] - planted[r["seed"]] for r in mine]
            entry["minus_planted_mean_pct"] = round(statistics.fmean(minus), 3)
            entry["minus_planted_std_pct"] = round(std(minus), 3)
            entry["seeds_above_planted"] = sum(m > 0 for m in minus)
        summary.append(entry)
    return summary


def print_summary(summary: list[dict[str, Any]]) -> None:
    print(
        f"{'groups':<18} {'ARI per seed':<32} {'ARI=1 all':<10} {'gain over one trunk (%)':<34}"
        " minus planted (points)"
    )
    for s in summary:
        aris = " ".join(f"{a:.2f}" for a in s["ari"])
        gain = f"{s['gain_mean_pct']:+.2f} +- {s['gain_std_pct']:.2f}" + (
            " (mean >= 2 std)" if s["gain_at_least_twice_std"] else ""
        )
        minus = ""
        if "minus_planted_mean_pct" in s:
            minus = (
                f"{s['minus_planted_mean_pct']:+.2f} +- {s['minus_planted_std_pct']:.2f}, "
                f"above on {s['seeds_above_planted']} of {len(s['seeds'])} seeds"
            )
        print(
            f"{s['affinity']:<18} {aris:<32} {s['ari_is_1_on_every_seed']!s:<10} {gain:<34} {minus}"
        )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    matplotlib.use("Agg")

    names = [n for n in dict.fromkeys(r["affinity"] for r in rows) if n != "all_in_one"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2))
    for axis, column, label in (
        (axes[0], "ari", "adjusted Rand index vs planted groups"),
        (axes[1], "gain_vs_all_in_one_pct", "paired gain over one shared trunk (%)"),
    ):
        values = [[r[column] for r in rows if r["affinity"] == n] for n in names]
        means = [statistics.fmean(v) for v in values]
        spreads = [std(v) for v in values]
        colors = ["tab:gray" if n in REFERENCES else "tab:blue" for n in names]
        axis.barh(names, means, xerr=spreads, color=colors)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_xlabel(label)
        axis.invert_yaxis()
    figure.suptitle(
        "Task grouping on synthetic planted groups (grey: given groups; mean +/- std over seeds)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--affinities", nargs="+", default=["transfer_gain", "tag", "update_similarity"]
    )
    parser.add_argument(
        "--references",
        nargs="*",
        default=list(REFERENCES),
        choices=REFERENCES,
        help="given groupings trained as references (all_in_one always runs)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--grouping-overrides", nargs="*", default=[], help="for grouping only")
    parser.add_argument("--name", default="compare_grouping", help="stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()
    started = time.perf_counter()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            baseline = run_one("fedavg", seed, args.rounds, 1.0, args.overrides, workdir)
            planted = baseline["summary"]["dataset_info"]["planted_groups"]
            for affinity in ["all_in_one", *args.references, *args.affinities]:
                if affinity == "all_in_one":
                    result, groups = baseline, [sorted(t for g in planted for t in g)]
                else:
                    if affinity in REFERENCES:
                        given = reference_groups(affinity, planted)
                        chosen = "groups=[" + ",".join(f"[{','.join(g)}]" for g in given) + "]"
                    else:
                        chosen = f"affinity={affinity}"
                    extra = [
                        *args.overrides,
                        f"strategy.{chosen}",
                        f"strategy.warmup_rounds={args.warmup}",
                        *args.grouping_overrides,
                    ]
                    result = run_one("grouping", seed, args.rounds, 1.0, extra, workdir / affinity)
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
    summary = summarize(rows)
    print_summary(summary)
    setting = {
        "experiment": "synthetic_groups",
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "seeds": args.seeds,
        "references": args.references,
        "overrides": args.overrides,
        "grouping_overrides": args.grouping_overrides,
        "total_wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, args.name, rows, setting=setting, summary=summary)
    plot(rows, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
