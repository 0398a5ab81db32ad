"""Task-aware sums: the one vector every silo's update is laid out in when the server may see only
sums (SecAgg+, silo-level DP), and the aggregate it gives back.

Silo s holds tasks T_s with n_{s,t} labelled training rows of task t and n_s training rows. Its
reply is laid out in **slots** (:class:`Layout`), the same for every silo of the round: for every
task t of the federation (zeros where s does not hold t) its head deltas Delta h_{s,t} and, in
``per_task`` mode, its trunk share D_{s,t}; the joint trunk delta Delta_s (``joint`` mode, or
where the method reads it); and, when no DP applies, the losses and the numbers the method asked
for. Each slot has a **weight** w_s: ``task:t`` = n_{s,t}, ``examples`` = n_s, ``one`` = 1,
``served:t1,t2`` = sum of n_{s,t} over the tasks that trunk serves, ``min:a,b`` = min(n_{s,a},
n_{s,b}). The silo weights before anything is summed,

    v_s = (w_s / w_max) x_s / scale        (w_max >= every weight: the ratio stays in [0, 1])

and the integer **counts** (its n_{s,t}, n_s, 1, ...) travel beside the values. The server gets
only S = sum_s v_s and the summed counts W, and forms each slot's mean

    mean = scale w_max S / W = sum_s w_s x_s / sum_s w_s

exactly the engine's weighted means (FedAvg's trunk, the per-task heads, the per-task updates D_t
of the balancing methods, the n_{s,t}-weighted losses). The method then aggregates one
**aggregate update** (:func:`decode`) whose arrays are these means and whose counts are the
sums: the weighted mean of a single update is itself, so every method that declares how it sums
(:meth:`strategies.engine.Method.secure_sums`) gives the plain run's result.

Silo-level DP (:func:`clip_contribution`): before weighting, the update's arrays are clipped to
norm C (``whole``) or each task's part (its head and share) and the joint trunk part to
C / sqrt(B) with B the most parts a silo has, so that ||v_s|| <= C; Gaussian noise N(0, sigma^2
C^2) on every value of S then makes the round's release (epsilon, delta)-DP for one silo's whole
contribution (the Gaussian mechanism on a sum of sensitivity C).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from fedmtl.core.records import Arrays, SiloInfo
from fedmtl.core.training import UpdateMode
from strategies.engine.model import GlobalModel
from strategies.engine.replies import ClientUpdate

TrunkWeight = Literal["examples", "uniform", "served"]
SlotKind = Literal["array", "share", "loss_before", "train_loss", "metric", "bit"]

WITHIN = "dp/within"
"""The aggregate update's method metric holding sum_s b_s, the silos whose update was within the
clipping norm (adaptive clipping, Andrew et al. 2021)."""

LOSS_SCALE = 64.0
"""Losses travel divided by this, so that losses up to 64 c (512 at c = 8) fit the range."""


@dataclass(frozen=True)
class SumRule:
    """How a method's aggregate follows from sums (:meth:`strategies.engine.Method.secure_sums`).

    ``trunk_weight``: the weight of the joint trunk delta (``examples`` n_s, ``uniform`` 1, or
    ``served``: the silo's labelled rows of the tasks each trunk serves); ``joint_trunk``: the
    joint trunk delta is summed in ``per_task`` mode too (for a method that reads it there);
    ``metrics``: each method metric the silos report -> the tasks whose smallest count weights it;
    ``needs_losses``: the aggregate reads the silos' losses (loss-based balancing)."""

    trunk_weight: TrunkWeight = "examples"
    joint_trunk: bool = False
    metrics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    needs_losses: bool = False


@dataclass(frozen=True)
class Slot:
    """One array (or number) of the summed vector: ``kind`` and ``name`` (an array key; a task
    for losses and shares; a metric key), its ``shape``, its ``weight`` and ``scale``, and its DP
    clipping ``block`` (``task:t``, ``joint``; empty for what DP does not release)."""

    kind: SlotKind
    name: str
    shape: tuple[int, ...]
    weight: str
    scale: float = 1.0
    block: str = ""
    task: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """A round's slots and counts (module docstring), the same for every silo of the round.
    ``max_weight``: w_max; ``blocks``: the most DP clipping parts a silo has (per-task clipping)."""

    slots: tuple[Slot, ...]
    counts: tuple[str, ...]
    tasks: tuple[str, ...]
    max_weight: float
    blocks: int = 1

    @property
    def size(self) -> int:
        """The number of float values (the counts travel beside them)."""
        return sum(s.size for s in self.slots)

    def to_json(self) -> str:
        return json.dumps(
            {
                "slots": [asdict(s) for s in self.slots],
                "counts": list(self.counts),
                "tasks": list(self.tasks),
                "max_weight": self.max_weight,
                "blocks": self.blocks,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Layout:
        """Parse a layout a server sent; a malformed one raises KeyError, TypeError or ValueError."""
        raw = json.loads(text)
        slots = tuple(
            Slot(**{**s, "shape": tuple(int(n) for n in s["shape"])}) for s in raw["slots"]
        )
        max_weight = float(raw["max_weight"])
        if not (math.isfinite(max_weight) and max_weight >= 1):
            raise ValueError(f"max_weight must be >= 1, got {max_weight}")
        return cls(
            slots,
            tuple(str(c) for c in raw["counts"]),
            tuple(str(t) for t in raw["tasks"]),
            max_weight,
            int(raw["blocks"]),
        )


def _trunk_weight(rule: SumRule, key: str, model: GlobalModel, tasks: Sequence[str]) -> str:
    if rule.trunk_weight == "examples":
        return "examples"
    if rule.trunk_weight == "uniform":
        return "one"
    return "served:" + ",".join(t for t in tasks if model.serves(key, t))


def max_weight(silos: Sequence[SiloInfo]) -> float:
    """w_max: no weight of any silo exceeds it (n_s, and the sum of its n_{s,t})."""
    return float(max([1, *(max(s.num_train, sum(s.train_per_task.values())) for s in silos)]))


def build_layout(
    model: GlobalModel,
    tasks: Sequence[str],
    sent_keys: Sequence[str],
    mode: UpdateMode,
    rule: SumRule,
    silos: Sequence[SiloInfo],
    releases_numbers: bool = True,
    bit: bool = False,
    loss_before: bool = True,
) -> Layout:
    """The round's layout: over the arrays some silo was sent (``sent_keys``), in model order.
    ``releases_numbers``: losses and method metrics are summed too (False under DP), the losses
    before training only with ``loss_before`` (the request asked the silos for them: a slot no
    silo fills would sum to a loss of 0); ``bit``: the adaptive clipping's b_s (unweighted)."""
    sent = set(sent_keys)
    slots: list[Slot] = []
    for task in tasks:
        for key in (k for k in model.task_keys(task) if k in sent):  # role task: head, gate, ...
            shape = model.arrays[key].shape
            slots.append(Slot("array", key, shape, f"task:{task}", block=f"task:{task}", task=task))
        if mode == "per_task":
            for key in (k for k in model.arrays if k in sent and model.serves(k, task)):
                shape = model.arrays[key].shape
                slots.append(
                    Slot("share", key, shape, f"task:{task}", block=f"task:{task}", task=task)
                )
    joint = mode == "joint" or rule.joint_trunk
    if joint:
        for key in (k for k in model.arrays if k in sent and model.is_shared(k)):
            weight = _trunk_weight(rule, key, model, tasks)
            slots.append(Slot("array", key, model.arrays[key].shape, weight, block="joint"))
    counts = [f"task:{t}" for t in tasks] + ["examples", "one"]
    if releases_numbers:
        for kind in ("loss_before", "train_loss") if loss_before else ("train_loss",):
            slots += [Slot(kind, t, (), f"task:{t}", LOSS_SCALE, task=t) for t in tasks]
        for metric, over in rule.metrics.items():
            weight = "min:" + ",".join(over)
            slots.append(Slot("metric", metric, (), weight))
            counts.append(weight)
    if bit:
        slots.append(Slot("bit", WITHIN, (), "unit"))
    held = max([1, *(len(s.tasks) for s in silos)])
    return Layout(tuple(slots), tuple(counts), tuple(tasks), max_weight(silos), held + int(joint))


def weight_of(expr: str, task_examples: Mapping[str, float], num_examples: float) -> float:
    """The value of a weight expression for one silo (module docstring)."""
    kind, _, arg = expr.partition(":")
    if kind == "examples":
        return float(num_examples)
    if kind in ("one", "unit"):
        return 1.0
    if kind == "task":
        return float(task_examples.get(arg, 0.0))
    names = arg.split(",") if arg else []
    if kind == "served":
        return float(sum(task_examples.get(t, 0.0) for t in names))
    if kind == "min":
        return float(min((task_examples.get(t, 0.0) for t in names), default=0.0))
    raise ValueError(f"unknown weight {expr!r}")


@dataclass(frozen=True)
class Contribution:
    """One silo's laid-out update: the raw values x (float64, unweighted), its counts and, for
    adaptive clipping, whether its norm was within the clipping norm."""

    values: np.ndarray
    counts: np.ndarray
    within: bool = True


def gather(
    layout: Layout,
    deltas: Mapping[str, np.ndarray],
    task_deltas: Mapping[str, Mapping[str, np.ndarray]] | None,
    task_examples: Mapping[str, float],
    num_examples: float,
    losses: tuple[Mapping[str, float], Mapping[str, float]] = ({}, {}),
    metrics: Mapping[str, float] | None = None,
) -> Contribution:
    """A silo's update in ``layout`` (zeros where it holds nothing), unweighted."""
    parts: list[np.ndarray] = []
    before, train = losses
    for slot in layout.slots:
        value: object = None
        if slot.kind == "array":
            value = deltas.get(slot.name)
        elif slot.kind == "share":
            value = (task_deltas or {}).get(slot.task, {}).get(slot.name)
        elif slot.kind == "loss_before":
            value = before.get(slot.name)
        elif slot.kind == "train_loss":
            value = train.get(slot.name)
        elif slot.kind == "bit":
            value = 1.0
        else:
            value = (metrics or {}).get(slot.name)
        if value is None:
            parts.append(np.zeros(slot.size))
            continue
        array = np.asarray(value, dtype=np.float64)
        if array.shape != slot.shape:
            raise ValueError(f"{slot.kind} {slot.name}: shape {array.shape} != {slot.shape}")
        parts.append(array.reshape(-1))
    counts = [weight_of(c, task_examples, num_examples) for c in layout.counts]
    values = np.concatenate(parts) if parts else np.zeros(0)
    return Contribution(values, np.asarray(counts, dtype=np.int64))


def gather_update(layout: Layout, update: ClientUpdate, metrics: bool = True) -> Contribution:
    """A checked :class:`ClientUpdate` in ``layout`` (the server lays out what it received)."""
    return gather(
        layout,
        update.deltas,
        update.task_deltas,
        update.task_examples,
        update.num_examples,
        (update.loss_before, update.train_loss),
        update.method_metrics if metrics else None,
    )


def _norm(values: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(values))))


def clip_contribution(
    layout: Layout, contribution: Contribution, clip_norm: float, per_task: bool
) -> Contribution:
    """Clip the update's arrays (module docstring): ``whole``, or each block to C / sqrt(B).
    Slots outside every block (losses, metrics) are not part of a DP release and are zeroed;
    the adaptive clipping's bit b_s = [||x_s|| <= C] (Andrew et al. 2021) is set."""
    values = contribution.values.copy()
    offsets = np.cumsum([0, *(s.size for s in layout.slots)])
    blocks: dict[str, list[tuple[int, int]]] = {}
    bits = []
    for slot, start, end in zip(layout.slots, offsets[:-1], offsets[1:], strict=True):
        if slot.block:
            blocks.setdefault(slot.block if per_task else "all", []).append((start, end))
        else:
            values[start:end] = 0.0
            if slot.kind == "bit":
                bits.append(start)
    within = _norm(values) <= clip_norm
    bound = clip_norm / math.sqrt(layout.blocks) if per_task else clip_norm
    for ranges in blocks.values():
        index = np.concatenate([np.arange(a, b) for a, b in ranges])
        norm = _norm(values[index])
        if norm > bound:
            values[index] *= bound / norm
    values[bits] = float(within)
    return Contribution(values, contribution.counts, within)


def weighted(layout: Layout, contribution: Contribution) -> np.ndarray:
    """v = (w / w_max) x / scale for every value (module docstring)."""
    counts = dict(zip(layout.counts, contribution.counts.tolist(), strict=True))
    task_examples = {t: counts.get(f"task:{t}", 0) for t in layout.tasks}
    num = counts.get("examples", 0)
    factors = np.concatenate(
        [
            np.full(
                slot.size,
                1.0
                if slot.weight == "unit"
                else weight_of(slot.weight, task_examples, num) / layout.max_weight / slot.scale,
            )
            for slot in layout.slots
        ]
        or [np.zeros(0)]
    )
    return contribution.values * factors


def sum_weights(layout: Layout, counts: Mapping[str, int]) -> dict[str, float]:
    """W per weight expression of the slots, from the summed counts."""
    task = {t: float(counts.get(f"task:{t}", 0)) for t in layout.tasks}
    weights: dict[str, float] = {}
    for slot in layout.slots:
        if slot.weight in weights:
            continue
        if slot.weight == "unit":
            weights[slot.weight] = 1.0
        elif slot.weight.startswith(("task:", "served:")):
            weights[slot.weight] = weight_of(slot.weight, task, 0)
        else:
            weights[slot.weight] = float(counts.get(slot.weight, 0))
    return weights


def decode(
    layout: Layout,
    total: np.ndarray,
    counts: Mapping[str, int],
    contributors: Sequence[SiloInfo],
    noise_std: float = 0.0,
) -> ClientUpdate | None:
    """The aggregate update of a round from the summed values S and counts W (module
    docstring), or None when no silo contributed. ``noise_std``: the std of the noise on each
    value of S (DP); each task's per-coordinate noise variance on its mean share, (noise_std w_max
    / W_t)^2, rides along for the balancing Gramian's correction."""
    if not contributors:
        return None
    weights = sum_weights(layout, counts)
    deltas: Arrays = {}
    shares: dict[str, Arrays] = {}
    losses: dict[str, dict[str, float]] = {"loss_before": {}, "train_loss": {}}
    metrics: dict[str, float] = {}
    offset = 0
    for slot in layout.slots:
        raw = total[offset : offset + slot.size]
        offset += slot.size
        weight = weights[slot.weight]
        if slot.kind == "bit":
            metrics[slot.name] = float(raw[0])  # a sum, not a mean
            continue
        if weight <= 0:
            continue  # no silo holds it this round
        mean = raw * (slot.scale * layout.max_weight / weight)
        if slot.kind == "array":
            deltas[slot.name] = mean.reshape(slot.shape).astype(np.float32)
        elif slot.kind == "share":
            shares.setdefault(slot.task, {})[slot.name] = mean.reshape(slot.shape).astype(
                np.float32
            )
        elif slot.kind == "metric":
            metrics[slot.name] = float(mean[0])
        else:
            losses[slot.kind][slot.name] = float(mean[0])
    task_examples = {t: int(counts.get(f"task:{t}", 0)) for t in layout.tasks}
    held = tuple(t for t in layout.tasks if task_examples[t] > 0)
    silo = SiloInfo(
        silo_id=-1,
        tasks=held,
        num_train=int(counts.get("examples", 0)),
        num_test=0,
        train_per_task={t: task_examples[t] for t in held},
        test_per_task={},
    )
    variance = {
        t: (noise_std * layout.max_weight / task_examples[t]) ** 2 for t in held if noise_std > 0
    }
    return ClientUpdate(
        node_id=-1,
        silo=silo,
        deltas=deltas,
        num_examples=silo.num_train,
        task_examples=dict(silo.train_per_task),
        train_loss=losses["train_loss"],
        loss_before=losses["loss_before"],
        task_deltas={t: shares.get(t, {}) for t in held}
        if any(s.kind == "share" for s in layout.slots)
        else None,
        method_metrics=metrics,
        noise_variance=variance,
        contributors=tuple(s.silo_id for s in contributors),
    )


def add_noise(
    layout: Layout, values: np.ndarray, std: float, bit_std: float, rng: np.random.Generator
) -> None:
    """Gaussian noise in place: std ``std`` on every value DP releases (the update's arrays),
    ``bit_std`` on the adaptive clipping's bit."""
    offset = 0
    for slot in layout.slots:
        end = offset + slot.size
        if slot.block and std > 0:
            values[offset:end] += rng.normal(0.0, std, slot.size)
        elif slot.kind == "bit" and bit_std > 0:
            values[offset:end] += rng.normal(0.0, bit_std, slot.size)
        offset = end
