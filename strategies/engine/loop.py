"""The engine: runs any method's rounds (:class:`Engine`).

Each round:

1. **train**: the roster samples silos (:mod:`strategies.engine.roster`); each gets the arrays the
   method gives it and the round's request (local training, the method's silo task, task groups,
   checkpoint and scope: :class:`~fedmtl.core.records.TrainRequest`); the replies are checked and
   made robust (:mod:`strategies.engine.intake`); with at least ``min_train_nodes`` valid updates
   (or all sampled, when fewer) the method aggregates them into the new global model, else the
   round is sent again (``round_retries``) and then the run stops (``too_few_replies``). The
   virtual clock (:mod:`strategies.engine.system`) decides which silos are online (only they
   are sampled), times the round (the slowest reply's download, compute and upload), drops the
   replies past the round's deadline (a straggler counts as a missing reply) and, for partial
   work, sends each silo only the local steps that fit; a round in which no silo is online (or
   none fits a step) trains nothing and keeps the model;
2. **evaluate** (every ``evaluate_every`` rounds and after the last): sampled silos evaluate on
   their own test split and the statistics are pooled per task; the run's global evaluation (a
   held-out set) runs on the same schedule when the method has one global model;
3. the round is judged (:mod:`strategies.engine.divergence`: the median loss of every task
   against its loss under the initial model) and its :class:`~fedmtl.core.rounds.RoundRecord`
   goes to the observers; the run's round-end hook (checkpoints) is called, told whether the
   round was sound; what it saved is told to the silos from then on. ``divergence_rounds``
   suspect rounds in a row (or a suspect last round) stop the run (``diverged``).

An aggregate with non-finite values is never applied (``diverged`` at once), and every
aggregated round's groups are checked against the robust rule's breakdown point for
``max_faulty`` faulty silos (:mod:`strategies.engine.breakdown`).

What persists across rounds is the engine's (roster, bytes, rejections, participants, history) and
the method's own state; both are in :meth:`Engine.state_dict` for checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from fedmtl.core import records
from fedmtl.core.records import Arrays, EvaluateRequest, MethodSpec, SiloInfo, TrainRequest
from fedmtl.core.rounds import RoundRecord
from fedmtl.core.training import UpdateMode
from strategies.engine.aggregation import mean_train_loss
from strategies.engine.breakdown import BreakdownWatch
from strategies.engine.buffered import Buffer, fits, scaled
from strategies.engine.context import RunContext
from strategies.engine.dispatch import (
    Configure,
    Dispatch,
    answered_node,
    answered_nodes,
    dispatch,
)
from strategies.engine.divergence import (
    DivergenceMonitor,
    Evidence,
    evaluated_losses,
    evidence,
    finite,
    train_losses,
)
from strategies.engine.intake import (
    Evaluation,
    Intake,
    pool_evaluations,
    rejection,
    take_updates,
)
from strategies.engine.method import Method, Purpose, Round, RoundResult
from strategies.engine.model import GlobalModel
from strategies.engine.params import MethodParams
from strategies.engine.replies import ClientUpdate, RunStopped
from strategies.engine.roster import Exchange, Roster
from strategies.engine.summed import PrivateAggregation, RecordLedger
from strategies.engine.system import SystemParams, Transfer, VirtualClock

log = logging.getLogger("fedmtl")

PULL_INTERVAL_S = 0.1
"""How often the engine looks for replies (and at its stop event) while it waits for them."""
WAIT_INTERVAL_S = 1.0
"""How often the engine looks for gone silos while it waits for them to come back."""


STALE_LAYOUT = (
    "buffered update refused: the global model's layout (task groups, update mode) changed "
    "since its silo was sent the model"
)


@dataclass
class Timing:
    """A training round's simulated seconds (every attempt's) and its stragglers (silo ids)."""

    seconds: float = 0.0
    stragglers: set[int] = field(default_factory=set)


class Engine:
    """Runs the rounds of ``method`` (registered as ``name``, the name silos look its silo half up
    by) with the common ``params``, in ``context``."""

    def __init__(
        self,
        name: str,
        method: Method[Any],
        params: MethodParams,
        context: RunContext | None = None,
        private: PrivateAggregation | None = None,
        ledger: RecordLedger | None = None,
        system: VirtualClock | None = None,
    ) -> None:
        self.name = name
        self.ledger = ledger
        """Record-level DP's accounting (``privacy=dp_record``), if any."""
        self.private = private
        """The privacy mode's aggregation from sums (SecAgg+, silo-level DP), if any."""
        self.method = method
        self.params = params
        self.context = context or RunContext()
        self.tasks = method.tasks
        self.system = system or VirtualClock(SystemParams(), method.seed)
        """The virtual clock (default: ``system=ideal``)."""
        self.timed = private is None or not private.privacy.secure
        """Whether rounds are timed: not under SecAgg+, whose stages the clock does not model."""
        self.timing = Timing()
        self.buffer = Buffer()
        """FedBuff's updates in flight (``system.mode: buffered``)."""
        self.roster = Roster(list(method.tasks), method.seed)
        self.silo_checkpoint = self.context.checkpoint
        self.bytes_up = 0
        self.bytes_down = 0
        self.rejections: list[dict[str, Any]] = []
        self.participants: set[int] = set()  # silo ids whose update was aggregated
        self.history: list[RoundRecord] = []
        self.breakdowns = BreakdownWatch(
            params.robust, params.trim(), params.max_faulty, params.norm_bound
        )
        self.divergence = DivergenceMonitor(params.divergence_factor, params.divergence_rounds)
        self._serialised: tuple[GlobalModel, ArrayRecord] | None = None

    # ------------------------------------------------------------------ the loop
    def run(
        self, grid: Grid, model: GlobalModel, num_rounds: int, first_round: int = 1
    ) -> GlobalModel:
        """Run rounds ``first_round`` to ``num_rounds`` from ``model`` (a resumed run starts after
        its checkpoint, from the state :meth:`load_state_dict` restored); return the final model."""
        params = self.params
        log.info("%s over tasks %s, sampling %s", self.name, list(self.tasks), params)
        self.roster.wait_for(grid, params.min_available_nodes, params.wait_for_nodes_s)
        self.roster.discover(grid, lambda messages: self.exchange(grid, messages))
        for server_round in range(first_round, num_rounds + 1):
            started = self.context.clock()
            down, up = self.bytes_down, self.bytes_up  # every attempt of the round counts
            self.timing = Timing()
            result, intake, sent = self.train_round(grid, server_round, model)
            model = result.model
            record = RoundRecord(
                server_round=server_round,
                num_sampled=len(sent.messages),
                num_updates=intake.contributors,
                rejected=list(intake.rejected),
                train_loss=mean_train_loss(intake.updates, list(self.tasks)),
                task_weights=result.task_weights,
                bytes_up=self.bytes_up - up,
                bytes_down=self.bytes_down - down,
                privacy=self.privacy_report(),
            )
            if self.timed:
                record.simulated_time_s = self.timing.seconds
                record.simulated_clock_s = self.system.now
                record.stragglers = sorted(self.timing.stragglers)
            tasks = list(self.tasks)
            sources: dict[str, Evidence] = {
                "train loss": evidence(train_losses(intake.updates), intake.non_finite, tasks)
            }
            if server_round % params.evaluate_every == 0 or server_round == num_rounds:
                evaluation = self.evaluate_round(grid, server_round, model)
                record.bytes_down = self.bytes_down - down
                record.rejected += evaluation.rejected
                record.personal = evaluation.personal
                record.per_silo = evaluation.per_silo
                found = evidence(
                    evaluated_losses(evaluation.per_silo), evaluation.non_finite, tasks
                )
                sources["test loss"] = found
            if self.context.evaluate_global is not None and self.method.global_model:
                self.context.evaluate_global(server_round, model)
            verdict = self.divergence.judge(server_round, sources)
            record.suspect = list(verdict.reasons)
            if not verdict.sound:
                log.warning("round %d is suspect: %s", server_round, "; ".join(verdict.reasons))
            record.seconds = self.context.clock() - started
            self.history.append(record)
            for observer in self.context.observers:
                observer.on_round(record)
            if self.context.on_round_end is not None:
                saved = self.context.on_round_end(
                    server_round, model, self.state_dict, verdict.sound
                )
                if saved is not None:
                    self.silo_checkpoint = replace(self.silo_checkpoint, saved_round=saved)
            if self.divergence.diverged:
                raise RunStopped(
                    "diverged",
                    f"rounds {server_round - self.divergence.streak + 1} to {server_round} are "
                    f"suspect ({'; '.join(verdict.reasons)}); the last sound round is "
                    f"{self.divergence.last_sound}",
                )
        if self.divergence.enabled and self.divergence.streak:
            raise RunStopped(
                "diverged",
                f"the last round, {num_rounds}, is suspect; the last sound round is "
                f"{self.divergence.last_sound}",
            )
        return model

    def train_round(
        self, grid: Grid, server_round: int, model: GlobalModel
    ) -> tuple[RoundResult, Intake, Dispatch]:
        """One training round, sent again (up to ``round_retries`` times) while it has fewer
        valid updates than required; :class:`RunStopped` (``too_few_replies``) after that. A
        round sent to no silo (none online, none fits a step before the deadline) keeps
        ``model``. With ``system.mode: buffered``, one aggregation of FedBuff's instead
        (:meth:`buffered_round`)."""
        if self.buffered:
            return self.buffered_round(grid, server_round, model)
        attempts = self.params.round_retries + 1
        for attempt in range(attempts):
            sent = self.dispatch_train(grid, server_round, model)
            exchange = self.timed_exchange(grid, sent)
            if self.private is not None:
                intake = self.take_sums(sent, exchange)
            else:
                intake = self.take_updates(sent, exchange(sent.messages))
            if not sent.messages:
                log.warning(
                    "round %d: no silo online that fits the round; none trains", server_round
                )
                return RoundResult(model), intake, sent
            if self.ledger is not None:  # record-level DP: every attempt's releases count
                released = (
                    self.private.contributors
                    if self.private is not None
                    else [update.silo for update in intake.updates]
                )
                self.ledger.observe(released)
            self.divergence.learn(intake.updates)  # a task's first holders: its reference
            result = self.aggregate(sent, intake)
            if result is not None:
                return result, intake, sent
            log.warning("round %d: attempt %d of %d failed", server_round, attempt + 1, attempts)
            unusable = self.divergence.unusable(
                evidence(train_losses(intake.updates), intake.non_finite, list(self.tasks))
            )
            if unusable:
                raise RunStopped(
                    "diverged",
                    f"round {server_round}: most silos of {unusable} replied with non-finite "
                    "values: the model they received cannot be trained any more; the last sound "
                    f"round is {self.divergence.last_sound}",
                )
        raise RunStopped(
            "too_few_replies",
            f"round {server_round}: too few valid updates after {attempts} attempts "
            "(see 'rejected' for why).",
        )

    def dispatch_train(
        self,
        grid: Grid,
        server_round: int,
        model: GlobalModel,
        extra: ConfigRecord | None = None,
    ) -> Dispatch:
        """The round's train messages to the sampled silos (the keys of ``extra`` travel too;
        the protocol's own take precedence); with partial work under a deadline, each silo is
        asked for the local steps that fit (:meth:`VirtualClock.step_budget`) and one that fits
        none is not asked."""
        task = self.method.silo_task(server_round)
        request = TrainRequest(
            server_round=server_round,
            train=self.method.train,
            method=MethodSpec(self.name, dict(task.params)),
            update_mode=task.update_mode,
            groups=model.groups,
            checkpoint=self.silo_checkpoint,
            scope=self.context.scope,
            update_dtype=self.params.update_dtype,
            compression=self.params.compression_spec(),
            loss_before=task.loss_before,
        )
        config = ConfigRecord({**(extra or {}), **request.to_config()})

        def fitted(silo: SiloInfo, arrays: Arrays, nbytes: int) -> ConfigRecord | None:
            train = request.train
            rows = min(train.batch_size, silo.num_train)
            budget = self.system.step_budget(silo.silo_id, nbytes, values_of(arrays), rows)
            steps = train.local_epochs * -(-silo.num_train // train.batch_size)
            if budget is None or budget >= min(steps, train.max_steps or steps):
                return config  # every step fits: the request unchanged
            if budget < 1:
                return None
            fits = replace(request, train=replace(train, max_steps=budget))
            return ConfigRecord({**config, **fits.to_config()})

        partial = self.timed and self.system.params.stragglers == "partial"
        return self._dispatch(
            grid,
            server_round,
            config,
            model,
            "train",
            task.update_mode,
            fitted if partial else None,
        )

    def timed_exchange(self, grid: Grid, sent: Dispatch) -> Exchange:
        """The round's exchange: :meth:`exchange`, with the replies to ``sent``'s messages timed
        on the virtual clock and those past the deadline dropped (:meth:`clock_replies`)."""

        def exchange(messages: list[Message]) -> list[Message]:
            replies = self.exchange(grid, messages)
            if not self.timed or messages is not sent.messages:
                return replies
            return self.clock_replies(sent, replies)

        return exchange

    def clock_replies(self, sent: Dispatch, replies: list[Message]) -> list[Message]:
        """The replies to ``sent`` that came within the round's deadline (unasked silos and
        replies past it are the round's stragglers); the clock moves on by the round's time."""
        settled = self.system.settle(self.reply_times(sent, replies))
        self.timing.seconds += settled.seconds
        self.timing.stragglers |= settled.dropped | sent.unasked
        if settled.dropped:
            log.info("round %d: stragglers dropped %s", sent.server_round, sorted(settled.dropped))
        late = {node for node, info in self.roster.silos.items() if info.silo_id in settled.dropped}
        destinations = answered_nodes(sent.messages)
        return [r for r in replies if answered_node(r, destinations) not in late]

    def reply_times(self, sent: Dispatch, replies: list[Message]) -> dict[int, float]:
        """Silo id -> t_s of each reply to ``sent``: from the bytes it received and sent and the
        local steps it reports (:meth:`VirtualClock.duration`)."""
        destinations = answered_nodes(sent.messages)
        batch = self.method.train.batch_size
        durations: dict[int, float] = {}
        for reply in replies:
            node = answered_node(reply, destinations)
            info = self.roster.silos.get(node)
            if info is None or node not in sent.sent:
                continue
            content = reply.content if reply.has_content() else None
            transfer = Transfer(
                down_bytes=sent.node_bytes[node],
                up_bytes=0 if content is None else records.update_bytes(content),
                parameters=values_of(sent.sent[node]),
                steps=0 if content is None else records.reported_steps(content),
                rows_per_step=min(batch, info.num_train),
            )
            durations[info.silo_id] = self.system.duration(info.silo_id, transfer)
        return durations

    @property
    def buffered(self) -> bool:
        """Whether rounds are FedBuff's aggregations (``system.mode: buffered``)."""
        return self.system.params.mode == "buffered"

    def buffered_round(
        self, grid: Grid, server_round: int, model: GlobalModel
    ) -> tuple[RoundResult, Intake, Dispatch]:
        """One aggregation of FedBuff (:mod:`strategies.engine.buffered`): the idle online silos
        are sent ``model`` until C train; their checked updates join the buffer at their
        simulated arrival; the K first to arrive, each scaled by s(tau), are aggregated by the
        method (an update of an earlier model layout is refused); the clock moves on to the
        K-th arrival plus ``server_s``. Without a usable update the model is kept."""
        started = self.system.now
        sent = self.dispatch_train(grid, server_round, model)
        replies = self.exchange(grid, sent.messages)
        intake = self.take_updates(sent, replies)
        times = self.reply_times(sent, replies)
        for update in intake.updates:
            self.buffer.add(started + times[update.silo.silo_id], update)
        jobs = self.buffer.take(self.buffer_size)
        if jobs:
            self.system.now = max(started, jobs[-1].arrival)
        self.system.now += self.system.params.server_s
        self.timing.seconds = self.system.now - started
        mode = self.method.silo_task(server_round).update_mode
        updates, refused = [], []
        for job in jobs:
            if fits(job.update, model, mode):
                weight = self.system.staleness_weight(self.buffer.staleness(job))
                updates.append(scaled(job.update, weight))
            else:
                node, silo = job.update.node_id, job.update.silo
                refused.append(rejection(server_round, node, silo, STALE_LAYOUT))
        self.rejections += refused
        taken = Intake(updates, intake.rejected + refused, intake.bytes_up)
        if not updates:
            log.warning("round %d: no usable update arrived; the model is kept", server_round)
            return RoundResult(model), taken, sent
        self.divergence.learn(updates)
        self.buffer.version += 1
        return self.apply(server_round, model, updates), taken, sent

    @property
    def buffer_size(self) -> int:
        """K: FedBuff's updates per aggregation (default C, itself default every silo)."""
        params = self.system.params
        return params.buffer_size or params.concurrency or len(self.roster.silos)

    def take_updates(self, sent: Dispatch, replies: Iterable[Message]) -> Intake:
        """The checked updates of the replies to ``sent`` (:func:`~strategies.engine.intake.take_updates`)."""
        silos, check = self.roster.silos, self.method.check_update
        intake = take_updates(sent, replies, silos, self.params, check)
        self.bytes_up += intake.bytes_up
        self.rejections += intake.rejected
        return intake

    def take_sums(self, sent: Dispatch, exchange: Exchange) -> Intake:
        """The round's aggregate update from sums (:mod:`strategies.engine.summed`): SecAgg+
        sends ``sent``'s messages inside its stages, central DP as usual (``exchange``: the
        round's, :meth:`timed_exchange`)."""
        assert self.private is not None
        rule = self.method.secure_sums(sent.server_round)
        if isinstance(rule, str):  # refused before the run (strategies.engine.refusal)
            raise RunStopped("crashed", f"{self.name} cannot aggregate sums: {rule}")
        intake = self.private.take(
            sent,
            exchange,
            self.roster.silos,
            self.params,
            rule,
            list(self.tasks),
            self.method.check_update,
            loss_before=self.method.silo_task(sent.server_round).loss_before,
        )
        self.bytes_up += intake.bytes_up
        self.bytes_down += intake.bytes_down
        self.rejections += intake.rejected
        return intake

    def aggregate(self, sent: Dispatch, intake: Intake) -> RoundResult | None:
        """The method's new global model from the round's updates; None (the model unchanged)
        with fewer valid updates than ``min_train_nodes`` (or than sampled, when fewer)."""
        required = min(self.params.min_train_nodes, len(sent.messages))
        if intake.contributors < required or not intake.updates:
            log.warning(
                "round %d: %d valid updates, fewer than the %d required; the model is unchanged",
                sent.server_round,
                intake.contributors,
                required,
            )
            return None
        return self.apply(sent.server_round, sent.model, intake.updates)

    def apply(
        self, server_round: int, model: GlobalModel, updates: list[ClientUpdate]
    ) -> RoundResult:
        """The method's aggregate of ``updates`` into ``model``; :class:`RunStopped`
        (``diverged``) for one with non-finite values, which is never applied."""
        round_ = Round(server_round, tuple(self.roster.known()))
        result = self.method.aggregate(round_, model, updates)
        if not finite(result.model.arrays):
            raise RunStopped(
                "diverged",
                f"round {server_round}: the aggregated model has non-finite values; it was "
                f"not applied (the last sound round is {self.divergence.last_sound})",
            )
        for update in updates:
            self.participants.update(update.contributors or (update.silo.silo_id,))
        if self.private is None:  # from sums, one aggregate update: no count of holders per group
            self.breakdowns.check(server_round, updates, list(self.tasks))
        return result

    def dispatch_evaluate(
        self,
        grid: Grid,
        server_round: int,
        model: GlobalModel,
        extra: ConfigRecord | None = None,
    ) -> Dispatch:
        """The round's evaluate messages to the sampled silos (``extra`` as for train)."""
        request = EvaluateRequest(
            server_round=server_round,
            method=MethodSpec(self.name, dict(self.method.silo_task(server_round).params)),
            groups=model.groups,
            checkpoint=self.silo_checkpoint,
            scope=self.context.scope,
        )
        config = ConfigRecord({**(extra or {}), **request.to_config()})
        return self._dispatch(grid, server_round, config, model, "evaluate")

    def pool_evaluations(self, sent: Dispatch, replies: Iterable[Message]) -> Evaluation:
        """The pooled metrics of the replies to ``sent``."""
        evaluation = pool_evaluations(sent, replies, self.roster.silos, self.tasks)
        self.rejections += evaluation.rejected
        return evaluation

    def evaluate_round(self, grid: Grid, server_round: int, model: GlobalModel) -> Evaluation:
        """Sampled silos evaluate ``model`` (or what the method's silo half evaluates)."""
        sent = self.dispatch_evaluate(grid, server_round, model)
        return self.pool_evaluations(sent, self.exchange(grid, sent.messages))

    def exchange(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Send ``messages`` and return the replies that came within ``reply_timeout_s``; with a
        stop event, :class:`RunStopped` (``interrupted``) as soon as it is set while waiting."""
        timeout = self.params.reply_timeout_s
        stop = self.context.stop
        if stop is None:
            return list(grid.send_and_receive(messages, timeout=timeout))
        pending = set(grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            if stop.is_set():
                raise RunStopped("interrupted", "the run was asked to stop (a signal)")
            came = list(grid.pull_messages(pending))
            replies += came
            pending -= {reply.metadata.reply_to_message_id for reply in came}
            if pending:
                stop.wait(PULL_INTERVAL_S)
        if stop.is_set():
            raise RunStopped("interrupted", "the run was asked to stop (a signal)")
        return replies

    def wait_for_silos(self, grid: Grid, server_round: int, minimum: int) -> None:
        """Before a training round: at least ``minimum`` known silos connected (at most as many
        as were ever known: a federation smaller than ``min_train_nodes`` trains with all of
        it). A silo gone (its SuperNode died or lost its link) is waited for, up to
        ``wait_for_nodes_s``, while discovery looks for it again; after that the run stops
        with status ``too_few_silos`` (:class:`RunStopped`), its last checkpoint intact."""
        required = min(minimum, len(self.roster.silos))
        connected = self.roster.connected(grid)
        if len(connected) >= required:
            return
        deadline = time.monotonic() + self.params.wait_for_nodes_s
        present = {info.silo_id for info in connected}
        gone = sorted({info.silo_id for info in self.roster.silos.values()} - present)
        log.warning(
            "round %d: %d of the %d silos training needs (strategy.min_train_nodes) are "
            "connected; waiting up to %.0fs for silos %s to come back",
            server_round, len(connected), required, self.params.wait_for_nodes_s, gone,
        )  # fmt: skip
        while len(connected) < required:
            if time.monotonic() >= deadline:
                raise RunStopped(
                    "too_few_silos",
                    f"round {server_round}: only {len(connected)} of the {required} silos "
                    f"training needs (strategy.min_train_nodes) were connected after "
                    f"{self.params.wait_for_nodes_s:.0f}s (strategy.wait_for_nodes_s); gone: "
                    f"{gone}. Restart their nodes (they keep their state in their state-dir) "
                    "and continue the run from its last checkpoint.",
                )
            self.pause(WAIT_INTERVAL_S)
            self.roster.discover(grid, lambda messages: self.exchange(grid, messages))
            connected = self.roster.connected(grid)
        log.info("round %d: silos back, %d connected", server_round, len(connected))

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``; :class:`RunStopped` (``interrupted``) as soon as the run's stop
        event is set."""
        if self.context.stop is None:
            time.sleep(seconds)
        elif self.context.stop.wait(seconds):
            raise RunStopped("interrupted", "the run was asked to stop (a signal)")

    def _dispatch(
        self,
        grid: Grid,
        server_round: int,
        config: ConfigRecord,
        model: GlobalModel,
        purpose: Purpose,
        update_mode: UpdateMode = "joint",
        configure: Configure | None = None,
    ) -> Dispatch:
        """The round's messages of one kind to the silos the roster samples for it (for
        training, among the silos online; ``configure``: see :func:`dispatch`)."""
        self.roster.discover(grid, lambda messages: self.exchange(grid, messages))  # joined since
        online: set[int] | None = None
        if purpose == "train":
            fraction, minimum = self.params.fraction_train, self.params.min_train_nodes
            self.wait_for_silos(grid, server_round, minimum)
            if self.timed and not self.system.always_online:
                known = [info.silo_id for info in self.roster.known()]
                online = self.system.online(known, server_round)
            if self.buffered:  # FedBuff: the idle online silos, until C train
                pool = online if online is not None else {i.silo_id for i in self.roster.known()}
                idle = pool - self.buffer.busy()
                concurrency = self.system.params.concurrency or len(self.roster.silos)
                online, fraction = idle, 0.0
                minimum = max(concurrency - len(self.buffer.in_flight), 0)
        else:
            fraction, minimum = self.params.fraction_evaluate, self.params.min_evaluate_nodes
        nodes = self.roster.sample(grid, fraction, minimum, online)
        sent = dispatch(
            server_round,
            model,
            self._serialise(model),
            nodes,
            self.roster.silos,
            lambda silo: self.method.arrays_for(silo, model, purpose),
            config,
            MessageType.TRAIN if purpose == "train" else MessageType.EVALUATE,
            update_mode,
            configure,
        )
        self.bytes_down += sent.bytes_down
        return sent

    def _serialise(self, model: GlobalModel) -> ArrayRecord:
        """The model's arrays as a record, built once per model."""
        if self._serialised is None or self._serialised[0] is not model:
            self._serialised = (model, records.to_array_record(model.arrays))
        return self._serialised[1]

    @property
    def simulated_time_s(self) -> float | None:
        """The run's simulated time so far (``summary.json``); None when rounds are not timed."""
        return self.system.now if self.timed else None

    def privacy_report(self) -> dict[str, Any]:
        """The round's privacy figures (metrics.jsonl); empty without a privacy mode."""
        report = dict(self.private.report) if self.private is not None else {}
        return report | (self.ledger.report if self.ledger is not None else {})

    def privacy_results(self) -> dict[str, Any]:
        """``summary.json``'s ``privacy`` block: the mode, and what it spent."""
        if self.private is None and self.ledger is None:
            return {"mode": "none"}
        results = self.private.results() if self.private is not None else {}
        return results | (self.ledger.results() if self.ledger is not None else {})

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What the loop needs to go on exactly where it stopped: a tree of JSON values and numpy
        arrays (a checkpoint stores them apart)."""
        return {
            "roster": self.roster.state_dict(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rejections": list(self.rejections),
            "participants": sorted(self.participants),
            "history": [asdict(record) for record in self.history],
            "method": self.method.state_dict(),
            "breakdowns": self.breakdowns.state_dict(),
            "divergence": self.divergence.state_dict(),
            "system": self.system.state_dict(),
            **({"buffer": self.buffer.state_dict()} if self.buffered else {}),
            **({"privacy": self.private.state_dict()} if self.private is not None else {}),
            **({"ledger": self.ledger.state_dict()} if self.ledger is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.roster.load_state_dict(state["roster"])
        self.bytes_up = int(state["bytes_up"])
        self.bytes_down = int(state["bytes_down"])
        self.rejections = list(state["rejections"])
        self.participants = set(state["participants"])
        self.history = [RoundRecord.from_dict(record) for record in state["history"]]
        self.method.load_state_dict(state["method"])
        self.breakdowns.load_state_dict(state.get("breakdowns", {}))  # older checkpoints: none
        self.divergence.load_state_dict(state.get("divergence", {}))
        if "system" in state:  # older checkpoints: no clock
            self.system.load_state_dict(state["system"])
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.private is not None and "privacy" in state:
            self.private.load_state_dict(state["privacy"])
        if self.ledger is not None and "ledger" in state:
            self.ledger.load_state_dict(state["ledger"])


def values_of(arrays: Arrays) -> int:
    """The number of values in ``arrays`` (P, a silo's parameters for the clock)."""
    return sum(int(value.size) for value in arrays.values())
