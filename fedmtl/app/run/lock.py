"""One run at a time in a run directory: an exclusive lock on ``DIR/run.lock``.

Every process that writes a run's result files (``fedmtl run``, a resumed run, the ServerApp of a
``flwr run``) holds the lock for as long as it runs: :func:`fcntl.flock` on ``DIR/run.lock``, which
holds the holder's pid. A second run in the same directory (a new run or ``resume=DIR``) is
refused at once with a ConfigError naming that pid. The operating system releases the lock when
the holder's process ends, however it ends (kill -9 included), so a crashed run never blocks the
next one; the file itself stays (removing it could let two processes lock two different files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fedmtl.core.errors import ConfigError

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, key: str, create: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs; a ConfigError on ``key`` (``output_dir`` or
    ``resume``) naming the holder's pid when another process holds it. ``create``: make the
    directory when missing (a new run), else a missing directory is a ConfigError (a resume)."""
    run_dir = Path(run_dir)
    if not create and not run_dir.is_dir():
        raise ConfigError(
            key, f"{run_dir} is not a directory.", "give the directory of the run to resume."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            raise ConfigError(
                key,
                f"{run_dir} is in use by another fedmtl run ({holder} holds {path}).",
                "wait for that run to end, or stop it (kill PID), then try again; a run that "
                "died releases the lock by itself.",
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        os.fsync(handle)
        yield
    finally:
        os.close(handle)  # releases the lock


def _holder(path: Path) -> str:
    """``pid N`` from the lock file (or why it cannot be told)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "a process"
    return f"pid {text}" if text.isdigit() else "a process"


def is_locked(run_dir: Path) -> bool:
    """Whether a process holds ``run_dir``'s lock now (without creating anything)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False
