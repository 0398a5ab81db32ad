"""What one federated round produced, as the round loop hands it to its observers (result files,
progress bar, wandb)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class RoundRecord:
    """One round: how many silos were sampled and how many updates were used, the replies refused
    (round, node, silo, reason), each task's train loss (example-weighted over silos) and, for the
    balancing strategies, its weight w_t in the trunk update; after an evaluation, the pooled
    personal metrics (task -> metric -> value) and each silo's own; bytes of model arrays sent each
    way and the round's wall time; ``suspect``: why the round's losses suggest the model diverged
    (empty: a sound round). ``simulated_time_s``: the round's simulated time and
    ``simulated_clock_s`` the run's so far (the virtual clock, :mod:`strategies.engine.system`;
    None: not timed), ``stragglers``: the silos whose replies came past the deadline."""

    server_round: int
    num_sampled: int
    num_updates: int
    rejected: list[dict[str, Any]]
    train_loss: dict[str, float]
    personal: dict[str, dict[str, float]] | None = None
    per_silo: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    task_weights: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    """A privacy mode's figures of the round (epsilon so far, noise, clipping norm, ...)."""
    suspect: list[str] = field(default_factory=list)
    simulated_time_s: float | None = None
    simulated_clock_s: float | None = None
    stragglers: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoundRecord:
        """The record ``dataclasses.asdict`` gave, back from JSON (silo ids become ints again)."""
        per_silo = {int(silo): metrics for silo, metrics in values.get("per_silo", {}).items()}
        return cls(**{**values, "per_silo": per_silo})


class RoundObserver(Protocol):
    """Anything told about each round as it ends."""

    def on_round(self, record: RoundRecord) -> None: ...
