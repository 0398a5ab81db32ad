"""Benchmark suites: the grid of scenarios x strategies x seeds that ``fedmtl bench`` runs, read
from a YAML file in ``configs/bench/`` (or any path) and checked before anything runs.

A suite file::

    description: what the suite compares          # optional
    overrides: [experiment=smoke, tracking=quiet]  # Hydra overrides shared by every run
    scenarios:                                     # name -> its own overrides (a list, or null)
      tiny: [dataset=synthetic, dataset.num_samples=300]
    strategies:                                    # a registered strategy name, or a mapping
      - fedavg
      - name: mgda
        label: mgda_lr3                            # optional; default: the name (unique)
        overrides: [strategy.server_optimizer.lr=3.0]   # its own strategy.* (and model) keys
        tune: {strategy.server_optimizer.lr: [1.0, 3.0]}  # this strategy's own grid
    seeds: [0, 1]
    reference: single_task     # Delta_MTL's reference, added to every scenario when registered
    tuning:                    # optional
      grid: {train.lr: [0.01, 0.05]}   # tuned for every strategy (and the reference)
      seeds: [0]                        # default: the first of `seeds`
      validation_fraction: 0.2          # each silo's validation share of its training rows

Fairness rules, checked here: every strategy of a scenario runs the same config outside
``strategy.*`` and the architecture (a strategy's overrides may only set ``strategy.*`` keys, not
``strategy.name``, which its ``name`` decides, nor a key its grid tunes, whose tuned value would
replace it; and ``model`` / ``model.*``, the architecture, which is then part of the compared
method: the suite's scenario ids leave ``model`` out, :meth:`Suite.excluded_keys`); the
suite's and the scenarios' overrides may not choose the strategy or the seed; tuned keys are
``strategy.*`` keys or
one of :data:`TUNABLE_TRAIN_KEYS` (the compute budget - rounds, local epochs and steps, batch size -
is the scenario's, never tuned). Every problem is a :class:`ConfigError` naming the suite key, found
by :meth:`Suite.validate` before any training (it composes every strategy's config in every
scenario, tuned values included, and builds each scenario's data once).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fedmtl.app.bench.stats import REFERENCE_STRATEGY
from fedmtl.app.run.config import compose, config_dir, parse, presets
from fedmtl.app.run.experiment import check_strategy, prepare
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig

log = logging.getLogger("fedmtl")
T = TypeVar("T")

SUITE_KEYS = ("description", "overrides", "scenarios", "strategies", "seeds", "reference", "tuning")
STRATEGY_KEYS = ("name", "label", "overrides", "tune")
TUNING_KEYS = ("grid", "seeds", "validation_fraction")
TUNABLE_TRAIN_KEYS = ("train.lr", "train.momentum", "train.weight_decay", "train.optimizer")
"""The ``train.*`` keys a suite may tune (the others fix the compute budget of a scenario)."""
ANCHOR_STRATEGY = "fedavg"
"""Tuning scores every grid point against this strategy with its default hyperparameters."""
DEFAULT_VALIDATION_FRACTION = 0.2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_OVERRIDES = ("strategy", "seed", "output_dir", "hydra")
"""Top-level keys the suite's and the scenarios' overrides may not set (the suite decides them)."""
STRATEGY_RESERVED = ("strategy", "strategy.name")
"""Keys a strategy entry's overrides may not set: its ``name`` chooses the strategy."""
ARCHITECTURE_KEY = "model"
"""The config group a strategy entry may also choose (``model=mmoe``, ``model.num_experts=8``): an
architecture compared like a method (hard sharing against MMoE under the same aggregation)."""


def suite_names() -> list[str]:
    """The suites shipped in ``configs/bench/``."""
    return sorted(p.stem for p in (Path(config_dir()) / "bench").glob("*.yaml"))


def suite_path(spec: str) -> Path:
    """The file of suite ``spec``: an existing path, else a name in ``configs/bench/``."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = Path(config_dir()) / "bench" / f"{spec}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        "SUITE",
        f"'{spec}' is neither a suite file nor a suite in configs/bench/.",
        f"give a path to a YAML file, or one of {suite_names()}.",
    )


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy of a suite: a registered ``name``, its ``label`` in results and directories,
    its fixed ``overrides`` (``strategy.*``) and its own tuning grid ``tune`` (key -> values)."""

    label: str
    name: str
    overrides: tuple[str, ...] = ()
    tune: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    where: str = ""


@dataclass(frozen=True)
class Tuning:
    """What is tuned for every strategy (``grid``), on which seeds, with what validation share."""

    grid: Mapping[str, tuple[Any, ...]]
    seeds: tuple[int, ...]
    validation_fraction: float


@dataclass(frozen=True)
class Suite:
    """A parsed suite file (module docstring). ``strategies`` are the listed ones; :meth:`entries`
    adds the reference when it is registered."""

    name: str
    path: Path
    description: str
    overrides: tuple[str, ...]
    scenarios: Mapping[str, tuple[str, ...]]
    strategies: tuple[StrategyEntry, ...]
    seeds: tuple[int, ...]
    reference: str | None
    tuning: Tuning

    # ------------------------------------------------------------------------------- the grid
    @property
    def reference_missing(self) -> bool:
        """The suite names a reference that is neither listed nor registered (Delta_MTL is then
        null for its runs)."""
        return self.reference is not None and self.reference_entry() is None

    def reference_entry(self) -> StrategyEntry | None:
        """The entry of the Delta_MTL reference: the listed one (the one labelled like the
        reference when several share its name), else an added entry when it is registered."""
        if self.reference is None:
            return None
        listed = [e for e in self.strategies if e.name == self.reference]
        if listed:
            return next((e for e in listed if e.label == self.reference), listed[0])
        if self.reference in presets("strategy"):
            return StrategyEntry(self.reference, self.reference, where="reference")
        return None

    def entries(self) -> list[StrategyEntry]:
        """Every strategy the suite runs in each scenario: the reference first, then the listed."""
        reference = self.reference_entry()
        rest = [e for e in self.strategies if e is not reference]
        return [reference, *rest] if reference is not None else rest

    def grid(self, entry: StrategyEntry) -> dict[str, tuple[Any, ...]]:
        """The tuning grid of ``entry``: the suite's ``tuning.grid`` with the entry's own ``tune``
        on top (its values win for a key in both)."""
        return {**self.tuning.grid, **entry.tune}

    def grid_points(self, entry: StrategyEntry) -> list[dict[str, Any]]:
        """Every combination of the grid's values (keys in grid order; ``[]`` without a grid)."""
        grid = self.grid(entry)
        if not grid:
            return []
        keys = list(grid)
        return [
            dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())
        ]

    @property
    def tunes(self) -> bool:
        """Whether any strategy has a grid (then the suite has a tuning phase)."""
        return any(self.grid(e) for e in self.entries())

    def tuned_keys(self) -> list[str]:
        """Every key some grid tunes, sorted: left out of the suite's scenario ids."""
        return sorted({k for e in self.entries() for k in self.grid(e)})

    @property
    def compares_architectures(self) -> bool:
        """Whether an entry sets the architecture (``model`` or ``model.*``)."""
        return any(
            _target(o).split(".")[0] == ARCHITECTURE_KEY
            for e in self.entries()
            for o in e.overrides
        )

    def excluded_keys(self) -> list[str]:
        """The keys left out of the suite's scenario ids besides the usual ones: the tuned keys,
        and ``model`` when an entry chooses the architecture (it belongs to the method then)."""
        extra = [ARCHITECTURE_KEY] if self.compares_architectures else []
        return sorted({*self.tuned_keys(), *extra})

    # -------------------------------------------------------------------------------- configs
    def overrides_for(self, scenario: str, entry: StrategyEntry) -> list[str]:
        """The Hydra overrides of ``entry`` in ``scenario`` (before tuned values and seed)."""
        return [
            *self.overrides,
            *self.scenarios[scenario],
            f"strategy={entry.name}",
            *entry.overrides,
        ]

    def to_dict(self) -> dict[str, Any]:
        """The suite as plain JSON (what ran, recorded in the output directory)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "description": self.description,
            "overrides": list(self.overrides),
            "scenarios": {k: list(v) for k, v in self.scenarios.items()},
            "strategies": [
                {
                    "label": e.label,
                    "name": e.name,
                    "overrides": list(e.overrides),
                    "tune": {k: list(v) for k, v in e.tune.items()},
                }
                for e in self.entries()
            ],
            "seeds": list(self.seeds),
            "reference": self.reference,
            "reference_missing": self.reference_missing,
            "tuning": {
                "grid": {k: list(v) for k, v in self.tuning.grid.items()},
                "seeds": list(self.tuning.seeds),
                "validation_fraction": self.tuning.validation_fraction,
                "anchor": ANCHOR_STRATEGY,
                "active": self.tunes,
            },
        }

    # ----------------------------------------------------------------------------- validation
    def validate(self, composer: Composer) -> None:
        """Compose and parse every config the suite will run (each strategy in each scenario,
        with each tuned value, on the test and the validation partition) and build each
        scenario's data once (first seed); the first problem is a ConfigError naming the suite
        key."""
        if self.tunes and ANCHOR_STRATEGY not in presets("strategy"):
            raise ConfigError(
                "tuning", f"needs the '{ANCHOR_STRATEGY}' strategy, which is missing."
            )
        anchor = StrategyEntry(ANCHOR_STRATEGY, ANCHOR_STRATEGY, where="tuning anchor")
        fractions = [0.0, self.tuning.validation_fraction] if self.tunes else [0.0]
        for scenario in self.scenarios:
            for validation in fractions:
                place = f"scenarios.{scenario}" + (" (validation partition)" if validation else "")
                base = _located(place, composer.config, self, scenario, anchor, {}, validation)
                experiment = _located(place, prepare, base)
                tasks, silos = experiment.dataset.task_names, experiment.partition.num_silos
                for entry in self.entries():
                    points = self.grid_points(entry)
                    for point in points if validation else [{}, *points]:
                        where = entry.where + (f".tune {_describe(point)}" if point else "")
                        where += f" in {place}"
                        config = _located(
                            where, composer.config, self, scenario, entry, point, validation
                        )
                        _located(where, check_strategy, config, tasks, silos)


def _located(where: str, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, with a ConfigError's key prefixed by the suite key ``where``."""
    try:
        return call(*args)
    except ConfigError as err:
        key = f"{where}: {err.key}" if err.key else where
        raise ConfigError(key, err.problem, err.fix) from None


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


class Composer:
    """Composes a suite's configs: Hydra once per (scenario, strategy entry) - a composition
    takes a third of a second - then the seed, tuned values, validation share, output directory
    and tracking are set on a copy of the composed mapping (tuned keys are values, never group
    choices, so this is what Hydra would do)."""

    def __init__(self) -> None:
        self._composed: dict[tuple[str, ...], str] = {}

    def raw(
        self,
        suite: Suite,
        scenario: str,
        entry: StrategyEntry,
        tuned: Mapping[str, Any],
        *,
        seed: int | None = None,
        validation: float = 0.0,
        output_dir: str = ".",
    ) -> dict[str, Any]:
        """The raw config of one run (seed: the composed one when None)."""
        overrides = tuple(suite.overrides_for(scenario, entry))
        if overrides not in self._composed:
            self._composed[overrides] = json.dumps(compose(list(overrides)))
        raw: dict[str, Any] = json.loads(self._composed[overrides])
        for key, value in tuned.items():
            set_key(raw, key, copy.deepcopy(value))
        if validation:
            set_key(raw, "partition.validation_fraction", validation)
        if seed is not None:
            raw["seed"] = seed
        raw["output_dir"] = output_dir
        tracking = raw.setdefault("tracking", {})
        tracking["wandb_group"] = suite.name
        tracking["progress"] = False  # the suite's progress bar replaces the runs' own
        return raw

    def config(
        self,
        suite: Suite,
        scenario: str,
        entry: StrategyEntry,
        tuned: Mapping[str, Any],
        validation: float = 0.0,
    ) -> ExperimentConfig:
        """The parsed config of ``entry`` in ``scenario`` with ``tuned`` values."""
        return parse(self.raw(suite, scenario, entry, tuned, validation=validation))


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``raw`` (its parents must exist; the schema checks the leaf)."""
    *parents, last = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node:
            missing = ".".join(parents[: depth + 1])
            raise ConfigError(key, f"'{missing}' is not a config key.", "check its spelling.")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(key, f"'{'.'.join(parents)}' is not a section.", "check its spelling.")
    node[last] = value


# ----------------------------------------------------------------------------------- parsing
def load_suite(spec: str) -> Suite:
    """Read and parse suite ``spec`` (a path or a name in ``configs/bench/``); the file's problems
    are ConfigErrors naming the suite key (its configs are checked by :meth:`Suite.validate`)."""
    path = suite_path(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("SUITE", f"cannot read {path}: {err}", "fix the YAML.") from None
    return parse_suite(data, path)


def parse_suite(data: Any, path: Path) -> Suite:
    """A suite from its YAML mapping (module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError("SUITE", f"{path} must hold a mapping.", f"use the keys {SUITE_KEYS}.")
    _known(data, SUITE_KEYS, "")
    for key in ("scenarios", "strategies", "seeds"):
        if key not in data:
            raise ConfigError(key, "is required but missing.", "see docs/benchmark.md.")
    overrides = _overrides(data.get("overrides"), "overrides")
    scenarios_raw = data["scenarios"]
    if not isinstance(scenarios_raw, Mapping) or not scenarios_raw:
        raise ConfigError("scenarios", "must map scenario names to override lists.")
    scenarios = {}
    for name, values in scenarios_raw.items():
        _check_name(str(name), f"scenarios.{name}")
        scenarios[str(name)] = _overrides(values, f"scenarios.{name}")
    seeds = _seeds(data["seeds"], "seeds")
    strategies = _strategies(data["strategies"])
    reference = data.get("reference", REFERENCE_STRATEGY)
    if reference is not None and (not isinstance(reference, str) or not reference):
        raise ConfigError("reference", f"must be a strategy name or null, got {reference!r}.")
    tuning = _tuning(data.get("tuning"), seeds)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", "must be a string.")
    suite = Suite(
        name=path.stem,
        path=path,
        description=description,
        overrides=overrides,
        scenarios=scenarios,
        strategies=strategies,
        seeds=seeds,
        reference=reference,
        tuning=tuning,
    )
    for entry in suite.entries():
        for key in suite.grid(entry):
            _check_tuned_key(key, f"{entry.where}.tune" if key in entry.tune else "tuning.grid")
        _check_not_tuned(entry, suite.grid(entry))
    return suite


def _known(data: Mapping[str, Any], keys: Sequence[str], prefix: str) -> None:
    for key in data:
        if key not in keys:
            raise ConfigError(
                f"{prefix}{key}", "is not a suite key.", f"use one of {sorted(keys)}."
            )


def _check_name(name: str, key: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            key,
            f"'{name}' is not a usable name (it names directories).",
            "use letters, digits, '_', '.' or '-', starting with a letter or digit.",
        )


def _target(override: str) -> str:
    """The dotted key a Hydra override sets (``+strategy.x=1`` -> ``strategy.x``)."""
    return override.lstrip("+~").split("=", 1)[0]


def _override_list(values: Any, key: str) -> tuple[str, ...]:
    """``values`` as overrides: a list of strings (``()`` for None)."""
    if values is None:
        return ()
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(key, f"must be a list of Hydra overrides, got {values!r}.")
    return tuple(values)


def _overrides(values: Any, key: str) -> tuple[str, ...]:
    """The suite's or a scenario's overrides, none of them setting a key of
    :data:`RESERVED_OVERRIDES` or below one."""
    overrides = _override_list(values, key)
    for value in overrides:
        target = _target(value)
        if target.split(".")[0] in RESERVED_OVERRIDES:
            raise ConfigError(
                key,
                f"sets '{target}', which the suite decides ('{value}').",
                "choose strategies under `strategies` and seeds under `seeds`.",
            )
    return overrides


def _strategy_overrides(values: Any, key: str) -> tuple[str, ...]:
    """A strategy entry's overrides, each setting one of the strategy's own ``strategy.*`` keys
    (:data:`STRATEGY_RESERVED` excepted) or the architecture (``model``, ``model.*``)."""
    overrides = _override_list(values, key)
    for value in overrides:
        target = _target(value)
        if target in STRATEGY_RESERVED:
            raise ConfigError(
                key,
                f"sets '{target}', which the entry's `name` decides ('{value}').",
                "list the other strategy as an entry of its own.",
            )
        if not target.startswith("strategy.") and target.split(".")[0] != ARCHITECTURE_KEY:
            raise ConfigError(
                key,
                f"sets '{target}': a strategy may only set strategy.* keys (and choose the "
                "architecture, model.*), so that every method of a scenario gets the same data, "
                "rounds and local training.",
                "move it to the scenario, or tune it under `tune`.",
            )
    return overrides


def _check_not_tuned(entry: StrategyEntry, grid: Mapping[str, Any]) -> None:
    """None of ``entry``'s overrides sets a key of its tuning ``grid`` (the tuned value would
    replace the override's)."""
    for value in entry.overrides:
        target = _target(value)
        if target in grid:
            source = f"{entry.where}.tune" if target in entry.tune else "tuning.grid"
            raise ConfigError(
                f"{entry.where}.overrides",
                f"sets '{target}', which {source} tunes: its tuned values would replace '{value}'.",
                "drop it from `overrides`, or from the grid.",
            )


def _seeds(values: Any, key: str) -> tuple[int, ...]:
    ok = isinstance(values, list) and values
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(key, f"must be a non-empty list of integers >= 0, got {values!r}.")
    if len(set(values)) != len(values):
        raise ConfigError(key, f"lists a seed twice: {values}.")
    return tuple(values)


def _strategies(values: Any) -> tuple[StrategyEntry, ...]:
    if not isinstance(values, list) or not values:
        raise ConfigError("strategies", "must be a non-empty list.", "e.g. [fedavg, mgda].")
    entries = []
    for i, value in enumerate(values):
        key = f"strategies[{i}]"
        spec: Mapping[str, Any] = {"name": value} if isinstance(value, str) else value
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(key, f"must be a strategy name or {{name, ...}}, got {value!r}.")
        _known(spec, STRATEGY_KEYS, f"{key}.")
        name = spec["name"]
        if not isinstance(name, str) or name not in presets("strategy"):
            raise ConfigError(
                f"{key}.name",
                f"unknown strategy '{name}'.",
                f"choose one of the strategy presets {presets('strategy')}.",
            )
        label = spec.get("label", name)
        _check_name(str(label), f"{key}.label")
        overrides = _strategy_overrides(spec.get("overrides"), f"{key}.overrides")
        tune = _grid(spec.get("tune"), f"{key}.tune")
        entries.append(StrategyEntry(str(label), name, overrides, tune, where=f"{key} ({label})"))
    labels = [e.label for e in entries]
    for label in labels:
        if labels.count(label) > 1:
            raise ConfigError(
                "strategies",
                f"label '{label}' is used twice.",
                "give each entry of the same strategy its own `label`.",
            )
    return tuple(entries)


def _grid(values: Any, key: str) -> dict[str, tuple[Any, ...]]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(key, f"must map config keys to lists of values, got {values!r}.")
    grid = {}
    for name, options in values.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{key}.{name}", f"must be a non-empty list, got {options!r}.")
        grid[str(name)] = tuple(options)
    return grid


def _check_tuned_key(name: str, key: str) -> None:
    if not (name.startswith("strategy.") or name in TUNABLE_TRAIN_KEYS):
        raise ConfigError(
            f"{key}.{name}",
            "cannot be tuned: only strategy.* keys and "
            f"{list(TUNABLE_TRAIN_KEYS)} are (rounds, local epochs and steps, batch size and the "
            "data are the scenario's, the same for every method).",
            "set it in the scenario instead.",
        )


def _tuning(values: Any, seeds: tuple[int, ...]) -> Tuning:
    if values is None:
        return Tuning({}, seeds[:1], DEFAULT_VALIDATION_FRACTION)
    if not isinstance(values, Mapping):
        raise ConfigError("tuning", f"must be a mapping, got {values!r}.")
    _known(values, TUNING_KEYS, "tuning.")
    grid = _grid(values.get("grid"), "tuning.grid")
    tuning_seeds = _seeds(values["seeds"], "tuning.seeds") if "seeds" in values else seeds[:1]
    fraction = values.get("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not (ok and 0 < fraction < 1):
        raise ConfigError(
            "tuning.validation_fraction", f"must be in (0, 1), got {fraction!r}.", "use e.g. 0.2."
        )
    return Tuning(grid, tuning_seeds, float(fraction))
