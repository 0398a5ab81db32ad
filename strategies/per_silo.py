"""Personalised baselines whose server keeps one model per silo: FedAMP, MaT-FL and FedHCA2.

Each silo s has a model m_s at the server (its trunk and its tasks' heads; the initial model until
it first trains). A silo receives its own payload (FedAMP: a cloud model built for it; MaT-FL and
FedHCA2: its own model), trains it and sends the delta Delta_s; the server forms the trained model
m_s + Delta_s and updates the silos' models by the method's rule. A silo is evaluated with its own
model on its test split; there is no single global model (nothing to evaluate on the global test
set). Silos not sampled in a round keep their model.

- ``fedamp`` (Huang et al., AAAI 2021, "Personalized Cross-Silo Federated Learning on Non-IID
  Data"): silo i receives the cloud model u_i = xi_ii m_i + sum_{j != i} xi_ij m_j, with
  attention xi_ij = alpha a_ij / sum_{k != i} a_ik, a_ij = exp(-||m_i - m_j||^2 / sigma) over the
  trunks (a decreasing function of the distance: similar silos weigh more) and xi_ii = 1 - alpha,
  over the silos the server has sent a model so far (every silo after round 1 when all are
  sampled); a head of task t mixes the heads of t's holders the same way (its own head alone when
  it is the only holder). The silo trains on f_s(w) + (lambda/2) ||w - u_i||^2 and its new model is
  m_i = u_i + Delta_i. ``sigma`` null: the median squared distance between the silos' trunks.
- ``matfl`` (Cai et al., CVPRW 2023, "Many-Task Federated Learning"): each round the sampled silos
  are clustered by the cosine of their trunk deviations Delta_s - mean_r Delta_r (agglomerative,
  average linkage, cut at cosine distance ``distance_threshold``); the silos of a cluster C all
  get the trunk sum_{s in C} n_s (m_s + Delta_s) / sum_{s in C} n_s. Heads are averaged per task
  over their holders, as in FedAvg, and shared by all silos.
- ``fedhca2`` (Lu et al., CVPR 2024, "FedHCA2: Towards Hetero-Client Federated Multi-Task
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
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import MessageType

from fedmtl.core.checks import non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import head_task, is_trunk_key
from fedmtl.core.records import Arrays, TrainRequest
from strategies.aggregation import aggregate_heads, flatten, unflatten
from strategies.balancing import Weighting, build_weighting
from strategies.base import StrategyParams, TaskAwareStrategy, TrunkStep
from strategies.replies import ClientUpdate


class PerSiloModels(TaskAwareStrategy):
    """The server keeps a model per silo (module docstring); subclasses define the payloads and
    how the trained models update the silos' models (:meth:`absorb`)."""

    @functools.cached_property
    def models(self) -> dict[int, Arrays]:
        """Silo id -> its model at the server (set when the silo is first sent anything)."""
        return {}

    @property
    def has_global_model(self) -> bool:
        return False

    def model_of(self, silo_id: int, initial: Arrays) -> Arrays:
        """The silo's model, the ``initial`` arrays (the global ones it would receive) until it
        has one."""
        if silo_id not in self.models:
            self.models[silo_id] = {k: v.copy() for k, v in initial.items()}
        return self.models[silo_id]

    def payload(self, node: int, arrays: Arrays, message_type: str) -> Arrays | None:
        own = self.model_of(self.silos[node].silo_id, arrays)
        if message_type == MessageType.TRAIN:
            return self.train_payload(self.silos[node].silo_id, own)
        return own

    def train_payload(self, silo_id: int, own: Arrays) -> Arrays:
        """What silo ``silo_id`` trains from (default: its own model)."""
        return own

    def apply_updates(
        self, server_round: int, arrays: Arrays, updates: list[ClientUpdate]
    ) -> tuple[Arrays, dict[str, float]]:
        trained = {u.silo.silo_id: {k: u.sent[k] + u.deltas[k] for k in u.sent} for u in updates}
        return self.absorb(server_round, arrays, updates, trained), {}

    def absorb(
        self,
        server_round: int,
        arrays: Arrays,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        """Update the silos' models from the round's ``trained`` models; return the global arrays."""
        raise NotImplementedError

    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        raise TypeError(f"{type(self).__name__} updates per-silo models in absorb()")

    def state_dict(self) -> dict[str, Any]:
        models = {str(silo): dict(model) for silo, model in self.models.items()}
        return {**super().state_dict(), "models": models}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.models.clear()
        self.models.update({int(s): dict(model) for s, model in state["models"].items()})


def trunk_vector(arrays: Arrays) -> np.ndarray:
    """The trunk arrays of a model, flattened in key order (float64)."""
    keys = sorted(k for k in arrays if is_trunk_key(k))
    return np.concatenate([arrays[k].reshape(-1).astype(np.float64) for k in keys])


# ---------------------------------------------------------------------------------------- FedAMP
@dataclass(frozen=True)
class FedAMPParams(StrategyParams):
    """``alpha``: the weight of the other silos in a cloud model (1 - alpha stays with the silo);
    ``sigma``: the distance scale of the attention (null: the median squared distance between the
    silos' trunks); ``lam``: the proximal pull of local training towards the cloud model."""

    alpha: float = 0.5
    sigma: float | None = None
    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "alpha", "lam")
        if self.alpha > 1:
            raise ConfigError("alpha", f"must be in [0, 1], got {self.alpha}.", "use e.g. 0.5.")
        if self.sigma is not None:
            positive(self, "sigma")


class FedAMP(PerSiloModels):
    """Attentive message passing: each silo trains from its cloud model (module docstring)."""

    params: FedAMPParams

    def train_request(self, server_round: int) -> TrainRequest:
        return dataclasses.replace(super().train_request(server_round), proximal_mu=self.params.lam)

    def attention(self, silo_id: int) -> dict[int, float]:
        """a_ij = exp(-||m_i - m_j||^2 / sigma) for the other silos j with a model."""
        own = trunk_vector(self.models[silo_id])
        others = {j: trunk_vector(m) for j, m in self.models.items() if j != silo_id}
        distances = {j: float(np.sum((own - v) ** 2)) for j, v in others.items()}
        return {j: float(np.exp(-d / self.sigma())) for j, d in distances.items()}

    def sigma(self) -> float:
        if self.params.sigma is not None:
            return self.params.sigma
        vectors = [trunk_vector(m) for m in self.models.values()]
        squared = [
            float(np.sum((a - b) ** 2)) for i, a in enumerate(vectors) for b in vectors[i + 1 :]
        ]
        positive_ones = [d for d in squared if d > 0]
        return statistics.median(positive_ones) if positive_ones else 1.0

    def train_payload(self, silo_id: int, own: Arrays) -> Arrays:
        attention = self.attention(silo_id)
        cloud: Arrays = {}
        for key, value in own.items():
            holders = [j for j in attention if key in self.models[j]]  # silos with this array
            total = sum(attention[j] for j in holders)
            if not holders or total <= 0:
                cloud[key] = value.copy()
                continue
            alpha = self.params.alpha
            mixed = (1.0 - alpha) * value.astype(np.float64)
            for j in holders:
                mixed += alpha * attention[j] / total * self.models[j][key]
            cloud[key] = mixed.astype(value.dtype)
        return cloud

    def absorb(
        self,
        server_round: int,
        arrays: Arrays,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        for silo_id, model in trained.items():  # m_i = u_i + Delta_i
            self.models[silo_id] = model
        return arrays


# ---------------------------------------------------------------------------------------- MaT-FL
@dataclass(frozen=True)
class MaTFLParams(StrategyParams):
    """``distance_threshold``: the cosine distance (in [0, 2]) at which the average-linkage tree of
    the silos' trunk deviations is cut into clusters."""

    distance_threshold: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "distance_threshold")


class MaTFL(PerSiloModels):
    """Silos clustered by their trunk deviations each round; one trunk per cluster."""

    params: MaTFLParams

    @functools.cached_property
    def clusters(self) -> list[dict[str, Any]]:
        """Each round's clusters (silo ids), for ``summary.json``."""
        return []

    def payload(self, node: int, arrays: Arrays, message_type: str) -> Arrays | None:
        own = self.model_of(self.silos[node].silo_id, arrays)
        return {k: own[k] if is_trunk_key(k) else v for k, v in arrays.items()}  # global heads

    def absorb(
        self,
        server_round: int,
        arrays: Arrays,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        labels = cluster_silos(
            [trunk_vector(u.deltas) for u in updates], self.params.distance_threshold
        )
        for label in sorted(set(labels)):
            members = [u for u, c in zip(updates, labels, strict=True) if c == label]
            total = float(sum(u.num_examples for u in members)) or float(len(members))
            keys = [k for k in members[0].sent if is_trunk_key(k)]
            trunk = {
                k: sum(
                    ((u.num_examples or 1) / total * trained[u.silo.silo_id][k] for u in members),
                    start=np.zeros_like(members[0].sent[k], dtype=np.float64),
                )
                for k in keys
            }
            for u in members:
                model = self.models[u.silo.silo_id]
                model.update({k: v.astype(model[k].dtype) for k, v in trunk.items()})
        self.clusters.append(
            {
                "round": server_round,
                "clusters": [
                    [u.silo.silo_id for u, c in zip(updates, labels, strict=True) if c == label]
                    for label in sorted(set(labels))
                ],
            }
        )
        arrays.update(aggregate_heads(arrays, updates, list(self.tasks), self.combine))
        return arrays

    def results(self) -> dict[str, Any]:
        return {"matfl": {"clusters": self.clusters}}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "clusters": list(self.clusters)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.clusters[:] = state["clusters"]


def cluster_silos(deltas: list[np.ndarray], threshold: float) -> list[int]:
    """Cluster labels of the deltas by the cosine distance of their deviations from the mean
    (agglomerative, average linkage, cut at ``threshold``); one cluster for fewer than 2 deltas
    or when every deviation is zero."""
    from scipy.cluster.hierarchy import fcluster, linkage  # noqa: PLC0415 - 0.25 s to import, only MaTFL clusters

    if len(deltas) < 2:
        return [1] * len(deltas)
    matrix = np.stack(deltas)
    deviations = matrix - matrix.mean(axis=0)
    norms = np.linalg.norm(deviations, axis=1)
    if np.all(norms <= 1e-12):
        return [1] * len(deltas)
    deviations = deviations / np.maximum(norms, 1e-12)[:, None]
    tree = linkage(deviations, method="average", metric="cosine")
    return [int(c) for c in fcluster(tree, t=threshold, criterion="distance")]


# --------------------------------------------------------------------------------------- FedHCA2
@dataclass(frozen=True)
class FedHCA2Params(StrategyParams):
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


class FedHCA2(PerSiloModels):
    """Conflict-averse trunks and cross-attentive heads with learned per-silo weights."""

    params: FedHCA2Params

    @functools.cached_property
    def weighting(self) -> Weighting:
        return build_weighting("cagrad", {"c": self.params.ca_c, "rescale": True}, seed=self.seed)

    @functools.cached_property
    def hyper(self) -> dict[tuple[int, str], HyperWeight]:
        """(silo id, "trunk" or "<head layer>") -> its hyperweight."""
        return {}

    def stateful_parts(self) -> dict[str, Weighting]:
        return {"weighting": self.weighting}

    def state_dict(self) -> dict[str, Any]:
        hyper = [
            {"silo": silo, "name": name, **dataclasses.asdict(weight)}
            for (silo, name), weight in self.hyper.items()
        ]
        return {**super().state_dict(), "hyper": hyper}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
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
        arrays: Arrays,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        p = self.params
        trunk_keys = sorted(k for k in updates[0].sent if is_trunk_key(k))
        rows = {u.silo.silo_id: flatten(u.deltas, trunk_keys).to(torch.float64) for u in updates}
        for u in updates:  # learn from the deltas that followed each weight's last use
            self.hyperweight(u.silo.silo_id, "trunk").learn(
                rows[u.silo.silo_id].numpy(), p.hyper_lr, p.hyper_momentum, p.hyper_weight_decay
            )
            for layer, delta in head_layers(u.deltas).items():
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
            model = self.models[u.silo.silo_id]
            for key, value in unflatten(step, like).items():
                model[key] = (model[key] + value).astype(model[key].dtype)
        self.cross_attend_heads(updates)
        return arrays

    def cross_attend_heads(self, updates: list[ClientUpdate]) -> None:
        """h_{s,t} <- h_{s,t} + Delta + clip(beta) softmax(Delta Delta_j^T / sqrt(d)) [Delta_j]."""
        layers: dict[str, dict[int, np.ndarray]] = {}
        for u in updates:
            for layer, delta in head_layers(u.deltas).items():
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


def head_layers(deltas: Arrays) -> dict[str, np.ndarray]:
    """Head layer ("heads.<task>.<module>") -> its flattened parameter deltas (weight, bias)."""
    layers: dict[str, list[str]] = {}
    for key in sorted(deltas):
        if head_task(key) is not None:
            layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    return {
        layer: np.concatenate([deltas[k].reshape(-1).astype(np.float64) for k in keys])
        for layer, keys in layers.items()
    }


def layer_keys(model: Arrays, layer: str) -> list[str]:
    return sorted(k for k in model if k.rsplit(".", 1)[0] == layer)
