"""Robust aggregation under attack: every defence against every fault, on digits and a real preset.

For each setting (``--settings``: ``digits``, the default experiment with 10 silos each labelling
2 of the 5 tasks; ``tv16_states``, CCES 2016 with one silo per state, 51), each defence
(``--defences``), each fault (``--faults``, :mod:`fedmtl.faults`) and each share of faulty silos
(``--fractions``: floor(fraction x silos) silos, drawn from the seed), one in-process run of
``--rounds`` rounds records the run's ``status``, each task's final primary metric (pooled over
the silos' test rows), its margin over the task's chance level, the faulty silos, the suspect
rounds and the groups whose robust rule the declared faulty silos could take over. One run per
defence without faults (``fault=none``) is the clean reference.

Defences (every run declares ``strategy.max_faulty`` = the number of faulty silos F, at least 1,
so that ``robust_warnings`` reports the groups that F attackers can take over):

- ``none``: the example-weighted mean;
- ``clip``: ``strategy.norm_bound=2`` (updates clipped to twice the round's median norm);
- ``median``: ``strategy.robust=median``;
- ``trimmed``: ``strategy.robust=trimmed_mean`` cutting ``trim_count`` = F updates per side.

A cell's summary figure is the mean over tasks of (final primary metric - chance): 0 is
chance, and a ``diverged`` run's figure is that of its last (suspect) evaluation. Writes
``<name>.csv`` / ``.json`` (one row per run; the JSON also holds each run's per-task metrics,
chance levels, divergence record and warnings) and ``<name>.png`` (a grid per setting).

    python benchmarks/faults.py     # the committed grid: 128 runs of 6 rounds, ~22 min on 1 core
    python benchmarks/faults.py --settings digits --faults scale --fractions 0.3 --rounds 4
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from _common import write_results
from tqdm import tqdm

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import prepare
from fedmtl.app.runtimes import set_offline_env
from fedmtl.faults import faulty_count

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS: dict[str, list[str]] = {
    "digits": ["partition.num_silos=10"],
    "tv16_states": ["experiment=tv16_states"],
}
"""Setting -> its overrides (the run's rounds, runtime and faults come on top)."""
DEFENCES = ("none", "clip", "median", "trimmed")
FAULTS = ("scale", "sign_flip", "noise", "label_flip", "stale")
FRACTIONS = (0.1, 0.3, 0.49)


def defence_overrides(defence: str, faulty: int) -> list[str]:
    """The overrides of ``defence`` against ``faulty`` declared faulty silos (module docstring)."""
    declared = [f"strategy.max_faulty={max(faulty, 1)}"]
    if defence == "none":
        return declared
    if defence == "clip":
        return [*declared, "strategy.norm_bound=2"]
    if defence == "median":
        return [*declared, "strategy.robust=median"]
    if defence == "trimmed":
        return [*declared, "strategy.robust=trimmed_mean", f"strategy.trim_count={max(faulty, 1)}"]
    raise ValueError(f"unknown defence {defence!r}; choose from {DEFENCES}")


def num_silos(setting: str, workdir: Path) -> int:
    """The silos of a setting's partition (composed and built once)."""
    raw = compose([*SETTINGS[setting], "tracking=quiet"], workdir)
    return prepare(parse(raw)).num_silos


def margins(summary: dict[str, Any]) -> dict[str, float]:
    """Per task, its final primary metric minus its chance level (higher is better for every
    primary metric of these settings: accuracy, R^2)."""
    info = summary["task_info"]
    return {
        task: metrics[info[task]["primary_metric"]] - info[task]["chance"]
        for task, metrics in summary["final"].items()
    }


def one_run(
    setting: str,
    defence: str,
    fault: str,
    fraction: float,
    silos: int,
    rounds: int,
    seed: int,
    runtime: str,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run: its CSV row and its details."""
    faulty = faulty_count(fraction, silos) if fault != "none" else 0
    overrides = [
        *SETTINGS[setting],
        f"runtime={runtime}",
        "tracking=quiet",
        "tracking.plots=false",
        "checkpoint_every=0",
        f"num_rounds={rounds}",
        f"seed={seed}",
        f"fault={fault}",
        *([f"fault.fraction={fraction}"] if fault != "none" else []),
        *defence_overrides(defence, faulty),
    ]
    out = workdir / f"{setting}-{defence}-{fault}-{fraction}"
    started = time.perf_counter()
    summary = run(parse(compose(overrides, out)))
    above = margins(summary)
    finite = [v for v in above.values() if math.isfinite(v)]
    info = summary["task_info"]
    final = {t: m[info[t]["primary_metric"]] for t, m in summary["final"].items()}
    divergence = summary["divergence"]
    row = {
        "setting": setting,
        "defence": defence,
        "fault": fault,
        "fraction": fraction if fault != "none" else 0.0,
        "faulty": faulty,
        "faulty_silos": " ".join(str(s) for s in (summary["fault"] or {}).get("silos", [])),
        "status": summary["status"],
        "rounds": summary["rounds"],
        "final_round": summary["final_round"],
        "last_sound_round": divergence["last_sound_round"],
        "suspect_rounds": len(divergence["suspect_rounds"]),
        "warned_groups": len(summary["robust_warnings"]),
        "mean_over_chance": round(statistics.fmean(finite), 4) if finite else float("nan"),
        "worst_over_chance": round(min(finite), 4) if finite else float("nan"),
        "metrics": " ".join(f"{t}={v:.4g}" for t, v in final.items()),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    details = {
        **{k: row[k] for k in ("setting", "defence", "fault", "fraction", "faulty", "status")},
        "final": final,
        "chance": {t: info[t]["chance"] for t in final},
        "primary_metric": {t: info[t]["primary_metric"] for t in final},
        "divergence": divergence,
        "robust_warnings": summary["robust_warnings"],
        "overrides": overrides,
    }
    return row, details


def cell_text(row: dict[str, Any]) -> str:
    if row["status"] == "completed":
        return f"{row['mean_over_chance']:+.2f}"
    return {"diverged": "div", "too_few_replies": "few"}.get(row["status"], row["status"][:4])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One grid per setting: defences (rows) x fault and share (columns); completed runs coloured
    by their mean margin over chance, other statuses grey and named."""
    matplotlib.use("Agg")
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    figure, axes = plt.subplots(len(settings), 1, figsize=(14, 2.4 * len(settings) + 1.0))
    axes_list = [axes] if len(settings) == 1 else list(axes)
    cmap = plt.get_cmap("RdYlGn")
    for axis, setting in zip(axes_list, settings, strict=True):
        mine = [r for r in rows if r["setting"] == setting]
        defences = list(dict.fromkeys(r["defence"] for r in mine))
        columns = list(dict.fromkeys((r["fault"], r["fraction"]) for r in mine))
        clean = [r["mean_over_chance"] for r in mine if r["fault"] == "none"]
        top = max([*clean, 0.05])
        for i, defence in enumerate(defences):
            for j, column in enumerate(columns):
                found = [
                    r
                    for r in mine
                    if r["defence"] == defence and (r["fault"], r["fraction"]) == column
                ]
                if not found:
                    continue
                row = found[0]
                if row["status"] == "completed":
                    color = cmap(max(0.0, min(1.0, row["mean_over_chance"] / top)))
                else:
                    color = (0.6, 0.6, 0.6, 1.0)
                axis.add_patch(plt.Rectangle((j, i), 1, 1, color=color))
                axis.text(j + 0.5, i + 0.5, cell_text(row), ha="center", va="center", fontsize=7)
        axis.set_xlim(0, len(columns))
        axis.set_ylim(len(defences), 0)
        axis.set_xticks([j + 0.5 for j in range(len(columns))])
        axis.set_xticklabels(
            ["clean" if f == "none" else f"{f}\n{p:.0%}" for f, p in columns], fontsize=7
        )
        axis.set_yticks([i + 0.5 for i in range(len(defences))])
        axis.set_yticklabels(defences)
        axis.set_title(f"{setting}: mean over tasks of (final primary metric - chance)", fontsize=9)
    figure.suptitle("Defences x faults (div: diverged, few: too few valid replies)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=DEFENCES)
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    parser.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", default="inprocess", choices=["inprocess", "vectorized"])
    parser.add_argument("--no-clean", action="store_true", help="skip the fault=none references")
    parser.add_argument("--name", default="faults", help="stem of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()
    logging.getLogger("fedmtl").setLevel(logging.CRITICAL)  # each run's record is its row
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        silos = {s: num_silos(s, workdir / f"silos-{s}") for s in args.settings}
        cells = [
            (setting, defence, fault, fraction)
            for setting in args.settings
            for defence in args.defences
            for fault, fraction in (
                ([] if args.no_clean else [("none", 0.0)])
                + [(f, p) for f in args.faults for p in args.fractions]
            )
        ]
        progress = tqdm(cells, unit="run", dynamic_ncols=True)
        for setting, defence, fault, fraction in progress:
            progress.set_description(f"{setting} {defence} {fault} {fraction:g}")
            row, detail = one_run(
                setting,
                defence,
                fault,
                fraction,
                silos[setting],
                args.rounds,
                args.seed,
                args.runtime,
                workdir,
            )
            progress.write(
                f"{setting:<12} {defence:<8} {fault:<10} {fraction:<5g} F={row['faulty']:<3} "
                f"{row['status']:<16} mean over chance {row['mean_over_chance']:+.3g} "
                f"({row['wall_time_s']} s)"
            )
            rows.append(row)
            details.append(detail)
    setting = {
        "settings": {s: SETTINGS[s] for s in args.settings},
        "silos": silos,
        "rounds": args.rounds,
        "seed": args.seed,
        "runtime": args.runtime,
        "defences_with_3_faulty": {d: defence_overrides(d, 3) for d in args.defences},
        "total_wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, args.name, rows, setting=setting, details=details)
    plot(rows, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
