"""What a silo does with a train or evaluate message, in each personal mode, and the state it keeps.

A silo's own state between rounds (``context.state``, Flower's node state, which survives across
rounds on every runtime) holds its personal arrays under :data:`PERSONAL`, per mode
(:data:`fedmtl.core.records.PersonalMode`):

- ``none``: it trains the model it receives and sends trained minus received; it keeps nothing.
- ``heads`` (FedPer, FedRep): it receives the trunk only and keeps its tasks' heads (the seeded
  initial heads before its first round). With ``head_epochs`` > 0 (FedRep) it first trains the
  heads for that many epochs with the trunk frozen, then the trunk with the heads frozen; else it
  trains both jointly (FedPer). It sends the trunk's update.
- ``model`` (local training): it keeps a whole model (the seeded initial one before its first
  round), receives and sends no arrays, and trains its model alone.
- ``ditto`` (Ditto): it trains and sends the global update as in ``none``; then it trains its
  personal model v (the received global model before its first round) on
  f_s(v) + (lambda/2) ||v - w||^2, w the received global model, for the same local epochs, and
  keeps it.

Evaluation uses the personal model in the personal modes (``heads``: the received trunk with the
silo's own heads), else the received one.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from flwr.app import RecordDict

from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel, head_task, is_trunk_key
from fedmtl.core.records import (
    Arrays,
    EvaluateReply,
    EvaluateRequest,
    TrainReply,
    TrainRequest,
    UpdateDtype,
)
from fedmtl.core.training import (
    Proximal,
    StepWeights,
    TrainResult,
    evaluate,
    mean_task_losses,
    train_local,
)

PERSONAL = "fedmtl.personal"
"""The node-state record of a silo's personal arrays."""


class AffinityProbe(Protocol):
    """A task-affinity measurement run at each local step (:data:`StepProbe`) that reports the
    mean measured affinity per ordered pair of tasks."""

    def __call__(self, rows: torch.Tensor, optimizer: torch.optim.Optimizer) -> None: ...

    def means(self) -> dict[tuple[str, str], float]: ...


def round_seed(seed: int, silo_id: int, server_round: int) -> int:
    """A seed that depends only on (experiment seed, silo, round), not on scheduling or runtime."""
    return zlib.crc32(f"{seed}/{silo_id}/{server_round}".encode())


@dataclass
class SiloWorker:
    """One silo's tools for one message: the (shared, reloaded) model, its data, its node state,
    the seeded initial arrays of the model, and its round seed and device."""

    model: MultiTaskModel
    data: LocalData
    state: RecordDict
    initial: Callable[[], Arrays]
    seed: int
    device: str
    scope: str = ""

    # ------------------------------------------------------------------ node state
    @property
    def record_key(self) -> str:
        """The node-state record of the personal arrays: :data:`PERSONAL`, per ``scope`` (the
        training run a message belongs to, when several share the nodes)."""
        return f"{PERSONAL}/{self.scope}" if self.scope else PERSONAL

    def personal(self) -> Arrays | None:
        record = self.state.array_records.get(self.record_key)
        return None if record is None else records.from_array_record(record)

    def set_personal(self, arrays: Arrays) -> None:
        self.state.array_records[self.record_key] = records.to_array_record(arrays)

    def keep(self, keys: list[str]) -> None:
        """Store the model's ``keys`` as the silo's personal arrays."""
        self.set_personal(records.state_arrays(self.model, keys))

    def own_keys(self, heads_only: bool = False) -> list[str]:
        """The model keys of the silo's own model: its tasks' heads, and the trunk(s) they use."""
        tasks = {t.name for t in self.data.tasks}
        shared = set(self.model.shared_parameters(list(tasks)))
        keys = []
        for key in self.model.exchanged_keys():
            if head_task(key) in tasks or (not heads_only and key in shared):
                keys.append(key)
        return keys

    def load_personal(self, heads_only: bool = False, fallback: Arrays | None = None) -> list[str]:
        """Load the personal arrays (or ``fallback``, or the initial model's) of the silo's own
        keys; return those keys."""
        keys = self.own_keys(heads_only)
        stored = self.personal()
        source = stored if stored is not None else fallback
        if source is None or not all(k in source for k in keys):
            source = self.initial()
        records.load_arrays(self.model, {k: source[k] for k in keys})
        return keys

    # ------------------------------------------------------------------ training
    def train(
        self,
        request: TrainRequest,
        step_weights: StepWeights | None = None,
        probe: AffinityProbe | None = None,
        proximal: Proximal | None = None,
        seed: int | None = None,
    ) -> TrainResult:
        """Local training with the batch order, torch's global RNG (dropout) and the step
        balancing set by the round seed; the caller's global RNG state is restored after."""
        seed = self.seed if seed is None else seed
        devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            if request.head_epochs > 0:
                heads = train_local(
                    self.model,
                    self.data,
                    request.train,
                    generator,
                    parts="heads",
                    epochs=request.head_epochs,
                )
                body = train_local(self.model, self.data, request.train, generator, parts="trunk")
                return TrainResult(heads.steps + body.steps, body.mean_loss)
            return train_local(
                self.model,
                self.data,
                request.train,
                generator,
                update_mode=request.update_mode,
                step_weights=step_weights,
                probe=probe,
                proximal=proximal,
            )


def run_train(
    worker: SiloWorker,
    received: Arrays,
    request: TrainRequest,
    step_weights: StepWeights | None = None,
    probe: AffinityProbe | None = None,
) -> TrainReply:
    """Answer a train message (module docstring). ``probe`` measures task affinity along the
    way, when the request asks for it."""
    mode = request.personal
    if mode == "model":
        keys = worker.load_personal()
        loss_before = mean_task_losses(worker.model, worker.data)
        result = worker.train(request)
        worker.keep(keys)
        return _reply(worker.data, {}, result, loss_before, None)
    records.load_arrays(worker.model, received)
    if mode == "heads":
        worker.load_personal(heads_only=True)
    loss_before = mean_task_losses(worker.model, worker.data)
    proximal = None
    if request.proximal_mu > 0:
        proximal = Proximal(request.proximal_mu, _tensors(received))
    result = worker.train(request, step_weights, probe, proximal)
    trained = records.state_arrays(worker.model, list(received))
    if mode == "heads":
        worker.keep(worker.own_keys(heads_only=True))
    affinity = {} if probe is None else probe.means()
    reply = train_reply(
        worker.data, received, trained, result, loss_before, affinity, request.update_dtype
    )
    if mode == "ditto":
        keys = worker.load_personal(fallback=received)
        ditto = Proximal(request.personal_lambda, _tensors(received))
        worker.train(request, proximal=ditto, seed=worker.seed + 1)
        worker.keep(keys)
    return reply


def _tensors(arrays: Arrays) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def train_reply(
    data: LocalData,
    received: Arrays,
    trained: Arrays,
    result: TrainResult,
    loss_before: dict[str, float],
    affinity: dict[tuple[str, str], float] | None = None,
    update_dtype: UpdateDtype = "float32",
) -> TrainReply:
    """The reply to a train message: trained minus ``received`` for every array received, except
    the trunk's in ``per_task`` mode, where each task's share of it goes instead; the arrays
    travel in ``update_dtype`` (the sequential and the vectorised runtimes both answer through
    here)."""
    deltas = {k: trained[k] - received[k] for k in received}
    task_deltas = None
    if result.task_trunk_deltas is not None:  # per_task mode: each task's share of its trunk
        deltas = {k: v for k, v in deltas.items() if not is_trunk_key(k)}
        task_deltas = {
            task: {key: share.detach().cpu().numpy() for key, share in shares.items()}
            for task, shares in result.task_trunk_deltas.items()
        }
    reply = _reply(data, deltas, result, loss_before, task_deltas, affinity)
    return dataclasses.replace(reply, update_dtype=update_dtype)


def _reply(
    data: LocalData,
    deltas: Arrays,
    result: TrainResult,
    loss_before: dict[str, float],
    task_deltas: dict[str, Arrays] | None,
    affinity: dict[tuple[str, str], float] | None = None,
) -> TrainReply:
    return TrainReply(
        deltas=deltas,
        num_examples=data.num_samples,
        steps=result.steps,
        task_examples=dict(data.labelled_counts()),
        train_loss=result.mean_loss,
        loss_before=loss_before,
        task_deltas=task_deltas,
        affinity=affinity or {},
    )


def run_evaluate(worker: SiloWorker, received: Arrays, request: EvaluateRequest) -> EvaluateReply:
    """Evaluate the silo's model (module docstring) on its test rows."""
    if request.personal == "model":
        worker.load_personal()
    else:
        records.load_arrays(worker.model, received)
        if request.personal == "heads":
            worker.load_personal(heads_only=True)
        elif request.personal == "ditto":
            worker.load_personal(fallback=received)
    return EvaluateReply(evaluate(worker.model, worker.data))
