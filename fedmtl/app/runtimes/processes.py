"""Processes a run starts, found and ended by their ids (Linux ``/proc``; nothing elsewhere).

A run never ends processes by name: a machine may run other people's Ray or Flower. It ends the
ones it can name: those below a process it started (:func:`descendants`), including those that
were below it while it ran and have been orphaned since (:class:`Watch`: Ray's workers outlive
their raylet, and rename themselves, so neither the tree nor their command line finds them later),
and those listening on a port it names (:func:`listening`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def _stat(pid_dir: Path) -> list[str] | None:
    try:
        return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree() -> dict[int, list[int]]:
    """Parent id -> the ids of its child processes, now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    """The ids of every process below ``pid`` in the process tree (``tree``: a
    :func:`process_tree` already taken). Flower and Ray start some of their helpers in sessions of
    their own, out of reach of a process-group signal."""
    children = process_tree() if tree is None else tree
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """Process ``pid``'s command line, its arguments separated by spaces ("" when it is gone)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; None when it is gone): with its id,
    it names one process even after the id is reused."""
    fields = _stat(Path(f"/proc/{pid}"))
    return None if fields is None else int(fields[19])


class Watch:
    """The processes this one started that ``ours`` claims (its child processes for which
    ``ours(pid)`` holds, e.g. those whose command line names a run's own Ray directory) and every
    process below them, seen every ``every`` seconds from a background thread while the watch
    runs (:meth:`stop` ends the watch and ends those processes that still run). Other children of
    this process (a tracker's service, say) are left alone."""

    def __init__(self, ours: Callable[[int], bool], every: float = 1.0) -> None:
        self.ours = ours
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
        """Add the processes below this one's claimed children now."""
        tree = process_tree()
        for child in tree.get(os.getpid(), []):
            if child in self.seen or self.ours(child):
                for pid in [child, *descendants(child, tree)]:
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
