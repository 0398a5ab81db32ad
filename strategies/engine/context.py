"""What a run gives the engine from outside, once, when it builds it (:class:`RunContext`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedmtl.core.records import SiloCheckpoint
from fedmtl.core.rounds import RoundObserver
from strategies.engine.model import GlobalModel

GlobalEvaluation = Callable[[int, GlobalModel], dict[str, dict[str, float]] | None]
"""``(round, model) -> task -> metric -> value``, or None when it did not evaluate this round."""

RoundEnd = Callable[[int, GlobalModel, Callable[[], dict[str, Any]], bool], int | None]
"""Called once a round is over and reported: ``(round, model, state, sound) -> the round now
saved``, with ``state()`` the engine's :meth:`~strategies.engine.Engine.state_dict` and ``sound``
False when the round's losses suggest the model diverged (:mod:`strategies.engine.divergence`:
such a round must not be saved); it returns the round of the checkpoint the call completed, or
None when it saved none."""


@dataclass(frozen=True)
class RunContext:
    """The run around the engine.

    ``scope``: the run's name on the silos when several runs share the same nodes one after
    another (each keeps its own silo state; empty: the only one). ``checkpoint``: what silos that
    keep state in files are told first (a resumed run: the checkpoint it resumed from).
    ``observers`` are told each round's :class:`~fedmtl.core.rounds.RoundRecord`;
    ``evaluate_global`` evaluates the global model on a held-out set (for methods with one global
    model); ``on_round_end`` checkpoints. ``clock`` times the rounds (seconds). ``stop``: once
    set (e.g. by a signal handler in another thread), the engine stops while it waits for replies
    (within :data:`~strategies.engine.loop.PULL_INTERVAL_S`) with
    :class:`~strategies.engine.RunStopped` (``interrupted``); None: it waits with the grid's own
    ``send_and_receive``.
    """

    scope: str = ""
    checkpoint: SiloCheckpoint = field(default_factory=SiloCheckpoint)
    observers: Sequence[RoundObserver] = ()
    evaluate_global: GlobalEvaluation | None = None
    on_round_end: RoundEnd | None = None
    clock: Callable[[], float] = time.perf_counter
    stop: threading.Event | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "observers", tuple(self.observers))
