"""An engine behind Flower's ``Strategy`` interface.

fedmtl runs its rounds with :meth:`strategies.engine.Engine.run` (discovery, retries, evaluation
schedule, checkpoints). :class:`FlowerStrategy` offers the same engine to code written for Flower's
``Strategy``: its ``start`` runs the engine's loop, and its ``configure_*``/``aggregate_*`` let
Flower's own round loop, or a Flower wrapper around a strategy, drive the rounds one message
batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedmtl.core import records
from fedmtl.core.models import Roles
from fedmtl.core.records import Groups
from strategies.engine.aggregation import mean_train_loss
from strategies.engine.dispatch import Dispatch
from strategies.engine.loop import Engine
from strategies.engine.model import GlobalModel


class FlowerStrategy(Strategy):
    """``engine`` as a Flower ``Strategy``; ``groups``: the task groups of the arrays Flower hands
    it (those of the method's initial model by default); ``roles``: their roles (by default read
    from the names of a hard-sharing model, :class:`GlobalModel`)."""

    def __init__(
        self, engine: Engine, groups: Groups | None = None, roles: Roles | None = None
    ) -> None:
        self.engine = engine
        self.groups = groups if groups is not None else engine.method.initial_groups()
        self.roles: Roles = dict(roles or {})
        self._in_flight: dict[tuple[str, int], Dispatch] = {}

    def _model(self, arrays: ArrayRecord) -> GlobalModel:
        values = records.from_array_record(arrays)
        roles = {k: self.roles[k] for k in values} if self.roles else {}
        return GlobalModel(values, self.groups, roles)

    def _follow(self, model: GlobalModel) -> None:
        """Remember the structure of the model the engine returned (a method may regroup it)."""
        self.groups = model.groups
        self.roles = dict(model.roles)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """The engine's own loop (``timeout`` and the configs are the engine's parameters'; the
        global evaluation is the engine context's), as a Flower ``Result``."""
        final = self.engine.run(grid, self._model(initial_arrays), num_rounds)
        self._follow(final)
        result = Result(arrays=records.to_array_record(final.arrays))
        for record in self.engine.history:
            result.train_metrics_clientapp[record.server_round] = records.round_metrics(
                record.num_updates, len(record.rejected), record.train_loss
            )
            if record.personal is not None:
                result.evaluate_metrics_clientapp[record.server_round] = records.flat_task_metrics(
                    record.personal
                )
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sent = self.engine.dispatch_train(grid, server_round, self._model(arrays), config)
        self._in_flight[("train", server_round)] = sent
        return sent.messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = self._in_flight.pop(("train", server_round))
        intake = self.engine.take_updates(sent, replies)
        result = self.engine.aggregate(sent, intake)
        model = sent.model if result is None else result.model
        self._follow(model)
        loss = mean_train_loss(intake.updates, list(self.engine.tasks))
        metrics = records.round_metrics(intake.contributors, len(intake.rejected), loss)
        return records.to_array_record(model.arrays), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sent = self.engine.dispatch_evaluate(grid, server_round, self._model(arrays), config)
        self._in_flight[("evaluate", server_round)] = sent
        return sent.messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        sent = self._in_flight.pop(("evaluate", server_round))
        personal = self.engine.pool_evaluations(sent, replies).personal
        return None if personal is None else records.flat_task_metrics(personal)

    def summary(self) -> None:
        """Flower's summary hook: the engine logs its own at the start of :meth:`start`."""
