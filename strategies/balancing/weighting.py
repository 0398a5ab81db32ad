"""The :class:`Weighting` base: input checks, the degenerate-input rules and the call contract.

A weighting maps the per-task update matrix J (T x d; row t is task t's update on the shared
parameters) to weights w (T,) and the direction d = J^T w. Subclasses implement one method:
:class:`GramianWeighting` subclasses ``_from_gramian(G, tasks)``, the others ``_compute``.

Rules every weighting keeps (each is tested in ``tests/test_balancing.py``):

- **Inputs.** J is a 2-D floating tensor with T >= 1 rows and finite entries, on any device;
  anything else is a ``ValueError``. ``losses`` (when given) has shape (T,) and finite entries, and
  for the loss-based methods (``needs_losses``) is required and > 0. ``tasks`` are the global task
  ids of J's rows (distinct integers >= 0; default ``range(T)``): stateful methods key their state
  by them, so a round in which only some tasks have an update reads and updates only those tasks.
- **Precision.** The Gramian G = J J^T is accumulated in float64 with bounded memory at d = 1e7:
  a large float32 J blockwise (each block of columns multiplied in float32, the blocks summed in
  float64, :func:`~strategies.balancing.linalg.gramian`), a small or float64 J in float64
  throughout. Every solver runs in float64 on the CPU; w and d are returned in J's dtype on J's
  device.
- **Single task** (T = 1): w = [1], d = J's row, for every method.
- **All-zero J** (trace G = 0): for the Gramian methods w = 1/T (the mean weights) and d = 0; the
  loss-based methods' weights do not depend on J (their d is 0 too). No NaN.
- **Scale.** Every Gramian solver runs on G / trace(G), so it never sees the tiny or huge Gramians
  of federated updates, and the weights are unchanged by a positive scale of J. Nash-MTL and
  FairGrad map their solution back to G's scale exactly (their weights shrink as J grows); their
  classes say how.
- **Never NaN or Inf.** A method whose solver still returns a non-finite weight falls back to the
  mean weights for that call, with a warning in the ``fedmtl`` log.
- **Randomness** (PCGrad's and GradVac's projection order, RLW's draw) comes from a seed derived
  from ``(seed, number of previous calls)``, drawn inside a forked CPU generator: results are
  reproducible and the caller's global torch RNG state is unchanged.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from strategies.balancing.linalg import call_seed, gramian

log = logging.getLogger("fedmtl")

F64 = torch.float64


def check_jacobian(J: Tensor) -> None:
    """J is a 2-D floating tensor with at least one row and finite entries."""
    if not isinstance(J, Tensor):
        raise ValueError(f"J must be a torch.Tensor, got {type(J).__name__}.")
    if J.ndim != 2 or J.shape[0] < 1:
        raise ValueError(f"J must be 2-D (tasks x parameters) with >= 1 row, got {tuple(J.shape)}.")
    if not J.is_floating_point():
        raise ValueError(f"J must be a floating-point tensor, got {J.dtype}.")
    # One reduction finds any NaN or Inf (the sum of finite values overflows only in pathological
    # cases, which the exact check then sorts out).
    if not bool(torch.isfinite(J.sum())) and not bool(torch.isfinite(J).all()):
        raise ValueError("J has non-finite entries (NaN or Inf); a weighting needs finite updates.")


def check_tasks(tasks: Sequence[int] | None, rows: int) -> list[int]:
    """The global task ids of J's rows: ``range(rows)`` by default, else distinct ints >= 0."""
    if tasks is None:
        return list(range(rows))
    ids = [int(t) for t in tasks]
    if len(ids) != rows:
        raise ValueError(f"tasks has {len(ids)} ids but J has {rows} rows; give one id per row.")
    if len(set(ids)) != rows or min(ids) < 0:
        raise ValueError(f"tasks must be distinct integers >= 0, got {ids}.")
    return ids


def check_losses(losses: Tensor | None, rows: int, name: str, required: bool) -> Tensor | None:
    """``losses`` as a float64 CPU tensor of shape (rows,), finite (and > 0 when ``required``)."""
    if losses is None:
        if required:
            raise ValueError(f"weighting '{name}' needs the per-task losses: pass losses=.")
        return None
    values = torch.as_tensor(losses).detach().to(device="cpu", dtype=F64)
    if values.shape != (rows,):
        raise ValueError(
            f"losses must have shape ({rows},), one per row of J, got {tuple(values.shape)}."
        )
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"losses must be finite, got {values.tolist()}.")
    if required and not bool((values > 0).all()):
        raise ValueError(f"weighting '{name}' needs losses > 0, got {values.tolist()}.")
    return values


def mean_weights(rows: int) -> Tensor:
    return torch.full((rows,), 1.0 / rows, dtype=F64)


def by_task(values: Mapping[int, Any]) -> dict[str, Any]:
    """``{task id: value}`` with JSON keys (strings), sorted by id."""
    return {str(t): v for t, v in sorted(values.items())}


def from_task_keys(values: Mapping[str, Any]) -> dict[int, Any]:
    """The inverse of :func:`by_task`."""
    return {int(t): v for t, v in values.items()}


class Weighting(ABC):
    """Weights w (T,) for the rows of J and the direction d = J^T w; see the module docstring.

    ``params`` is the method's frozen parameter dataclass (validated on construction) and ``seed``
    seeds its randomness, if any. ``calls`` counts the calls made so far.
    """

    name: ClassVar[str] = "weighting"
    needs_losses: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    uses_gramian: ClassVar[bool] = True
    randomised: ClassVar[bool] = False  # draws from (seed, calls): ``calls`` is then its state

    def __init__(self, params: Any, seed: int = 0) -> None:
        self.params = params
        self.seed = int(seed)
        self.calls = 0

    def weights(
        self, J: Tensor, losses: Tensor | None = None, tasks: Sequence[int] | None = None
    ) -> Tensor:
        """The weights w (T,) for J's rows, in J's dtype on J's device."""
        check_jacobian(J)
        G = gramian(J) if self.uses_gramian else None
        w = self._weigh(J.shape[0], G, losses, tasks)
        return w.to(device=J.device, dtype=J.dtype)

    def weights_from_gramian(
        self, G: Tensor, losses: Tensor | None = None, tasks: Sequence[int] | None = None
    ) -> Tensor:
        """The same weights (float64, CPU) from a precomputed Gramian G = J J^T (T x T).

        For a server that accumulates G over parameter tensors without stacking J; then
        d = sum_t w_t D_t tensor by tensor.
        """
        if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1:
            raise ValueError(f"G must be a square T x T matrix with T >= 1, got {tuple(G.shape)}.")
        G64 = G.detach().to(device="cpu", dtype=F64)
        if not bool(torch.isfinite(G64).all()):
            raise ValueError("G has non-finite entries (NaN or Inf).")
        return self._weigh(G.shape[0], (G64 + G64.T) / 2, losses, tasks)

    def __call__(
        self, J: Tensor, losses: Tensor | None = None, tasks: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """(d, w): the direction d = J^T w (d,) and the weights w (T,), in J's dtype and device."""
        w = self.weights(J, losses, tasks)
        return w @ J, w

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state kept across calls, for logs and checkpoints.

        Stateful methods: their state and ``calls``; randomised ones: ``{"calls": n}`` (their
        random stream's position); ``{}`` otherwise.
        """
        return {"calls": self.calls} if self.randomised else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (to resume a run from a checkpoint)."""
        if self.randomised:
            self.calls = int(state["calls"])
        elif state:
            raise ValueError(f"weighting '{self.name}' keeps no state, got keys {sorted(state)}.")

    def _weigh(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: Sequence[int] | None
    ) -> Tensor:
        ids = check_tasks(tasks, rows)
        values = check_losses(losses, rows, self.name, required=self.needs_losses)
        w = self._compute(rows, G, values, ids)
        self.calls += 1
        if not bool(torch.isfinite(w).all()):
            log.warning("weighting %s gave non-finite weights %s; using the mean", self.name, w)
            w = mean_weights(rows)
        return w

    def _call_seed(self) -> int:
        """The seed of the current call: a function of (seed, calls so far)."""
        return call_seed(self.seed, self.calls)

    @abstractmethod
    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        """Float64 CPU weights (rows,); G is the float64 Gramian when ``uses_gramian``."""


class GramianWeighting(Weighting):
    """A weighting computed from the Gramian G = J J^T (T x T) alone.

    Handles the single-task and all-zero rules, then calls :meth:`_from_gramian` with the
    trace-normalised G / trace(G): every solver sees a well-scaled problem and the weights are
    unchanged by a positive scale of J. A method whose weights do depend on scale maps them back
    in :meth:`_rescale`.
    """

    def _compute(
        self, rows: int, G: Tensor | None, losses: Tensor | None, tasks: list[int]
    ) -> Tensor:
        assert G is not None
        if rows == 1:
            return torch.ones(1, dtype=F64)
        trace = float(G.trace())
        if not math.isfinite(trace):
            raise ValueError("the Gramian of J is not finite; J's entries are too large.")
        if trace <= 0.0:
            return mean_weights(rows)
        return self._rescale(self._from_gramian(G / trace, tasks), G, trace)

    @abstractmethod
    def _from_gramian(self, G: Tensor, tasks: list[int]) -> Tensor:
        """Float64 weights from the trace-normalised Gramian G (trace 1)."""

    def _rescale(self, w: Tensor, G: Tensor, trace: float) -> Tensor:
        """Weights for the Gramian ``G`` (of trace ``trace``) from those of G / trace: unchanged."""
        return w
