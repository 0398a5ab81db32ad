"""Divergence: a run whose model blows up stops with ``status: diverged`` instead of training on
and reporting success.

**Evidence** about round r, per task t, one value per silo s that reported t (:func:`evidence`):

- the round's train replies: l_{s,t} = max(loss_before_{s,t}, train_loss_{s,t}), the loss of the
  model the silo received (before training; its mean training loss when it reports none) and
  its mean loss during local training;
- the round's evaluation (every ``evaluate_every`` rounds), the model of round r itself: each
  silo's test loss of t;
- a reply refused because it carried non-finite numbers: the losses it reports, a non-finite
  one as +inf (a model that has blown up makes honest silos' losses and updates overflow; a
  reply whose arrays alone are spoiled still reports the finite losses its silo measured).

**Reference** L0_t: the lower median over the silos of loss_before_{s,t} in the first round
where t has a holder, i.e. the loss of the initial model, before any update was applied.

**Rule**: with m_t the lower median of a source's values (``statistics.median_low``: for a
silo's lie to move it, more than half of the task's silos must lie, so a few faulty silos can
neither fake a divergence nor hide one), round r is *suspect* when some task has m_t non-finite
or m_t > ``divergence_factor`` x L0_t. The run stops (:class:`DivergenceMonitor`) after
``divergence_rounds`` suspect rounds in a row, when its last round is suspect (its final model
is not sound), or when a round cannot aggregate and the refused replies' +inf make a task's
median non-finite (the silos cannot train the model any more). ``divergence_factor`` null turns
all of this off. Apart from it, an aggregate with non-finite values is never applied
(:func:`finite`): the run stops as ``diverged`` at once.

The run's checkpointer is told whether each round was sound and does not save a suspect one, so
the checkpoint a diverged run leaves holds a sound model (:data:`strategies.engine.RoundEnd`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmtl.core.records import Arrays
from strategies.engine.replies import ClientUpdate

LOSS = "loss"


def finite(arrays: Arrays) -> bool:
    """Whether every value of every floating-point array is finite."""
    return all(
        bool(np.isfinite(a).all()) for a in arrays.values() if np.issubdtype(a.dtype, np.floating)
    )


Evidence = dict[str, list[float]]
"""Task -> one loss per silo that reported it (+inf for a non-finite reply)."""


def evidence(
    losses: Mapping[int, Mapping[str, float]],
    refused: Mapping[int, Mapping[str, float]] | None = None,
    tasks: Sequence[str] = (),
) -> Evidence:
    """Per task (in the order of ``tasks``, then as found), the silos' losses (silo id -> task
    -> loss), then those the ``refused`` replies with non-finite numbers reported (+inf where
    non-finite)."""
    found: Evidence = {task: [] for task in tasks}
    for source in (losses, refused or {}):
        for _, per_task in sorted(source.items()):
            for task, loss in per_task.items():
                found.setdefault(task, []).append(float(loss))
    return {task: values for task, values in found.items() if values}


def train_losses(updates: Sequence[ClientUpdate]) -> dict[int, dict[str, float]]:
    """Silo id -> task -> max(loss before training, mean training loss)."""
    return {
        u.silo.silo_id: {
            t: max(u.loss_before.get(t, loss), loss) for t, loss in u.train_loss.items()
        }
        for u in updates
    }


def evaluated_losses(
    per_silo: Mapping[int, Mapping[str, Mapping[str, float]]],
) -> dict[int, dict[str, float]]:
    """Silo id -> task -> test loss, from an evaluation's per-silo metrics."""
    return {
        silo: {t: m[LOSS] for t, m in metrics.items() if LOSS in m}
        for silo, metrics in per_silo.items()
    }


def initial_losses(updates: Sequence[ClientUpdate]) -> Evidence:
    """Per task, each silo's loss of the model it received before training (its mean training
    loss when it reports none)."""
    found: Evidence = {}
    for u in updates:
        for task, loss in u.train_loss.items():
            found.setdefault(task, []).append(float(u.loss_before.get(task, loss)))
    return found


@dataclass(frozen=True)
class Verdict:
    """What a round's evidence said: ``reasons`` (empty: sound)."""

    server_round: int
    reasons: tuple[str, ...] = ()

    @property
    def sound(self) -> bool:
        return not self.reasons


class DivergenceMonitor:
    """Judges rounds (module docstring) with ``factor`` (None: off) and ``rounds`` in a row.

    ``reference``: task -> L0_t; ``streak``: suspect rounds in a row up to the last judged;
    ``suspect``: every suspect round with its reasons; ``last_sound``: the last round judged
    sound (0: the initial model)."""

    def __init__(self, factor: float | None, rounds: int) -> None:
        self.factor = factor
        self.rounds = rounds
        self.reference: dict[str, float] = {}
        self.streak = 0
        self.suspect: list[dict[str, Any]] = []
        self.last_sound = 0

    @property
    def enabled(self) -> bool:
        return self.factor is not None

    def learn(self, updates: Sequence[ClientUpdate]) -> None:
        """L0_t for the tasks that had none, from this round's replies."""
        for task, values in initial_losses(updates).items():
            finite_values = [v for v in values if math.isfinite(v)]
            if task not in self.reference and finite_values:
                self.reference[task] = float(statistics.median_low(finite_values))

    def reasons(self, source: str, found: Evidence) -> list[str]:
        """Why ``found`` (the evidence of ``source``) makes a round suspect, task by task."""
        if self.factor is None:
            return []
        reasons = []
        for task, values in found.items():
            middle = statistics.median_low(values)
            reference = self.reference.get(task)
            if not math.isfinite(middle):
                reasons.append(
                    f"{task}: the median {source} over {len(values)} silos is non-finite"
                )
            elif reference is not None and middle > self.factor * reference:
                reasons.append(
                    f"{task}: the median {source} {middle:.3g} over {len(values)} silos exceeds "
                    f"{self.factor:g} x {reference:.3g}, the initial model's"
                )
        return reasons

    def judge(self, server_round: int, sources: Mapping[str, Evidence]) -> Verdict:
        """The verdict on a round from its evidence by source (``train loss``, ``test loss``)."""
        reasons = [r for source, found in sources.items() for r in self.reasons(source, found)]
        verdict = Verdict(server_round, tuple(reasons))
        if verdict.sound:
            self.streak = 0
            self.last_sound = server_round
        else:
            self.streak += 1
            self.suspect.append({"round": server_round, "reasons": reasons})
        return verdict

    def unusable(self, found: Evidence) -> list[str]:
        """The tasks whose median in ``found`` is non-finite (a round that could not aggregate:
        its silos cannot train the model any more); none when off."""
        if self.factor is None:
            return []
        return [
            t for t, values in found.items() if not math.isfinite(statistics.median_low(values))
        ]

    @property
    def diverged(self) -> bool:
        """``rounds`` suspect rounds in a row."""
        return self.enabled and self.streak >= self.rounds

    def summary(self) -> dict[str, Any]:
        """``summary.json``'s ``divergence``."""
        return {
            "factor": self.factor,
            "rounds": self.rounds,
            "reference": dict(self.reference),
            "suspect_rounds": [entry["round"] for entry in self.suspect],
            "last_sound_round": self.last_sound,
            "model_round": None,  # the run fills it in when it keeps a diverged run's model
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": dict(self.reference),
            "streak": self.streak,
            "suspect": [dict(entry) for entry in self.suspect],
            "last_sound": self.last_sound,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reference = {t: float(v) for t, v in state.get("reference", {}).items()}
        self.streak = int(state.get("streak", 0))
        self.suspect = [dict(entry) for entry in state.get("suspect", [])]
        self.last_sound = int(state.get("last_sound", 0))
