"""Vectorised local training: one round of :func:`fedmtl.core.training.train_local` for many silos
as one batched computation, on the CPU or one GPU.

The silos share one architecture (a :class:`MultiTaskModel` with one trunk, no dropout, no
buffers and no ``local`` parameters: :func:`unsupported` says why a model does not qualify) and one :class:`TrainConfig`;
each keeps its own parameters, data, batch order, tasks and optimizer state. Their parameters are
stacked along a new leading axis (S x ...), and each local step runs one forward and backward for
all of them (``torch.func``: ``functional_call`` under ``vmap``), followed by the optimizer's
update written out elementwise.

The semantics are ``train_local``'s, silo by silo (s = a silo, k = a local step):

- **Batch order.** Each epoch a permutation from ``torch.Generator().manual_seed(seed_s)`` cut into
  batches of ``batch_size`` rows (the last one shorter); a batch without a labelled row of the
  silo's tasks is skipped (no step); at most ``max_steps`` steps. Silo s takes K_s steps. Step k of
  the batched loop is step k of every silo with K_s > k; the others are masked: their parameters
  and optimizer state stay as they are (silos are thereby grouped by schedule).
- **Objective.** L_s = sum_{t in T_s} sum_i m_{i,t} l_t(f_t(x_i), y_{i,t}) / max(1, sum_i m_{i,t}),
  with m_{i,t} = 1 when row i of the batch is real (not padding) and labelled for task t, a task
  the silo holds. It equals the sum over the batch's tasks of each task's mean loss over its
  labelled rows.
- **Optimizer**, created afresh each round and applied per silo: SGD with momentum mu and weight
  decay lambda: g <- g + lambda theta, b <- mu b + g (b = 0 before the first step, so b_1 = g_1),
  theta <- theta - eta b. Adam as ``torch.optim.Adam`` (L2 weight decay added to g; bias-corrected
  moments).
- **Per-task updates** (``per_task``): each task's share of every trunk step exactly as
  :class:`~fedmtl.core.training.TrunkAttribution` computes it, from the per-task trunk gradients
  (the Jacobian of the task losses, ``jacrev``).
- **Loss before training** (``mean_task_losses``): each task's mean loss over the silo's labelled
  training rows, in windows of 512 rows.

Results equal ``train_local``'s up to floating-point rounding: batched products and masked sums
add in another order. Dropout masks cannot be reproduced (the sequential run draws one silo's mask
after another from the global generator), nor running statistics of batch norm: such models are
refused (:func:`unsupported`) and the caller trains those silos one by one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import TrainResult, UpdateMode, make_optimizer

Precision = Literal["float32", "bfloat16", "float16"]
"""The forward pass's precision: ``float32``, or autocast to ``bfloat16`` / ``float16`` (mixed
precision: parameters, gradients and optimizer state stay float32; results then differ from the
sequential runtime's by more than rounding)."""

EVAL_ROWS = 512
"""Rows per window of the loss before training (``mean_task_losses``'s batch size)."""

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SiloJob:
    """One silo's round: its training rows, its round seed (batch order) and the parameter values
    it starts from (parameter name -> tensor; a name it lacks starts from the model's value)."""

    data: LocalData
    seed: int
    start: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class SiloOutcome:
    """One silo's trained parameters (every parameter of the model; those of tasks it does not
    hold are meaningless), its training result and its loss before training."""

    params: Params
    result: TrainResult
    loss_before: dict[str, float]


def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained vectorised with results equal to the sequential loop's,
    or None when it can."""
    if isinstance(model, MultiTaskModel) and model.groups is not None:
        return "the model has one trunk per task group"
    if isinstance(model, MultiTaskModel) and model.local_keys():
        return "the model has parameters each silo keeps (role local)"
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return "dropout draws each silo's masks from the global generator in turn"
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. batch-norm running statistics)"
    return None


def train_vectorized(
    model: MultiTaskModel,
    jobs: Sequence[SiloJob],
    cfg: TrainConfig,
    update_mode: UpdateMode = "joint",
    precision: Precision = "float32",
    loss_before: bool = True,
) -> list[SiloOutcome]:
    """Train every silo of ``jobs`` for one round, together (module docstring); ``loss_before``:
    whether to compute each silo's losses before training (else none are reported).

    ``model`` gives the architecture and the starting value of any parameter a job does not set;
    it is not changed. Everything runs on the model's device (the jobs' data is moved there).
    """
    reason = unsupported(model)
    if reason is not None:
        raise ValueError(f"cannot train this model vectorised: {reason}")
    if not jobs:
        return []
    batch = _Batch(model, jobs, precision)
    before = batch.loss_before() if loss_before else [{} for _ in jobs]
    schedule, steps = _schedules(jobs, cfg, batch.device)
    trained = _Trainer(batch, cfg, update_mode).run(schedule, steps)
    return [
        SiloOutcome(
            params={name: value[s] for name, value in trained.params.items()},
            result=trained.result(s, steps[s]),
            loss_before=before[s],
        )
        for s in range(len(jobs))
    ]


class _Batch:
    """The stacked parameters and padded data of S silos, and the per-silo loss function.

    ``inputs`` (S, N, ...), ``targets[t]`` (S, N) with 0 where unlabelled, ``labels`` (S, N, T)
    bool: row i of silo s is a real row labelled for task t, a task the silo holds (N is the
    largest silo; T counts every task of the model)."""

    def __init__(self, model: MultiTaskModel, jobs: Sequence[SiloJob], precision: Precision):
        self.model = model
        self.tasks = list(model.tasks.values())
        self.names = [t.name for t in self.tasks]
        first = next(model.parameters())
        self.device = first.device
        self.precision = precision
        own = {name: p.detach() for name, p in model.named_parameters()}
        self.params: Params = {
            name: torch.stack([_value(job.start.get(name), value) for job in jobs])
            for name, value in own.items()
        }
        self.trunk_names = list(model.shared_parameters(self.names))
        self.head_of = {  # a parameter of role ``task`` (a head, a gate, ...) -> its task
            name: self.names.index(task)
            for task in self.names
            for name in model.task_parameters(task)
        }
        sizes = [job.data.num_samples for job in jobs]
        self.sizes = torch.tensor(sizes, device=self.device)
        rows = max(1, *sizes)
        count = len(jobs)
        example = jobs[0].data.inputs
        self.inputs = torch.zeros(
            (count, rows, *example.shape[1:]), dtype=example.dtype, device=self.device
        )
        self.targets = {
            t.name: torch.zeros((count, rows), dtype=t.target_dtype, device=self.device)
            for t in self.tasks
        }
        self.labels = torch.zeros((count, rows, len(self.tasks)), dtype=torch.bool)
        self.labels = self.labels.to(self.device)
        self.held = torch.zeros((count, len(self.tasks)), dtype=torch.bool, device=self.device)
        self.silo_tasks: list[list[str]] = []
        for s, job in enumerate(jobs):
            data = job.data.to(self.device)
            n = data.num_samples
            self.inputs[s, :n] = data.inputs
            self.silo_tasks.append([t.name for t in data.tasks])
            for column, task in enumerate(data.tasks):
                t = self.names.index(task.name)
                mask = data.mask[:, column]
                target = data.targets[task.name]
                self.targets[task.name][s, :n] = torch.where(mask, target, torch.zeros_like(target))
                self.labels[s, :n, t] = mask
                self.held[s, t] = True

    def losses(
        self, params: Params, inputs: torch.Tensor, targets: Params, labels: torch.Tensor
    ) -> torch.Tensor:
        """One silo's task losses (T,) on a batch: each task's mean loss over its labelled rows
        (0 for a task without one); the silo's objective is their sum."""
        with self.autocast():
            outputs = functional_call(self.model, params, (inputs, self.names))
            values = []
            for t, task in enumerate(self.tasks):
                mask = labels[:, t]
                rows = task.row_losses(outputs[task.name], targets[task.name]).float()
                total = torch.where(mask, rows, torch.zeros_like(rows)).sum()
                values.append(total / mask.sum().clamp(min=1))
        return torch.stack(values)

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, Params, torch.Tensor]:
        """Inputs, targets and labels of each silo's rows ``rows`` (S, B); -1 pads."""
        silos = torch.arange(rows.shape[0], device=self.device)[:, None]
        safe = rows.clamp(min=0)
        labels = self.labels[silos, safe] & (rows >= 0)[..., None]
        targets = {name: value[silos, safe] for name, value in self.targets.items()}
        return self.inputs[silos, safe], targets, labels

    @torch.no_grad()
    def loss_before(self) -> list[dict[str, float]]:
        """Per silo, each of its tasks' mean loss over its labelled training rows (windows of
        :data:`EVAL_ROWS` rows, as ``mean_task_losses``)."""
        losses = vmap(self.losses)
        sums = torch.zeros(self.held.shape, dtype=torch.float64, device=self.device)
        rows = self.inputs.shape[1]
        window = torch.arange(EVAL_ROWS, device=self.device)
        for start in range(0, rows, EVAL_ROWS):
            index = start + window[: min(EVAL_ROWS, rows - start)]
            index = torch.where(index[None, :] < self.sizes[:, None], index[None, :], -1)
            inputs, targets, labels = self.gather(index)
            values = losses(self.params, inputs, targets, labels)
            sums += values.double() * labels.sum(dim=1)
        counts = self.labels.sum(dim=1)
        means = (sums / counts.clamp(min=1)).tolist()
        has = (counts > 0).tolist()
        return [
            {
                name: means[s][self.names.index(name)]
                for name in own
                if has[s][self.names.index(name)]
            }
            for s, own in enumerate(self.silo_tasks)
        ]


def _value(given: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    if given is None:
        return default.clone()
    return torch.as_tensor(given).to(device=default.device, dtype=default.dtype)


def _schedules(
    jobs: Sequence[SiloJob], cfg: TrainConfig, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """Each silo's rows at each of its local steps, (S, K, B) with -1 padding (K = the most steps
    of any silo), and its number of steps K_s: ``train_local``'s batch order and skipping rule."""
    size = cfg.batch_size
    per_silo: list[torch.Tensor] = []
    for job in jobs:
        generator = torch.Generator().manual_seed(job.seed)
        n = job.data.num_samples
        labelled = job.data.mask.any(dim=1).cpu()
        batches: list[torch.Tensor] = []
        for _ in range(cfg.local_epochs):
            order = torch.randperm(n, generator=generator)
            count = math.ceil(n / size)
            padded = torch.full((count * size,), -1, dtype=torch.long)
            padded[:n] = order
            padded = padded.view(count, size)
            useful = (labelled[padded.clamp(min=0)] & (padded >= 0)).any(dim=1)
            batches.extend(padded[useful])
        if cfg.max_steps is not None:
            batches = batches[: cfg.max_steps]
        per_silo.append(
            torch.stack(batches) if batches else torch.empty((0, size), dtype=torch.long)
        )
    steps = [len(b) for b in per_silo]
    most = max(steps)
    schedule = torch.full((len(jobs), most, size), -1, dtype=torch.long)
    for s, rows in enumerate(per_silo):
        schedule[s, : len(rows)] = rows
    return schedule.to(device), steps


class _Trainer:
    """The batched local steps: gradients by ``vmap(grad)`` (joint) or ``vmap(jacrev)``
    (per task), the optimizer update elementwise, masked for silos whose steps are over."""

    def __init__(self, batch: _Batch, cfg: TrainConfig, update_mode: UpdateMode) -> None:
        self.batch = batch
        self.cfg = cfg
        self.update_mode = update_mode
        # The optimizer's constants as make_optimizer sets them (betas, eps, momentum).
        probe = make_optimizer([nn.Parameter(torch.zeros(1))], cfg).param_groups[0]
        self.group = dict(probe)
        self.params = {name: value.clone() for name, value in batch.params.items()}
        self.state = {
            key: {name: torch.zeros_like(value) for name, value in self.params.items()}
            for key in (("exp_avg", "exp_avg_sq") if cfg.optimizer == "adam" else ("buffer",))
        }
        # Adam's step count of each parameter of each silo (a head steps only with its task).
        self.steps = {
            name: torch.zeros(batch.held.shape[0], dtype=torch.long, device=batch.device)
            for name in self.params
        }
        shape = batch.held.shape
        self.loss_sums = torch.zeros(shape, dtype=torch.float64, device=batch.device)
        self.loss_counts = torch.zeros(shape, dtype=torch.long, device=batch.device)
        self.shares: dict[str, dict[str, torch.Tensor]] = {}
        if update_mode == "per_task":
            tasks = shape[1]
            self.users = batch.held.sum(dim=1).clamp(min=1).to(torch.float32)
            self.shares = {
                key: {
                    name: torch.zeros(
                        (shape[0], tasks, *self.params[name].shape[1:]), device=batch.device
                    )
                    for name in batch.trunk_names
                }
                for key in ("buffer", "delta")
            }

    def run(self, schedule: torch.Tensor, steps: list[int]) -> _Trainer:
        counts = torch.tensor(steps, device=self.batch.device)
        for k in range(schedule.shape[1]):
            active = counts > k
            inputs, targets, labels = self.batch.gather(schedule[:, k])
            grads, per_task, values = self._gradients(inputs, targets, labels)
            present = (labels.sum(dim=1) > 0) & active[:, None]
            self.loss_sums += torch.where(present, values.double(), 0.0)
            self.loss_counts += present.long()
            before = {name: self.params[name] for name in self.batch.trunk_names}
            self._step(grads, active, present)
            if per_task is not None:
                self._attribute(per_task, before, active, k + 1)
        return self

    def _gradients(
        self, inputs: torch.Tensor, targets: Params, labels: torch.Tensor
    ) -> tuple[Params, Params | None, torch.Tensor]:
        """Per silo: the gradient of its objective, each task's trunk gradient (per task mode)
        and its task losses (S, T)."""
        losses = self.batch.losses

        def objective(params: Params, x: torch.Tensor, y: Params, m: torch.Tensor) -> tuple:
            values = losses(params, x, y, m)
            return values.sum(), values

        if self.update_mode == "joint":
            grads, values = vmap(grad(objective, has_aux=True))(
                self.params, inputs, targets, labels
            )
            return grads, None, values

        def per_task(params: Params, x: torch.Tensor, y: Params, m: torch.Tensor) -> tuple:
            values = losses(params, x, y, m)
            return values, values

        jacobian, values = vmap(jacrev(per_task, has_aux=True))(
            self.params, inputs, targets, labels
        )
        grads = {name: value.sum(dim=1) for name, value in jacobian.items()}
        return grads, {name: jacobian[name] for name in self.batch.trunk_names}, values

    def _step(self, grads: Params, moving: torch.Tensor, present: torch.Tensor) -> None:
        """One optimizer step of every active silo (``torch.optim.SGD`` / ``Adam``'s update).

        As in ``train_local``, a head whose task has no labelled row in the batch has no gradient
        (``zero_grad(set_to_none=True)``), so the optimizer skips it: no weight decay, momentum
        or Adam step for it. ``moving`` (S,): the silos taking a step; ``present`` (S, T): the
        tasks of their batches."""
        cfg, group = self.cfg, self.group
        # Which parameters move for every silo this step (then no masking is needed).
        everyone = bool(moving.all())
        all_present = (present.all(dim=0) & everyone).tolist()
        for name, param in self.params.items():
            task = self.batch.head_of.get(name)
            moves = moving if task is None else moving & present[:, task]
            keep = None if (everyone if task is None else all_present[task]) else moves
            g = grads[name]
            if cfg.weight_decay:
                g = g.add(param, alpha=cfg.weight_decay)
            if cfg.optimizer == "adam":
                beta1, beta2 = group["betas"]
                self.steps[name] += moves.long()
                steps = self.steps[name].clamp(min=1).double()
                step_size = _expand(cfg.lr / (1 - beta1**steps), param).to(param.dtype)
                correction = _expand((1 - beta2**steps).sqrt(), param).to(param.dtype)
                exp_avg = self.state["exp_avg"][name].lerp(g, 1 - beta1)
                exp_avg_sq = (
                    self.state["exp_avg_sq"][name].mul(beta2).addcmul(g, g, value=1 - beta2)
                )
                denom = (exp_avg_sq.sqrt() / correction).add(group["eps"])
                new = param - step_size * (exp_avg / denom)
                self.state["exp_avg"][name] = _select(keep, exp_avg, self.state["exp_avg"][name])
                self.state["exp_avg_sq"][name] = _select(
                    keep, exp_avg_sq, self.state["exp_avg_sq"][name]
                )
            else:
                buffer = self.state["buffer"][name].mul(cfg.momentum).add(g) if cfg.momentum else g
                new = param.add(buffer, alpha=-cfg.lr)
                self.state["buffer"][name] = _select(keep, buffer, self.state["buffer"][name])
            self.params[name] = _select(keep, new, param)

    def _attribute(self, per_task: Params, before: Params, active: torch.Tensor, step: int) -> None:
        """Each task's share of the trunk step (:class:`~fedmtl.core.training.TrunkAttribution`):
        c_t = g_t + (lambda / |T_s|) theta_before; SGD: b_t <- mu b_t + c_t, share -eta b_t;
        Adam: m_t <- beta1 m_t + (1 - beta1) c_t, share -eta m_t / ((1 - beta1^k)(sqrt(v_hat)
        + eps)) with the silo's joint v_hat."""
        cfg, group = self.cfg, self.group
        everyone = bool(active.all())
        for name in self.batch.trunk_names:
            part = per_task[name]
            if cfg.weight_decay:
                decay = cfg.weight_decay / self.users
                part = part + _expand(decay, part[:, 0])[:, None] * before[name][:, None]
            buffer = self.shares["buffer"][name]
            if cfg.optimizer == "adam":
                beta1, beta2 = group["betas"]
                buffer = buffer.mul(beta1).add(part, alpha=1 - beta1)
                v_hat = self.state["exp_avg_sq"][name] / (1 - beta2**step)
                denom = v_hat.sqrt().add(group["eps"])[:, None]
                delta = self.shares["delta"][name] - cfg.lr / (1 - beta1**step) * buffer / denom
            else:
                buffer = buffer.mul(cfg.momentum).add(part) if cfg.momentum else part
                delta = self.shares["delta"][name] - cfg.lr * buffer
            keep = None if everyone else active
            self.shares["buffer"][name] = _select(keep, buffer, self.shares["buffer"][name])
            self.shares["delta"][name] = _select(keep, delta, self.shares["delta"][name])

    def result(self, s: int, steps: int) -> TrainResult:
        names = self.batch.names
        counts = self.loss_counts[s].tolist()
        sums = self.loss_sums[s].tolist()
        own = self.batch.silo_tasks[s]
        mean_loss = {
            t: sums[names.index(t)] / counts[names.index(t)] for t in own if counts[names.index(t)]
        }
        task_deltas = None
        if self.update_mode == "per_task":
            task_deltas = {
                t: {
                    name: self.shares["delta"][name][s, names.index(t)]
                    for name in self.shares["delta"]
                }
                for t in own
            }
        return TrainResult(steps=steps, mean_loss=mean_loss, task_trunk_deltas=task_deltas)


def _select(keep: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` for the silos in ``keep`` (S,), ``old`` for the others (None: all silos)."""
    return new if keep is None else torch.where(_expand(keep, new), new, old)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` (S,) shaped to broadcast over ``like`` (S, ...)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
