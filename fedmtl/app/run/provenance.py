"""Where a result came from: the code's commit, the package versions and the machine.

Recorded in every ``summary.json`` (``provenance``) and in a benchmark's report, so a number can
be traced back to the code and hardware that produced it.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("fedmtl", "torch", "flwr", "numpy", "scipy")
"""The packages whose versions are recorded."""


def git_commit(path: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package), or
    None when git or the checkout is not available."""
    folder = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def versions() -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` (None when not installed as a distribution)."""
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def machine() -> dict[str, Any]:
    """CPU count, platform, Python, torch threads and the CUDA device (if any)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@functools.cache
def _provenance() -> dict[str, Any]:
    return {"git": git_commit(), "versions": versions(), "machine": machine()}


def provenance() -> dict[str, Any]:
    """``{"git", "versions", "machine"}`` for this process (computed once; a fresh copy each call)."""
    return copy.deepcopy(_provenance())
