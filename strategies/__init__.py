"""Server strategies ("methods"): the engine that runs them and the registry of the shipped ones.

A method is one module: a parameter dataclass, a server half and a silo half, written against the
engine's public API (:mod:`strategies.engine`). The registry :data:`METHODS` holds each under the
name the config group ``strategy`` takes (``configs/strategy/<preset>.yaml`` mirrors it); methods
of other packages register through the entry-point group ``fedmtl.methods``
(:mod:`fedmtl.core.registry`).

- ``fedavg`` (:mod:`strategies.fedavg`), ``fedprox``, ``fedper`` and ``fedrep``, ``ditto``,
  ``local``, ``single_task``: FedAvg and the federated and personalised baselines;
- ``balanced`` (:mod:`strategies.balanced`): per-task trunk updates combined by a balancing
  method of :data:`strategies.balancing.WEIGHTINGS` (``strategy.weighting``; presets
  ``strategy=mgda``, ``strategy=upgrad``, ...);
- ``fmtlbench_pcgrad``, ``fmtlbench_cagrad``: FMTL-Bench's baselines over per-silo updates;
- ``fedmgda_plus`` (:mod:`strategies.fedmgda_plus`): FedMGDA+, the min-norm step over the silos'
  updates near FedAvg's weights;
- ``fedcmoo`` (:mod:`strategies.fedcmoo`): FedCMOO, task weights from a Gramian the server
  estimates from the silos' compressed gradient sketches (:mod:`strategies.sketch`);
- ``fedamp``, ``matfl``, ``fedhca2``: the server keeps one model per silo;
- ``grouping`` (:mod:`strategies.grouping`): federated task grouping, one trunk per group.
"""

from __future__ import annotations

from typing import Any

from fedmtl.core.registry import Registry
from strategies.balanced import Balanced, BalancedParams
from strategies.ditto import Ditto, DittoParams
from strategies.engine import AveragingParams, Method, MethodParams, SiloMethod
from strategies.fedamp import FedAMP, FedAMPParams
from strategies.fedavg import FedAvg
from strategies.fedcmoo import FedCMOO, FedCMOOParams
from strategies.fedhca2 import FedHCA2, FedHCA2Params
from strategies.fedmgda_plus import FedMGDAPlus, FedMGDAPlusParams
from strategies.fedper import FedPer, FedRep, FedRepParams
from strategies.fedprox import FedProx, FedProxParams
from strategies.fmtlbench import FmtlBenchCAGrad, FmtlBenchCAGradParams, FmtlBenchPCGrad
from strategies.grouping import Grouping, GroupingParams
from strategies.local import Local
from strategies.matfl import MaTFL, MaTFLParams
from strategies.single_task import SingleTask


def check_method(name: str, factory: Any, params: type) -> None:
    """A method's server half is a :class:`Method` whose ``silo`` is a :class:`SiloMethod`, and
    its parameters a :class:`MethodParams` (TypeError naming what is wrong)."""
    if not (isinstance(factory, type) and issubclass(factory, Method)):
        raise TypeError(f"method '{name}': {factory!r} is not a strategies.engine.Method")
    silo = getattr(factory, "silo", None)
    if not (isinstance(silo, type) and issubclass(silo, SiloMethod)):
        raise TypeError(f"method '{name}': its silo half {silo!r} is not a SiloMethod")
    if not issubclass(params, MethodParams):
        raise TypeError(f"method '{name}': its parameters {params!r} are not a MethodParams")


METHODS: Registry[type[Method[Any]]] = Registry(
    "strategy", entry_points="fedmtl.methods", check=check_method
)
METHODS.register("fedavg", params=AveragingParams)(FedAvg)
METHODS.register("balanced", params=BalancedParams)(Balanced)
METHODS.register("fmtlbench_pcgrad", params=MethodParams)(FmtlBenchPCGrad)
METHODS.register("fmtlbench_cagrad", params=FmtlBenchCAGradParams)(FmtlBenchCAGrad)
METHODS.register("grouping", params=GroupingParams)(Grouping)
METHODS.register("local", params=MethodParams)(Local)
METHODS.register("single_task", params=MethodParams)(SingleTask)
METHODS.register("fedprox", params=FedProxParams)(FedProx)
METHODS.register("fedper", params=AveragingParams)(FedPer)
METHODS.register("fedrep", params=FedRepParams)(FedRep)
METHODS.register("ditto", params=DittoParams)(Ditto)
METHODS.register("fedamp", params=FedAMPParams)(FedAMP)
METHODS.register("matfl", params=MaTFLParams)(MaTFL)
METHODS.register("fedhca2", params=FedHCA2Params)(FedHCA2)
METHODS.register("fedmgda_plus", params=FedMGDAPlusParams)(FedMGDAPlus)
METHODS.register("fedcmoo", params=FedCMOOParams)(FedCMOO)

__all__ = ["METHODS", "check_method"]
