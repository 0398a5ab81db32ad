"""One timed fedmtl run in this (fresh) process, for the benchmarks that start one per measurement.

    python benchmarks/_timed_run.py '["runtime=inprocess", "num_rounds=3", ...]'

Prints one JSON line: ``first_round_end_s`` (from the call of ``fedmtl.app.launch.run``, after
imports, to the end of round 1: experiment set-up, the runtime's start (Ray's, on simulation),
silo discovery, round 1), ``rounds_s`` (each round's ``seconds`` from ``metrics.jsonl``: train,
aggregate and, when scheduled, evaluate), ``run_s`` (the whole call), ``import_s`` (fedmtl's
imports), and ``peak_rss_mb`` (this process's peak resident memory; Ray's worker processes are
not counted). Round 1's start is taken by wrapping ``Engine.dispatch_train``
(instrumentation local to this process; the ServerApp runs in it on every runtime).

:func:`startup` turns these into the benchmarks' start-up: the end of round 1 less a typical
round (the set-up, the runtime's start, discovery and round 1's one-time warm-ups: lazy imports,
Ray actors building the experiment).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()

from fedmtl.app.launch import run  # noqa: E402
from fedmtl.app.run.config import compose, parse  # noqa: E402 - timed after the clock starts
from strategies.engine import Engine  # noqa: E402

IMPORTED = time.perf_counter()


def timed_run(overrides: list[str]) -> dict[str, Any]:
    dispatched: list[float] = []
    original = Engine.dispatch_train

    def dispatch_train(self: Engine, *args: Any, **kwargs: Any) -> Any:
        dispatched.append(time.perf_counter())
        return original(self, *args, **kwargs)

    Engine.dispatch_train = dispatch_train  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as out:
        config = parse(compose([*overrides, f"hydra.run.dir={out}"], out))
        begin = time.perf_counter()
        summary = run(config)
        end = time.perf_counter()
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
    seconds = [r["seconds"] for r in rows if r["split"] == "train"]
    return {
        "import_s": IMPORTED - STARTED,
        "first_round_end_s": dispatched[0] - begin + seconds[0],
        "rounds_s": seconds,
        "run_s": end - begin,
        "bytes_up": summary["bytes_up"],
        "final": summary["final"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_avg": os.getloadavg()[0],
    }


def startup(result: dict[str, Any], typical_round_s: float) -> float:
    """The end of round 1 less a typical round (module docstring)."""
    return float(result["first_round_end_s"]) - typical_round_s


if __name__ == "__main__":
    print(json.dumps(timed_run(json.loads(sys.argv[1]))), flush=True)
