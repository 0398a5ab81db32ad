"""The server half of a method: the hooks the engine calls, and the trunk-and-heads base most
methods build on.

A method is one module: its parameter dataclass (a :class:`~strategies.engine.MethodParams`), its
server half (a :class:`Method`), its silo half (a :class:`~strategies.engine.SiloMethod`, the
class attribute :attr:`Method.silo`), and its formula and paper in the docstring. The engine calls
the method, never the other way round; a method keeps its own state and nothing else.

The hooks, in the order the engine calls them in a round:

1. :meth:`Method.silo_task`: what every sampled silo is asked to do this round (the trunk update
   mode and the silo half's parameters, which travel as one :class:`~fedmtl.core.records.MethodSpec`).
2. :meth:`Method.arrays_for`: which arrays a silo receives (default: the trunk(s) and the heads of
   its tasks; a method with a model per silo sends that silo's).
3. :meth:`Method.check_update`: refuse a reply whose method-specific numbers are malformed.
4. :meth:`Method.aggregate`: the round's valid updates -> the new global model (and each task's
   weight in the trunk update, for the balancing methods).
5. :meth:`Method.state_dict` / :meth:`Method.load_state_dict`: its state, for checkpoints.
6. :meth:`Method.results` / :meth:`Method.write_artifacts`: its own ``summary.json`` fields and
   result files, at the end.

And :meth:`Method.secure_sums`: whether its aggregation follows from per-task sums alone (then it
runs under secure aggregation and silo-level DP, on one aggregate update), or why not.

And two declarations: :meth:`Method.initial_groups` (the task groups of the model it starts from)
and :attr:`Method.global_model` (whether its global arrays form one model that a global test set
can evaluate).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from fedmtl.core.records import Arrays, Groups, SiloInfo
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import UpdateMode
from strategies.engine.aggregation import aggregate_heads
from strategies.engine.model import GlobalModel
from strategies.engine.params import MethodParams
from strategies.engine.replies import ClientUpdate, ReplyError
from strategies.engine.robust import Averager, averager
from strategies.engine.server_opt import ServerOptimizer
from strategies.engine.silo import SiloMethod
from strategies.engine.sums import SumRule

log = logging.getLogger("fedmtl")

P = TypeVar("P", bound=MethodParams)
Purpose = Literal["train", "evaluate"]


@dataclass(frozen=True)
class MethodSetup:
    """What a method is built with besides its parameters: the experiment's tasks (in dataset
    order), the silos' local training settings and the seed."""

    tasks: Sequence[TaskSpec]
    train: TrainConfig
    seed: int = 0


@dataclass(frozen=True)
class SiloTask:
    """What every sampled silo is asked to do in a round: the layout of its trunk update
    (``joint``, or ``per_task``: one share per task, summing to the joint update), the
    parameters of the method's silo half (JSON values), and whether it reports each task's loss
    of the received model before training (``loss_before``: an extra pass over its rows, for
    methods that weigh tasks by their losses)."""

    update_mode: UpdateMode = "joint"
    params: Mapping[str, Any] = field(default_factory=dict)
    loss_before: bool = False


@dataclass(frozen=True)
class Round:
    """The round being aggregated: its number and every silo the engine knows (by silo id)."""

    number: int
    silos: Sequence[SiloInfo] = ()


@dataclass(frozen=True)
class RoundResult:
    """What aggregating a round gave: the new global model and, for the balancing methods, each
    task's weight w_t in the trunk update."""

    model: GlobalModel
    task_weights: dict[str, float] = field(default_factory=dict)


class Method(ABC, Generic[P]):
    """The server half of a method (module docstring). ``silo``: its silo half."""

    silo: ClassVar[type[SiloMethod]] = SiloMethod
    global_model: ClassVar[bool] = True
    """Whether the global arrays form one complete model that a global test set can evaluate
    (False when heads or models stay on the silos or differ per silo)."""

    def __init__(self, params: P, setup: MethodSetup) -> None:
        self.params = params
        self.tasks = {task.name: task for task in setup.tasks}
        self.train = setup.train
        self.seed = setup.seed
        trim = params.trim()
        self.average: Averager = averager(
            params.robust, trim.fraction, trim.count, params.max_faulty or 0
        )
        """How one array is averaged over silos (``strategy.robust``)."""

    def initial_groups(self) -> Groups | None:
        """The task groups of the model the run starts from (default None: one shared trunk)."""
        return None

    def silo_task(self, server_round: int) -> SiloTask:
        """What every sampled silo does this round (default: plain training, joint updates)."""
        return SiloTask()

    def arrays_for(self, silo: SiloInfo, model: GlobalModel, purpose: Purpose) -> Arrays:
        """The arrays a silo receives for ``purpose`` (default: the trunk(s) its tasks use and
        its tasks' heads). Return the global arrays themselves (not copies) where they are sent
        unchanged: the engine then serialises them once for every silo."""
        return {k: model.arrays[k] for k in model.keys_for(silo.tasks)}

    def secure_sums(self, server_round: int) -> SumRule | str:
        """How this round's aggregate follows from per-task sums alone (a
        :class:`~strategies.engine.SumRule`: the server then hands :meth:`aggregate` one aggregate
        update whose arrays are the weighted means, :mod:`strategies.engine.sums`), or the reason
        it cannot (default: it reads each silo's own update). Privacy modes that let the server
        see only sums refuse a method that returns a reason, before any work."""
        return "its aggregation reads each silo's own update"

    def check_update(self, update: ClientUpdate) -> None:
        """Raise :class:`~strategies.engine.ReplyError` when the numbers or arrays this method
        asked the silo for (``update.method_metrics``, ``update.method_arrays``) are malformed
        (default: it asks for none)."""
        if update.method_metrics:
            raise ReplyError(f"unexpected method metrics {sorted(update.method_metrics)}")
        if update.method_arrays:
            raise ReplyError(f"unexpected method arrays {sorted(update.method_arrays)}")

    @abstractmethod
    def aggregate(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> RoundResult:
        """The new global model from the round's checked updates (ordered by silo id; at least
        ``min_train_nodes`` of them). Updates are deltas to the arrays each silo received
        (``update.sent``)."""

    def state_dict(self) -> dict[str, Any]:
        """The method's state (a tree of JSON values and numpy arrays), for checkpoints."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def results(self) -> dict[str, Any]:
        """Extra ``summary.json`` fields of this method (default none)."""
        return {}

    def write_artifacts(self, output_dir: Path, plots: bool = True) -> None:
        """Write this method's own result files (and plots when ``plots``) into ``output_dir``."""


@dataclass(frozen=True)
class TrunkStep:
    """A method's trunk update of one round: the combined update Delta (same keys as the trunk;
    None keeps the trunk) and each task's weight w_t in it (balancing methods)."""

    delta: Arrays | None
    task_weights: dict[str, float] = field(default_factory=dict)


class TrunkAndHeads(Method[P]):
    """A method that keeps one global model and updates it in two parts:

    - the trunk(s): the method's combined update Delta (:meth:`trunk_step`), applied by the
      FedOpt server optimizer (``strategy.server_optimizer``; plain ``sgd`` with lr 1 adds it);
    - the heads, per task over the silos that hold it, weighted by their labelled examples:
      h_t <- h_t + sum_{s holds t} n_{s,t} Delta h_{s,t} / sum_s n_{s,t} (or the robust rule); a
      task no sampled silo holds keeps its head. ``shares_heads = False`` leaves the heads on the
      silos (nothing to average).

    :meth:`finish` may then change the model's structure (task grouping splits the trunk).
    """

    shares_heads: ClassVar[bool] = True

    def __init__(self, params: P, setup: MethodSetup) -> None:
        super().__init__(params, setup)
        self.server_optimizer = ServerOptimizer(params.server_optimizer)

    @abstractmethod
    def trunk_step(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> TrunkStep:
        """The round's combined trunk update Delta over the keys of ``model.trunk()``. Each
        update's ``deltas`` holds the silo's joint trunk delta and ``task_deltas`` its per-task
        shares in ``per_task`` mode."""

    def aggregate(
        self, round_: Round, model: GlobalModel, updates: list[ClientUpdate]
    ) -> RoundResult:
        arrays = dict(model.arrays)
        trunk = model.trunk()
        step = self.trunk_step(round_, model, updates)
        if step.delta is None:
            log.warning("round %d: no trunk update; the trunk is unchanged", round_.number)
        else:
            arrays.update(self.server_optimizer.step(trunk, step.delta))
        if self.shares_heads:
            heads = aggregate_heads(model, updates, list(self.tasks), self.average)
            arrays.update(heads)
        return RoundResult(self.finish(round_, model.with_arrays(arrays)), dict(step.task_weights))

    def finish(self, round_: Round, model: GlobalModel) -> GlobalModel:
        """The model to carry into the next round (default: ``model``)."""
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"server_optimizer": self.server_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.server_optimizer.load_state_dict(state["server_optimizer"])
