"""The typed experiment configuration and its validation.

Hydra composes ``configs/`` into a plain mapping; :func:`parse` turns it into an
:class:`ExperimentConfig` of frozen dataclasses, checking every value. Plug-in groups (dataset, model,
partition assignment and split, strategy, runtime) are ``{name, ...params}``: the params are checked
against the dataclass that the plug-in registered. Every error is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedmtl.checks import fraction, int_at_least, non_negative, positive
from fedmtl.errors import ConfigError
from fedmtl.registry import NoParams, Registry, build_dataclass


@dataclass(frozen=True)
class PluginConfig:
    """A registered plug-in chosen by ``name`` with its validated parameter dataclass."""

    name: str
    params: Any


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    params: Any
    tasks: list[str] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Trunk plug-in plus the head shape shared by all trunks."""

    name: str
    params: Any
    head_hidden: int = 0


@dataclass(frozen=True)
class MissingLabelsConfig:
    """Training labels withheld at random inside silos: ``rate`` for every task, ``per_task``
    overrides it for named tasks (each rate in [0, 1))."""

    rate: float = 0.0
    per_task: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rates = {"rate": self.rate, **{f"per_task.{t}": r for t, r in self.per_task.items()}}
        for key, rate in rates.items():
            is_number = isinstance(rate, (int, float)) and not isinstance(rate, bool)
            if not (is_number and 0.0 <= rate < 1.0):
                raise ConfigError(key, f"must be in [0, 1), got {rate!r}.", "use e.g. 0.3.")


def _no_feature_skew() -> PluginConfig:
    return PluginConfig("none", NoParams())


@dataclass(frozen=True)
class PartitionConfig:
    """How the dataset is spread over silos: which tasks each labels, which samples it holds,
    which of its labels are missing, how its inputs are skewed, and the global test set."""

    num_silos: int
    assignment: PluginConfig
    split: PluginConfig
    test_fraction: float = 0.2
    min_train_per_task: int = 1
    global_test_fraction: float = 0.0
    feature_skew: PluginConfig = field(default_factory=_no_feature_skew)
    missing_labels: MissingLabelsConfig = field(default_factory=MissingLabelsConfig)

    def __post_init__(self) -> None:
        int_at_least(self, "num_silos", 1)
        fraction(self, "test_fraction", allow_one=False)
        int_at_least(self, "min_train_per_task", 1)
        if not (
            isinstance(self.global_test_fraction, (int, float))
            and 0.0 <= self.global_test_fraction < 1.0
        ):
            raise ConfigError(
                "global_test_fraction",
                f"must be in [0, 1), got {self.global_test_fraction!r}.",
                "use 0 for none or e.g. 0.1.",
            )


@dataclass(frozen=True)
class PartitionFile:
    """A partition read back from a manifest (``partition=from_file partition.path=...``)."""

    path: str


@dataclass(frozen=True)
class TrainConfig:
    """Local training of a silo in one round (sent by the server in each round's ConfigRecord)."""

    local_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        int_at_least(self, "local_epochs", 1)
        int_at_least(self, "batch_size", 1)
        positive(self, "lr")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                "max_steps", "must be >= 1 or null.", "set a positive number of steps."
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", "must be in [0, 1).", "use e.g. 0.9, or 0 for none.")
        non_negative(self, "weight_decay")


@dataclass(frozen=True)
class TrackingConfig:
    """Where results go besides the run directory."""

    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "fedmtl"
    progress: bool = True
    plots: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole validated experiment."""

    seed: int
    num_rounds: int
    dataset: DatasetConfig
    model: ModelConfig
    partition: PartitionConfig | PartitionFile
    strategy: PluginConfig
    runtime: PluginConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "."
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        """The raw mapping this config was parsed from, as JSON (travels to ClientApps)."""
        return json.dumps(self.raw, sort_keys=True)


def _plugin(registry: Registry[Any], values: Any, key: str, extra: tuple[str, ...] = ()) -> tuple:
    if not isinstance(values, Mapping) or "name" not in values:
        raise ConfigError(f"{key}.name", "is missing.", f"choose one of {registry.names()}.")
    name = values["name"]
    params = {k: v for k, v in values.items() if k != "name" and k not in extra}
    return name, registry.parse(name, params, key)


def parse(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a composed config mapping and build the typed :class:`ExperimentConfig`."""
    # Imports here: the registries import this module's dataclasses.
    from fedmtl.data import DATASETS
    from fedmtl.models import TRUNKS
    from fedmtl.runtime import RUNTIMES
    from strategies import STRATEGIES

    raw = json.loads(json.dumps(raw))  # plain JSON types only, detached from the caller
    known = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"raw"}
    for key in raw:
        if key not in known and key != "experiment":
            raise ConfigError(key, "is not a config key.", f"use one of {sorted(known)}.")
    for key in ("seed", "num_rounds", "dataset", "model", "partition", "strategy", "runtime"):
        if key not in raw:
            raise ConfigError(key, "is required but missing.", "set it in the config.")
    for key in ("seed", "num_rounds"):
        if isinstance(raw[key], bool) or not isinstance(raw[key], int):
            raise ConfigError(key, f"expected an integer, got {raw[key]!r}.")
    if raw["num_rounds"] < 1:
        raise ConfigError(
            "num_rounds", f"must be >= 1, got {raw['num_rounds']}.", "set num_rounds=10."
        )

    dataset_raw = raw["dataset"]
    name, params = _plugin(DATASETS, dataset_raw, "dataset", extra=("tasks",))
    tasks = dataset_raw.get("tasks")
    if tasks is not None and (
        not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)
    ):
        raise ConfigError("dataset.tasks", f"expected a list of task names, got {tasks!r}.")
    dataset = DatasetConfig(name=name, params=params, tasks=tasks)

    model_raw = raw["model"]
    name, params = _plugin(TRUNKS, model_raw, "model", extra=("head_hidden",))
    head_hidden = model_raw.get("head_hidden", 0)
    if isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or head_hidden < 0:
        raise ConfigError("model.head_hidden", f"must be an integer >= 0, got {head_hidden!r}.")
    model = ModelConfig(name=name, params=params, head_hidden=head_hidden)

    partition = parse_partition(raw["partition"])
    strategy = PluginConfig(*_plugin(STRATEGIES, raw["strategy"], "strategy"))
    runtime = PluginConfig(*_plugin(RUNTIMES, raw["runtime"], "runtime"))
    train = build_dataclass(TrainConfig, raw.get("train", {}), "train")
    tracking = build_dataclass(TrackingConfig, raw.get("tracking", {}), "tracking")
    output_dir = raw.get("output_dir", ".")
    if not isinstance(output_dir, str):
        raise ConfigError("output_dir", f"expected a path, got {output_dir!r}.")
    return ExperimentConfig(
        seed=raw["seed"],
        num_rounds=raw["num_rounds"],
        dataset=dataset,
        model=model,
        partition=partition,
        strategy=strategy,
        runtime=runtime,
        train=train,
        tracking=tracking,
        output_dir=output_dir,
        raw=raw,
    )


def parse_partition(values: Any) -> PartitionConfig | PartitionFile:
    """The ``partition`` group: a :class:`PartitionFile` when it sets ``path``, else a
    :class:`PartitionConfig` with its plug-ins checked against their registries."""
    from partitions import ASSIGNMENTS, FEATURE_SKEWS, SPLITS  # they import this module

    if not isinstance(values, Mapping):
        raise ConfigError("partition", f"expected a mapping, got {values!r}.")
    if "path" in values:
        return _parse_partition_file(values)
    plugins: dict[str, Registry[Any]] = {
        "assignment": ASSIGNMENTS,
        "split": SPLITS,
        "feature_skew": FEATURE_SKEWS,
    }
    allowed = {"num_silos", "test_fraction", "min_train_per_task", "global_test_fraction"}
    allowed |= {"missing_labels", *plugins}
    for key in values:
        if key not in allowed:
            raise ConfigError(
                f"partition.{key}", "is not a partition key.", f"use one of {sorted(allowed)}."
            )
    if "num_silos" not in values:
        raise ConfigError("partition.num_silos", "is required but missing.", "set e.g. 10.")
    scalars = {k: v for k, v in values.items() if k not in plugins and k != "missing_labels"}
    chosen: dict[str, Any] = {
        key: PluginConfig(*_plugin(registry, values.get(key), f"partition.{key}"))
        for key, registry in plugins.items()
        if key in values or key != "feature_skew"
    }
    missing = build_dataclass(
        MissingLabelsConfig, values.get("missing_labels", {}), "partition.missing_labels"
    )
    try:
        return PartitionConfig(**chosen, **scalars, missing_labels=missing)
    except ConfigError as err:
        raise err if err.key.startswith("partition.") else err.with_prefix("partition") from None


def _parse_partition_file(values: Mapping[str, Any]) -> PartitionFile:
    """``{path}`` only: everything else comes from the manifest."""
    extra = sorted(set(values) - {"path"})
    if extra:
        raise ConfigError(
            f"partition.{extra[0]}",
            "cannot be set with partition.path: the manifest fixes the whole partition.",
            "drop it, or build a new partition without partition.path.",
        )
    path = values["path"]
    if not isinstance(path, str) or not path or path == "???":
        raise ConfigError(
            "partition.path",
            f"must be the path of a partition.json, got {path!r}.",
            "set partition.path=DIR/partition.json (written by `fedmtl run` or `fedmtl partition`).",
        )
    return PartitionFile(path=path)
