"""CPU and wall time of ``fedmtl run experiment=PRESET runtime=inprocess``, one fresh process per
preset, with one torch thread (``OMP_NUM_THREADS=1``).

On a shared machine the wall time depends on the load, the CPU time hardly: ``cpu_s`` (user +
system seconds of the run's process) is the estimate of the wall time on an idle core. Writes one
row per preset to ``benchmarks/results/preset_times.csv`` and ``.json``: ``preset``, ``rounds``
(the preset's ``num_rounds``, all of which ran), ``cpu_s``, ``user_s``, ``sys_s``, ``wall_s``,
``load_avg_start`` (the 1-minute load average when the run started), ``mb_up`` and ``mb_down``;
the JSON also holds each run's final primary metrics (``final``: preset -> split -> task -> value).

    python benchmarks/preset_times.py                                   # multimnist_dirichlet
    python benchmarks/preset_times.py --presets smoke synthetic_groups --overrides num_rounds=2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import write_results

from fedmtl.app.runtimes import OFFLINE_ENV

RESULTS = Path(__file__).resolve().parent / "results"


def child_cpu() -> tuple[float, float]:
    """User and system seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def primary_metrics(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Split (``personal``, and ``global`` with a global test set) -> task -> primary metric."""
    splits = {"personal": summary["final"]}
    if summary.get("global"):
        splits["global"] = summary["global"]["final"]
    info = summary["task_info"]
    return {
        split: {t: m[info[t]["primary_metric"]] for t, m in final.items()}
        for split, final in splits.items()
    }


def measure(preset: str, overrides: list[str], workdir: Path) -> tuple[dict[str, Any], Any]:
    """Run the preset once in a fresh process; its row and its final primary metrics."""
    out = workdir / preset
    command = [
        sys.executable, "-m", "fedmtl.app.cli", "run", f"experiment={preset}",
        "runtime=inprocess", "tracking=quiet", *overrides, f"hydra.run.dir={out}",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    user, system = child_cpu()
    begin = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - begin
    user_after, system_after = child_cpu()
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    if summary["rounds"] != summary["config"]["num_rounds"]:
        raise SystemExit(f"{preset}: {summary['rounds']} of {summary['config']['num_rounds']} ran")
    user_s, sys_s = user_after - user, system_after - system
    row = {
        "preset": preset,
        "rounds": summary["rounds"],
        "cpu_s": round(user_s + sys_s, 1),
        "user_s": round(user_s, 1),
        "sys_s": round(sys_s, 1),
        "wall_s": round(wall, 1),
        "load_avg_start": round(load, 2),
        "mb_up": round(summary["bytes_up"] / 1e6),
        "mb_down": round(summary["bytes_down"] / 1e6),
    }
    return row, primary_metrics(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["multimnist_dirichlet"])
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows, final = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for preset in args.presets:
            row, final[preset] = measure(preset, args.overrides, Path(workdir))
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_results(
        args.out, "preset_times", rows, omp_num_threads=1, overrides=args.overrides, final=final
    )


if __name__ == "__main__":
    main()
