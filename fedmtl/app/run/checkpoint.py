"""Checkpoints, resume and the saved model.

Every ``checkpoint_every`` rounds, and after the last one, the server writes the whole state of
the run into ``DIR/checkpoint/``, so that ``fedmtl run resume=DIR`` goes on exactly where it
stopped (on CPU a resumed run ends with the same model, bit for bit, as one never stopped):

- ``arrays-<round>.safetensors``: the global model's arrays (``model/<key>``) and every array of
  the state below (``state/<n>``);
- ``state.json``: the round, the run's config, the task groups of the model's trunks, the engine's
  state (sampling RNG, round history, bytes, rejections, and the method's own: server-optimizer
  moments, balancing and grouping state, per-silo models: ``strategies.engine.Engine.state_dict``)
  and the global evaluator's history, with each array replaced by ``{"array": "state/<n>"}``; the
  wall time so far and the rounds the run was resumed from.

``state.json`` is written last, through a temporary file and an atomic rename: it is the commit
point. A crash at any moment leaves the previous checkpoint whole (older array files are removed
only after the new ``state.json`` names its own).

Silos that keep state between rounds (personal heads or models) save it themselves, after each
round they train in, as ``<silo dir>/round-<r>.safetensors`` (:func:`save_silo_state`); a resumed
silo loads its newest file at or before the checkpoint's round (:func:`restore_silo_state`). In
simulations the silo dir is ``DIR/checkpoint/silos/silo-<id>``; a SuperNode names its own with
the node config key ``state-dir``.

After the last round the final global model is also written as ``DIR/model.safetensors``
(safetensors: loading it runs no code; :func:`load_model_arrays`), with the strategy, the round
and the task groups of its trunks in the file's metadata.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from fedmtl.app.run.config import compose
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import Arrays, Groups
from strategies.engine import DEFENCES

log = logging.getLogger("fedmtl")

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
SILOS_DIR = "silos"
CHECKPOINT_SCHEMA_VERSION = 2
RESUMABLE_KEYS = ("num_rounds", "checkpoint_every", "runtime", "tracking")
"""Top-level config keys a resumed run may change (``fedmtl run resume=DIR KEY=VALUE``): how long
it runs, how often it saves, where it runs and what it reports; besides them only the defences
``strategy.<key>`` of :data:`strategies.engine.DEFENCES` (a diverged run resumed from its last
sound checkpoint with another defence); everything else is the run's."""
_ARRAY = "array"  # the JSON placeholder of an array: {"array": "<key in the arrays file>"}
_SILO_FILE = re.compile(r"round-(\d+)\.safetensors")


# ---------------------------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers see the old file or the whole new one, never a part: a
    temporary file in the same directory, flushed to disk, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ------------------------------------------------------------------------- state trees <-> files
def split_arrays(tree: Any, arrays: dict[str, np.ndarray] | None = None) -> tuple[Any, Arrays]:
    """``tree`` with each numpy array replaced by ``{"array": "state/<n>"}`` (numpy scalars by
    Python numbers, tuples by lists), and the arrays by those keys."""
    found: dict[str, np.ndarray] = {} if arrays is None else arrays
    if isinstance(tree, np.ndarray):
        key = f"state/{len(found)}"
        found[key] = np.ascontiguousarray(tree)
        return {_ARRAY: key}, found
    if isinstance(tree, np.generic):
        return tree.item(), found
    if isinstance(tree, Mapping):
        return {str(k): split_arrays(v, found)[0] for k, v in tree.items()}, found
    if isinstance(tree, list | tuple):
        return [split_arrays(v, found)[0] for v in tree], found
    return tree, found


def join_arrays(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The inverse of :func:`split_arrays`."""
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            return arrays[tree[_ARRAY]]
        return {k: join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_arrays(v, arrays) for v in tree]
    return tree


# --------------------------------------------------------------------------------- checkpoints
@dataclass
class RunState:
    """A run stopped after ``server_round``: everything needed to go on (module docstring)."""

    server_round: int
    config: dict[str, Any]
    model: Arrays
    groups: Groups | None
    engine: dict[str, Any]
    evaluator: dict[str, Any]
    wall_time_s: float = 0.0
    resumed_from: list[int] = field(default_factory=list)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_checkpoint(run_dir: Path, state: RunState) -> None:
    """Write ``state`` into ``run_dir/checkpoint/`` (module docstring: the arrays first, then
    ``state.json`` atomically, then the older array files are removed)."""
    directory = checkpoint_dir(run_dir)
    tree, arrays = split_arrays({"engine": state.engine, "evaluator": state.evaluator})
    arrays.update({f"model/{k}": np.ascontiguousarray(v) for k, v in state.model.items()})
    arrays_file = f"arrays-{state.server_round}.safetensors"
    atomic_write_bytes(directory / arrays_file, safetensors.numpy.save(arrays))
    document = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "round": state.server_round,
        "arrays": arrays_file,
        "config": state.config,
        "groups": None if state.groups is None else {g: list(t) for g, t in state.groups.items()},
        "wall_time_s": state.wall_time_s,
        "resumed_from": state.resumed_from,
        **tree,
    }
    atomic_write_text(directory / STATE_FILE, json.dumps(document, allow_nan=True))
    for old in directory.glob("arrays-*.safetensors"):
        if old.name != arrays_file:
            old.unlink()


def load_checkpoint(run_dir: Path) -> RunState:
    """The checkpoint in ``run_dir`` (a ConfigError for ``resume`` naming what is wrong with it:
    missing, not JSON, another schema version, arrays missing or unreadable)."""
    directory = checkpoint_dir(run_dir)
    path = directory / STATE_FILE
    if not path.is_file():
        raise ConfigError(
            "resume",
            f"{run_dir} holds no checkpoint ({path} is missing).",
            "give the directory of a run that saved one (checkpoint_every > 0, or any finished run).",
        )
    try:
        document = json.loads(path.read_bytes())
        version = document["schema_version"]
        if version != CHECKPOINT_SCHEMA_VERSION:
            raise ValueError(f"schema_version {version!r}, expected {CHECKPOINT_SCHEMA_VERSION}")
        server_round = int(document["round"])
        arrays = safetensors.numpy.load((directory / str(document["arrays"])).read_bytes())
        tree = join_arrays({k: document[k] for k in ("engine", "evaluator")}, arrays)
        model = {k.removeprefix("model/"): v for k, v in arrays.items() if k.startswith("model/")}
        config = document["config"]
        if not isinstance(config, dict) or server_round < 1:
            raise ValueError("config must be a mapping and round >= 1")
        groups = document["groups"]
        return RunState(
            server_round=server_round,
            config=config,
            model=model,
            groups=None if groups is None else {str(g): tuple(t) for g, t in groups.items()},
            engine=tree["engine"],
            evaluator=tree["evaluator"],
            wall_time_s=float(document["wall_time_s"]),
            resumed_from=[int(r) for r in document["resumed_from"]],
        )
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise ConfigError(
            "resume",
            f"the checkpoint in {directory} cannot be read ({reason}).",
            "it is damaged or not fedmtl's: resume from another run, or start afresh.",
        ) from None


def should_checkpoint(server_round: int, every: int, num_rounds: int) -> bool:
    """Every ``every`` rounds (0: never) and after the last round."""
    return server_round == num_rounds or (every > 0 and server_round % every == 0)


# ----------------------------------------------------------------------------------- the model
def save_model(
    run_dir: Path, arrays: Arrays, groups: Groups | None, meta: Mapping[str, str]
) -> Path:
    """``run_dir/model.safetensors``: the global model's arrays, with ``groups`` (the task groups
    of its trunks, JSON; ``null``: one shared trunk) and ``meta`` in the file's metadata."""
    metadata = {**meta, "format": "fedmtl", "groups": json.dumps(groups)}
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    path = Path(run_dir) / MODEL_FILE
    atomic_write_bytes(path, safetensors.numpy.save(tensors, metadata=metadata))
    return path


def load_model_arrays(path: Path) -> tuple[Arrays, dict[str, str]]:
    """The arrays of a ``model.safetensors`` and its metadata (``groups`` as JSON, ``strategy``,
    ``round``); load them into ``Experiment.new_model(groups)`` with ``records.load_arrays``."""
    with safetensors.safe_open(str(path), framework="np") as file:
        metadata = dict(file.metadata() or {})
        arrays = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - not a dict
    return arrays, metadata


# ------------------------------------------------------------------------------- silos' state
def silo_state_dir(run_dir: Path, silo_id: int) -> Path:
    """Where a simulated silo keeps its state files (a SuperNode's ``state-dir`` otherwise)."""
    return checkpoint_dir(run_dir) / SILOS_DIR / f"silo-{silo_id}"


def _silo_files(directory: Path) -> dict[int, Path]:
    if not directory.is_dir():
        return {}
    found = (_SILO_FILE.fullmatch(p.name) for p in directory.iterdir())
    return {int(m.group(1)): directory / m.group(0) for m in found if m}


def save_silo_state(directory: Path, server_round: int, arrays: Arrays, saved_round: int) -> None:
    """Write a silo's state after ``server_round`` and drop the files no resume can need: those
    older than its newest file at or before ``saved_round`` (the server's last checkpoint)."""
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write_bytes(
        directory / f"round-{server_round}.safetensors", safetensors.numpy.save(tensors)
    )
    files = _silo_files(directory)
    kept = max((r for r in files if r <= saved_round), default=None)
    for r, path in files.items():
        if kept is not None and r < kept:
            path.unlink()


def restore_silo_state(directory: Path, resume_round: int) -> Arrays | None:
    """A resumed silo's state: its newest file at or before ``resume_round`` (None when it had
    saved none by then); the newer files, from rounds being redone, are removed."""
    files = _silo_files(directory)
    for r, path in files.items():
        if r > resume_round:
            path.unlink()
    earlier = [r for r in files if r <= resume_round]
    if not earlier:
        return None
    path = files[max(earlier)]
    try:
        return dict(safetensors.numpy.load(path.read_bytes()))
    except (OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"the silo's saved state is unreadable ({type(err).__name__})") from None


# --------------------------------------------------------------------------------------- resume
def resumed_raw_config(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The config of the run in ``run_dir`` to go on with: the checkpoint's, with ``resume`` and
    ``output_dir`` set to ``run_dir`` and the ``KEY=VALUE`` overrides of :data:`RESUMABLE_KEYS`
    applied (values parsed as YAML, like Hydra's; ``runtime=PRESET`` takes the preset's block)."""
    import yaml  # noqa: PLC0415 - only when resuming; yaml comes with hydra

    state = load_checkpoint(run_dir)
    raw = json.loads(json.dumps(state.config))
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or key.lstrip("+~") != key:
            raise ConfigError(
                key or override, "is not a KEY=VALUE override.", "write e.g. num_rounds=40."
            )
        path = key.split(".")
        if path[0] not in RESUMABLE_KEYS and not _defence(path):
            raise ConfigError(
                key,
                "cannot change when a run is resumed: the run keeps its own config.",
                f"change only {', '.join(RESUMABLE_KEYS)} or strategy.{{{','.join(DEFENCES)}}}; "
                "start a new run for anything else.",
            )
        if key in ("runtime", "tracking"):  # GROUP=PRESET: the preset's values
            raw[key] = compose([override])[key]
            continue
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "does not name a config value.", "check the key.")
        node[path[-1]] = yaml.safe_load(value)
    raw["resume"] = str(run_dir)
    raw["output_dir"] = str(run_dir)
    if int(raw.get("num_rounds", 0)) < state.server_round:
        raise ConfigError(
            "num_rounds",
            f"is {raw.get('num_rounds')}, but the checkpoint is after round {state.server_round}.",
            f"give num_rounds >= {state.server_round}.",
        )
    return raw


def _defence(path: Sequence[str]) -> bool:
    """Whether a dotted config key is a defence of the strategy (:data:`RESUMABLE_KEYS`)."""
    return len(path) == 2 and path[0] == "strategy" and path[1] in DEFENCES


def _without_defences(config: Mapping[str, Any]) -> dict[str, Any]:
    strategy = config.get("strategy")
    if not isinstance(strategy, Mapping):
        return dict(config)
    return {**config, "strategy": {k: v for k, v in strategy.items() if k not in DEFENCES}}


def check_resumable(raw: Mapping[str, Any], state: RunState) -> None:
    """A ConfigError unless ``raw`` is the checkpoint's config up to :data:`RESUMABLE_KEYS`."""
    ignored = {*RESUMABLE_KEYS, "resume", "output_dir"}
    raw, saved = _without_defences(raw), _without_defences(state.config)
    for key in sorted(set(raw) | set(saved)):
        if key not in ignored and raw.get(key) != saved.get(key):
            raise ConfigError(
                key,
                f"differs from the config of the run being resumed in {raw.get('resume')}.",
                "resume with `fedmtl run resume=DIR` (it reads the run's own config).",
            )
