"""The silo half of a method and the toolkit every runtime hands it.

A method's silo half (:class:`SiloMethod`) answers the train and evaluate messages of its method
on one silo; every runtime (the ClientApp in process, on Ray or on a SuperNode, and the vectorized
runtime for what it cannot batch) calls it with a :class:`SiloTools`: the silo's model (loaded
from each message), its rows, its node state, the seeded initial arrays and the message's seed.

The default silo half is plain local training of the model it receives (FedAvg's): load the
received arrays, train (:func:`fedmtl.core.training.train_local`), reply with trained minus
received (:func:`train_reply`). Methods that do more (a proximal term, heads kept on the silo, a
personal model, local balancing, affinity probes) override :meth:`SiloMethod.train` and
:meth:`SiloMethod.evaluate` with the tools below, and say whether a request can still be batched
with plain training (:meth:`SiloMethod.batchable`).

State a silo keeps between rounds (its personal arrays) lives in the node state
(:attr:`SiloTools.state`, Flower's ``context.state``, which survives across rounds on every
runtime) under :data:`PERSONAL`, one record per ``scope`` (the run a message belongs to when
several share the nodes); the error-feedback residual of a compressed update
(:mod:`fedmtl.core.compression`) lives beside them under :data:`RESIDUAL`.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from flwr.app import RecordDict

from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import (
    Arrays,
    EvaluateReply,
    EvaluateRequest,
    TrainReply,
    TrainRequest,
    UpdateDtype,
)
from fedmtl.core.registry import NoParams, build_dataclass
from fedmtl.core.training import (
    Proximal,
    RecordDP,
    StepProbe,
    StepWeights,
    TrainResult,
    evaluate,
    mean_task_losses,
    train_local,
)

PERSONAL = "fedmtl.personal"
"""The node-state record of a silo's personal arrays (per scope: ``fedmtl.personal/<scope>``)."""
RESIDUAL = "fedmtl.residual"
"""The node-state record of a silo's error-feedback residual, by the update's wire keys (per
scope: ``fedmtl.residual/<scope>``)."""


def round_seed(seed: int, silo_id: int, server_round: int) -> int:
    """A seed that depends only on (experiment seed, silo, round), not on scheduling or runtime."""
    return zlib.crc32(f"{seed}/{silo_id}/{server_round}".encode())


def tensors(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Numpy arrays as tensors sharing their memory (e.g. a proximal term's anchor)."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


@dataclass
class SiloTools:
    """One silo's tools for one message: the (shared, reloaded) model, its data, its node state,
    the seeded initial arrays of the model, and its round seed, device and scope."""

    model: MultiTaskModel
    data: LocalData
    state: RecordDict
    initial: Callable[[], Arrays]
    seed: int
    device: str
    scope: str = ""
    dp: RecordDP | None = None
    """DP-SGD's settings when the run has record-level DP (``privacy=dp_record``)."""

    # ------------------------------------------------------------------ the received model
    def load(self, arrays: Mapping[str, Any]) -> None:
        """Copy ``arrays`` into the model's parameters of the same names."""
        records.load_arrays(self.model, arrays)

    def arrays(self, keys: list[str]) -> Arrays:
        """The model's current values of ``keys`` (numpy copies)."""
        return records.state_arrays(self.model, keys)

    def losses_before(self, request: TrainRequest) -> dict[str, float]:
        """Per task, the mean loss of the model as it is now over the silo's labelled rows, when
        ``request`` asks for it (:attr:`TrainRequest.loss_before`); else none."""
        return mean_task_losses(self.model, self.data) if request.loss_before else {}

    # ------------------------------------------------------------------ personal state
    @property
    def record_key(self) -> str:
        """The node-state record of the personal arrays: :data:`PERSONAL`, per ``scope``."""
        return f"{PERSONAL}/{self.scope}" if self.scope else PERSONAL

    def personal(self) -> Arrays | None:
        """The silo's personal arrays, None before it first kept any."""
        record = self.state.array_records.get(self.record_key)
        return None if record is None else records.from_array_record(record)

    def set_personal(self, arrays: Arrays) -> None:
        self.state.array_records[self.record_key] = records.to_array_record(arrays)

    def residual(self) -> Arrays:
        """The error-feedback residual of the silo's compressed updates (empty before any)."""
        key = f"{RESIDUAL}/{self.scope}" if self.scope else RESIDUAL
        record = self.state.array_records.get(key)
        return {} if record is None else records.from_array_record(record)

    def set_residual(self, arrays: Arrays) -> None:
        key = f"{RESIDUAL}/{self.scope}" if self.scope else RESIDUAL
        self.state.array_records[key] = records.to_array_record(arrays)

    def keep(self, keys: list[str]) -> None:
        """Store the model's ``keys`` as the silo's personal arrays."""
        self.set_personal(self.arrays(keys))

    def own_keys(self, heads_only: bool = False) -> list[str]:
        """The model keys of the silo's own model: its tasks' own parameters (role ``task``:
        heads, gates, ...) and, unless ``heads_only``, the shared parameters they use."""
        tasks = [t.name for t in self.data.tasks]
        own = {k for t in tasks for k in self.model.head_keys(t)}
        if not heads_only:
            own |= set(self.model.shared_parameters(tasks))
        return [key for key in self.model.exchanged_keys() if key in own]

    def load_local(self) -> None:
        """Load the silo's own values of the model's ``local`` parameters (role ``local``: they
        never travel), from its personal arrays, or the initial model's before it kept any. The
        toolkit calls it before every message: the model object is shared by the silos of a
        process."""
        keys = self.model.local_keys()
        if not keys:
            return
        stored = self.personal()
        source = stored if stored is not None and all(k in stored for k in keys) else None
        self.load({k: (source or self.initial())[k] for k in keys})

    def keep_local(self) -> None:
        """Store the ``local`` parameters' values with the personal arrays (after training)."""
        keys = self.model.local_keys()
        if keys:
            self.set_personal({**(self.personal() or {}), **self.arrays(keys)})

    def load_personal(self, heads_only: bool = False, fallback: Arrays | None = None) -> list[str]:
        """Load the personal arrays (or ``fallback``, or the initial model's) of the silo's own
        keys; return those keys."""
        keys = self.own_keys(heads_only)
        stored = self.personal()
        source = stored if stored is not None else fallback
        if source is None or not all(k in source for k in keys):
            source = self.initial()
        self.load({k: source[k] for k in keys})
        return keys

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def seeded(self, seed: int | None = None) -> Iterator[torch.Generator]:
        """Torch's global RNG (dropout) seeded by the round seed (or ``seed``) and a generator for
        the batch order; the caller's global RNG state is restored afterwards."""
        seed = self.seed if seed is None else seed
        devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # What torch.manual_seed does for the devices in use: it also queues seeds for every
            # accelerator backend, each with a formatted stack trace (6 ms a call, 1 in 8 of a
            # small silo's round).
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            yield torch.Generator().manual_seed(seed)

    def train(
        self,
        request: TrainRequest,
        step_weights: StepWeights | None = None,
        probe: StepProbe | None = None,
        proximal: Proximal | None = None,
        seed: int | None = None,
    ) -> TrainResult:
        """Local training of the silo's tasks (:func:`~fedmtl.core.training.train_local`) in the
        request's update mode, seeded (:meth:`seeded`)."""
        with self.seeded(seed) as generator:
            return train_local(
                self.model,
                self.data,
                request.train,
                generator,
                update_mode=request.update_mode,
                step_weights=step_weights,
                probe=probe,
                proximal=proximal,
                dp=self.dp,
            )


def train_reply(
    data: LocalData,
    received: Arrays,
    trained: Arrays,
    result: TrainResult,
    loss_before: dict[str, float],
    update_dtype: UpdateDtype = "float32",
    method_metrics: Mapping[str, float] | None = None,
    method_arrays: Arrays | None = None,
) -> TrainReply:
    """The reply to a train message: trained minus ``received`` for every array received, except
    the shared ones in ``per_task`` mode, where each task's share of them goes instead; the
    update travels in ``update_dtype`` (every runtime answers through here), the method's own
    numbers and arrays beside it."""
    deltas = {k: trained[k] - received[k] for k in received}
    task_deltas = None
    if result.task_trunk_deltas is not None:  # per_task mode: each task's share of its trunk
        shared = {key for shares in result.task_trunk_deltas.values() for key in shares}
        deltas = {k: v for k, v in deltas.items() if k not in shared}
        task_deltas = {
            task: {key: share.detach().cpu().numpy() for key, share in shares.items()}
            for task, shares in result.task_trunk_deltas.items()
        }
    return TrainReply(
        deltas=deltas,
        num_examples=data.num_samples,
        steps=result.steps,
        task_examples=dict(data.labelled_counts()),
        train_loss=result.mean_loss,
        loss_before=loss_before,
        task_deltas=task_deltas,
        method_metrics=dict(method_metrics or {}),
        method_arrays=dict(method_arrays or {}),
        update_dtype=update_dtype,
    )


def train_received(
    tools: SiloTools,
    received: Arrays,
    request: TrainRequest,
    step_weights: StepWeights | None = None,
    probe: StepProbe | None = None,
    proximal: Proximal | None = None,
) -> TrainReply:
    """Local training of the received model (with the optional per-step balancing, probe or
    proximal term of :meth:`SiloTools.train`) and its reply: trained minus received."""
    tools.load(received)
    before = tools.losses_before(request)
    result = tools.train(request, step_weights, probe, proximal)
    trained = tools.arrays(list(received))
    return train_reply(tools.data, received, trained, result, before, request.update_dtype)


class SiloMethod:
    """The silo half of a method (module docstring). ``Params``: the dataclass of what the server
    half sends it each round (:attr:`fedmtl.core.records.MethodSpec.params`); the silo builds it
    with the same checks as a config, so a malformed value is refused before any work."""

    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def from_spec(cls, values: Mapping[str, Any]) -> SiloMethod:
        """The silo half for a request's method parameters (a ConfigError names a bad one)."""
        return cls(build_dataclass(cls.Params, values, "method-params"))

    def batchable(self) -> str | None:
        """None when this request trains exactly as plain local training of the received model
        (so the vectorized runtime may train it in a batch with others), else why not. The
        default: only a silo half that keeps the plain :meth:`train`."""
        if type(self).train is SiloMethod.train:
            return None
        return f"{type(self).__name__} trains in a way of its own"

    def phases(self, request: TrainRequest) -> dict[str, int]:
        """The epochs of each local training pass :meth:`train` runs for ``request``, by name (a
        silo refuses a request beyond its limits before any work); default one pass."""
        return {"local-epochs": request.train.local_epochs}

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        """Answer a train message: plain local training of the received model."""
        return train_received(tools, received, request)

    def evaluate(
        self, tools: SiloTools, received: Arrays, request: EvaluateRequest
    ) -> EvaluateReply:
        """Answer an evaluate message: the received model on the silo's test rows (additive
        statistics per task)."""
        tools.load(received)
        return EvaluateReply(evaluate(tools.model, tools.data))


@dataclass(frozen=True)
class ProximalParams:
    """``mu`` of the proximal term (mu/2) ||theta - received||^2 (0: none)."""

    mu: float = 0.0


class ProximalSilo(SiloMethod):
    """Plain training of the received model w with (mu/2) ||theta - w||^2 added to the silo's
    objective (FedProx; FedAMP with w the silo's cloud model); mu = 0 is plain training."""

    Params = ProximalParams
    params: ProximalParams

    def batchable(self) -> str | None:
        return None if self.params.mu == 0 else "a proximal term is added per silo"

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        proximal = Proximal(self.params.mu, tensors(received)) if self.params.mu > 0 else None
        return train_received(tools, received, request, proximal=proximal)
