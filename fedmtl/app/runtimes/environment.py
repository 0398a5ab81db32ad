"""The runtimes' environment: offline-safe defaults and the device a silo trains on."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DeviceParams:
    """``device``: where the silos train: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``
    (``inprocess`` and ``vectorized``)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


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
