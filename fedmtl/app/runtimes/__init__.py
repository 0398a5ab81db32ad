"""Runtimes: where the ServerApp and the ClientApps of a run execute (:data:`RUNTIMES`).

- ``inprocess`` (:mod:`~fedmtl.app.runtimes.inprocess`): every silo's ClientApp called directly in
  this process through an :class:`InProcessGrid`. No Ray, no sockets: for tests and tiny runs.
- ``vectorized`` (:mod:`~fedmtl.app.runtimes.vectorized`): in-process, but the train messages of a
  round that can be trained together go to one batched computation (:class:`VectorizedGrid`).
- ``simulation`` (:mod:`~fedmtl.app.runtimes.simulation`): Flower's simulation engine on Ray.

All run the same ServerApp and ClientApp (:mod:`fedmtl.app.run.server`,
:mod:`fedmtl.app.silo.client_app`). Runtimes import no other room of the app.
"""

from __future__ import annotations

from fedmtl.app.runtimes.apps import Apps, BatchTrain, Runner, Shipment
from fedmtl.app.runtimes.environment import (
    OFFLINE_ENV,
    DeviceParams,
    add_to_activate,
    check_device,
    client_device,
    set_offline_env,
    silo_threads,
    using_threads,
)
from fedmtl.app.runtimes.inprocess import InProcessGrid, InProcessParams, run_inprocess
from fedmtl.app.runtimes.simulation import (
    SimulationParams,
    check_ray_address,
    check_resources,
    run_simulation,
)
from fedmtl.app.runtimes.vectorized import VectorizedGrid, VectorizedParams, run_vectorized
from fedmtl.core.registry import Registry

RUNTIMES: Registry[Runner] = Registry("runtime")
RUNTIMES.register("inprocess", params=InProcessParams)(run_inprocess)
RUNTIMES.register("simulation", params=SimulationParams)(run_simulation)
RUNTIMES.register("vectorized", params=VectorizedParams)(run_vectorized)

__all__ = [
    "OFFLINE_ENV",
    "RUNTIMES",
    "Apps",
    "BatchTrain",
    "DeviceParams",
    "InProcessGrid",
    "InProcessParams",
    "Runner",
    "Shipment",
    "SimulationParams",
    "VectorizedGrid",
    "VectorizedParams",
    "add_to_activate",
    "check_device",
    "check_ray_address",
    "check_resources",
    "client_device",
    "set_offline_env",
    "silo_threads",
    "using_threads",
]
