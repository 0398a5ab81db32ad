"""Every registry the app knows, and the plug-ins that add to them from outside the repository.

A plug-in registers members into these registries in one of two ways:

- an installed package declares entry points (``fedmtl.methods``, ``fedmtl.weightings``,
  ``fedmtl.affinities``, ``fedmtl.datasets``, ``fedmtl.trunks``, ``fedmtl.assignments``,
  ``fedmtl.splits``, ``fedmtl.feature_skews``, ``fedmtl.faults``), loaded the first time a registry is asked for a
  name (:mod:`fedmtl.core.registry`);
- a config names modules or files with ``plugins=[my_package.module, path/to/file.py]``, loaded
  before the rest of the config is read (:func:`fedmtl.app.run.config.parse`), in every process
  that reads it (Ray workers included).

A plug-in's presets live in a ``configs/`` folder beside its module (``configs/strategy/NAME.yaml``
for a method): Hydra searches those folders after fedmtl's own, so ``strategy=NAME`` composes like
a shipped preset (:func:`search_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmtl.app.runtimes import RUNTIMES
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import PLUGIN_CONFIG_DIRS, Registry, load_plugin_modules
from fedmtl.datasets import DATASETS
from fedmtl.faults import FAULTS
from fedmtl.trunks import TRUNKS
from partitions import ASSIGNMENTS, FEATURE_SKEWS, SPLITS
from strategies import METHODS
from strategies.balancing import WEIGHTINGS
from strategies.engine import PRIVACY, SYSTEMS
from strategies.grouping import AFFINITIES

GROUP_REGISTRIES: dict[str, Registry[Any]] = {
    "dataset": DATASETS,
    "model": TRUNKS,
    "partition.assignment": ASSIGNMENTS,
    "partition.split": SPLITS,
    "partition.feature_skew": FEATURE_SKEWS,
    "strategy": METHODS,
    "runtime": RUNTIMES,
    "privacy": PRIVACY,
    "fault": FAULTS,
    "system": SYSTEMS,
}
"""Config key of each plug-in group -> the registry whose names and parameter schemas it takes."""

REGISTRIES: tuple[Registry[Any], ...] = (*GROUP_REGISTRIES.values(), WEIGHTINGS, AFFINITIES)
"""Every registry, the groups' and those a plug-in's parameters choose from."""

PLUGINS_KEY = "plugins"


def load_plugins(names: Sequence[str] = ()) -> list[Path]:
    """Load every installed plug-in (entry points) and the modules or files ``names``; return
    the ``configs/`` folders of every plug-in loaded so far."""
    for registry in REGISTRIES:
        registry.discover()
    load_plugin_modules(list(names), key=PLUGINS_KEY)
    return list(PLUGIN_CONFIG_DIRS)


def plugin_names(value: Any) -> list[str]:
    """The ``plugins`` key's value checked: a list of module names or ``.py`` paths."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            PLUGINS_KEY,
            f"expected a list of module names or .py files, got {value!r}.",
            "write plugins=[my_package.module,path/to/file.py].",
        )
    return list(value)


def named_in_overrides(overrides: Sequence[str]) -> list[str]:
    """The plug-ins a ``plugins=[...]`` command-line override names (the last one wins)."""
    from hydra.core.override_parser.overrides_parser import (  # noqa: PLC0415 - heavy, only when composing
        OverridesParser,
    )

    wanted = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == PLUGINS_KEY]
    if not wanted:
        return []
    try:
        parsed = OverridesParser.create().parse_overrides([wanted[-1].lstrip("~")])
        value = parsed[0].value() if "=" in wanted[-1] else []
    except Exception as err:  # Hydra's parser errors have no common base
        raise ConfigError(PLUGINS_KEY, f"cannot be read ({err}).", "write plugins=[a,b].") from None
    return plugin_names(list(value) if isinstance(value, list | tuple) else value)


def search_path(overrides: Sequence[str]) -> list[str]:
    """The Hydra override that adds every plug-in's ``configs/`` folder to the search path
    (none without plug-in presets), after loading the plug-ins the overrides name."""
    folders = load_plugins(named_in_overrides(overrides))
    if not folders:
        return []
    return [f"hydra.searchpath=[{','.join(f'file://{folder}' for folder in folders)}]"]


def preset_folders(main: Path) -> list[Path]:
    """Where presets come from: fedmtl's ``configs/`` (``main``), then every loaded plug-in's."""
    return [main, *load_plugins()]
