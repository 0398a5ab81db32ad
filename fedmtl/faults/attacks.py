"""The shipped faults, each a model of a misbehaving silo from the robust-aggregation literature.

Notation: Delta_k is array k of the silo's honest update (its deltas and per-task trunk shares),
rms(x) = ||x|| / sqrt(dim x).

- ``scale`` (:class:`Scale`): Delta'_k = a Delta_k with a = ``factor`` (1e6), and the counts it
  claims set to ``claimed_examples`` (1e12): the boosted update of a model-replacement attack
  (Bhagoji, Chakraborty, Mittal & Calo 2019, "Analyzing federated learning through an
  adversarial lens", ICML).
- ``sign_flip`` (:class:`SignFlip`): Delta'_k = -a Delta_k with a = ``factor`` (1): the
  sign-flipping attack (Li, Xu, Chen, Giannakis & Ling 2019, "RSA: Byzantine-robust stochastic
  aggregation methods for distributed learning from heterogeneous datasets", AAAI).
- ``noise`` (:class:`Noise`): Delta'_k ~ N(0, (s rms(Delta_k))^2 I) with s = ``scale`` (1), random
  values of the update's own scale instead of it (the Gaussian Byzantine vectors of Blanchard,
  El Mhamdi, Guerraoui & Stainer 2017, "Machine learning with adversaries: Byzantine tolerant
  gradient descent", NeurIPS), drawn from the (seed, silo, round) generator.
- ``label_flip`` (:class:`LabelFlip`): the silo trains honestly on flipped labels of its
  training rows: y -> C - 1 - y for a classification task with C classes (binary: 1 - y),
  y -> -y for a regression task (Tolpegin, Truex, Gursoy & Liu 2020, "Data poisoning attacks
  against federated learning systems", ESORICS).
- ``stale`` (:class:`Stale`): the silo sends its first update of the run again every round
  (its arrays; the counts and losses stay current): a stale or free-riding participant (Lin, Du
  & Liu 2019, "Free-riders in federated learning: attacks and defenses", arXiv:1911.12560). When
  the arrays it is sent change keys or shapes (task grouping splits the trunk), the update of
  that round becomes the one it replays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedmtl.core.checks import non_negative, positive
from fedmtl.core.data import LocalData
from fedmtl.faults.base import Fault, FaultContext, FaultParams, Update, same_layout


def _mapped(update: Update, change: dict[str, np.ndarray]) -> Update:
    return dataclasses.replace(update, arrays=change)


@dataclass(frozen=True)
class ScaleParams(FaultParams):
    """``factor`` a multiplies the update; ``claimed_examples``: the count claimed for the silo
    and each of its tasks (null: the true ones)."""

    factor: float = 1e6
    claimed_examples: float | None = 1e12

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "factor")
        if self.claimed_examples is not None:
            non_negative(self, "claimed_examples")


class Scale(Fault):
    """Delta' = a Delta, counts claimed (module docstring)."""

    params: ScaleParams

    def corrupt(self, update: Update, context: FaultContext) -> Update:
        factor = self.params.factor
        arrays = {k: (v * factor).astype(v.dtype) for k, v in update.arrays.items()}
        claimed = self.params.claimed_examples
        if claimed is None:
            return _mapped(update, arrays)
        tasks = {t: claimed for t in update.task_examples}
        return Update(arrays, claimed, tasks)


@dataclass(frozen=True)
class SignFlipParams(FaultParams):
    """``factor`` a of Delta' = -a Delta."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "factor")


class SignFlip(Fault):
    """Delta' = -a Delta (module docstring)."""

    params: SignFlipParams

    def corrupt(self, update: Update, context: FaultContext) -> Update:
        factor = -self.params.factor
        return _mapped(update, {k: (v * factor).astype(v.dtype) for k, v in update.arrays.items()})


@dataclass(frozen=True)
class NoiseParams(FaultParams):
    """``scale`` s: the noise's standard deviation per array, in units of its update's rms."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "scale")


class Noise(Fault):
    """Delta'_k ~ N(0, (s rms(Delta_k))^2 I), arrays drawn in key order (module docstring)."""

    params: NoiseParams

    def corrupt(self, update: Update, context: FaultContext) -> Update:
        arrays = {}
        for key in sorted(update.arrays):
            value = update.arrays[key]
            rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64)))) if value.size else 0.0
            noise = context.rng.standard_normal(value.shape) * (self.params.scale * rms)
            arrays[key] = noise.astype(value.dtype)
        return _mapped(update, {k: arrays[k] for k in update.arrays})


class LabelFlip(Fault):
    """Training on flipped labels (module docstring); labelled rows only."""

    def train_data(self, data: LocalData) -> LocalData:
        targets = dict(data.targets)
        for column, task in enumerate(data.tasks):
            y = targets[task.name]
            if task.kind == "multiclass":
                flipped = (task.num_classes or 0) - 1 - y
            elif task.kind == "binary":
                flipped = 1 - y
            else:
                flipped = -y
            targets[task.name] = torch.where(data.mask[:, column], flipped, y)
        return dataclasses.replace(data, targets=targets)


class Stale(Fault):
    """The first update of the run, sent again every round (module docstring)."""

    remembers_first: ClassVar[bool] = True

    def corrupt(self, update: Update, context: FaultContext) -> Update:
        first = context.first
        if first is None or not same_layout(first.arrays, update.arrays):
            return update
        return _mapped(update, {k: first.arrays[k].copy() for k in update.arrays})
