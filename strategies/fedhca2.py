"""``fedhca2`` (Lu et al., CVPR 2024, "FedHCA2: Towards Hetero-Client Federated Multi-Task
Learning"): the trunk's conflict-averse update Delta_ca = CAGrad over the silos' trunk deltas
(c = ``ca_c``, rescaled by 1/(1 + c^2)); silos holding the same tasks average their deltas
(FedHCA2's homogeneous aggregation), and silo s's trunk becomes
m_s + Delta_s + clip(alpha_s, 0, 1) Delta_ca. Heads (FedHCA2's decoders): for each task and
each head layer l, h_{s,t} becomes h_{s,t} + Delta + clip(beta_{s,t,l}, 0, 1) A, with the
cross-attention A = softmax(Delta Delta_j^T / sqrt(dim)) [Delta_j] over the deltas of that
layer of the task's holders this round (FedHCA2 attends over every decoder; here heads of one
task only, the only ones of the same shape). alpha and beta are learned: after a silo's next
round, the gradient of (next trained model - this output)^2/2 with respect to each weight is
-<its term, Delta_next>, and SGD with momentum ``hyper_momentum``, weight decay
``hyper_weight_decay`` and rate ``hyper_lr`` takes a step (FedHCA2: 0.01, 0.9, 1e-4; alpha and
beta start at ``alpha_init`` and ``beta_init``, 0.1).

Each silo has a model at the server (:class:`strategies.engine.PerSiloModels`): it receives its own
payload, trains it and sends the delta; there is no single global model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmtl.core.checks import non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import Arrays
from strategies.balancing import build_weighting
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    MethodParams,
    MethodSetup,
    PerSiloModels,
    flatten,
    unflatten,
)


@dataclass(frozen=True)
class FedHCA2Params(MethodParams):
    """CAGrad's ``ca_c``; the hyperweights' initial values and their SGD (FedHCA2's defaults)."""

    ca_c: float = 0.4
    alpha_init: float = 0.1
    beta_init: float = 0.1
    hyper_lr: float = 0.01
    hyper_momentum: float = 0.9
    hyper_weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "ca_c", "alpha_init", "beta_init", "hyper_weight_decay")
        positive(self, "hyper_lr")
        if not 0 <= self.hyper_momentum < 1:
            raise ConfigError(
                "hyper_momentum", f"must be in [0, 1), got {self.hyper_momentum}.", "use e.g. 0.9."
            )


@dataclass
class HyperWeight:
    """One learned scalar (FedHCA2's alpha or beta) with its SGD momentum buffer and the term it
    multiplied in its silo's last update (whose next delta gives its gradient)."""

    value: float
    buffer: float = 0.0
    last_term: np.ndarray | None = None

    def used(self) -> float:
        return min(max(self.value, 0.0), 1.0)

    def learn(self, next_delta: np.ndarray, lr: float, momentum: float, decay: float) -> None:
        """d/dw (1/2)||trained_next - output||^2 = -<term, Delta_next>; one SGD step."""
        if self.last_term is None:
            return
        gradient = -float(np.dot(self.last_term, next_delta)) + decay * self.value
        self.buffer = momentum * self.buffer + gradient
        self.value -= lr * self.buffer


class FedHCA2(PerSiloModels[FedHCA2Params]):
    """Conflict-averse trunks and cross-attentive heads with learned per-silo weights."""

    individual = (
        "it keeps per-silo server state (learned weights) and combines each silo's own delta "
        "(conflict-averse trunks, cross-attention over the silos' heads)"
    )

    def __init__(self, params: FedHCA2Params, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.weighting = build_weighting("cagrad", {"c": params.ca_c, "rescale": True}, setup.seed)
        self.hyper: dict[tuple[int, str], HyperWeight] = {}
        """(silo id, "trunk" or "<head layer>") -> its hyperweight."""

    def state_dict(self) -> dict[str, Any]:
        hyper = [
            {"silo": silo, "name": name, **dataclasses.asdict(weight)}
            for (silo, name), weight in self.hyper.items()
        ]
        return {**super().state_dict(), "weighting": self.weighting.state_dict(), "hyper": hyper}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.weighting.load_state_dict(state["weighting"])
        self.hyper.clear()
        for entry in state["hyper"]:
            weight = {k: v for k, v in entry.items() if k not in ("silo", "name")}
            self.hyper[(int(entry["silo"]), str(entry["name"]))] = HyperWeight(**weight)

    def hyperweight(self, silo_id: int, name: str) -> HyperWeight:
        key = (silo_id, name)
        if key not in self.hyper:
            initial = self.params.alpha_init if name == "trunk" else self.params.beta_init
            self.hyper[key] = HyperWeight(initial)
        return self.hyper[key]

    def absorb(
        self,
        server_round: int,
        model: GlobalModel,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        p = self.params
        trunk_keys = sorted(k for k in updates[0].sent if model.is_shared(k))
        rows = {u.silo.silo_id: flatten(u.deltas, trunk_keys).to(torch.float64) for u in updates}
        for u in updates:  # learn from the deltas that followed each weight's last use
            self.hyperweight(u.silo.silo_id, "trunk").learn(
                rows[u.silo.silo_id].numpy(), p.hyper_lr, p.hyper_momentum, p.hyper_weight_decay
            )
            for layer, delta in head_layers(u.deltas, model).items():
                self.hyperweight(u.silo.silo_id, layer).learn(
                    delta, p.hyper_lr, p.hyper_momentum, p.hyper_weight_decay
                )
        ids = [u.silo.silo_id for u in updates]
        conflict_averse, _ = self.weighting(torch.stack([rows[i] for i in ids]), None, ids)
        homogeneous = {}
        for u in updates:  # silos holding the same tasks share the mean of their deltas
            same = [rows[v.silo.silo_id] for v in updates if v.silo.tasks == u.silo.tasks]
            homogeneous[u.silo.silo_id] = torch.stack(same).mean(dim=0)
        like = {k: updates[0].sent[k] for k in trunk_keys}
        for u in updates:
            alpha = self.hyperweight(u.silo.silo_id, "trunk")
            step = homogeneous[u.silo.silo_id] + alpha.used() * conflict_averse
            alpha.last_term = conflict_averse.numpy()
            own = self.models[u.silo.silo_id]
            for key, value in unflatten(step, like).items():
                own[key] = (own[key] + value).astype(own[key].dtype)
        self.cross_attend_heads(updates, model)
        return dict(model.arrays)

    def cross_attend_heads(self, updates: list[ClientUpdate], global_model: GlobalModel) -> None:
        """h_{s,t} <- h_{s,t} + Delta + clip(beta) softmax(Delta Delta_j^T / sqrt(d)) [Delta_j]."""
        layers: dict[str, dict[int, np.ndarray]] = {}
        for u in updates:
            for layer, delta in head_layers(u.deltas, global_model).items():
                layers.setdefault(layer, {})[u.silo.silo_id] = delta
        for layer, deltas in layers.items():
            ids = sorted(deltas)
            values = np.stack([deltas[i] for i in ids])
            for silo_id in ids:
                query = deltas[silo_id]
                scores = values @ query / np.sqrt(query.size)
                weights = np.exp(scores - scores.max())
                attended = (weights / weights.sum()) @ values
                beta = self.hyperweight(silo_id, layer)
                beta.last_term = attended
                step = query + beta.used() * attended
                model = self.models[silo_id]
                offset = 0
                for key in layer_keys(model, layer):
                    size = model[key].size
                    part = step[offset : offset + size].reshape(model[key].shape)
                    model[key] = (model[key] + part).astype(model[key].dtype)
                    offset += size

    def results(self) -> dict[str, Any]:
        return {
            "fedhca2": {
                "alpha": {str(s): w.value for (s, n), w in self.hyper.items() if n == "trunk"},
                "beta": {f"{s}/{n}": w.value for (s, n), w in self.hyper.items() if n != "trunk"},
            }
        }


def head_layers(deltas: Arrays, model: GlobalModel) -> dict[str, np.ndarray]:
    """Layer of a task's own parameters (role ``task``: "heads.<task>.<module>", and a task's
    gate or attention module) -> its flattened parameter deltas (weight, bias)."""
    layers: dict[str, list[str]] = {}
    for key in sorted(deltas):
        if model.role(key).kind == "task":
            layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return {
        layer: np.concatenate([deltas[k].reshape(-1).astype(np.float64) for k in keys])
        for layer, keys in layers.items()
    }


def layer_keys(model: Arrays, layer: str) -> list[str]:
    return sorted(k for k in model if k.rsplit(".", 1)[0] == layer)
