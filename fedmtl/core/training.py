"""Local training and evaluation loops, shared by the ClientApp and centralized references.

A silo's objective is the sum of its tasks' losses, each a mean over the rows of the batch that are
labelled for that task:  L(theta) = sum_{t in T_s} mean_{i in B, mask[i,t]} l_t(f_t(x_i), y_{i,t}).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import TrainConfig

UpdateMode = Literal["joint", "per_task"]
"""How a silo reports its trunk update: ``joint`` (one update) or ``per_task`` (one share per task it
holds; the shares sum to the joint update, see :class:`TrunkAttribution`)."""

StepWeights = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]
"""Client-side balancing at every local step: ``(J, losses, tasks) -> w``. J (k x p) stacks the
trunk gradients of the k tasks labelled in the batch, ``losses`` their batch losses, ``tasks``
their positions in the silo's task list; the trunk then steps along sum_t w_t g_t (the ``weights``
method of a balancing method, :mod:`strategies.balancing`, fits)."""


StepProbe = Callable[[torch.Tensor, torch.optim.Optimizer], None]
"""Called before every local step with the step's batch rows and the optimizer (e.g. to measure
task affinity with a lookahead step, :mod:`strategies.grouping.affinity`); it must leave the model,
the optimizer and the gradients as it found them."""


@dataclass(frozen=True)
class Proximal:
    """A proximal term (mu / 2) sum_k ||theta_k - a_k||^2 added to the silo's objective, over the
    parameters that train, with ``anchor`` a_k (parameter name -> tensor): FedProx (a = the global
    model), Ditto's personal model (a = the global model), FedAMP (a = the silo's cloud model)."""

    mu: float
    anchor: Mapping[str, torch.Tensor]


Parts = Literal["all", "heads", "trunk"]
"""Which parameters a local training phase updates (the others stay fixed): ``heads`` the tasks'
own parameters (role ``task``), ``trunk`` the shared ones. FedRep trains the heads first with the
trunk frozen, then the trunk with the heads frozen."""


@dataclass(frozen=True)
class RecordDP:
    """DP-SGD (Abadi et al., CCS 2016, "Deep Learning with Differential Privacy") for local
    training: ``steps`` steps, each on a Poisson sample of the rows (each row in with probability
    q = ``sample_rate``, independently), each row's gradient g_i clipped to ``clip_norm`` C over
    every trained parameter together, then

        g = (sum_i g_i min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / (q n)

    with sigma = ``noise_multiplier``. A row's gradient is that of its whole loss, the sum of the
    losses of every task it is labelled for: a record that labels several tasks is one unit.
    ``noise`` draws the noise and the Poisson samples (None: fresh OS entropy; a seeded stream
    would let whoever knows the seed subtract the noise and know which rows each step used, which
    voids the amplification by sampling the accountant counts on)."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    noise: torch.Generator | None = None


@dataclass(frozen=True)
class TrainResult:
    """``task_trunk_deltas[t][key]``: task t's share of the trunk update (``per_task`` mode only)."""

    steps: int
    mean_loss: dict[str, float]
    task_trunk_deltas: dict[str, dict[str, torch.Tensor]] | None = None


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def task_losses(
    model: MultiTaskModel, data: LocalData, rows: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per task labelled in the batch ``rows``, its mean loss over those labelled rows."""
    outputs = model(data.inputs[rows], [t.name for t in data.tasks])
    losses: dict[str, torch.Tensor] = {}
    for position, task in enumerate(data.tasks):
        labelled = data.mask[rows, position]
        if bool(labelled.any()):
            targets = data.targets[task.name][rows][labelled]
            losses[task.name] = task.loss(outputs[task.name][labelled], targets)
    return losses


@torch.no_grad()
def mean_task_losses(
    model: MultiTaskModel, data: LocalData, batch_size: int = 512
) -> dict[str, float]:
    """Per task, the mean loss over all the rows labelled for it (eval mode, no update)."""
    model.eval()
    positions = {t.name: i for i, t in enumerate(data.tasks)}
    sums = dict.fromkeys(positions, 0.0)
    for start in range(0, data.num_samples, batch_size):
        end = min(start + batch_size, data.num_samples)
        rows = torch.arange(start, end, device=data.inputs.device)
        for name, loss in task_losses(model, data, rows).items():
            sums[name] += float(loss) * int(data.mask[rows, positions[name]].sum())
    counts = data.labelled_counts()
    return {name: sums[name] / counts[name] for name in sums if counts[name] > 0}


class TrunkAttribution:
    """Splits each optimizer step of the trunk into per-task shares that sum to the step.

    At step k let c_{t,k} = w_t g_{t,k} + (lambda / |U|) theta_k be task t's part of the trunk
    gradient (its weighted gradient plus an equal part of the weight-decay term, shared among the
    set U of the silo's tasks that use that parameter: all of them with one trunk, the tasks of its
    group with one trunk per group), so that sum_t c_{t,k} is the gradient the optimizer sees.
    Each task's share covers the parameters it uses only (``uses``; default: all).
    - SGD with momentum mu: the buffer b_k = mu b_{k-1} + g_k is linear in the gradients, so
      b_{t,k} = mu b_{t,k-1} + c_{t,k} and the step -eta b_k = sum_t -eta b_{t,k} exactly. For
      plain SGD (mu = 0, lambda = 0) task t's share is -eta sum_k w_t g_{t,k}: its own gradients.
    - Adam: the first moment is linear too, m_{t,k} = beta1 m_{t,k-1} + (1 - beta1) c_{t,k}, but the
      second moment is not; task t's share is -eta m_{t,k} / ((1 - beta1^k)(sqrt(v_hat_k) + eps)),
      with the joint v_hat_k: the joint preconditioner applied to the task's part of the momentum.
    The shares sum to the joint update up to floating-point rounding.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        tasks: list[str],
        cfg: TrainConfig,
        uses: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.params = params
        self.tasks = tasks
        self.cfg = cfg
        everything = range(len(params))
        self.uses = {t: list(everything if uses is None else uses[t]) for t in tasks}
        self.users = [sum(i in self.uses[t] for t in tasks) for i in everything]
        self.buffers = {t: {i: torch.zeros_like(params[i]) for i in self.uses[t]} for t in tasks}
        self.deltas = {t: {i: torch.zeros_like(params[i]) for i in self.uses[t]} for t in tasks}
        self.steps = 0

    def record(self, shares: dict[str, list[torch.Tensor]]) -> None:
        """Call after ``optimizer.step()`` (and :meth:`snapshot` before it) with each task's
        weighted trunk gradients ``shares`` of this step (a missing task contributed nothing)."""
        self.steps += 1
        cfg = self.cfg
        for task in self.tasks:
            grads = shares.get(task)
            for i in self.uses[task]:
                param = self.params[i]
                part = torch.zeros_like(param) if grads is None else grads[i]
                if cfg.weight_decay:
                    part = part + cfg.weight_decay / self.users[i] * self._before[i]
                buffer = self.buffers[task][i]
                if cfg.optimizer == "adam":
                    group = self.optimizer.param_groups[0]
                    beta1, beta2 = group["betas"]
                    buffer.mul_(beta1).add_(part, alpha=1 - beta1)
                    state = self.optimizer.state[param]
                    step = float(state["step"])
                    denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt().add_(group["eps"])
                    self.deltas[task][i] -= cfg.lr / (1 - beta1**step) * buffer / denom
                else:
                    if self.steps == 1 or not cfg.momentum:
                        buffer.copy_(part)
                    else:
                        buffer.mul_(cfg.momentum).add_(part)
                    self.deltas[task][i] -= cfg.lr * buffer

    def snapshot(self) -> None:
        """Call before ``optimizer.step()``: keeps theta_k for the weight-decay parts."""
        self._before = [p.detach().clone() for p in self.params] if self.cfg.weight_decay else []


@contextlib.contextmanager
def _frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """No gradient reaches ``params`` inside the block."""
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def train_local(
    model: MultiTaskModel,
    data: LocalData,
    cfg: TrainConfig,
    generator: torch.Generator,
    update_mode: UpdateMode = "joint",
    step_weights: StepWeights | None = None,
    probe: StepProbe | None = None,
    proximal: Proximal | None = None,
    parts: Parts = "all",
    epochs: int | None = None,
    dp: RecordDP | None = None,
) -> TrainResult:
    """Train the shared parameters ``data.tasks`` use (the trunk: roles ``shared`` and ``group``)
    and those tasks' own parameters (role ``task``: the heads, and a soft-sharing trunk's gates,
    attention modules, ...; "heads" below) for ``cfg.local_epochs`` (or ``max_steps``; ``epochs``
    overrides the number of epochs).

    Mini-batches are drawn without replacement each epoch in an order set by ``generator``. Heads
    of other tasks are neither used nor changed. The optimizer is created afresh on each call, so
    momentum or Adam moments do not carry over from one round to the next (as in FedAvg).

    Without ``step_weights`` the step follows the gradient of the summed task losses. With it, each
    step computes every batch task's trunk gradient g_t, asks ``step_weights`` for w and gives the
    trunk sum_t w_t g_t (each head still gets its own task's gradient). In ``per_task`` mode the
    result also holds each task's share of the trunk update (:class:`TrunkAttribution`).
    ``probe`` sees every step's batch before the step. ``proximal`` adds its term's gradient
    mu (theta - a) to every trained parameter (joint updates only: the term belongs to no task).
    ``parts`` chooses what trains (``heads`` or ``trunk`` alone: the rest is frozen). ``dp``
    trains with DP-SGD instead (:class:`RecordDP`: joint updates, no step weights or probe).
    """
    if proximal is not None and update_mode == "per_task":
        raise ValueError("a proximal term cannot be split per task: use joint updates")
    if dp is not None:
        if update_mode != "joint" or step_weights is not None or probe is not None:
            raise ValueError("DP-SGD trains joint updates, without step weights or probes")
        return _train_dp_sgd(model, data, cfg, dp, proximal, parts)  # secret randomness only
    names = [t.name for t in data.tasks]
    shared = model.shared_parameters(names)
    trunk = list(shared.values()) if parts != "heads" else []
    heads = {name: list(model.task_parameters(name).values()) for name in names}
    if parts == "trunk":
        heads = {name: [] for name in heads}
    local = [] if parts == "trunk" else list(model.local_parameters().values())
    trained = trunk + [p for ps in heads.values() for p in ps] + local
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in trained)]
    optimizer = make_optimizer(trained, cfg)
    anchors: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if proximal is not None:
        by_id = {id(p): name for name, p in model.named_parameters()}
        anchors = [  # the local parameters never travel: no anchor
            (p, proximal.anchor[by_id[id(p)]].to(p.device))
            for p in trained
            if by_id[id(p)] in proximal.anchor
        ]
    attribution = None
    if update_mode == "per_task":
        keys = list(shared)
        uses = {t: [keys.index(k) for k in model.shared_parameters([t])] for t in names}
        attribution = TrunkAttribution(optimizer, trunk, names, cfg, uses)
    separate = attribution is not None or step_weights is not None
    model.train()
    device = data.inputs.device
    steps = 0
    loss_sums = {name: 0.0 for name in names}
    loss_counts = {name: 0 for name in names}
    with _frozen(frozen):  # no gradient reaches what does not train
        for _ in range(cfg.local_epochs if epochs is None else epochs):
            order = torch.randperm(data.num_samples, generator=generator).to(device)
            for start in range(0, data.num_samples, cfg.batch_size):
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    break
                rows = order[start : start + cfg.batch_size]
                if probe is not None:
                    probe(rows, optimizer)
                losses = task_losses(model, data, rows)
                if not losses:
                    continue
                optimizer.zero_grad(set_to_none=True)
                if separate:
                    shares = _set_balanced_gradients(losses, trunk, heads, step_weights, names)
                    _set_joint_gradients(losses, local)
                else:
                    sum(losses.values()).backward()  # type: ignore[union-attr]
                for param, anchor in anchors:  # d/dtheta (mu/2) |theta - a|^2 = mu (theta - a)
                    extra = proximal.mu * (param.detach() - anchor)  # type: ignore[union-attr]
                    param.grad = extra if param.grad is None else param.grad + extra
                if attribution is not None:
                    attribution.snapshot()
                optimizer.step()
                if attribution is not None:
                    attribution.record(shares)
                steps += 1
                for name, loss in losses.items():
                    loss_sums[name] += float(loss.detach())
                    loss_counts[name] += 1
    mean_loss = {k: loss_sums[k] / loss_counts[k] for k in loss_sums if loss_counts[k]}
    task_deltas = None
    if attribution is not None:
        keys = list(shared)
        task_deltas = {
            t: {keys[i]: delta for i, delta in attribution.deltas[t].items()} for t in names
        }
    return TrainResult(steps=steps, mean_loss=mean_loss, task_trunk_deltas=task_deltas)


def _train_dp_sgd(
    model: MultiTaskModel,
    data: LocalData,
    cfg: TrainConfig,
    dp: RecordDP,
    proximal: Proximal | None,
    parts: Parts,
) -> TrainResult:
    """DP-SGD's local training (:class:`RecordDP`), with per-sample gradients from
    ``torch.func`` (``vmap`` of ``grad`` over the rows of the sample, the model called with
    ``functional_call``). The proximal term's gradient mu (theta - a) depends on no row and is
    added after the noise; weight decay and momentum are the optimizer's, on the noised gradient."""
    names = [t.name for t in data.tasks]
    shared = model.shared_parameters(names)
    trunk = list(shared.values()) if parts != "heads" else []
    own = [] if parts == "trunk" else [p for t in names for p in model.task_parameters(t).values()]
    local = [] if parts == "trunk" else list(model.local_parameters().values())
    trained = trunk + own + local  # as train_local: roles, not names (heads, gates, ...)
    named = {n: p for n, p in model.named_parameters() if any(p is q for q in trained)}
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in trained)]
    optimizer = make_optimizer(trained, cfg)
    anchors: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if proximal is not None:
        anchors = [  # the local parameters never travel: no anchor
            (p, proximal.anchor[n].to(p.device)) for n, p in named.items() if n in proximal.anchor
        ]
    device = data.inputs.device
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in named}
    rest.update(dict(model.named_buffers()))

    def row_loss(
        values: dict[str, torch.Tensor],
        x: torch.Tensor,
        targets: dict[str, torch.Tensor],
        mask: torch.Tensor,
    ) -> torch.Tensor:
        outputs = torch.func.functional_call(model, {**rest, **values}, (x[None], names))
        total = torch.zeros((), device=device)
        for position, task in enumerate(data.tasks):
            loss = task.loss(outputs[task.name], targets[task.name][None])
            total = total + torch.where(mask[position], loss, torch.zeros_like(loss))
        return total

    per_row = torch.func.vmap(
        torch.func.grad(row_loss), in_dims=(None, 0, 0, 0), randomness="different"
    )
    expected = dp.sample_rate * data.num_samples
    noise = (
        dp.noise
        if dp.noise is not None
        else torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    )
    safe = {  # an unlabelled entry's arbitrary value must not break its (masked) loss
        t.name: torch.where(
            data.mask[:, i], data.targets[t.name], torch.zeros_like(data.targets[t.name])
        )
        for i, t in enumerate(data.tasks)
    }
    model.train()
    with _frozen(frozen):
        for _ in range(dp.steps):
            chosen = torch.rand(data.num_samples, generator=noise) < dp.sample_rate
            rows = torch.nonzero(chosen).reshape(-1).to(device)
            summed = {n: torch.zeros_like(p) for n, p in named.items()}
            if rows.numel() > 0:
                values = {n: p.detach() for n, p in named.items()}
                targets = {n: column[rows] for n, column in safe.items()}
                grads = per_row(values, data.inputs[rows], targets, data.mask[rows])
                norms = torch.sqrt(
                    sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values())
                )
                factors = torch.clamp(dp.clip_norm / (norms + 1e-12), max=1.0)
                for n, g in grads.items():
                    summed[n] = torch.einsum("i,i...->...", factors, g)
            optimizer.zero_grad(set_to_none=True)
            for n, param in named.items():
                noised = summed[n] + dp.noise_multiplier * dp.clip_norm * torch.randn(
                    param.shape, generator=noise
                ).to(device)
                param.grad = noised / expected
            for param, anchor in anchors:
                param.grad = param.grad + proximal.mu * (param.detach() - anchor)  # type: ignore[union-attr, operator]
            optimizer.step()
    return TrainResult(steps=dp.steps, mean_loss={})


def dp_steps(cfg: TrainConfig, num_rows: int) -> int:
    """DP-SGD's steps per round: ``max_steps``, else the epochs' worth of expected batches,
    ``local_epochs`` x ceil(n / batch size)."""
    per_epoch = -(-num_rows // cfg.batch_size)
    steps = cfg.local_epochs * per_epoch
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def _set_balanced_gradients(
    losses: dict[str, torch.Tensor],
    trunk: list[torch.nn.Parameter],
    heads: dict[str, list[torch.nn.Parameter]],
    step_weights: StepWeights | None,
    names: list[str],
) -> dict[str, list[torch.Tensor]]:
    """Set ``.grad``: heads get their own task's gradient, the trunk sum_t w_t g_t (w = 1 without
    ``step_weights``). Returns each task's weighted trunk gradients w_t g_t."""
    gradients: dict[str, list[torch.Tensor]] = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, trunk + heads[name], retain_graph=True, allow_unused=True)
        filled = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(trunk + heads[name], grads, strict=True)
        ]
        gradients[name] = filled[: len(trunk)]
        for param, grad in zip(heads[name], filled[len(trunk) :], strict=True):
            param.grad = grad
    present = list(gradients)
    if step_weights is None:
        weights = torch.ones(len(present))
    else:
        matrix = torch.stack([torch.cat([g.reshape(-1) for g in gradients[n]]) for n in present])
        values = torch.stack([losses[n].detach() for n in present])
        weights = step_weights(matrix, values, [names.index(n) for n in present]).detach()
    shares = {
        n: [float(w) * g for g in gradients[n]] for n, w in zip(present, weights, strict=True)
    }
    for i, param in enumerate(trunk):
        param.grad = sum((shares[n][i] for n in present), start=torch.zeros_like(param))
    return shares


def _set_joint_gradients(losses: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> None:
    """Set ``.grad`` of ``params`` (the silo's ``local`` parameters, which belong to no task)
    to the gradient of the summed losses."""
    if not params:
        return
    total = sum(losses.values())
    grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)  # type: ignore[arg-type]
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, data: LocalData, batch_size: int = 512
) -> dict[str, dict[str, float]]:
    """Per task, additive metric statistics over the labelled rows (``TaskSpec.metric_sums``)."""
    model.eval()
    totals: dict[str, dict[str, float]] = {t.name: {"n": 0.0} for t in data.tasks}
    for start in range(0, data.num_samples, batch_size):
        rows = torch.arange(
            start, min(start + batch_size, data.num_samples), device=data.inputs.device
        )
        outputs = model(data.inputs[rows], [t.name for t in data.tasks])
        for position, task in enumerate(data.tasks):
            labelled = data.mask[rows, position]
            sums = task.metric_sums(
                outputs[task.name][labelled], data.targets[task.name][rows][labelled]
            )
            for key, value in sums.items():
                totals[task.name][key] = totals[task.name].get(key, 0.0) + value
    return totals
