"""Config composition (Hydra) and parsing: from ``configs/`` and overrides to an
:class:`~fedmtl.core.schema.ExperimentConfig`.

:func:`compose` builds the raw mapping that ``fedmtl run [overrides]`` would run; :func:`parse` checks
every value against the schema (:mod:`fedmtl.core.schema`) and each plug-in group against the
parameter dataclass its registry holds. This module is the one place that knows every registry.
Every problem is a :class:`~fedmtl.core.errors.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fedmtl
from fedmtl.app.run.plugins import (
    GROUP_REGISTRIES,
    PLUGINS_KEY,
    load_plugins,
    plugin_names,
    preset_folders,
    search_path,
)
from fedmtl.app.runtimes import RUNTIMES
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry, build_dataclass
from fedmtl.core.schema import (
    MAX_ROUNDS,
    MAX_SEED,
    DatasetConfig,
    ExperimentConfig,
    LimitsConfig,
    MissingLabelsConfig,
    ModelConfig,
    PartitionConfig,
    PartitionFile,
    PartitionLocal,
    PluginConfig,
    TrackingConfig,
    TrainConfig,
)
from fedmtl.datasets import DATASETS
from fedmtl.faults import FAULTS, NONE
from fedmtl.trunks import TRUNKS
from partitions import ASSIGNMENTS, FEATURE_SKEWS, SPLITS
from strategies import METHODS
from strategies.engine import PRIVACY, SYSTEMS


def config_dir() -> str:
    """Absolute path of fedmtl's ``configs`` package: the folder installed beside the ``fedmtl``
    package (a wheel and an editable install alike). Not ``importlib.resources.files("configs")``:
    a ``configs`` folder of the user's own project on ``sys.path`` (the current directory of
    ``python -m``, a script's folder, ``PYTHONPATH``) would come first and hide it."""
    folder = Path(fedmtl.__file__).resolve().parents[1] / "configs"
    if not (folder / "config.yaml").is_file():
        raise RuntimeError(f"fedmtl's configs are missing: no {folder / 'config.yaml'}; reinstall")
    return str(folder)


def presets(group: str) -> list[str]:
    """The presets of a config group: ``configs/<group>/<name>.yaml`` in fedmtl's configs and in
    every plug-in's (files starting with ``_`` hold values shared by presets and are not presets
    themselves)."""
    folders = [folder / group for folder in preset_folders(Path(config_dir()))]
    return sorted({p.stem for f in folders for p in f.glob("*.yaml") if not p.stem.startswith("_")})


def compose(overrides: list[str], output_dir: str | Path = ".") -> dict[str, Any]:
    """The raw config mapping that ``fedmtl run [overrides]`` builds, without running anything
    (for scripts and tests; ``hydra.*`` overrides other than those of the config are ignored).

    An override Hydra cannot apply (an unknown key or preset, a renamed key, a malformed
    override) is a ConfigError that names the key and the choices."""
    # Hydra and OmegaConf take about 0.3 s to import: only commands that compose a config pay it.
    from hydra.errors import HydraException  # noqa: PLC0415 - heavy, only when composing a config
    from omegaconf import OmegaConf  # noqa: PLC0415 - heavy, only when composing a config
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415 - heavy, as above

    try:
        cfg = _hydra_compose(overrides)
    except ConfigError:  # a plug-in that cannot be loaded names itself
        raise
    except HydraException as err:
        raise _explain(str(err), overrides) from None
    except (OmegaConfBaseException, ValueError, TypeError) as err:  # e.g. a key under a list
        raise ConfigError(
            _culprit(overrides),
            f"cannot be applied ({type(err).__name__}: {str(err).splitlines()[0]}).",
            "check the key's path and the value's type (fedmtl run --help lists the groups).",
        ) from None
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return raw_config(container, output_dir)


def _hydra_compose(overrides: list[str]) -> Any:
    """Hydra's composition of ``configs/`` (and the plug-ins' presets) with ``overrides`` (its
    own exceptions)."""
    from hydra import compose as hydra_compose  # noqa: PLC0415 - heavy, only when composing a config
    from hydra import initialize_config_dir  # noqa: PLC0415 - heavy, only when composing a config

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, *search_path(overrides)])


def _culprit(overrides: list[str]) -> str:
    """The first of ``overrides`` whose addition makes composing fail (its key), else all."""
    for i in range(len(overrides)):
        try:
            _hydra_compose(overrides[: i + 1])
        except Exception:  # any failure points at this override
            return overrides[i].split("=", 1)[0] or overrides[i]
    return "overrides"


def _explain(message: str, overrides: list[str]) -> ConfigError:
    """A Hydra composition error as a ConfigError naming the key and what it could be instead."""
    unknown_preset = re.search(r"Could not find '([\w.]+)/([^']+)'", message)
    if unknown_preset:
        group, name = unknown_preset.groups()
        return ConfigError(group, f"has no preset '{name}'.", f"choose one of {presets(group)}.")
    failed = re.search(r"Could not override '([^']+)'", message)  # '' (from '=') falls through
    if not failed:
        first = message.splitlines()[0] if message else "cannot compose the config"
        written = re.search(r"override '([^']*)'", first)
        return ConfigError(
            written.group(1) if written and written.group(1) else _culprit(overrides),
            f"cannot be applied ({first.rstrip('.')}).",
            "write GROUP=PRESET, KEY=VALUE, +KEY=VALUE (a new key) or ~KEY (remove it).",
        )
    key = failed.group(1)
    group, _, field = key.rpartition(".")
    others = [o for o in overrides if not o.startswith((key + "=", "hydra."))]
    fields = _known_fields(group, others)
    if fields is None:
        return ConfigError(key, "is not a config key.", f"check its spelling, or use +{key}=...")
    owner, known, renamed = fields
    if field in renamed:
        return ConfigError(
            key,
            f"was renamed to {group}.{renamed[field]}.",
            f"set {group}.{renamed[field]} instead.",
        )
    for nested, (kind, name, params) in _nested_plugins(group, others).items():
        if field in params:
            return ConfigError(
                key,
                f"is a parameter of the {kind} '{name}', which {group}.{nested} chooses.",
                f"set {group}.{nested}.{field} instead.",
            )
    return ConfigError(key, f"is not a parameter of {owner}.", f"use one of {sorted(known)}.")


def _known_fields(group: str, overrides: list[str]) -> tuple[str, list[str], dict[str, str]] | None:
    """What ``group`` (a plug-in group or a typed section) accepts once the other ``overrides``
    are applied: its owner's description, its keys and its renamed keys."""
    sections: dict[str, type] = {
        "train": TrainConfig,
        "tracking": TrackingConfig,
        "limits": LimitsConfig,
    }
    if group in sections:
        cls = sections[group]
        return group, [f.name for f in dataclasses.fields(cls)], {}
    if group not in GROUP_REGISTRIES:
        return None
    try:
        node: Any = compose(overrides)
        for part in group.split("."):
            node = node[part]
        entry = GROUP_REGISTRIES[group].get(node["name"])
    except (ConfigError, KeyError, TypeError):
        return None
    extra = {"dataset": ["tasks"], "model": ["head_hidden"]}.get(group, [])
    known = ["name", *extra, *(f.name for f in dataclasses.fields(entry.params))]
    return f"{group} '{entry.name}'", known, dict(getattr(entry.params, "renamed_keys", {}))


def _nested_plugins(group: str, overrides: list[str]) -> dict[str, tuple[str, str, list[str]]]:
    """The plug-ins a plug-in group's parameters choose (``strategy.weighting``): field -> the
    kind, the chosen name and its parameters, once the other ``overrides`` are applied."""
    try:
        node: Any = compose(overrides)
        for part in group.split("."):
            node = node[part]
        params = GROUP_REGISTRIES[group].get(node["name"]).params
        hints = typing.get_type_hints(params, include_extras=True)
    except (ConfigError, KeyError, TypeError):
        return {}
    found = {}
    for field, hint in hints.items():
        for registry in (m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Registry)):
            value = node.get(field)
            name = value.get("name") if isinstance(value, Mapping) else value
            if isinstance(name, str) and name in registry:
                names = [f.name for f in dataclasses.fields(registry.get(name).params)]
                found[field] = (registry.kind, name, names)
    return found


def raw_config(container: Mapping[Any, Any], output_dir: str | Path) -> dict[str, Any]:
    """A composed Hydra container as the raw mapping :func:`parse` takes: string keys, without
    Hydra's own node and the ``experiment`` preset name, with ``output_dir`` set and the files
    a run reads on the server (plug-ins, ``system.trace``) by their absolute paths."""
    raw = {str(key): value for key, value in container.items()}
    raw.pop("hydra", None)
    raw.pop("experiment", None)
    raw["output_dir"] = str(output_dir)
    system = raw.get("system")
    if isinstance(system, dict) and isinstance(system.get("trace"), str) and system["trace"]:
        system["trace"] = str(Path(system["trace"]).resolve())  # the same file from any directory
    if isinstance(raw.get(PLUGINS_KEY), list):  # a file plug-in by its absolute path: every
        raw[PLUGINS_KEY] = [  # process of the run (whatever its working directory) finds it
            str(Path(name).resolve()) if isinstance(name, str) and name.endswith(".py") else name
            for name in raw[PLUGINS_KEY]
        ]
    return raw


def _plugin(registry: Registry[Any], values: Any, key: str, extra: tuple[str, ...] = ()) -> tuple:
    if not isinstance(values, Mapping) or "name" not in values:
        raise ConfigError(f"{key}.name", "is missing.", f"choose one of {registry.names()}.")
    name = values["name"]
    params = {k: v for k, v in values.items() if k != "name" and k not in extra}
    return name, registry.parse(name, params, key)


def parse(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a composed config mapping and build the typed :class:`ExperimentConfig`."""
    raw = json.loads(json.dumps(raw))  # plain JSON types only, detached from the caller
    plugins = plugin_names(raw.get(PLUGINS_KEY))
    load_plugins(plugins)  # before anything names what they register
    known = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"raw"}
    for key in raw:
        if key not in known and key != "experiment":
            raise ConfigError(key, "is not a config key.", f"use one of {sorted(known)}.")
    for key in ("seed", "num_rounds", "dataset", "model", "partition", "strategy", "runtime"):
        if key not in raw:
            raise ConfigError(key, "is required but missing.", "set it in the config.")
    for key, low, high, fix in (
        ("seed", 0, MAX_SEED, "use e.g. seed=0."),
        ("num_rounds", 1, MAX_ROUNDS, "set e.g. num_rounds=10."),
        ("checkpoint_every", 0, MAX_ROUNDS, "use e.g. 5, or 0 to save only after the last round."),
    ):
        value = raw.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}.", fix)
        if not low <= value <= high:
            raise ConfigError(key, f"must be in [{low}, {high}], got {value}.", fix)
    resume = raw.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise ConfigError("resume", f"expected a run directory, got {resume!r}.")

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
    strategy = PluginConfig(*_plugin(METHODS, raw["strategy"], "strategy"))
    runtime = PluginConfig(*_plugin(RUNTIMES, raw["runtime"], "runtime"))
    privacy = PluginConfig(*_plugin(PRIVACY, raw.get("privacy", {"name": "none"}), "privacy"))
    fault = PluginConfig(*_plugin(FAULTS, raw.get("fault", {"name": NONE}), "fault"))
    system = PluginConfig(*_plugin(SYSTEMS, raw.get("system", {"name": "ideal"}), "system"))
    sections = {}
    for key in ("train", "tracking", "limits"):
        values = raw.get(key, {})
        if not isinstance(values, Mapping):
            raise ConfigError(key, f"expected a mapping of its keys, got {values!r}.")
        sections[key] = values
    train = build_dataclass(TrainConfig, sections["train"], "train")
    tracking = build_dataclass(TrackingConfig, sections["tracking"], "tracking")
    limits = build_dataclass(LimitsConfig, sections["limits"], "limits")
    output_dir = raw.get("output_dir", ".")
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise ConfigError(
            "output_dir",
            f"expected the path of a directory, got {output_dir!r}.",
            "give one with hydra.run.dir=DIR, or leave it out for outputs/<date>/<time>/.",
        )
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
        privacy=privacy,
        limits=limits,
        output_dir=output_dir,
        checkpoint_every=raw.get("checkpoint_every", ExperimentConfig.checkpoint_every),
        resume=resume,
        plugins=tuple(plugins),
        fault=fault,
        system=system,
        raw=raw,
    )


def parse_partition(values: Any) -> PartitionConfig | PartitionFile | PartitionLocal:
    """The ``partition`` group: a :class:`PartitionFile` when it sets ``path``, a
    :class:`PartitionLocal` when it sets ``local: true``, else a :class:`PartitionConfig` with its
    plug-ins checked against their registries."""
    if not isinstance(values, Mapping):
        raise ConfigError("partition", f"expected a mapping, got {values!r}.")
    if "path" in values:
        return _parse_partition_file(values)
    if "local" in values:
        return _parse_partition_local(values)
    plugins: dict[str, Registry[Any]] = {
        "assignment": ASSIGNMENTS,
        "split": SPLITS,
        "feature_skew": FEATURE_SKEWS,
    }
    allowed = {"num_silos", "test_fraction", "min_train_per_task", "global_test_fraction"}
    allowed |= {"validation_fraction"}
    allowed |= {"missing_labels", *plugins}
    for key in values:
        if key not in allowed:
            raise ConfigError(
                f"partition.{key}", "is not a partition key.", f"use one of {sorted(allowed)}."
            )
    scalars = {k: v for k, v in values.items() if k not in plugins and k != "missing_labels"}
    scalars.setdefault("num_silos", None)  # PartitionConfig: only natural_id decides it from data
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
    """``{path}`` only: everything else comes from the manifest (``validation_fraction`` may be
    there at its default 0: a saved partition cannot be carved into a validation partition)."""
    _no_validation(values, "partition.path: the manifest fixes every silo's rows", "partition.path")
    extra = sorted(set(values) - {"path", "validation_fraction"})
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


def _parse_partition_local(values: Mapping[str, Any]) -> PartitionLocal:
    """``{local: true, num_silos, test_fraction, min_train_per_task}``: the silos hold the rows."""
    if values["local"] is not True:
        raise ConfigError(
            "partition.local",
            f"must be true when set, got {values['local']!r}.",
            "use partition=local, or another partition preset.",
        )
    _no_validation(values, "a local partition: each silo cuts its own rows", "partition=local")
    rest = {k: v for k, v in values.items() if k not in ("local", "validation_fraction")}
    local: PartitionLocal = build_dataclass(PartitionLocal, rest, "partition")
    return local


def _no_validation(values: Mapping[str, Any], why: str, drop: str) -> None:
    """``validation_fraction`` (every partition preset has it) may only be its default 0 here."""
    if values.get("validation_fraction", 0) not in (0, 0.0):
        raise ConfigError(
            "partition.validation_fraction",
            f"cannot be set with {why}.",
            f"tune on a partition built from its config, or drop {drop}.",
        )
