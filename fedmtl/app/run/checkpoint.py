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

Integrity (schema version 3): ``state.json`` holds the SHA-256 of every file it names (``files``:
the arrays file, by a plain name inside ``checkpoint/``), of its config (``config_sha256``) and of
its own content (``sha256``: the canonical JSON of every other field). :func:`load_checkpoint`
refuses a checkpoint whose bytes or config do not match, that names a file outside its directory,
or whose fields are not what fedmtl writes, with a ConfigError on ``resume`` saying which; the
checkpoint is never loaded in part. Checkpoints of schema version 2 (no checksums) are refused.

Silos that keep state between rounds (personal heads or models) save it themselves, after each
round they train in, as ``<silo dir>/round-<r>.safetensors`` (:func:`save_silo_state`); a resumed
silo loads its newest file at or before the checkpoint's round (:func:`restore_silo_state`). In
simulations the silo dir is ``DIR/checkpoint/silos/silo-<id>``; a SuperNode names its own with
the node config key ``state-dir``.

After the last round the final global model is also written as ``DIR/model.safetensors``
(safetensors: loading it runs no code; :func:`load_model_arrays`), with the strategy, the round
and the task groups of its trunks in the file's metadata. Every safetensors file fedmtl writes
has its header in canonical form (sorted keys, :func:`safetensors_bytes`), so that the same arrays
and metadata give the same bytes: two identical runs (same config, seed and thread count) write
identical files. A silo's state file carries the SHA-256 of its arrays in its metadata
(``sha256``), checked when it is restored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
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
CHECKPOINT_SCHEMA_VERSION = 3
"""3: checksums of the files ``state.json`` names, of its config and of itself (module docstring);
2 (no checksums) is refused."""
RESUMABLE_KEYS = ("num_rounds", "checkpoint_every", "runtime", "tracking", "limits")
"""Top-level config keys a resumed run may change (``fedmtl run resume=DIR KEY=VALUE``): how long
it runs, how often it saves, where it runs, what it reports and the checks before it; besides them
only the defences ``strategy.<key>`` of :data:`strategies.engine.DEFENCES` (a diverged run resumed
from its last sound checkpoint with another defence); everything else is the run's."""
_ARRAY = "array"  # the JSON placeholder of an array: {"array": "<key in the arrays file>"}
_SILO_FILE = re.compile(r"round-(\d+)\.safetensors")
_ARRAYS_FILE = re.compile(r"arrays-(\d+)\.safetensors")
_FIELDS = (
    *("schema_version", "round", "arrays", "files", "config", "config_sha256", "groups"),
    *("wall_time_s", "resumed_from", "engine", "evaluator"),
)
"""The fields of ``state.json`` besides its own ``sha256``."""


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """``value`` as JSON with sorted keys and no spaces (NaN and infinities as Python writes
    them): the form checksums are taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def safetensors_bytes(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """``arrays`` (and ``metadata``) in the safetensors format, with the header's keys sorted.

    safetensors lays out the data deterministically but writes the header's maps in hash order,
    which changes from one process to the next; the header is rewritten here in canonical JSON
    (padded with spaces to 8 bytes, as safetensors pads it), the data offsets unchanged."""
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    data = safetensors.numpy.save(tensors, metadata=dict(metadata) if metadata else None)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":"))
    encoded = header.encode() + b" " * (-len(header.encode()) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + length :]


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
    data = safetensors_bytes(arrays)
    atomic_write_bytes(directory / arrays_file, data)
    config = json.loads(json.dumps(state.config))  # as it reads back
    document: dict[str, Any] = {
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "round": state.server_round,
        "arrays": arrays_file,
        "files": {arrays_file: sha256(data)},
        "config": config,
        "config_sha256": sha256(canonical_json(config)),
        "groups": None if state.groups is None else {g: list(t) for g, t in state.groups.items()},
        "wall_time_s": state.wall_time_s,
        "resumed_from": state.resumed_from,
        **tree,
    }
    document = json.loads(json.dumps(document, allow_nan=True))  # the checksum of what is read
    document["sha256"] = sha256(canonical_json(document))
    atomic_write_text(directory / STATE_FILE, json.dumps(document, allow_nan=True))
    for old in directory.glob("arrays-*.safetensors"):
        if old.name != arrays_file:
            old.unlink()


def load_checkpoint(run_dir: Path) -> RunState:
    """The checkpoint in ``run_dir``, verified (module docstring); a ConfigError on ``resume``
    naming what is wrong with it: missing, not JSON, another schema version, a checksum that does
    not match, a file outside the checkpoint's directory, arrays missing or unreadable."""
    directory = checkpoint_dir(run_dir)
    path = directory / STATE_FILE
    if not path.is_file():
        raise ConfigError(
            "resume",
            f"{run_dir} holds no checkpoint ({path} is missing): the run in it stopped before "
            "its first save, or none ran there.",
            f"start it again as a new run in the same directory (hydra.run.dir={run_dir}): a new "
            "run takes a directory without a checkpoint, moving the files left there to "
            "unfinished-<n>/ inside it.",
        )
    try:
        return _verified_state(directory, json.loads(path.read_bytes()))
    except _Refused as err:
        raise ConfigError(
            "resume",
            f"the checkpoint in {directory} is refused: {err}.",
            "it was changed or damaged after it was saved: restore it, resume another run, or "
            "start afresh in another directory (hydra.run.dir=...).",
        ) from None
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise ConfigError(
            "resume",
            f"the checkpoint in {directory} cannot be read ({reason}).",
            "it is damaged or not fedmtl's: resume from another run, or start afresh in another "
            "directory (hydra.run.dir=...).",
        ) from None


class _Refused(Exception):
    """A checkpoint that reads but does not check out (a checksum, a path, a field)."""


def _verified_state(directory: Path, document: Any) -> RunState:
    """The :class:`RunState` of a parsed ``state.json``, once everything in it checks out."""
    if not isinstance(document, dict):
        raise _Refused("state.json is not a JSON object")
    version = document.get("schema_version")
    if version != CHECKPOINT_SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version!r}, expected {CHECKPOINT_SCHEMA_VERSION} (version 2, "
            "without checksums, was written by an older fedmtl: finish that run with it)"
        )
    missing = [name for name in (*_FIELDS, "sha256") if name not in document]
    if missing:
        raise _Refused(f"state.json lacks {', '.join(missing)}")
    extra = sorted(set(document) - {*_FIELDS, "sha256"})
    if extra:
        raise _Refused(f"state.json has fields fedmtl does not write: {', '.join(extra)}")
    body = {k: v for k, v in document.items() if k != "sha256"}
    if document["config_sha256"] != sha256(canonical_json(document["config"])):
        raise _Refused("its config does not match the checksum saved with it (edited by hand?)")
    if document["sha256"] != sha256(canonical_json(body)):
        raise _Refused("state.json does not match the checksum saved with it (edited by hand?)")
    server_round = document["round"]
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 1:
        raise _Refused(f"round is {server_round!r}, not a round number")
    arrays_file, files = document["arrays"], document["files"]
    if not isinstance(arrays_file, str) or _ARRAYS_FILE.fullmatch(arrays_file) is None:
        raise _Refused(f"arrays names {arrays_file!r}, not a file arrays-<round>.safetensors")
    if not isinstance(files, dict) or set(files) != {arrays_file}:
        raise _Refused("files does not list exactly the arrays file")
    arrays_path = directory / arrays_file
    if arrays_path.resolve().parent != directory.resolve():  # e.g. a symbolic link out
        raise _Refused(f"{arrays_file} leads outside {directory}")
    data = arrays_path.read_bytes()
    if sha256(data) != files[arrays_file]:
        raise _Refused(f"{arrays_file} does not match the checksum saved with it")
    arrays = safetensors.numpy.load(data)
    config, groups = document["config"], document["groups"]
    if not isinstance(config, dict):
        raise _Refused("config is not a mapping")
    for name in ("engine", "evaluator"):
        if not isinstance(document[name], dict):
            raise _Refused(f"{name} is {type(document[name]).__name__}, not a mapping")
    if groups is not None and not (
        isinstance(groups, dict) and all(isinstance(t, list) for t in groups.values())
    ):
        raise _Refused("groups is neither null nor a mapping of task lists")
    tree = join_arrays({k: document[k] for k in ("engine", "evaluator")}, arrays)
    model = {k.removeprefix("model/"): v for k, v in arrays.items() if k.startswith("model/")}
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
    path = Path(run_dir) / MODEL_FILE
    atomic_write_bytes(path, safetensors_bytes(arrays, metadata))
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
    metadata = {"sha256": _arrays_sha256(arrays)}
    atomic_write_bytes(
        directory / f"round-{server_round}.safetensors", safetensors_bytes(arrays, metadata)
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
        with safetensors.safe_open(str(path), framework="np") as file:
            expected = (file.metadata() or {}).get("sha256")
            arrays = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except (OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"the silo's saved state is unreadable ({type(err).__name__})") from None
    if expected != _arrays_sha256(arrays):
        raise ValueError("the silo's saved state does not match its checksum")
    return arrays


def _arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of arrays: each one's key, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(canonical_json([key, value.dtype.str, list(value.shape)]))
        digest.update(value.tobytes())
    return digest.hexdigest()


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
    num_rounds = raw.get("num_rounds")
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, int):
        raise ConfigError(
            "num_rounds",
            f"expected an integer, got {num_rounds!r}.",
            f"give num_rounds >= {state.server_round}.",
        )
    if num_rounds < state.server_round:
        raise ConfigError(
            "num_rounds",
            f"is {num_rounds}, but the checkpoint is after round {state.server_round}.",
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
