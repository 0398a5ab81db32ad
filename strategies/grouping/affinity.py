"""Task affinity across a federation: how a training step on one task changes another's loss.

The affinity matrix A has A[i, j] = S_{i->j}: the effect on target task j of training with source
task i (row = source, column = target; the diagonal is not used). Positive means i helps j.

Estimators (:data:`AFFINITIES`):

- ``transfer_gain`` (Wang, Pan & Yu 2024, "Towards Principled Task Grouping for Multi-Task
  Learning", arXiv 2402.15328). With theta+_A the model after one REAL optimizer step on the sum of
  the losses of the task set A (the silo's optimizer with its current state: momentum, weight
  decay; the trunk and the heads of A),

      S_{i->j} = 1 - L_j(theta+_{{i, j}}) / L_j(theta+_{{j}}),

  i.e. how much lower j's loss is after a step on {i, j} than after a step on j alone. Candidate
  sets are singles and pairs (|T_s| + |T_s|(|T_s| - 1)/2 extra steps per measurement).
- ``tag``: TAG's lookahead affinity (Fifty et al., NeurIPS 2021, "Efficiently Identifying Task
  Groupings for Multi-Task Learning"), a plain gradient step of the shared parameters only, with
  the silo's learning rate eta, heads unchanged:

      Z_{i->j} = 1 - L_j(theta_s - eta grad_{theta_s} L_i, heads) / L_j(theta_s, heads).

- ``update_similarity``: cos(D_i, D_j) of the round's aggregated per-task trunk updates
  D_t = sum_s n_{s,t} D_{s,t} / sum_s n_{s,t} (see :mod:`strategies.balanced`), computed at the
  server: no extra client work, and defined for every pair of tasks with a holder in the round.

The silo estimators measure on the batch of every ``every``-th local step, before the step (the
losses on that same batch, in eval mode, as TAG does), and leave model, optimizer and gradients
exactly as they were. A silo reports, per ordered pair of its tasks, the mean of its measurements.

Combining (:class:`AffinityAccumulator`): the server's estimate of S_{i->j} is the weighted mean
of every report it received over the warm-up rounds, a silo's report weighted by
min(n_{s,i}, n_{s,j}) (its labelled examples of the scarcer task of the pair); an update-similarity
value has weight 1 per round. A pair no report covers (no sampled silo held both tasks) is
*uncovered*; :meth:`AffinityAccumulator.filled` applies the rule ``zero`` (no evidence of transfer:
0, the value of tasks that neither help nor hurt each other) or ``forbid`` (a penalty so large that
no optimal grouping puts the pair in one group).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch

from fedmtl.core.data import LocalData
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.registry import NoParams, Registry
from fedmtl.core.training import task_losses

Pair = tuple[str, str]
UncoveredRule = Literal["zero", "forbid"]


class Affinity:
    """An affinity estimator; ``on_silos``: measured by silos during local training (else at the
    server from per-task updates, ``needs_per_task``)."""

    name: ClassVar[str]
    on_silos: ClassVar[bool] = True
    needs_per_task: ClassVar[bool] = False

    def measure(
        self,
        model: MultiTaskModel,
        data: LocalData,
        rows: torch.Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> dict[Pair, float]:
        """S_{i->j} per ordered pair (i, j) of the tasks labelled in batch ``rows``, measured in
        eval mode (no dropout: deterministic, no random numbers drawn); the model, the optimizer
        state and the gradients are left exactly as they were."""
        was_training = model.training
        model.eval()
        restore = _Restore(model, optimizer)
        try:
            return self.lookahead(model, data, rows, optimizer, restore)
        finally:
            restore()
            model.train(was_training)

    def lookahead(
        self,
        model: MultiTaskModel,
        data: LocalData,
        rows: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        restore: _Restore,
    ) -> dict[Pair, float]:
        """The estimator's measurement; ``restore()`` resets model and optimizer between trials."""
        raise TypeError(f"affinity {self.name!r} is computed at the server, not on silos")


class _Restore:
    """Snapshot of a model's state and its optimizer's state, restored on each call."""

    def __init__(self, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def __call__(self) -> None:
        self.model.load_state_dict(self.state)
        # a deep copy each time: loading may reuse the given tensors, which steps update in place
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        self.optimizer.zero_grad(set_to_none=True)


def _losses(model: MultiTaskModel, data: LocalData, rows: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return {t: float(v) for t, v in task_losses(model, data, rows).items()}


class TransferGain(Affinity):
    """S_{i->j} = 1 - L_j(after a real step on {i, j}) / L_j(after a real step on {j})."""

    name = "transfer_gain"

    def lookahead(
        self,
        model: MultiTaskModel,
        data: LocalData,
        rows: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        restore: _Restore,
    ) -> dict[Pair, float]:
        present = list(_losses(model, data, rows))

        def after_step(tasks: Sequence[str]) -> dict[str, float]:
            restore()
            losses = task_losses(model, data, rows)
            sum(losses[t] for t in tasks).backward()  # type: ignore[union-attr]
            optimizer.step()
            return _losses(model, data, rows)

        alone = {j: after_step([j])[j] for j in present} if len(present) > 1 else {}
        gains: dict[Pair, float] = {}
        for i, j in itertools.combinations(present, 2):
            both = after_step([i, j])
            for source, target in ((i, j), (j, i)):
                if alone[target] > 1e-12:
                    gains[(source, target)] = 1.0 - both[target] / alone[target]
        return gains


class TAGLookahead(Affinity):
    """Z_{i->j} = 1 - L_j(theta_s - eta grad L_i) / L_j(theta_s), shared parameters only."""

    name = "tag"

    def lookahead(
        self,
        model: MultiTaskModel,
        data: LocalData,
        rows: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        restore: _Restore,
    ) -> dict[Pair, float]:
        lr = float(optimizer.param_groups[0]["lr"])
        before = _losses(model, data, rows)
        present = list(before) if len(before) > 1 else []
        shared = list(model.shared_parameters(present).values())
        affinity: dict[Pair, float] = {}
        for source in present:
            restore()
            loss = task_losses(model, data, rows)[source]
            grads = torch.autograd.grad(loss, shared, allow_unused=True)
            with torch.no_grad():
                for param, grad in zip(shared, grads, strict=True):
                    if grad is not None:
                        param.sub_(lr * grad)
            after = _losses(model, data, rows)
            for target in present:
                if target != source and before[target] > 1e-12:
                    affinity[(source, target)] = 1.0 - after[target] / before[target]
        return affinity


class UpdateSimilarity(Affinity):
    """cos(D_i, D_j) of the aggregated per-task updates, at the server (:func:`cosine_pairs`)."""

    name = "update_similarity"
    on_silos = False
    needs_per_task = True


AFFINITIES: Registry[type[Affinity]] = Registry("affinity", entry_points="fedmtl.affinities")
for _cls in (TransferGain, TAGLookahead, UpdateSimilarity):
    AFFINITIES.register(_cls.name, params=NoParams)(_cls)


def cosine_pairs(rows: Sequence[torch.Tensor]) -> dict[tuple[int, int], float]:
    """cos(rows[i], rows[j]) for every ordered pair i != j of non-zero rows (symmetric)."""
    matrix = torch.stack([r.to(torch.float64) for r in rows])
    norms = matrix.norm(dim=1)
    gram = matrix @ matrix.T
    result: dict[tuple[int, int], float] = {}
    for i, j in itertools.permutations(range(len(rows)), 2):
        if norms[i] > 0 and norms[j] > 0:
            result[(i, j)] = float(gram[i, j] / (norms[i] * norms[j]))
    return result


class SiloProbe:
    """Measures an on-silo estimator on the batch of every ``every``-th local step (a
    :data:`fedmtl.core.training.StepProbe`); :meth:`means` gives each ordered pair's mean."""

    def __init__(
        self, estimator: Affinity, model: MultiTaskModel, data: LocalData, every: int
    ) -> None:
        self.estimator = estimator
        self.model = model
        self.data = data
        self.every = every
        self.steps = 0
        self.sums: dict[Pair, float] = {}
        self.counts: dict[Pair, int] = {}

    def __call__(self, rows: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.steps % self.every == 0:
            for pair, value in self.estimator.measure(
                self.model, self.data, rows, optimizer
            ).items():
                if math.isfinite(value):
                    self.sums[pair] = self.sums.get(pair, 0.0) + value
                    self.counts[pair] = self.counts.get(pair, 0) + 1
        self.steps += 1

    def means(self) -> dict[Pair, float]:
        return {pair: total / self.counts[pair] for pair, total in self.sums.items()}


def silo_probe(name: str, model: MultiTaskModel, data: LocalData, every: int) -> SiloProbe:
    """The probe for estimator ``name`` (ValueError when it is not measured on silos)."""
    estimator = AFFINITIES.get(name, key="affinity").factory()
    if not estimator.on_silos:
        raise ValueError(f"affinity {name!r} is not measured on silos")
    return SiloProbe(estimator, model, data, every)


class AffinityAccumulator:
    """Weighted mean of affinity reports per ordered pair of ``tasks``, over silos and rounds."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        size = len(self.tasks)
        self.sums = np.zeros((size, size))
        self.weights = np.zeros((size, size))
        self.reports = np.zeros((size, size), dtype=np.int64)

    def add(self, source: str, target: str, value: float, weight: float) -> None:
        """One report of S_{source->target} with weight ``weight`` > 0 (others are ignored)."""
        if source == target or weight <= 0 or not math.isfinite(value):
            return
        i, j = self.tasks.index(source), self.tasks.index(target)
        self.sums[i, j] += weight * value
        self.weights[i, j] += weight
        self.reports[i, j] += 1

    def estimate(self) -> np.ndarray:
        """The weighted means; NaN for uncovered pairs and on the diagonal."""
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.where(
                self.weights > 0, self.sums / np.maximum(self.weights, 1e-300), np.nan
            )
        np.fill_diagonal(matrix, np.nan)
        return matrix

    def uncovered(self) -> list[Pair]:
        """Unordered pairs {i, j} (i before j in task order) with no report either way."""
        return [
            (self.tasks[i], self.tasks[j])
            for i, j in itertools.combinations(range(len(self.tasks)), 2)
            if self.weights[i, j] == 0 and self.weights[j, i] == 0
        ]

    def filled(self, rule: UncoveredRule) -> np.ndarray:
        """The estimate with each missing entry filled by ``rule`` (see the module docstring); a
        pair measured one way only gets the measured value both ways. Diagonal: 0."""
        matrix = self.estimate()
        one_way = np.isnan(matrix) & ~np.isnan(matrix.T)
        matrix[one_way] = matrix.T[one_way]
        missing = np.isnan(matrix)
        np.fill_diagonal(missing, False)
        if rule == "zero":
            matrix[missing] = 0.0
        else:  # forbid: more negative than every grouping's whole gain
            measured = np.nan_to_num(matrix, nan=0.0)
            penalty = 1.0 + len(self.tasks) * float(np.abs(measured).sum())
            matrix[missing] = -penalty
        np.fill_diagonal(matrix, 0.0)
        return matrix
