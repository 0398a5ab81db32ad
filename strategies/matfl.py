"""``matfl`` (Cai et al., CVPRW 2023, "Many-Task Federated Learning"): each round the sampled silos
are clustered by the cosine of their trunk deviations Delta_s - mean_r Delta_r (agglomerative,
average linkage, cut at cosine distance ``distance_threshold``); the silos of a cluster C all
get the trunk sum_{s in C} n_s (m_s + Delta_s) / sum_{s in C} n_s. Heads are averaged per task
over their holders, as in FedAvg, and shared by all silos.

Each silo has a model at the server (:class:`strategies.engine.PerSiloModels`): it receives its own
payload, trains it and sends the delta; there is no single global model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmtl.core.checks import positive
from fedmtl.core.records import Arrays, SiloInfo
from strategies.engine import (
    ClientUpdate,
    GlobalModel,
    Method,
    MethodParams,
    MethodSetup,
    PerSiloModels,
    Purpose,
    aggregate_heads,
    trunk_vector,
)


@dataclass(frozen=True)
class MaTFLParams(MethodParams):
    """``distance_threshold``: the cosine distance (in [0, 2]) at which the average-linkage tree of
    the silos' trunk deviations is cut into clusters."""

    distance_threshold: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "distance_threshold")


class MaTFL(PerSiloModels[MaTFLParams]):
    """Silos clustered by their trunk deviations each round; one trunk per cluster."""

    individual = "it clusters the silos by the cosine of their individual trunk updates"

    def __init__(self, params: MaTFLParams, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.clusters: list[dict[str, Any]] = []
        """Each round's clusters (silo ids), for ``summary.json``."""

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        arrays = Method.arrays_for(self, silo, model, purpose)
        own = self.model_of(silo.silo_id, arrays)
        return {k: own[k] if model.is_shared(k) else v for k, v in arrays.items()}  # global heads

    def absorb(
        self,
        server_round: int,
        model: GlobalModel,
        updates: list[ClientUpdate],
        trained: dict[int, Arrays],
    ) -> Arrays:
        labels = cluster_silos(
            [trunk_vector(u.deltas, model) for u in updates], self.params.distance_threshold
        )
        for label in sorted(set(labels)):
            members = [u for u, c in zip(updates, labels, strict=True) if c == label]
            total = float(sum(u.num_examples for u in members)) or float(len(members))
            keys = [k for k in members[0].sent if model.is_shared(k)]
            trunk = {
                k: sum(
                    ((u.num_examples or 1) / total * trained[u.silo.silo_id][k] for u in members),
                    start=np.zeros_like(members[0].sent[k], dtype=np.float64),
                )
                for k in keys
            }
            for u in members:
                own = self.models[u.silo.silo_id]
                own.update({k: v.astype(own[k].dtype) for k, v in trunk.items()})
        self.clusters.append(
            {
                "round": server_round,
                "clusters": [
                    [u.silo.silo_id for u, c in zip(updates, labels, strict=True) if c == label]
                    for label in sorted(set(labels))
                ],
            }
        )
        arrays = dict(model.arrays)
        arrays.update(aggregate_heads(model, updates, list(self.tasks), self.average))
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
