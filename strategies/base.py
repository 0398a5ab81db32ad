"""``TaskAwareStrategy``: the base of every fedmtl server strategy (a Flower ``Strategy``).

What it does for every subclass:
- **Silo discovery.** Before round 1 (and for nodes that join later) it asks each node which silo it
  holds (``query`` message): its tasks and labelled example counts (:class:`fedmtl.core.records.SiloInfo`).
  A node whose answer is unusable (an error, a missing field, an unknown task, a silo id another
  node already holds) is ignored for the rest of the run.
- **Sampling.** Each round it samples ``max(ceil(fraction * N), min_nodes)`` of the N known nodes with
  a seeded generator, and sends each sampled silo the trunk and the heads of *its own* tasks only.
- **Reply checks** (:mod:`strategies.replies`). A reply with an error, missing records, unexpected
  keys or shapes, a non-finite value or a bad example count is rejected, logged and counted; the
  round goes on with the others and the global model is never touched by a rejected reply.
- **Per-task head aggregation.** With n_{s,t} the labelled training examples of task t on silo s and
  Delta h_{s,t} its head update:  h_t <- h_t + sum_{s holds t} n_{s,t} Delta h_{s,t} / sum_s n_{s,t}.
  A task no sampled silo holds keeps its head.
- **Trunk aggregation**: the subclass combines the round's updates into one trunk update Delta
  (:meth:`TaskAwareStrategy.trunk_update`); a FedOpt server optimizer
  (:mod:`strategies.server_opt`) applies it.
- **Update modes.** A silo sends its trunk update either ``joint`` (one delta) or ``per_task`` (one
  delta per task it holds, which sum to the joint delta; see :mod:`fedmtl.core.training`), as the
  strategy asks (:meth:`TaskAwareStrategy.update_mode`); the base checks both and always fills the
  joint delta.
- **Evaluation** on each sampled silo's own test split ("personal"), pooled per task exactly by
  summing the silos' additive statistics.
- Bytes of model arrays sent down and up are counted.
- **One trunk per task group.** When :attr:`TaskAwareStrategy.model_groups` is set (task grouping,
  :mod:`strategies.grouping`) the model holds ``trunks.<group>.*`` instead of ``trunk.*``; a silo
  receives only the trunks of its tasks' groups, and in ``per_task`` mode each task's share covers
  its own group's trunk only.

The round's state is explicit: :meth:`TaskAwareStrategy.dispatch_train` returns a
:class:`Dispatch` (the messages and what they carried), :meth:`TaskAwareStrategy.aggregate_updates`
turns it and the replies into a :class:`TrainOutcome`, :meth:`TaskAwareStrategy.pool_evaluations`
into an :class:`EvaluateOutcome`, and :meth:`TaskAwareStrategy.start` (the round loop) reads them.
What persists across rounds is the run's: known silos, the server optimizer's moments, totals of
bytes and rejections, the round history, and the state subclasses keep (balancing, grouping).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedmtl.core import records
from fedmtl.core.checks import fraction, int_at_least, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import head_task, is_trunk_key, trunk_group
from fedmtl.core.records import (
    AffinityRequest,
    Arrays,
    EvaluateReply,
    EvaluateRequest,
    PersonalMode,
    SiloCheckpoint,
    SiloInfo,
    TrainReply,
    TrainRequest,
    UpdateDtype,
    WeightingSpec,
)
from fedmtl.core.rounds import RoundObserver, RoundRecord
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import UpdateMode
from strategies.aggregation import aggregate_heads, mean_train_loss
from strategies.replies import (
    ClientUpdate,
    ReplyError,
    check_evaluate_reply,
    check_silo,
    check_train_reply,
)
from strategies.robust import (
    Combine,
    NormRule,
    RobustRule,
    bound_norms,
    combiner,
    count_caps,
    fixed_counts,
)
from strategies.server_opt import ServerOptimizer, ServerOptParams

log = logging.getLogger("fedmtl")

REPLY_ERRORS = (KeyError, ValueError, TypeError)
"""What parsing or checking a malformed reply raises (:class:`ReplyError` is a ValueError)."""


@dataclass(frozen=True)
class StrategyParams:
    """Client sampling, timing and the server optimizer, shared by every strategy.

    ``fraction_*``: share of known nodes sampled each round; ``min_*_nodes``: at least this many (all
    when fewer exist). ``min_available_nodes``: nodes to wait for before round 1, at most
    ``wait_for_nodes_s`` seconds. ``evaluate_every``: evaluate every k rounds (and after the last).
    ``reply_timeout_s``: how long a round waits for replies. ``server_optimizer``: the FedOpt rule
    that applies the combined trunk update (default: plain averaging, ``sgd`` with lr 1).

    Faults and robustness (:mod:`strategies.robust`): a round with fewer valid updates than
    ``min_train_nodes`` (or the nodes sampled, when fewer) is sent again up to ``round_retries``
    times, then the run stops (``status: too_few_replies``); ``robust`` averages with the weighted
    ``mean``, the coordinate-wise ``median`` or a ``trimmed_mean`` (cutting ``trim_fraction`` at
    each end); ``norm_bound`` b ``clip``-s or ``reject``-s (``norm_rule``) updates whose norm
    exceeds b times the round's median; ``max_count_ratio`` r caps the example counts a silo
    announced at r times the median.

    ``update_dtype``: the precision silos send their updates in (``float16`` or ``bfloat16``
    halve the bytes up; the server reads them back as float32).
    """

    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 1.0
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    evaluate_every: int = 1
    wait_for_nodes_s: float = 120.0
    reply_timeout_s: float = 3600.0
    server_optimizer: ServerOptParams = field(default_factory=ServerOptParams)
    round_retries: int = 1
    robust: RobustRule = "mean"
    trim_fraction: float = 0.1
    norm_bound: float | None = None
    norm_rule: NormRule = "clip"
    max_count_ratio: float | None = None
    update_dtype: UpdateDtype = "float32"

    def __post_init__(self) -> None:
        fraction(self, "fraction_train", allow_one=True)
        fraction(self, "fraction_evaluate", allow_one=True)
        for name in (
            "min_train_nodes",
            "min_evaluate_nodes",
            "min_available_nodes",
            "evaluate_every",
        ):
            int_at_least(self, name, 1)
        int_at_least(self, "round_retries", 0)
        positive(self, "wait_for_nodes_s", "reply_timeout_s")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                "trim_fraction",
                f"must be in [0, 0.5), got {self.trim_fraction!r}.",
                "use e.g. 0.1.",
            )
        for name in ("norm_bound", "max_count_ratio"):
            if getattr(self, name) is not None:
                positive(self, name)

    def check_experiment(self, task_names: Sequence[str], num_rounds: int) -> None:
        """Cross-check these parameters against the experiment before any training (raise
        :class:`fedmtl.core.errors.ConfigError`); the default has nothing to check."""


@dataclass(frozen=True)
class TrunkStep:
    """A strategy's trunk update of one round: the combined update Delta (same keys as the trunk;
    None keeps the trunk) and each task's weight w_t in it (balancing strategies)."""

    delta: Arrays | None
    task_weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatch:
    """One round's messages of one kind (train or evaluate) and what they carried: the round's
    global model, the arrays each node received and the bytes of model arrays sent."""

    server_round: int
    messages: list[Message]
    arrays: Arrays
    sent: dict[int, Arrays]
    bytes_down: int


@dataclass(frozen=True)
class TrainOutcome:
    """What aggregating one training round gave: the new global model (the round's own when
    nothing could be aggregated), the number of updates used, the replies refused, the
    example-weighted train loss and the balancing weight of each task, and the bytes received."""

    arrays: Arrays
    num_updates: int
    rejected: list[dict[str, Any]]
    train_loss: dict[str, float]
    task_weights: dict[str, float]
    bytes_up: int
    applied: bool = True


class Stateful(Protocol):
    """Anything with a checkpointable state (a balancing method, a server optimizer)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class RunStopped(RuntimeError):
    """The run cannot go on; ``status`` says why (it becomes ``summary.json``'s ``status``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


WORKER_DIED = ("ActorDiedError", "RayActorError")
"""How a reply names a dead simulation worker (Ray's exceptions, in the reason Flower forwards)."""


def client_error(reply: Message) -> ReplyError:
    """The ReplyError for a silo's error reply; :class:`RunStopped` (``worker_died``) when the
    simulation worker that ran it died: Flower's actor pool keeps handing messages to a dead
    actor, so every later round would lose those silos without saying so."""
    reason = reply.error.reason or ""
    if any(marker in reason for marker in WORKER_DIED):
        raise RunStopped(
            "worker_died",
            f"a simulation worker died ({reason[:300]}). Flower does not replace it, so the run "
            "stops here; continue it from its last checkpoint with `fedmtl run resume=DIR`.",
        )
    return ReplyError(f"client error: {reason}")


@dataclass(frozen=True)
class EvaluateOutcome:
    """Pooled personal metrics of one evaluation (None when no silo reported), each silo's own
    metrics, and the replies refused."""

    personal: dict[str, dict[str, float]] | None
    per_silo: dict[int, dict[str, dict[str, float]]]
    rejected: list[dict[str, Any]]


class TaskAwareStrategy(Strategy):
    """Flower strategy that knows which silo holds which tasks. Subclasses define the trunk update.

    ``shares_heads``: whether silos receive and send their tasks' heads, averaged per task at the
    server (False when the heads stay on the silos).
    """

    shares_heads: ClassVar[bool] = True

    def __init__(
        self,
        params: StrategyParams,
        tasks: Iterable[TaskSpec],
        train: TrainConfig,
        seed: int = 0,
        observers: Iterable[RoundObserver] = (),
    ) -> None:
        self.params = params
        self.tasks = {task.name: task for task in tasks}
        self.train = train
        self.seed = seed
        self.rng = random.Random(seed)
        self.observers = list(observers)
        self.silos: dict[int, SiloInfo] = {}
        self.ignored: set[int] = set()  # nodes whose silo description was unusable
        self.bytes_up = 0
        self.bytes_down = 0
        self.rejections: list[dict[str, Any]] = []
        self.history: list[RoundRecord] = []
        self.server_optimizer = ServerOptimizer(params.server_optimizer)
        # group -> its tasks when the model has one trunk per task group (strategies.grouping)
        self.model_groups: dict[str, tuple[str, ...]] | None = None
        self.participants: set[int] = set()  # silo ids whose update was aggregated
        # told to silos with every request (set by the server app as it checkpoints and resumes)
        self.silo_checkpoint = SiloCheckpoint()
        self.scope = ""  # the run's scope on the silos, when several runs share the nodes
        # Only for Flower's own round loop (configure_* then aggregate_*): :meth:`start` passes
        # each Dispatch along itself.
        self._in_flight: dict[tuple[str, int], Dispatch] = {}

    @functools.cached_property
    def combine(self) -> Combine:
        """How one array is averaged over silos (``robust``)."""
        return combiner(self.params.robust, self.params.trim_fraction)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> TrunkStep:
        """The round's combined trunk update (same keys as ``trunk``).

        Each update's ``deltas`` holds the joint trunk update (``trunk.*`` keys) of the silo, and
        ``task_deltas`` the per-task ones in ``per_task`` mode. The server optimizer applies it.
        """

    def update_mode(self) -> UpdateMode:
        """What silos send for the trunk: ``joint`` (default) or ``per_task``."""
        return "joint"

    def local_weighting(self) -> WeightingSpec | None:
        """The balancing method silos apply to their tasks' gradients at every local step, or
        None for the plain sum of task losses (default)."""
        return None

    def affinity_request(self, server_round: int) -> AffinityRequest | None:
        """The task affinity silos measure during this round's local training (default none)."""
        return None

    def personal_mode(self) -> PersonalMode:
        """What silos keep for themselves between rounds (default ``none``; see
        :mod:`fedmtl.app.silo`)."""
        return "none"

    def train_request(self, server_round: int) -> TrainRequest:
        """The train message's request (built from the hooks above; subclasses add their
        coefficients, e.g. a proximal term)."""
        return TrainRequest(
            server_round=server_round,
            train=self.train,
            update_mode=self.update_mode(),
            local_weighting=self.local_weighting(),
            affinity=self.affinity_request(server_round),
            groups=self.model_groups,
            personal=self.personal_mode(),
            checkpoint=self.silo_checkpoint,
            scope=self.scope,
            update_dtype=self.params.update_dtype,
        )

    @property
    def has_global_model(self) -> bool:
        """Whether the server's arrays form one complete model that the global test set can
        evaluate (not for strategies whose heads or models stay on silos or differ per silo)."""
        return True

    def payload(self, node: int, arrays: Arrays, message_type: str) -> Arrays | None:
        """Per-silo values of ``arrays`` (the global arrays a message to ``node`` would carry)
        for that message (default None: the global values; strategies that keep one model per
        silo at the server override it)."""
        return None

    def apply_updates(
        self, server_round: int, arrays: Arrays, updates: list[ClientUpdate]
    ) -> tuple[Arrays, dict[str, float]]:
        """The new global arrays from the round's checked updates, and each task's balancing
        weight: the trunk by :meth:`trunk_update` and the server optimizer, the heads per task
        over their holders. Strategies with per-silo models override it."""
        trunk = {k: v for k, v in arrays.items() if is_trunk_key(k)}
        step = self.trunk_update(server_round, trunk, updates)
        if step.delta is None:
            log.warning("round %d: no trunk update; the trunk is unchanged", server_round)
        else:
            arrays.update(self.server_optimizer.step(trunk, step.delta))
        if self.shares_heads:
            arrays.update(aggregate_heads(arrays, updates, list(self.tasks), self.combine))
        return arrays, dict(step.task_weights)

    def end_round(self, server_round: int, arrays: Arrays) -> Arrays:
        """The global model to carry into the next round, given the aggregated ``arrays`` (default:
        unchanged; task grouping splits the trunk here)."""
        return arrays

    def results(self) -> dict[str, Any]:
        """Extra ``summary.json`` fields of this strategy (default none)."""
        return {}

    def write_artifacts(self, output_dir: Path, plots: bool = True) -> None:
        """Write this strategy's own result files (and plots when ``plots``) into ``output_dir``
        (default none)."""

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """What the round loop needs to go on exactly where it stopped: a tree of JSON values
        and numpy arrays (a checkpoint stores them apart). Subclasses with state of their own
        extend it, and :meth:`load_state_dict`. Silo discovery is not in it: a resumed run asks
        the silos again (their counts were fixed when they were first announced)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "rng": [version, list(internal), gauss],
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rejections": list(self.rejections),
            "participants": sorted(self.participants),
            "history": [asdict(record) for record in self.history],
            "server_optimizer": self.server_optimizer.state_dict(),
            "model_groups": None
            if self.model_groups is None
            else {g: list(t) for g, t in self.model_groups.items()},
            "parts": {name: part.state_dict() for name, part in self.stateful_parts().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.bytes_up = int(state["bytes_up"])
        self.bytes_down = int(state["bytes_down"])
        self.rejections = list(state["rejections"])
        self.participants = set(state["participants"])
        self.history = [RoundRecord.from_dict(record) for record in state["history"]]
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        groups = state["model_groups"]
        self.model_groups = None if groups is None else {g: tuple(t) for g, t in groups.items()}
        for name, part in self.stateful_parts().items():
            part.load_state_dict(state["parts"][name])

    def stateful_parts(self) -> Mapping[str, Stateful]:
        """Objects that keep state across rounds, saved with the strategy (default none; e.g. the
        server's balancing method)."""
        return {}

    # ------------------------------------------------------------------ discovery and sampling
    def discover(self, grid: Grid) -> None:
        """Query nodes not yet known for their silo; wait for ``min_available_nodes`` first."""
        deadline = time.monotonic() + self.params.wait_for_nodes_s
        while len(list(grid.get_node_ids())) < self.params.min_available_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(list(grid.get_node_ids()))} nodes connected after "
                    f"{self.params.wait_for_nodes_s}s, {self.params.min_available_nodes} required "
                    "(strategy.min_available_nodes)"
                )
            time.sleep(0.5)
        unknown = [n for n in grid.get_node_ids() if n not in self.silos and n not in self.ignored]
        if not unknown:
            return
        messages = [
            Message(records.query_content(), dst_node_id=n, message_type=MessageType.QUERY)
            for n in unknown
        ]
        claimed = {known.silo_id for known in self.silos.values()}
        tasks = set(self.tasks)
        for reply in grid.send_and_receive(messages, timeout=self.params.reply_timeout_s):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise client_error(reply)
                info = check_silo(SiloInfo.from_content(reply.content), tasks, claimed)
            except REPLY_ERRORS as err:
                log.warning(
                    "node %s ignored for this run: unusable silo description (%s)", node, err
                )
                self.ignored.add(node)
                continue
            self.silos[node] = info
            claimed.add(info.silo_id)
        held = {t for info in self.silos.values() for t in info.tasks}
        missing = [t for t in self.tasks if t not in held]
        if missing:
            log.warning("no connected silo holds tasks %s: their heads stay untrained", missing)

    def sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        """Seeded sample of known nodes: max(ceil(fraction * N), minimum), at most N."""
        self.discover(grid)
        nodes = sorted((n for n in grid.get_node_ids() if n in self.silos), key=self._silo_order)
        wanted = math.ceil(round(fraction * len(nodes), 9))  # 0.28 * 25 is 7.000000000000001
        size = min(len(nodes), max(wanted, minimum))
        return sorted(self.rng.sample(nodes, size), key=self._silo_order)

    def _silo_order(self, node: int) -> int:
        """Nodes ordered by silo id: sampling and aggregation order do not depend on node ids or
        on the order replies arrive, so every runtime gives the same result for a seed."""
        return self.silos[node].silo_id

    def _reply_order(self, reply: Message) -> int:
        silo = self.silos.get(reply.metadata.src_node_id)
        return silo.silo_id if silo else -1

    def arrays_for(self, arrays: Arrays, silo: SiloInfo) -> Arrays:
        """The trunk (or the trunks of its tasks' groups) and the heads of the silo's tasks: all
        that a silo receives."""
        return {
            k: v
            for k, v in arrays.items()
            if head_task(k) in silo.tasks or any(self.serves(k, t) for t in silo.tasks)
        }

    def serves(self, key: str, task: str) -> bool:
        """Whether array ``key`` is (part of) the trunk that task ``task`` uses."""
        group = trunk_group(key)
        if group is None:
            return is_trunk_key(key)
        return self.model_groups is not None and task in self.model_groups.get(group, ())

    # ------------------------------------------------------------------ one round, explicitly
    def _dispatch(
        self,
        server_round: int,
        record: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        message_type: str,
    ) -> Dispatch:
        """Messages carrying to each node the arrays it needs and ``config``."""
        arrays = records.from_array_record(record)
        messages, sent, size = [], {}, 0
        for node in nodes:
            keys = list(self.arrays_for(arrays, self.silos[node]))
            own = self.payload(node, {key: arrays[key] for key in keys}, message_type)
            if own is None:
                # The global record's Array objects are shared, not serialised again per silo.
                payload = ArrayRecord({key: record[key] for key in keys})
                sent[node] = {key: arrays[key] for key in keys}
            else:
                payload = records.to_array_record(own)
                sent[node] = own
            size += payload.count_bytes()
            messages.append(
                Message(
                    records.request_content(payload, config),
                    dst_node_id=node,
                    message_type=message_type,
                    group_id=str(server_round),
                )
            )
        self.bytes_down += size
        return Dispatch(server_round, messages, arrays, sent, size)

    def dispatch_train(
        self, server_round: int, record: ArrayRecord, grid: Grid, extra: ConfigRecord | None = None
    ) -> Dispatch:
        """The round's train messages to the sampled silos (:class:`~fedmtl.core.records.TrainRequest`;
        the keys of ``extra`` travel too, the protocol's own take precedence)."""
        nodes = self.sample(grid, self.params.fraction_train, self.params.min_train_nodes)
        request = self.train_request(server_round)
        config = ConfigRecord({**(extra or {}), **request.to_config()})
        return self._dispatch(server_round, record, config, nodes, MessageType.TRAIN)

    def dispatch_evaluate(
        self, server_round: int, record: ArrayRecord, grid: Grid, extra: ConfigRecord | None = None
    ) -> Dispatch:
        """The round's evaluate messages to the sampled silos."""
        nodes = self.sample(grid, self.params.fraction_evaluate, self.params.min_evaluate_nodes)
        request = EvaluateRequest(
            server_round=server_round,
            groups=self.model_groups,
            personal=self.personal_mode(),
            checkpoint=self.silo_checkpoint,
            scope=self.scope,
        )
        config = ConfigRecord({**(extra or {}), **request.to_config()})
        return self._dispatch(server_round, record, config, nodes, MessageType.EVALUATE)

    def aggregate_updates(self, dispatch: Dispatch, replies: Iterable[Message]) -> TrainOutcome:
        """Check the replies to ``dispatch``, aggregate the valid ones (trunk by the subclass and
        the server optimizer, heads per task over holders) and end the round (:meth:`end_round`)."""
        server_round = dispatch.server_round
        rejected: list[dict[str, Any]] = []
        updates: list[ClientUpdate] = []
        received = 0
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_content():
                received += records.update_bytes(reply.content)  # counted, accepted or not
            try:
                if reply.has_error():
                    raise client_error(reply)
                silo = self.silos[node]
                sent = dispatch.sent[node]
                parsed = TrainReply.from_content(reply.content)
                updates.append(
                    check_train_reply(node, parsed, sent, silo, self.update_mode(), self.serves)
                )
            except REPLY_ERRORS as err:
                rejected.append(self._reject(server_round, node, f"train reply rejected: {err}"))
        self.bytes_up += received
        updates.sort(key=lambda u: u.silo.silo_id)
        cap, task_caps = count_caps(self.silos.values(), self.params.max_count_ratio)
        updates = [fixed_counts(u, self.silos[u.node_id], cap, task_caps) for u in updates]
        if self.params.norm_bound is not None:
            updates, refused = bound_norms(updates, self.params.norm_bound, self.params.norm_rule)
            for update, reason in refused:
                rejected.append(self._reject(server_round, update.node_id, reason))
        arrays = dict(dispatch.arrays)
        required = min(self.params.min_train_nodes, len(dispatch.messages))
        if len(updates) < required:
            log.warning(
                "round %d: %d valid updates, fewer than the %d required; the model is unchanged",
                server_round,
                len(updates),
                required,
            )
            return TrainOutcome(arrays, len(updates), rejected, {}, {}, received, applied=False)
        arrays, task_weights = self.apply_updates(server_round, arrays, updates)
        self.participants.update(u.silo.silo_id for u in updates)
        return TrainOutcome(
            arrays=self.end_round(server_round, arrays),
            num_updates=len(updates),
            rejected=rejected,
            train_loss=mean_train_loss(updates, list(self.tasks)),
            task_weights=task_weights,
            bytes_up=received,
        )

    def pool_evaluations(self, dispatch: Dispatch, replies: Iterable[Message]) -> EvaluateOutcome:
        """Pool each task's statistics over the silos that evaluated it, then finalize metrics."""
        pooled: dict[str, dict[str, float]] = {}
        per_silo: dict[int, dict[str, dict[str, float]]] = {}
        rejected: list[dict[str, Any]] = []
        for reply in sorted(replies, key=self._reply_order):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise client_error(reply)
                silo = self.silos[node]
                stats = check_evaluate_reply(EvaluateReply.from_content(reply.content), silo).stats
            except REPLY_ERRORS as err:
                reason = f"evaluate reply rejected: {err}"
                rejected.append(self._reject(dispatch.server_round, node, reason))
                continue
            per_silo[silo.silo_id] = {
                task: self.tasks[task].finalize_metrics(task_stats)
                for task, task_stats in stats.items()
            }
            for task, task_stats in stats.items():
                target = pooled.setdefault(task, {})
                for key, value in task_stats.items():
                    target[key] = target.get(key, 0.0) + value
        personal = {
            task: self.tasks[task].finalize_metrics(pooled[task])
            for task in self.tasks  # in the dataset's task order
            if task in pooled
        }
        return EvaluateOutcome(personal or None, per_silo, rejected)

    def _reject(self, server_round: int, node: int, reason: str) -> dict[str, Any]:
        silo = self.silos.get(node)
        entry = {
            "round": server_round,
            "node": node,
            "silo": silo.silo_id if silo else None,
            "reason": reason,
        }
        log.warning("round %d, node %s: %s", server_round, node, reason)
        self.rejections.append(entry)
        return entry

    # ------------------------------------------------------------------ the loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
        on_round_end: Callable[[int, ArrayRecord], None] | None = None,
    ) -> Result:
        """Run rounds ``first_round`` to ``num_rounds`` (a resumed run starts after its checkpoint,
        from the state :meth:`load_state_dict` restored), evaluating every ``evaluate_every``
        rounds and at the end; ``on_round_end(round, arrays)`` is called once a round is over and
        reported (the server app checkpoints there).

        Unlike Flower's default loop it discovers silos first, evaluates on a schedule and reports
        each round to the observers.
        """
        self.summary()
        self.discover(grid)
        result = Result(arrays=initial_arrays)
        arrays = initial_arrays
        for server_round in range(first_round, num_rounds + 1):
            started = time.perf_counter()
            down, up = self.bytes_down, self.bytes_up  # every attempt of the round counts
            outcome, dispatch = self.train_round(server_round, arrays, grid, timeout, train_config)
            arrays = result.arrays = records.to_array_record(outcome.arrays)
            result.train_metrics_clientapp[server_round] = records.round_metrics(
                outcome.num_updates, len(outcome.rejected), outcome.train_loss
            )
            record = RoundRecord(
                server_round=server_round,
                num_sampled=len(dispatch.messages),
                num_updates=outcome.num_updates,
                rejected=list(outcome.rejected),
                train_loss=outcome.train_loss,
                task_weights=outcome.task_weights,
                bytes_up=self.bytes_up - up,
                bytes_down=self.bytes_down - down,
            )
            if server_round % self.params.evaluate_every == 0 or server_round == num_rounds:
                evaluation = self.dispatch_evaluate(server_round, arrays, grid, evaluate_config)
                evaluated = self.pool_evaluations(
                    evaluation, grid.send_and_receive(evaluation.messages, timeout=timeout)
                )
                record.bytes_down += evaluation.bytes_down
                record.rejected += evaluated.rejected
                record.personal = evaluated.personal
                record.per_silo = evaluated.per_silo
                if evaluated.personal is not None:
                    flat = records.flat_task_metrics(evaluated.personal)
                    result.evaluate_metrics_clientapp[server_round] = flat
            if evaluate_fn is not None:
                server_metrics = evaluate_fn(server_round, arrays)
                if server_metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = server_metrics
            record.seconds = time.perf_counter() - started
            self.history.append(record)
            for observer in self.observers:
                observer.on_round(record)
            if on_round_end is not None:
                on_round_end(server_round, arrays)
        return result

    def train_round(
        self,
        server_round: int,
        arrays: ArrayRecord,
        grid: Grid,
        timeout: float,
        extra: ConfigRecord | None = None,
    ) -> tuple[TrainOutcome, Dispatch]:
        """One training round, sent again (up to ``round_retries`` times) while it has fewer
        valid updates than required; :class:`RunStopped` (``too_few_replies``) after that."""
        for attempt in range(self.params.round_retries + 1):
            dispatch = self.dispatch_train(server_round, arrays, grid, extra)
            replies = grid.send_and_receive(dispatch.messages, timeout=timeout)
            outcome = self.aggregate_updates(dispatch, replies)
            if outcome.applied:
                return outcome, dispatch
            log.warning("round %d: attempt %d of %d failed", server_round, attempt + 1,
                        self.params.round_retries + 1)  # fmt: skip
        raise RunStopped(
            "too_few_replies",
            f"round {server_round}: too few valid updates after "
            f"{self.params.round_retries + 1} attempts (see 'rejected' for why).",
        )

    # ------------------------------------------------------------------ Flower's Strategy API
    # Flower's own loop calls configure_* and then aggregate_* with the replies; these adapters
    # hand the Dispatch from one to the other. fedmtl's loop (:meth:`start`) does not use them.
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        dispatch = self.dispatch_train(server_round, arrays, grid, config)
        self._in_flight[(MessageType.TRAIN, server_round)] = dispatch
        return dispatch.messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dispatch = self._in_flight.pop((MessageType.TRAIN, server_round))
        outcome = self.aggregate_updates(dispatch, replies)
        metrics = records.round_metrics(
            outcome.num_updates, len(outcome.rejected), outcome.train_loss
        )
        return records.to_array_record(outcome.arrays), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        dispatch = self.dispatch_evaluate(server_round, arrays, grid, config)
        self._in_flight[(MessageType.EVALUATE, server_round)] = dispatch
        return dispatch.messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        dispatch = self._in_flight.pop((MessageType.EVALUATE, server_round))
        personal = self.pool_evaluations(dispatch, replies).personal
        return None if personal is None else records.flat_task_metrics(personal)

    def summary(self) -> None:
        log.info(
            "%s over tasks %s, sampling %s", type(self).__name__, list(self.tasks), self.params
        )
