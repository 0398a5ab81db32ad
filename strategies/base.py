"""``TaskAwareStrategy``: the base of every fedmtl server strategy (a Flower ``Strategy``).

What it does for every subclass:
- **Silo discovery.** Before round 1 (and for nodes that join later) it asks each node which silo it
  holds (``query`` message): its tasks and labelled example counts (:class:`fedmtl.records.SiloInfo`).
  A node whose answer is unusable (an error, a missing field, an unknown task, a silo id another
  node already holds) is ignored for the rest of the run.
- **Sampling.** Each round it samples ``max(ceil(fraction * N), min_nodes)`` of the N known nodes with
  a seeded generator, and sends each sampled silo the trunk and the heads of *its own* tasks only.
- **Reply checks.** A reply with an error, missing records, unexpected keys or shapes, a non-finite
  value or a bad example count is rejected, logged and counted; the round goes on with the others and
  the global model is never touched by a rejected reply.
- **Per-task head aggregation.** With n_{s,t} the labelled training examples of task t on silo s and
  Delta h_{s,t} its head update:  h_t <- h_t + sum_{s holds t} n_{s,t} Delta h_{s,t} / sum_s n_{s,t}.
  A task no sampled silo holds keeps its head.
- **Trunk aggregation**: the subclass combines the round's updates into one trunk update Delta
  (:meth:`trunk_update`); a FedOpt server optimizer (:mod:`strategies.server_opt`) applies it.
- **Update modes.** A silo sends its trunk update either ``joint`` (one delta) or ``per_task`` (one
  delta per task it holds, which sum to the joint delta; see :mod:`fedmtl.training`), as the
  strategy asks (:meth:`update_mode`); the base checks both and always fills the joint delta.
- **Evaluation** on each sampled silo's own test split ("personal"), pooled per task exactly by
  summing the silos' additive statistics.
- Bytes of model arrays sent down and up are counted.
- **One trunk per task group.** When :attr:`TaskAwareStrategy.model_groups` is set (task grouping,
  :mod:`strategies.grouping`) the model holds ``trunks.<group>.*`` instead of ``trunk.*``; a silo
  receives only the trunks of its tasks' groups, and in ``per_task`` mode each task's share covers
  its own group's trunk only.
"""

from __future__ import annotations

import logging
import math
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedmtl import records
from fedmtl.checks import fraction, int_at_least, positive
from fedmtl.config import TrainConfig
from fedmtl.models.multitask import head_task, is_trunk_key, trunk_group
from fedmtl.records import SiloInfo, UpdateMode
from fedmtl.tasks import TaskSpec
from strategies.server_opt import ServerOptimizer, ServerOptParams

log = logging.getLogger("fedmtl")

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class StrategyParams:
    """Client sampling, timing and the server optimizer, shared by every strategy.

    ``fraction_*``: share of known nodes sampled each round; ``min_*_nodes``: at least this many (all
    when fewer exist). ``min_available_nodes``: nodes to wait for before round 1, at most
    ``wait_for_nodes_s`` seconds. ``evaluate_every``: evaluate every k rounds (and after the last).
    ``reply_timeout_s``: how long a round waits for replies. ``server_optimizer``: the FedOpt rule
    that applies the combined trunk update (default: plain averaging, ``sgd`` with lr 1).
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
        positive(self, "wait_for_nodes_s", "reply_timeout_s")

    def check_experiment(self, task_names: Sequence[str], num_rounds: int) -> None:
        """Cross-check these parameters against the experiment before any training (raise
        :class:`fedmtl.errors.ConfigError`); the default has nothing to check."""


@dataclass
class ClientUpdate:
    """A checked training reply: the silo, its array deltas and its reported metrics.

    ``deltas`` holds the joint trunk update and the silo's head updates; in ``per_task`` mode
    ``task_deltas[t]`` holds task t's share of the trunk update (the joint one is their sum).
    ``loss_before[t]``: task t's mean training loss of the received model, before local training.
    ``affinity[(i, j)]``: the silo's measured affinity S_{i->j}, when the strategy asked for one.
    """

    node_id: int
    silo: SiloInfo
    deltas: Arrays
    num_examples: int
    task_examples: dict[str, int]
    train_loss: dict[str, float]
    loss_before: dict[str, float] = field(default_factory=dict)
    task_deltas: dict[str, Arrays] | None = None
    affinity: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass
class RoundRecord:
    """What one round produced; passed to observers (progress, result files, wandb)."""

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


class RoundObserver(Protocol):
    def on_round(self, record: RoundRecord) -> None: ...


class TaskAwareStrategy(Strategy):
    """Flower strategy that knows which silo holds which tasks. Subclasses define the trunk update."""

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
        self.round_task_weights: dict[str, float] = {}  # set by balancing strategies each round
        # group -> its tasks when the model has one trunk per task group (strategies.grouping)
        self.model_groups: dict[str, tuple[str, ...]] | None = None
        self._round_arrays: Arrays = {}
        self._round_rejections: list[dict[str, Any]] = []
        self._last_train_loss: dict[str, float] = {}
        self._last_per_silo: dict[int, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def trunk_update(
        self, server_round: int, trunk: Arrays, updates: list[ClientUpdate]
    ) -> Arrays | None:
        """The round's combined trunk update Delta (same keys as ``trunk``), or None to keep it.

        Each update's ``deltas`` holds the joint trunk update (``trunk.*`` keys) of the silo, and
        ``task_deltas`` the per-task ones in ``per_task`` mode. The server optimizer applies Delta.
        """

    def update_mode(self) -> UpdateMode:
        """What silos send for the trunk: ``joint`` (default) or ``per_task``."""
        return "joint"

    def client_weighting(self) -> tuple[str, dict[str, Any]] | None:
        """The weighting (name, params) silos apply to their tasks' gradients at every local
        step, or None for the plain sum of task losses (default)."""
        return None

    def affinity_request(self, server_round: int) -> records.AffinityRequest | None:
        """The task affinity silos measure during this round's local training (default none)."""
        return None

    def results(self) -> dict[str, Any]:
        """Extra ``summary.json`` fields of this strategy (default none)."""
        return {}

    def write_artifacts(self, output_dir: Path, plots: bool = True) -> None:
        """Write this strategy's own result files (and plots when ``plots``) into ``output_dir``
        (default none)."""

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
            Message(
                RecordDict({records.CONFIG: ConfigRecord()}),
                dst_node_id=n,
                message_type=MessageType.QUERY,
            )
            for n in unknown
        ]
        for reply in grid.send_and_receive(messages, timeout=self.params.reply_timeout_s):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ValueError(reply.error.reason)
                info = SiloInfo.from_record(reply.content.config_records[records.SILO])
                unknown_tasks = [t for t in info.tasks if t not in self.tasks]
                if unknown_tasks:
                    raise ValueError(f"unknown tasks {unknown_tasks}")
                claimed = {known.silo_id for known in self.silos.values()}
                if info.silo_id in claimed:
                    raise ValueError(f"silo {info.silo_id} is already held by another node")
            except (KeyError, ValueError, TypeError) as err:
                log.warning(
                    "node %s ignored for this run: unusable silo description (%s)", node, err
                )
                self.ignored.add(node)
                continue
            self.silos[node] = info
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

    def _reply_order(self, reply: Message) -> int:
        silo = self.silos.get(reply.metadata.src_node_id)
        return silo.silo_id if silo else -1

    def _silo_order(self, node: int) -> int:
        """Nodes ordered by silo id: sampling and aggregation order do not depend on node ids or
        on the order replies arrive, so every runtime gives the same result for a seed."""
        return self.silos[node].silo_id

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

    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        message_type: str,
        server_round: int,
    ) -> list[Message]:
        self._round_arrays = records.from_array_record(arrays)
        messages = []
        for node in nodes:
            # The global record's Array objects are shared, not serialised again for every silo.
            keys = self.arrays_for(self._round_arrays, self.silos[node])
            payload = ArrayRecord({key: arrays[key] for key in keys})
            self.bytes_down += payload.count_bytes()
            node_config = ConfigRecord({**config, **records.groups_entry(self.model_groups)})
            content = RecordDict({records.ARRAYS: payload, records.CONFIG: node_config})
            messages.append(
                Message(
                    content, dst_node_id=node, message_type=message_type, group_id=str(server_round)
                )
            )
        return messages

    # ------------------------------------------------------------------ Flower Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(grid, self.params.fraction_train, self.params.min_train_nodes)
        config = records.train_config_record(
            server_round,
            self.train,
            self.update_mode(),
            self.client_weighting(),
            self.affinity_request(server_round),
        )
        return self._messages(arrays, config, nodes, MessageType.TRAIN, server_round)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._round_rejections = []
        self.round_task_weights = {}
        updates = []
        for reply in replies:
            update = self._check_train_reply(server_round, reply)
            if update is not None:
                updates.append(update)
        updates.sort(key=lambda u: u.silo.silo_id)
        arrays = dict(self._round_arrays)
        if updates:
            trunk = {k: v for k, v in arrays.items() if is_trunk_key(k)}
            trunk_delta = self.trunk_update(server_round, trunk, updates)
            if trunk_delta is None:
                log.warning("round %d: no trunk update; the trunk is unchanged", server_round)
            else:
                arrays.update(self.server_optimizer.step(trunk, trunk_delta))
            arrays.update(self.aggregate_heads(arrays, updates))
        else:
            log.warning(
                "round %d: no usable training reply; the global model is unchanged", server_round
            )
        self._last_train_loss = self._mean_train_loss(updates)
        metrics: dict[str, MetricRecordValues] = {
            "num-updates": len(updates),
            "num-rejected": len(self._round_rejections),
        }
        metrics.update(
            {records.task_key(t, records.TRAIN_LOSS): v for t, v in self._last_train_loss.items()}
        )
        return records.to_array_record(arrays), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(grid, self.params.fraction_evaluate, self.params.min_evaluate_nodes)
        config = ConfigRecord({records.SERVER_ROUND: server_round})
        return self._messages(arrays, config, nodes, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Pool each task's statistics over the silos that evaluated it, then finalize metrics."""
        pooled: dict[str, dict[str, float]] = {}
        self._last_per_silo = {}
        for reply in sorted(replies, key=self._reply_order):
            node = reply.metadata.src_node_id
            try:
                silo, stats = self._parse_evaluate_reply(reply)
            except (KeyError, ValueError, TypeError) as err:
                self._reject(server_round, node, f"evaluate reply rejected: {err}")
                continue
            per_task = {}
            for task, task_stats in stats.items():
                per_task[task] = self.tasks[task].finalize_metrics(task_stats)
                target = pooled.setdefault(task, {})
                for key, value in task_stats.items():
                    target[key] = target.get(key, 0.0) + value
            self._last_per_silo[silo.silo_id] = per_task
        if not pooled:
            return None
        metrics: dict[str, MetricRecordValues] = {}
        for task in (t for t in self.tasks if t in pooled):  # in the dataset's task order
            for name, value in self.tasks[task].finalize_metrics(pooled[task]).items():
                metrics[records.task_key(task, name)] = value
        return MetricRecord(metrics)

    def summary(self) -> None:
        log.info(
            "%s over tasks %s, sampling %s", type(self).__name__, list(self.tasks), self.params
        )

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
    ) -> Result:
        """Run ``num_rounds`` of training, evaluating every ``evaluate_every`` rounds and at the end.

        Unlike Flower's default loop it discovers silos first, evaluates on a schedule and reports
        each round to the observers.
        """
        self.summary()
        self.discover(grid)
        result = Result(arrays=initial_arrays)
        arrays = initial_arrays
        for server_round in range(1, num_rounds + 1):
            started = time.perf_counter()
            down, up = self.bytes_down, self.bytes_up
            messages = list(
                self.configure_train(server_round, arrays, train_config or ConfigRecord(), grid)
            )
            replies = grid.send_and_receive(messages, timeout=timeout)
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            record = RoundRecord(
                server_round=server_round,
                num_sampled=len(messages),
                num_updates=records.integer(train_metrics, "num-updates") if train_metrics else 0,
                rejected=list(self._round_rejections),
                train_loss=dict(self._last_train_loss),
                task_weights=dict(self.round_task_weights),
            )
            if server_round % self.params.evaluate_every == 0 or server_round == num_rounds:
                eval_messages = self.configure_evaluate(
                    server_round, arrays, evaluate_config or ConfigRecord(), grid
                )
                evaluated = self.aggregate_evaluate(
                    server_round, grid.send_and_receive(eval_messages, timeout=timeout)
                )
                record.rejected += self._round_rejections[len(record.rejected) :]
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[server_round] = evaluated
                    record.personal = self._nested(evaluated)
                    record.per_silo = dict(self._last_per_silo)
            if evaluate_fn is not None:
                server_metrics = evaluate_fn(server_round, arrays)
                if server_metrics is not None:
                    result.evaluate_metrics_serverapp[server_round] = server_metrics
            record.bytes_down, record.bytes_up = self.bytes_down - down, self.bytes_up - up
            record.seconds = time.perf_counter() - started
            self.history.append(record)
            for observer in self.observers:
                observer.on_round(record)
        return result

    # ------------------------------------------------------------------ helpers
    def aggregate_heads(self, arrays: Arrays, updates: list[ClientUpdate]) -> Arrays:
        """h_t + sum_s n_{s,t} Delta h_{s,t} / sum_s n_{s,t} over the updates whose silo holds t."""
        new: Arrays = {}
        for task in self.tasks:
            holders = [
                u for u in updates if task in u.silo.tasks and u.task_examples.get(task, 0) > 0
            ]
            if not holders:
                continue
            total = float(sum(u.task_examples[task] for u in holders))
            for key in (k for k in arrays if head_task(k) == task):
                delta = sum(
                    (u.task_examples[task] / total * u.deltas[key] for u in holders),
                    start=np.zeros_like(arrays[key]),
                )
                new[key] = (arrays[key] + delta).astype(arrays[key].dtype)
        return new

    def _check_train_reply(self, server_round: int, reply: Message) -> ClientUpdate | None:
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise ValueError(f"client error: {reply.error.reason}")
            silo = self.silos[node]
            content = reply.content
            update_record = content.array_records[records.UPDATE]
            self.bytes_up += update_record.count_bytes()  # counted whether accepted or not
            received = records.from_array_record(update_record)
            metrics = content.metric_records[records.METRICS]
            sent = self.arrays_for(self._round_arrays, silo)
            expected = self._expected_update_shapes(sent, silo)
            if set(received) != set(expected):
                raise ValueError(
                    f"update keys differ from those expected in {self.update_mode()} mode "
                    f"({len(received)} vs {len(expected)})"
                )
            for key, delta in received.items():
                if delta.shape != expected[key]:
                    raise ValueError(f"{key}: shape {delta.shape} != {expected[key]}")
                if not np.issubdtype(delta.dtype, np.floating) or not np.isfinite(delta).all():
                    raise ValueError(f"{key}: non-finite or non-float values")
            num_examples = _count(metrics, records.NUM_EXAMPLES)
            task_examples = {
                t: _count(metrics, records.task_key(t, records.NUM_EXAMPLES)) for t in silo.tasks
            }
            train_loss = self._task_numbers(metrics, silo, records.TRAIN_LOSS)
            loss_before = self._task_numbers(metrics, silo, records.LOSS_BEFORE)
            affinity = self._affinity(metrics, silo)
        except (KeyError, ValueError, TypeError) as err:
            self._reject(server_round, node, f"train reply rejected: {err}")
            return None
        deltas, task_deltas = self._split_update(received, sent, silo)
        return ClientUpdate(
            node,
            silo,
            deltas,
            num_examples,
            task_examples,
            train_loss,
            loss_before,
            task_deltas,
            affinity,
        )

    def _expected_update_shapes(self, sent: Arrays, silo: SiloInfo) -> dict[str, tuple[int, ...]]:
        """Key -> shape of the update a silo must send for the arrays it was ``sent``."""
        if self.update_mode() == "joint":
            return {k: v.shape for k, v in sent.items()}
        shapes = {k: v.shape for k, v in sent.items() if not is_trunk_key(k)}
        for task in silo.tasks:
            shapes.update(
                {
                    records.task_update_key(task, k): v.shape
                    for k, v in sent.items()
                    if self.serves(k, task)
                }
            )
        return shapes

    def _split_update(
        self, received: Arrays, sent: Arrays, silo: SiloInfo
    ) -> tuple[Arrays, dict[str, Arrays] | None]:
        """The joint deltas (trunk and heads) and, in ``per_task`` mode, each task's trunk share;
        the joint trunk delta of a per-task reply is the sum of its tasks' shares."""
        if self.update_mode() == "joint":
            return received, None
        task_deltas = {
            task: {
                k: received[records.task_update_key(task, k)] for k in sent if self.serves(k, task)
            }
            for task in silo.tasks
        }
        deltas = {k: v for k, v in received.items() if k in sent}
        for key in (k for k in sent if is_trunk_key(k)):
            deltas[key] = sum(
                (shares[key] for shares in task_deltas.values() if key in shares),
                start=np.zeros_like(sent[key]),
            )
        return deltas, task_deltas

    @staticmethod
    def _task_numbers(metrics: MetricRecord, silo: SiloInfo, stat: str) -> dict[str, float]:
        """``<task>/<stat>`` for the silo's tasks that reported it (a task with no labelled
        example reports none)."""
        return {
            t: records.number(metrics, key)
            for t in silo.tasks
            if (key := records.task_key(t, stat)) in metrics
        }

    @staticmethod
    def _affinity(metrics: MetricRecord, silo: SiloInfo) -> dict[tuple[str, str], float]:
        """The silo's ``affinity/<source>/<target>`` reports, each between two of its tasks."""
        affinity = {}
        for key in metrics:
            pair = records.split_affinity_key(key)
            if pair is None:
                continue
            if pair[0] not in silo.tasks or pair[1] not in silo.tasks or pair[0] == pair[1]:
                raise ValueError(f"{key}: affinity between tasks the silo does not hold")
            affinity[pair] = records.number(metrics, key)
        return affinity

    def _parse_evaluate_reply(self, reply: Message) -> tuple[SiloInfo, dict[str, dict[str, float]]]:
        if reply.has_error():
            raise ValueError(f"client error: {reply.error.reason}")
        silo = self.silos[reply.metadata.src_node_id]
        metrics = reply.content.metric_records[records.METRICS]
        stats: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parsed = records.split_task_key(key)
            if parsed is None or parsed[0] not in silo.tasks:
                raise ValueError(f"unexpected metric {key!r}")
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key} is not a finite number")
            stats.setdefault(parsed[0], {})[parsed[1]] = float(value)
        return silo, stats

    def _reject(self, server_round: int, node: int, reason: str) -> None:
        silo = self.silos.get(node)
        entry = {
            "round": server_round,
            "node": node,
            "silo": silo.silo_id if silo else None,
            "reason": reason,
        }
        log.warning("round %d, node %s: %s", server_round, node, reason)
        self._round_rejections.append(entry)
        self.rejections.append(entry)

    def _mean_train_loss(self, updates: list[ClientUpdate]) -> dict[str, float]:
        """Per task, the train loss averaged over silos weighted by their labelled examples."""
        result = {}
        for task in self.tasks:
            pairs = [
                (u.task_examples[task], u.train_loss[task]) for u in updates if task in u.train_loss
            ]
            total = sum(n for n, _ in pairs)
            if total > 0:
                result[task] = sum(n * loss for n, loss in pairs) / total
        return result

    @staticmethod
    def _nested(metrics: MetricRecord) -> dict[str, dict[str, float]]:
        nested: dict[str, dict[str, float]] = {}
        for key in metrics:
            task, name = records.split_task_key(key) or (key, "value")
            nested.setdefault(task, {})[name] = records.number(metrics, key)
        return nested


def _count(metrics: MetricRecord, key: str) -> int:
    """A reported example count: a finite number >= 0."""
    value = records.number(metrics, key)
    if value < 0:
        raise ValueError(f"{key} must be a count >= 0, got {value!r}")
    return int(value)
