"""Hydra experiments as Flower run config: what ``fedmtl flwr-config`` writes for ``flwr run``.

Both apps read the experiment from one run-config entry, ``fedmtl-config``
(:data:`fedmtl.app.run.experiment.CONFIG_KEY`): the composed and checked config as JSON.
``fedmtl flwr-config [GROUP=PRESET ...] [KEY=VALUE ...] [hydra.run.dir=DIR]`` composes it from
``configs/`` exactly as ``fedmtl run`` would, checks it, and prints (or writes, ``-o FILE``) a TOML
file for ``flwr run . CONNECTION --run-config FILE``. ``pyproject.toml`` holds the one for
``experiment=flwr_demo``, the default of a plain ``flwr run .``.

What changes on the way:

- ``dataset.schema=FILE`` is read here and travels as its content: the server never sends a
  path. Any other file the config names (``dataset.path``, ``partition.path``) is refused: in a
  deployment each silo's SuperNode names its own data (``partition=local`` and node config
  ``data-file``, :mod:`fedmtl.app.silo.node`).
- ``hydra.run.dir=DIR`` (default ``outputs/flwr``) becomes ``output_dir``: the ServerApp writes
  each run's results to ``DIR/<run id>/``, relative to the working directory of the process that
  runs it (the SuperLink's).
- ``fault=...`` (fault injection, :mod:`fedmtl.faults`) is refused: it is for simulations, and
  a deployed silo refuses it too.
- ``system=...`` other than ``ideal`` (the virtual clock, :mod:`strategies.engine.system`) is
  refused: a deployment's silos have real speeds, links and availability.
- ``resume=RUN_DIR`` (a run directory on the SuperLink's machine, read here too) gives that run's
  own config, for a ``flwr run`` that continues it in place from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmtl.app.run.checkpoint import resumed_raw_config
from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import CONFIG_KEY, named_files, prepare
from fedmtl.core.errors import ConfigError
from fedmtl.datasets.schema import FeatureSchema
from fedmtl.faults import NONE
from strategies.engine import SystemParams

DEFAULT_OUTPUT = "outputs/flwr"
OUTPUT_OVERRIDE = "hydra.run.dir="


def run_config(overrides: list[str]) -> dict[str, str]:
    """The run-config entries of the experiment ``overrides`` compose (ConfigErrors only)."""
    output = DEFAULT_OUTPUT
    for override in overrides:
        if override.startswith(OUTPUT_OVERRIDE):
            output = override[len(OUTPUT_OVERRIDE) :]
    resume = [o for o in overrides if o.startswith("resume=")]
    if resume:  # the run's own config from its checkpoint; only RESUMABLE_KEYS may change
        others = [o for o in overrides if not o.startswith(("resume=", OUTPUT_OVERRIDE))]
        raw = resumed_raw_config(Path(resume[-1].split("=", 1)[1]), others)
    else:
        raw = compose(overrides, output_dir=output)
    schema = raw.get("dataset", {}).get("schema")
    if isinstance(schema, str):
        raw["dataset"]["schema"] = FeatureSchema.load(schema).to_json()
    config = parse(raw)
    if config.plugins:
        raise ConfigError(
            "plugins",
            f"names {list(config.plugins)}, but a deployment's silos never load code the run config "
            "names.",
            "install the plug-in package on the SuperLink's and every SuperNode's machine (its "
            "entry points register it) and drop plugins=...; see docs/extending.md.",
        )
    if config.fault.name != NONE:
        raise ConfigError(
            "fault",
            f"is {config.fault.name!r}, but a deployment's silos never misbehave on request "
            "(and refuse a run config that asks them to).",
            "inject faults in simulations (fedmtl run, runtime=inprocess|vectorized|simulation); "
            "drop fault=... here.",
        )
    if config.system.params != SystemParams():
        raise ConfigError(
            "system",
            f"is {config.system.name!r}, but a deployment's silos are real: their speed, links, "
            "availability and replies are theirs, not a virtual clock's.",
            "simulate systems in fedmtl run (docs/systems.md); drop system=... here.",
        )
    files = named_files(config)
    if files:
        raise ConfigError(
            files[0],
            "names a file, but the silos of a deployment never open files the run config names.",
            "use partition=local and give each SuperNode its own table (node config data-file); "
            "see docs/deployment.md.",
        )
    prepare(config)
    return {CONFIG_KEY: json.dumps(raw, sort_keys=True)}


def to_toml(entries: dict[str, str]) -> str:
    """The entries as a TOML file for ``flwr run --run-config FILE``: JSON values as indented
    multi-line literal strings (readable, and editable by hand)."""
    lines = ["# Flower run config written by `fedmtl flwr-config` (docs/deployment.md)."]
    for key, value in entries.items():
        pretty = json.dumps(json.loads(value), indent=2, sort_keys=True)
        if "'''" in pretty:  # a literal string cannot hold it: one escaped line instead
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = '''\n{pretty}\n'''")
    return "\n".join(lines) + "\n"


def read_run_config(entries: dict[str, Any]) -> dict[str, Any]:
    """The experiment config (a mapping) of run-config ``entries``, e.g. pyproject's."""
    value = entries.get(CONFIG_KEY)
    if not isinstance(value, str):
        raise ConfigError(CONFIG_KEY, "is missing from the run config.", "run fedmtl flwr-config.")
    result: dict[str, Any] = json.loads(value)
    return result


def main(args: list[str]) -> None:
    """``fedmtl flwr-config [-o FILE] [overrides]``."""
    output: Path | None = None
    overrides = []
    rest = iter(args)
    for arg in rest:
        if arg in ("-o", "--output"):
            output = Path(next(rest, ""))
        else:
            overrides.append(arg)
    text = to_toml(run_config(overrides))
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        print(f"run config: {output} (flwr run . CONNECTION --run-config {output})")
