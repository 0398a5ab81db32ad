"""The schema of an experiment's configuration: frozen dataclasses, each checking its own fields.

Hydra composes ``configs/`` into a plain mapping; :func:`fedmtl.app.run.config.parse` turns it into an
:class:`ExperimentConfig` of these dataclasses. Plug-in groups (dataset, model, partition assignment
and split, strategy, runtime) are ``{name, ...params}`` (:class:`PluginConfig`): ``params`` is the
parameter dataclass that the plug-in registered. Every error is a :class:`ConfigError` naming the key.
The defaults here are the default run's: ``configs/`` restates them and a test keeps both equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fedmtl.core.checks import booleans, fraction, int_at_least, non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import NoParams, PluginConfig

MAX_SEED = 2**32 - 1
"""The largest ``seed``: every generator fedmtl seeds from it takes 32 bits (numpy's legacy
RandomState and scikit-learn take no more; torch takes 64)."""
MAX_ROUNDS = 1_000_000
"""The most ``num_rounds`` (and ``checkpoint_every``): a run keeps a record per round."""
MAX_LR = 100.0
"""The largest ``train.lr``: a sanity bound far above any useful rate, which catches typos (1e300
overflows the first step)."""
MAX_WEIGHT_DECAY = 100.0
"""The largest ``train.weight_decay``, a sanity bound like :data:`MAX_LR`."""


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


def _no_fault() -> PluginConfig:
    return PluginConfig("none", NoParams())


@dataclass(frozen=True)
class PartitionConfig:
    """How the dataset is spread over silos: which tasks each labels, which samples it holds,
    which of its labels are missing, how its inputs are skewed, and the global test set.

    ``validation_fraction`` > 0 makes a validation partition for tuning: each silo's validation
    rows are carved out of its training rows and take the place of its test rows, and there is
    no global test set, so a run on it never sees a test row (:mod:`partitions.heldout`).

    ``num_silos`` null: the split finds the silos in the data (``natural_id``: one silo per
    distinct id); only a split whose parameters set ``silos_from_data`` accepts it."""

    num_silos: int | None
    assignment: PluginConfig
    split: PluginConfig
    test_fraction: float = 0.25
    min_train_per_task: int = 1
    global_test_fraction: float = 0.0
    feature_skew: PluginConfig = field(default_factory=_no_feature_skew)
    missing_labels: MissingLabelsConfig = field(default_factory=MissingLabelsConfig)
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.num_silos is not None:
            int_at_least(self, "num_silos", 1)
        elif not getattr(self.split.params, "silos_from_data", False):
            raise ConfigError(
                "num_silos",
                f"is required with split '{self.split.name}' (only a split that finds the silos "
                "in the data, natural_id, takes null: one silo per distinct id).",
                "set e.g. partition.num_silos=10, or use partition.split.name=natural_id.",
            )
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
        value = self.validation_fraction
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(
                "validation_fraction",
                f"must be in [0, 1), got {value!r}.",
                "use 0 for none (test rows), or e.g. 0.2 for tuning runs.",
            )


@dataclass(frozen=True)
class PartitionFile:
    """A partition read back from a manifest (``partition=from_file partition.path=...``)."""

    path: str


@dataclass(frozen=True)
class PartitionLocal:
    """Each silo brings its own rows (``partition=local``, for deployments): its SuperNode's node
    config names its table, and the silo cuts its own train/test split (``test_fraction``, seeded
    by the experiment seed and its silo id) and checks that it has ``min_train_per_task``
    labelled training rows of each task it announces. ``num_silos``: the silos the run expects."""

    num_silos: int
    test_fraction: float = 0.25
    min_train_per_task: int = 1

    def __post_init__(self) -> None:
        int_at_least(self, "num_silos", 1)
        fraction(self, "test_fraction", allow_one=False)
        int_at_least(self, "min_train_per_task", 1)


@dataclass(frozen=True)
class TrainConfig:
    """Local training of a silo in one round (sent by the server in each round's ConfigRecord)."""

    local_epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Types and bounds; what a silo accepts (batch size, epochs, steps) is checked against
        the silos' limits: a simulation's before the run (:mod:`fedmtl.app.launch`), a
        deployment's by each silo."""
        int_at_least(self, "local_epochs", 1)
        int_at_least(self, "batch_size", 1)
        positive(self, "lr")
        if self.max_steps is not None:
            int_at_least(self, "max_steps", 1)
        value = self.momentum
        if isinstance(value, bool) or not (isinstance(value, int | float) and 0 <= value < 1):
            raise ConfigError(
                "momentum", f"must be in [0, 1), got {value!r}.", "use e.g. 0.9, or 0 for none."
            )
        non_negative(self, "weight_decay")
        for name, most in (("lr", MAX_LR), ("weight_decay", MAX_WEIGHT_DECAY)):
            if getattr(self, name) > most:
                raise ConfigError(
                    name,
                    f"is {getattr(self, name)!r}, above {most:g}: no model trains at that value.",
                    f"use at most {most:g}.",
                )


@dataclass(frozen=True)
class TrackingConfig:
    """Where results go besides the run directory (``wandb_group``: the wandb group of the run,
    e.g. the benchmark suite it belongs to; null: none)."""

    wandb: bool = True
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "fedmtl"
    wandb_group: str | None = None
    progress: bool = True
    plots: bool = True


def _no_privacy() -> PluginConfig:
    """``privacy=none`` (its parameters are the engine's; the app fills them when parsing)."""
    return PluginConfig("none", None)


def _ideal_system() -> PluginConfig:
    """``system=ideal`` (its parameters are the engine's; the app fills them when parsing)."""
    return PluginConfig("ideal", None)


@dataclass(frozen=True)
class LimitsConfig:
    """Checks before a run: ``memory_check`` refuses a run whose memory, estimated from its config
    (:mod:`fedmtl.app.run.resources`), does not fit what this machine has available; false runs
    it anyway."""

    memory_check: bool = True

    def __post_init__(self) -> None:
        booleans(self, "memory_check")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole validated experiment. ``checkpoint_every``: save the run's state every N rounds
    (0: only after the last round); ``resume``: the run directory this run continues;
    ``plugins``: modules and files loaded before the config was read (their members registered);
    ``fault``: the fault injected into some silos (:mod:`fedmtl.faults`; ``none``: honest);
    ``limits``: the checks before a run; ``system``: the silos' hardware, links, availability
    and round deadline, the virtual clock's (``ideal``: every sampled silo answers)."""

    seed: int
    num_rounds: int
    dataset: DatasetConfig
    model: ModelConfig
    partition: PartitionConfig | PartitionFile | PartitionLocal
    strategy: PluginConfig
    runtime: PluginConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    privacy: PluginConfig = field(default_factory=_no_privacy)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    output_dir: str = "."
    checkpoint_every: int = 5
    resume: str | None = None
    plugins: tuple[str, ...] = ()
    fault: PluginConfig = field(default_factory=_no_fault)
    system: PluginConfig = field(default_factory=_ideal_system)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        """The raw mapping this config was parsed from, as JSON (travels to ClientApps)."""
        return json.dumps(self.raw)
