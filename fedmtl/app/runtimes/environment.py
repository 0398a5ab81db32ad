"""The runtimes' environment: offline-safe defaults, the device a silo trains on and the torch
threads it trains with."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fedmtl.core.errors import ConfigError

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_offline_env() -> None:
    """Offline-safe defaults; a value the user already set is kept."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


ACTIVATE_MARK = "# fedmtl: offline-safe defaults"


def add_to_activate(script: Path) -> bool:
    """Append :data:`OFFLINE_ENV` to a virtual environment's ``bin/activate`` (once; a value the
    shell already has is kept), so that an activated shell has it too: ``flwr run .`` there starts
    a local SuperLink that would otherwise install the app's dependencies again (gigabytes) into a
    fresh environment. Whether it was added (False: already there)."""
    text = script.read_text()
    if ACTIVATE_MARK in text:
        return False
    lines = [f"\n{ACTIVATE_MARK} (added by `make install`)"]
    lines += [f'export {key}="${{{key}:-{value}}}"' for key, value in OFFLINE_ENV.items()]
    script.write_text(text + "\n".join(lines) + "\n")
    return True


DEFAULT_THREADS = 1
"""Torch's intra-op threads for silos trained in this process when ``runtime.num_threads`` is
null. The shipped models are small: on two cores a second thread made the default experiment no
faster idle and far slower with another process busy (``benchmarks/threads.py``,
``benchmarks/results/threads.csv``)."""


def check_threads(params: Any) -> None:
    """``num_threads``: null or a positive number of threads."""
    value = params.num_threads
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            "num_threads", f"must be null or an integer >= 1, got {value!r}.", "use e.g. 1."
        )


@dataclass(frozen=True)
class DeviceParams:
    """``device``: where the silos train: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``;
    ``num_threads``: torch's intra-op threads while they train (null: :data:`DEFAULT_THREADS`)
    (``inprocess`` and ``vectorized``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        check_threads(self)


def silo_threads(runtime_name: str, params: Any) -> int:
    """The torch threads a silo trains with: ``runtime.num_threads``, else on ``simulation``
    the client's CPU share ``num_cpus`` (at least 1), else :data:`DEFAULT_THREADS`."""
    if params.num_threads is not None:
        return int(params.num_threads)
    if runtime_name == "simulation":
        return max(1, int(params.num_cpus))
    return DEFAULT_THREADS


@contextlib.contextmanager
def using_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``count`` inside, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def client_device(runtime_name: str, params: Any) -> str:
    """The torch device a ClientApp trains on: CUDA only when this client was given a GPU.

    simulation: ``num_gpus > 0`` (Ray then makes the GPU visible to the client's actor);
    inprocess and vectorized: ``device`` (``auto`` picks CUDA when visible).
    """
    cuda = torch.cuda.is_available()
    if runtime_name == "simulation":
        return "cuda" if params.num_gpus > 0 and cuda else "cpu"
    if isinstance(params, DeviceParams) and params.device != "auto":
        return params.device
    return "cuda" if cuda else "cpu"


def check_device(params: DeviceParams) -> None:
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.device", "is cuda but no CUDA GPU is visible here.", "use auto or cpu."
        )
