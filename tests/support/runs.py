"""Config composition and runs: :func:`compose_raw`, :func:`run_fedmtl` (the command in a
subprocess), :func:`fedmtl_process` (the same, running while the test signals it),
:func:`run_test_app` (an app of ``tests/`` the same way), :func:`read_jsonl`, :func:`beats_chance`,
:func:`check_result_files`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedmtl.app.run.config import compose
from fedmtl.app.runtimes import OFFLINE_ENV
from fedmtl.app.runtimes.processes import descendants, send

REPO_ROOT = Path(__file__).resolve().parents[2]
FEDMTL = [sys.executable, "-m", "fedmtl.app.cli"]


def compose_raw(overrides: list[str], output_dir: Path | None = None) -> dict[str, Any]:
    """The composed config mapping for ``overrides``, as ``fedmtl run`` would build it."""
    return compose(overrides, output_dir or ".")


def run_fedmtl(
    args: list[str],
    timeout: float,
    command: Sequence[str] = FEDMTL,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """``fedmtl ARGS`` (or ``command ARGS``) in a subprocess with the offline environment (and
    ``env``), under a hard timeout: on expiry its whole process group (Ray's processes with it) is
    killed by id, then TimeoutExpired is raised."""
    process = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **env},
        cwd=cwd,
        start_new_session=True,  # its own process group, so that it can be ended as a whole
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@contextmanager
def fedmtl_process(args: list[str], logs: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``fedmtl ARGS`` running in a subprocess while the block runs: the offline environment (and
    ``env``), a process group of its own, stdout and stderr into ``logs/stdout.txt`` and
    ``logs/stderr.txt`` (no pipe to fill and block it). When the block ends, for whatever reason,
    a process still running is killed with its whole group and every process below it (SIGKILL,
    by id: Flower starts its processes in sessions of their own).

    SIGINT reaches it as Ctrl-C reaches a command in a terminal: when this process ignores SIGINT
    (a background job of a non-interactive shell does), the child would inherit that, since exec
    keeps ignored signals ignored; Python's handler is put back around the start, so that the
    child begins with the default disposition and installs its KeyboardInterrupt handler."""
    logs.mkdir(parents=True, exist_ok=True)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with (logs / "stdout.txt").open("wb") as out, (logs / "stderr.txt").open("wb") as err:
            process = subprocess.Popen(
                [*FEDMTL, *args],
                stdout=out,
                stderr=err,
                env={**os.environ, **OFFLINE_ENV, **env},
                start_new_session=True,
            )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield process
    finally:
        if process.poll() is None:
            below = descendants(process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            send(below, signal.SIGKILL)
            process.wait()


def run_test_app(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m tests.<module> ARGS`` from the repository root (:func:`run_fedmtl`), with a
    local Ray of its own: its own short temporary directory, removed afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        return run_fedmtl(
            args,
            timeout=timeout,
            command=[sys.executable, "-m", f"tests.{module}"],
            PYTHONPATH=str(REPO_ROOT),
            RAY_TMPDIR=ray_tmp,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def beats_chance(summary: dict[str, Any], margin: float) -> dict[str, tuple[float, float]]:
    """Tasks whose final primary metric is not ``margin`` better than chance: {task: (value, chance)}."""
    failing = {}
    for task in summary["tasks"]:
        info = summary["task_info"][task]
        value = summary["final"][task][info["primary_metric"]]
        if value < info["chance"] + margin:
            failing[task] = (value, info["chance"])
    return failing


def check_result_files(
    out: Path, summary: dict[str, Any], num_rounds: int, plots: bool = True
) -> None:
    """The foundation contract for summary.json, metrics.jsonl and partition.json (and the
    learning curves, unless the run had ``tracking.plots=false``)."""
    for key in ("tasks", "task_info", "final", "rounds", "strategy", "dataset", "dataset_info"):
        assert key in summary
    # `local` exchanges no model: silos train alone, and only requests and metrics travel
    for direction in ("bytes_up", "bytes_down"):
        assert isinstance(summary[direction], int)
        assert (summary[direction] == 0) == (summary["strategy"] == "local")
    assert isinstance(summary["wall_time_s"], float)
    assert summary["rounds"] == num_rounds
    for task in summary["tasks"]:
        info = summary["task_info"][task]
        assert set(info) >= {"kind", "num_classes", "primary_metric", "higher_is_better"}
        assert info["primary_metric"] in summary["final"][task]
    rows = read_jsonl(out / "metrics.jsonl")
    assert {r["split"] for r in rows} >= {"train", "personal", "silo"}
    assert all("round" in r and "split" in r and "metrics" in r for r in rows)
    assert max(r["round"] for r in rows) == num_rounds
    manifest = json.loads((out / "partition.json").read_text())
    assert {"schema_version", "seed", "dataset", "silos"} <= set(manifest)
    for silo in manifest["silos"]:
        assert {"id", "tasks", "num_train", "num_test", "train_indices", "test_indices"} <= set(
            silo
        )
    if plots:
        assert (out / "learning_curves.png").stat().st_size > 1000
