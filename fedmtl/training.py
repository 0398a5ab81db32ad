"""Local training and evaluation loops, shared by the ClientApp and centralized references.

A silo's objective is the sum of its tasks' losses, each a mean over the rows of the batch that are
labelled for that task:  L(theta) = sum_{t in T_s} mean_{i in B, mask[i,t]} l_t(f_t(x_i), y_{i,t}).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedmtl.config import TrainConfig
from fedmtl.data.base import MultiTaskDataset
from fedmtl.models.multitask import MultiTaskModel
from fedmtl.tasks import TaskSpec


@dataclass(frozen=True)
class LocalData:
    """The rows of a dataset that one silo holds, restricted to the silo's tasks."""

    inputs: torch.Tensor
    targets: dict[str, torch.Tensor]
    mask: torch.Tensor
    tasks: tuple[TaskSpec, ...]

    @property
    def num_samples(self) -> int:
        return int(self.inputs.shape[0])

    def labelled_counts(self) -> dict[str, int]:
        return {t.name: int(self.mask[:, i].sum()) for i, t in enumerate(self.tasks)}

    def to(self, device: torch.device) -> LocalData:
        return LocalData(
            inputs=self.inputs.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
            mask=self.mask.to(device),
            tasks=self.tasks,
        )


def local_view(dataset: MultiTaskDataset, indices: np.ndarray, tasks: Sequence[str]) -> LocalData:
    """The rows ``indices`` of ``dataset`` with the label columns of ``tasks`` only."""
    rows = torch.from_numpy(np.array(indices, dtype=np.int64))
    positions = [dataset.task_names.index(t) for t in tasks]
    return LocalData(
        inputs=dataset.inputs[rows],
        targets={t: dataset.targets[t][rows] for t in tasks},
        mask=dataset.mask[rows][:, positions],
        tasks=tuple(dataset.tasks[p] for p in positions),
    )


@dataclass(frozen=True)
class TrainResult:
    steps: int
    mean_loss: dict[str, float]


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def batch_loss(
    model: MultiTaskModel, data: LocalData, rows: torch.Tensor
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Sum over tasks of the mean loss over the batch rows labelled for each task.

    Returns None as the loss when no row of the batch is labelled for any task.
    """
    outputs = model(data.inputs[rows], [t.name for t in data.tasks])
    total: torch.Tensor | None = None
    losses: dict[str, float] = {}
    for position, task in enumerate(data.tasks):
        labelled = data.mask[rows, position]
        if not bool(labelled.any()):
            continue
        loss = task.loss(outputs[task.name][labelled], data.targets[task.name][rows][labelled])
        losses[task.name] = float(loss.detach())
        total = loss if total is None else total + loss
    return total, losses


def train_local(
    model: MultiTaskModel, data: LocalData, cfg: TrainConfig, generator: torch.Generator
) -> TrainResult:
    """Train the trunk and the heads of ``data.tasks`` for ``cfg.local_epochs`` (or ``max_steps``).

    Mini-batches are drawn without replacement each epoch in an order set by ``generator``. Heads
    of other tasks are neither used nor changed. The optimizer is created afresh on each call, so
    momentum or Adam moments do not carry over from one round to the next (as in FedAvg).
    """
    params = list(model.trunk.parameters())
    for task in data.tasks:
        params += list(model.heads[task.name].parameters())
    optimizer = make_optimizer(params, cfg)
    model.train()
    device = data.inputs.device
    steps = 0
    loss_sums = {t.name: 0.0 for t in data.tasks}
    loss_counts = {t.name: 0 for t in data.tasks}
    for _ in range(cfg.local_epochs):
        order = torch.randperm(data.num_samples, generator=generator).to(device)
        for start in range(0, data.num_samples, cfg.batch_size):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            loss, losses = batch_loss(model, data, order[start : start + cfg.batch_size])
            if loss is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            for name, value in losses.items():
                loss_sums[name] += value
                loss_counts[name] += 1
    mean_loss = {k: loss_sums[k] / loss_counts[k] for k in loss_sums if loss_counts[k]}
    return TrainResult(steps=steps, mean_loss=mean_loss)


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
