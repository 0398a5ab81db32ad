"""Task specifications: what a task predicts, its loss and its metrics.

A :class:`TaskSpec` is the single source of truth for a task's output size, loss and metrics. Losses are
means over the labelled rows given; metrics come back as *sums* (with the row count) so that a server
can combine silos exactly by adding them up (:func:`finalize_metrics`).

Losses by kind:
- ``multiclass``: cross-entropy over ``num_classes`` logits.
- ``binary``: binary cross-entropy on one logit.
- ``regression``: mean squared error on one output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TaskKind = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class MetricSpec:
    """A reported metric and whether a higher value is better."""

    name: str
    higher_is_better: bool


_CLASSIFICATION_METRICS = (MetricSpec("accuracy", True), MetricSpec("loss", False))
_REGRESSION_METRICS = (
    MetricSpec("r2", True),
    MetricSpec("mse", False),
    MetricSpec("mae", False),
    MetricSpec("loss", False),
)
_LOSS_NAMES = {"multiclass": "cross_entropy", "binary": "binary_cross_entropy", "regression": "mse"}
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "r2": (-math.inf, 1.0),
    "mse": (0.0, math.inf),
    "mae": (0.0, math.inf),
    "loss": (0.0, math.inf),  # cross-entropy and MSE
}
"""Metric name -> (lowest, highest) value it can take (see :meth:`TaskSpec.finalize_metrics`)."""


def metric_range(name: str) -> tuple[float, float]:
    """The values metric ``name`` can take, (-inf, inf) for a name not in :data:`METRIC_RANGES`."""
    return METRIC_RANGES.get(name, (-math.inf, math.inf))


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task. ``metrics[0]`` is the primary metric."""

    name: str
    kind: TaskKind
    output_size: int
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"task name {self.name!r} must be non-empty, without '.' or '/'")
        if self.kind == "multiclass" and (self.num_classes or 0) < 2:
            raise ValueError(f"multiclass task {self.name!r} needs num_classes >= 2")
        expected = self.num_classes if self.kind == "multiclass" else 1
        if self.output_size != expected:
            raise ValueError(f"task {self.name!r}: output_size must be {expected}")

    @classmethod
    def multiclass(cls, name: str, num_classes: int) -> TaskSpec:
        return cls(name, "multiclass", num_classes, num_classes)

    @classmethod
    def binary(cls, name: str) -> TaskSpec:
        return cls(name, "binary", 1, 2)

    @classmethod
    def regression(cls, name: str) -> TaskSpec:
        return cls(name, "regression", 1, None)

    @property
    def loss_name(self) -> str:
        return _LOSS_NAMES[self.kind]

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        return _REGRESSION_METRICS if self.kind == "regression" else _CLASSIFICATION_METRICS

    @property
    def primary_metric(self) -> MetricSpec:
        return self.metrics[0]

    @property
    def target_dtype(self) -> torch.dtype:
        return torch.long if self.kind == "multiclass" else torch.float32

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of ``outputs`` (n x output_size) against ``targets`` (n,)."""
        if self.kind == "multiclass":
            return F.cross_entropy(outputs, targets)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(outputs.squeeze(-1), targets)
        return F.mse_loss(outputs.squeeze(-1), targets)

    def row_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row losses (n,) whose mean is :meth:`loss` (for masked means over padded rows)."""
        if self.kind == "multiclass":
            return F.cross_entropy(outputs, targets, reduction="none")
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                outputs.squeeze(-1), targets, reduction="none"
            )
        return F.mse_loss(outputs.squeeze(-1), targets, reduction="none")

    def metric_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Additive statistics over a batch; :func:`finalize_metrics` turns their sums into metrics.

        Keys: ``n`` (rows), ``loss_sum``; classification adds ``correct``; regression adds
        ``abs_sum``, ``y_sum`` and ``y_sq_sum`` (for R^2 = 1 - SSE / SST over the pooled rows).
        """
        n = int(targets.shape[0])
        sums = {"n": float(n)}
        if n == 0:
            return sums
        with torch.no_grad():
            sums["loss_sum"] = float(self.loss(outputs, targets)) * n
            if self.kind == "multiclass":
                sums["correct"] = float((outputs.argmax(-1) == targets).sum())
            elif self.kind == "binary":
                sums["correct"] = float(((outputs.squeeze(-1) > 0).float() == targets).sum())
            else:
                # float64: y_sq_sum/n - (y_sum/n)^2 cancels badly in float32 for offset targets
                targets64 = targets.double()
                residual = outputs.squeeze(-1).double() - targets64
                sums["abs_sum"] = float(residual.abs().sum())
                sums["y_sum"] = float(targets64.sum())
                sums["y_sq_sum"] = float((targets64**2).sum())
        return sums

    def finalize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics (see :meth:`metric_sums`); empty when no rows."""
        n = sums.get("n", 0.0)
        if n <= 0:
            return {}
        metrics = {"loss": sums["loss_sum"] / n}
        if self.kind == "regression":
            mse = sums["loss_sum"] / n
            variance = sums["y_sq_sum"] / n - (sums["y_sum"] / n) ** 2
            metrics["mse"] = mse
            metrics["mae"] = sums["abs_sum"] / n
            metrics["r2"] = 1.0 - mse / variance if variance > 1e-12 else 0.0
        else:
            metrics["accuracy"] = sums["correct"] / n
        return metrics

    def chance_level(self, targets: torch.Tensor) -> float:
        """Primary metric of the best constant predictor on ``targets``.

        Classification: the majority class frequency. Regression: R^2 = 0 (predicting the mean).
        """
        if self.kind == "regression" or targets.numel() == 0:
            return 0.0
        counts = torch.bincount(targets.long())
        return float(counts.max()) / float(targets.numel())

    def info(self) -> dict[str, object]:
        """The summary's ``task_info`` entry for this task."""
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "primary_metric": self.primary_metric.name,
            "higher_is_better": self.primary_metric.higher_is_better,
            "loss": self.loss_name,
        }
