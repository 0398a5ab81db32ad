"""Memory a run needs, estimated from its config before anything big is built, against what this
machine has available: a run that cannot fit is refused with a ConfigError naming the key that
drives the estimate, instead of ending in an allocator's traceback or swapping the machine to a
halt. ``limits.memory_check=false`` turns the check off (a machine whose memory the check
misjudges; the estimate is then not computed at all).

The estimate (bytes) is the sum of these parts, each counted as small as this config allows: a
run needs at least this much, usually more (activations, Python objects, the runtime's copies of
silos' rows, per-task updates and the optimizers' state are left out):

- ``dataset``: its tensors, float32 inputs and per task a label and a mask column, R x (4 D +
  9 T) for R rows of D inputs and T tasks, plus what its builder holds besides them while building
  (temporaries). Before the dataset is built this comes from its parameters' ``footprint()``
  (:class:`fedmtl.core.data.Footprint`; the formula of each builder is in its docstring); a
  dataset without one is counted once built;
- ``silos``: S x :data:`SILO_BYTES` (the bookkeeping of each silo: its manifest entry, index
  arrays and the runtime's record) and R x :data:`ROW_BYTES` (the partition's indices);
- ``model``: 4 P x (:data:`MODEL_COPIES` + U) for a model of P float32 parameters (the trunk,
  one per task group of the method's initial model, and the heads, built on PyTorch's meta
  device, which allocates nothing): the copies are the global model, a silo's model, its gradient
  and optimizer state, its update and the aggregate; U the models the server holds at once, the
  updates of the silos one round samples (``strategy.fraction_train`` of S, at least
  ``strategy.min_train_nodes``) plus S for methods whose server keeps one model per silo. With
  ``partition=local`` (a deployment, whose silos build the experiment and check it too on their
  own machines) U is left out;
- ``per-sample gradients`` (record-level DP only, ``privacy=dp_record``): 4 P x B, DP-SGD's
  gradient of every row of a step's batch at once (B = ``train.batch_size``, the expected size of
  its Poisson samples), keyed on ``train.batch_size``.

Each part names the config key that drives it: the dataset's (its footprint says which),
``model.head_hidden`` or the trunk parameter furthest above its default for the model (else
``partition.num_silos`` when the models held at once outnumber the copies),
``partition.num_silos`` for the silos. The error names
the key of the largest part.

The run is refused when the estimate exceeds :data:`MEMORY_FRACTION` of the memory available now
(:func:`available_memory`). The check runs twice: from the config alone before the dataset is
built (dataset and silos), and once the dataset is built, before the model is (every part).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmtl.core.data import Footprint, MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import PluginConfig
from fedmtl.core.schema import ExperimentConfig, PartitionConfig, PartitionFile, PartitionLocal
from fedmtl.trunks import build_model
from strategies import METHODS
from strategies.engine import PerSiloModels

MEMORY_FRACTION = 0.8
"""The share of the memory available when a run starts that its estimate may take."""
SILO_BYTES = 1024
"""Memory per silo, at least (about 0.8 KiB measured for the partition alone)."""
ROW_BYTES = 16
"""Memory per dataset row for the partition's index arrays, at least."""
MODEL_COPIES = 6
"""Copies of the model a run holds at once, at least (module docstring)."""
CHECK_KEY = "limits.memory_check"


@dataclass(frozen=True)
class Part:
    """One part of the estimate: its name, its bytes and the config key that drives it."""

    name: str
    nbytes: int
    key: str
    detail: str


def available_memory() -> int:
    """Bytes this process can still allocate: ``MemAvailable`` of ``/proc/meminfo`` (else the
    available pages ``os.sysconf`` reports), or less where a cgroup (v2) memory limit leaves
    less."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(available, 0)


def check_data_memory(config: ExperimentConfig) -> None:
    """Before the dataset is built: the dataset's footprint (when its parameters declare one) and
    the silos; a ConfigError when they cannot fit."""
    if not config.limits.memory_check:
        return
    footprint = dataset_footprint(config)
    if footprint is None:
        return
    _refuse_beyond_budget([_dataset_part(footprint), *_silo_parts(config, footprint.rows)])
    check_silos_fit_rows(config, footprint.rows)


def check_run_memory(
    config: ExperimentConfig,
    dataset: MultiTaskDataset,
    num_silos: int,
    groups: Mapping[str, Sequence[str]] | None,
) -> None:
    """Once the dataset is built, before the model is: every part of the estimate, the model's
    parameters counted on the meta device (``groups``: the task groups of the method's initial
    model); a ConfigError when they cannot fit."""
    if not config.limits.memory_check:
        return
    held = dataset.inputs.nbytes + dataset.mask.nbytes
    held += sum(t.nbytes for t in dataset.targets.values())
    rows = dataset.num_samples
    parts = [
        Part("dataset", held, "dataset", f"{rows} rows of input shape {dataset.input_shape}"),
        *_silo_parts(config, rows, num_silos),
        *_model_parts(config, dataset, num_silos, groups),
    ]
    _refuse_beyond_budget(parts)


def dataset_footprint(config: ExperimentConfig) -> Footprint | None:
    """The dataset's footprint from its parameters (None when they declare none)."""
    footprint = getattr(config.dataset.params, "footprint", None)
    result = footprint() if callable(footprint) else None
    return result if isinstance(result, Footprint) else None


def check_silos_fit_rows(config: ExperimentConfig, rows: int) -> None:
    """Every silo needs ``partition.min_train_per_task`` training rows of its own: more silos
    than that allows is a ConfigError (before the partition is built)."""
    part = config.partition
    if not isinstance(part, PartitionConfig) or part.num_silos is None:
        return  # null: one silo per natural id, as many as the data has
    most = rows // part.min_train_per_task
    if part.num_silos > most:
        raise ConfigError(
            "partition.num_silos",
            f"is {part.num_silos}, but the dataset has {rows} rows and every silo needs at least "
            f"partition.min_train_per_task ({part.min_train_per_task}) training rows of its own.",
            f"use at most {max(most, 1)} silos (fewer: silos need test rows too).",
        )


def _dataset_part(footprint: Footprint) -> Part:
    detail = (
        f"{_count(footprint.rows)} rows of {_count(footprint.input_size)} inputs and "
        f"{_count(footprint.num_tasks)} tasks: {_size(footprint.nbytes)}, and "
        f"{_size(footprint.building)} while building"
    )
    return Part("dataset", footprint.nbytes + footprint.building, footprint.key, detail)


def _num_silos(config: ExperimentConfig) -> int:
    """The configured number of silos (0 when the data decides it: one per natural id, not known
    before the dataset is read; the estimate is a lower bound)."""
    part = config.partition
    if isinstance(part, PartitionConfig | PartitionLocal):
        return part.num_silos or 0
    return 0


def _silo_parts(config: ExperimentConfig, rows: int, num_silos: int | None = None) -> list[Part]:
    silos = _num_silos(config) if num_silos is None else num_silos
    if isinstance(config.partition, PartitionFile) and num_silos is None:
        return []  # the manifest says how many, once read
    nbytes = silos * SILO_BYTES + rows * ROW_BYTES
    detail = f"{_count(silos)} silos x {_size(SILO_BYTES)} and {_count(rows)} rows x {ROW_BYTES} B"
    return [Part("silos", nbytes, "partition.num_silos", detail)]


def _model_parts(
    config: ExperimentConfig,
    dataset: MultiTaskDataset,
    num_silos: int,
    groups: Mapping[str, Sequence[str]] | None,
) -> list[Part]:
    """The model's copies and the updates held at once, as one part. Its key:
    ``model.head_hidden`` when the heads' hidden layers hold most parameters, else the trunk
    parameter furthest above its default, else ``partition.num_silos`` when the updates outnumber
    the copies, else ``model``."""
    params, heads = _parameter_count(config, dataset, groups)
    per_round = math.ceil(config.strategy.params.fraction_train * num_silos)
    sampled = min(num_silos, max(per_round, config.strategy.params.min_train_nodes))
    entry = METHODS.get(config.strategy.name)
    per_silo = isinstance(entry.factory, type) and issubclass(entry.factory, PerSiloModels)
    kept = num_silos if per_silo else 0
    if isinstance(config.partition, PartitionLocal):  # a deployment: its silos check this too
        sampled = kept = 0
    held = sampled + kept
    key = _model_key(config)
    if 2 * heads > params and config.model.head_hidden > 0:  # the heads' hidden layers
        key = "model.head_hidden"
    elif key == "model" and held > MODEL_COPIES:
        key = "partition.num_silos"
    detail = (
        f"{_count(params)} parameters x 4 B x ({MODEL_COPIES} copies + {_count(held)} models "
        f"held at once: {_count(sampled)} updates a round"
        + (f" and {_count(kept)} silos' own models" if kept else "")
        + ")"
    )
    parts = [Part("model", 4 * params * (MODEL_COPIES + held), key, detail)]
    if config.privacy.params is not None and config.privacy.params.dp == "record":
        batch = config.train.batch_size
        per_sample = f"DP-SGD: {_count(params)} parameters x 4 B x {_count(batch)} rows of a step"
        parts.append(
            Part("per-sample gradients", 4 * params * batch, "train.batch_size", per_sample)
        )
    return parts


def _parameter_count(
    config: ExperimentConfig, dataset: MultiTaskDataset, groups: Mapping[str, Sequence[str]] | None
) -> tuple[int, int]:
    """The model's parameters, and those of its heads, counted on PyTorch's meta device (no
    memory is allocated)."""
    try:
        with torch.device("meta"):
            model = build_model(
                config.model, dataset.input_shape, dataset.tasks, config.seed, groups=groups
            )
    except ConfigError:
        raise
    except (RuntimeError, ValueError, OverflowError, TypeError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "overflow" in text.lower():
            text = "a size is beyond what PyTorch can index"
        raise ConfigError(
            _model_key(config),
            f"gives no model for inputs of shape {dataset.input_shape} ({text}).",
            "check the model's sizes against the dataset's inputs.",
        ) from None
    counts = {name: p.numel() for name, p in model.named_parameters()}
    return sum(counts.values()), sum(n for name, n in counts.items() if name.startswith("heads."))


def _model_key(config: ExperimentConfig) -> str:
    """``model.<field>`` of the trunk parameter furthest above its default (a list by its sum),
    else ``model``."""
    params = config.model.params
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        return "model"
    try:
        defaults: Any = type(params)()
    except (TypeError, ConfigError):  # a trunk whose parameters have no defaults
        return "model"
    best, key = 0.0, "model"
    for name, value, default in _fields(params, defaults, "model"):
        ratio = _ratio(value, default)
        if ratio > best:
            best, key = ratio, name
    return key


def _fields(params: Any, defaults: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """(key, value, default) of every field of ``params``, and of the parameters of a field that
    chooses a plug-in of its own (e.g. ``model.expert``, a trunk: against its own defaults when it
    is the default's plug-in)."""
    found = []
    for field in dataclasses.fields(params):
        value, default = getattr(params, field.name), getattr(defaults, field.name)
        key = f"{prefix}.{field.name}"
        if isinstance(value, PluginConfig) and dataclasses.is_dataclass(value.params):
            if isinstance(default, PluginConfig) and default.name == value.name:
                inner = default.params
            else:
                factory: Any = type(value.params)
                try:
                    inner = factory()
                except (TypeError, ConfigError):
                    continue
            found.extend(_fields(value.params, inner, key))
        else:
            found.append((key, value, default))
    return found


def _ratio(value: Any, default: Any) -> float:
    """How far ``value`` is above ``default`` (a log ratio: values may be huge integers), or
    -inf when they are not sizes."""

    def size(v: Any) -> int | float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int | float) and math.isfinite(v):
            return v
        if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return sum(v)
        return None

    low, high = size(default), size(value)
    if low is None or high is None or low <= 0 or high <= 0:
        return -math.inf
    return math.log(high) - math.log(low)


def _refuse_beyond_budget(parts: list[Part]) -> None:
    total = sum(p.nbytes for p in parts)
    available = available_memory()
    budget = int(MEMORY_FRACTION * available)
    if total <= budget:
        return
    largest = max(parts, key=lambda p: p.nbytes)
    change = f"lower {largest.key}"
    if largest.key.endswith(".path"):  # a file: its size is the user's data
        change = f"give a smaller table in {largest.key} (fewer rows or columns)"
    listed = "; ".join(f"{p.name} {_size(p.nbytes)} ({p.detail})" for p in parts)
    raise ConfigError(
        largest.key,
        f"the run would need at least {_size(total)} of memory ({listed}), more than "
        f"{MEMORY_FRACTION:.0%} of the {_size(available)} this machine has available.",
        f"{change}, or set {CHECK_KEY}=false to run anyway.",
    )


def _count(number: int) -> str:
    """A count for a message (a power of ten when it is huge)."""
    return str(number) if number < 10**15 else f"about 10^{math.floor(math.log10(number))}"


def _size(nbytes: int) -> str:
    """``nbytes`` in binary units (a power of ten beyond pebibytes)."""
    if nbytes >= 1024**6:
        return f"about 10^{math.floor(math.log10(nbytes))} B"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
