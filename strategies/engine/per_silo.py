"""Methods whose server keeps one model per silo (FedAMP, MaT-FL, FedHCA2 build on it).

Silo s has a model m_s at the server (its trunk and its tasks' heads; the global initial arrays
until it first trains). A silo receives its own payload (:meth:`PerSiloModels.train_payload`),
trains it and sends the delta Delta_s; the server forms the trained model m_s + Delta_s and the
method updates the silos' models by its rule (:meth:`PerSiloModels.absorb`). A silo is evaluated
with its own model on its test split; there is no single global model. Silos not sampled in a
round keep their model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from fedmtl.core.records import Arrays, SiloInfo
from strategies.engine.method import Method, MethodSetup, Purpose, Round, RoundResult
from strategies.engine.model import GlobalModel
from strategies.engine.params import MethodParams
from strategies.engine.replies import ClientUpdate

P = TypeVar("P", bound=MethodParams)


def trunk_vector(arrays: Arrays, model: GlobalModel) -> np.ndarray:
    """The shared arrays (the trunk, by ``model``'s roles) of a silo's model ``arrays``,
    flattened in key order (float64)."""
    keys = sorted(k for k in arrays if model.is_shared(k))
    return np.concatenate([arrays[k].reshape(-1).astype(np.float64) for k in keys])


class PerSiloModels(Method[P]):
    """The server keeps a model per silo (module docstring)."""

    global_model: ClassVar[bool] = False
    individual: ClassVar[str] = "the server keeps one model per silo, built from that silo's update"
    """Why the method needs each silo's own update (its refusal under secure aggregation)."""

    def secure_sums(self, server_round: int) -> str:
        return self.individual

    def __init__(self, params: P, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.models: dict[int, Arrays] = {}
        """Silo id -> its model at the server (set when the silo is first sent anything)."""

    def model_of(self, silo_id: int, initial: Arrays) -> Arrays:
        """The silo's model, the ``initial`` arrays (the global ones it would receive) until it
        has one."""
        if silo_id not in self.models:
            self.models[silo_id] = {k: v.copy() for k, v in initial.items()}
        return self.models[silo_id]

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        own = self.model_of(silo.silo_id, super().arrays_for(silo, model, purpose))
        return self.train_payload(silo.silo_id, own, model) if purpose == "train" else own

    def train_payload(self, silo_id: int, own: Arrays, model: GlobalModel) -> Arrays:
        """What silo ``silo_id`` trains from (default: its own model; ``model``: the global
        model, whose roles say which arrays are shared)."""
        return own

    def aggregate(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> RoundResult:
        trained = {u.silo.silo_id: {k: u.sent[k] + u.deltas[k] for k in u.sent} for u in updates}
        arrays = self.absorb(round_.number, model, updates, trained)
        return RoundResult(model.with_arrays(arrays))

    @abstractmethod
    def absorb(
        self,
        server_round: int,
        model: GlobalModel,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        """Update the silos' models from the round's ``trained`` models; return the new global
        arrays (``model``: the round's global model, with the roles of its arrays)."""

    def state_dict(self) -> dict[str, Any]:
        return {"models": {str(silo): dict(model) for silo, model in self.models.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.models = {int(s): dict(model) for s, model in state["models"].items()}
