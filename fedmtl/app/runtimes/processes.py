"""Processes a run starts, found and ended by their ids (Linux ``/proc``; nothing elsewhere).

A run never ends processes by name: a machine may run other people's Ray or Flower. It ends the
ones it can name: those below a process it started (:func:`descendants`), including those that
were below it while it ran and have been orphaned since (:class:`Watch`: Ray's workers outlive
their raylet, and rename themselves, so neither the tree nor their command line finds them later).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def _stat(pid_dir: Path) -> list[str] | None:
    try:
        return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The ids of every process below ``pid`` in the process tree. Flower and Ray start some of
    their helpers in sessions of their own, out of reach of a process-group signal."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry)
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; None when it is gone): with its id,
    it names one process even after the id is reused."""
    fields = _stat(Path(f"/proc/{pid}"))
    return None if fields is None else int(fields[19])


class Watch:
    """Every process below this one while the watch runs, seen every ``every`` seconds from a
    background thread (:meth:`stop` ends the watch and ends those processes that still run)."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.seen: dict[int, int] = {}  # pid -> start time
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._look, name="fedmtl-watch", daemon=True)
        self._thread.start()

    def _look(self) -> None:
        while True:
            self.snapshot()
            if self._done.wait(self.every):
                return

    def snapshot(self) -> None:
        """Add the processes below this one now."""
        for pid in descendants(os.getpid()):
            start = started(pid)
            if start is not None:
                self.seen.setdefault(pid, start)

    def still_running(self) -> list[int]:
        """The processes seen that run still (the same processes: same id and start time)."""
        return [pid for pid, start in self.seen.items() if started(pid) == start and alive(pid)]

    def stop(self, grace: float) -> list[int]:
        """End the watch, then the processes it saw that still run (:func:`end`); their ids."""
        self.snapshot()
        self._done.set()
        self._thread.join()
        left = self.still_running()
        if left:
            end(left, grace)
        return left


LISTEN = "0A"
"""A listening socket's state in ``/proc/net/tcp``."""


def listening(port: int) -> list[int]:
    """The ids of the processes (of this user) with a TCP socket listening on ``port``, found
    through ``/proc/net/tcp{,6}`` and each process's open files: a process named by what it
    serves, not by its name."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == LISTEN:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return []
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
    return found


def send(pids: Sequence[int], sig: signal.Signals) -> None:
    """Signal each process of ``pids`` (gone ones are skipped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    fields = _stat(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def end(pids: Sequence[int], grace: float) -> list[int]:
    """SIGTERM to ``pids``, SIGKILL to those still running after ``grace`` seconds; the ids
    that had to be killed."""
    send(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    send(survivors, signal.SIGKILL)
    return survivors
