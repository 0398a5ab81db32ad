"""Silos and partitions, and the partition manifest (``partition.json``).

A :class:`Partition` says, for one dataset and seed, which tasks each silo labels and which samples
it holds for training and for testing, which of its training labels are withheld, how its inputs
are transformed, and which samples form the global held-out test set. It is saved as a JSON
manifest, a contract read by other tools; its shape (``schema_version`` 4)::

    {"schema_version": 4, "seed": int, "dataset": str, "tasks": [str, ...], "config": {...},
     "global_test_indices": [int, ...], "feature_skew": str,
     "held_out": null | {"rule": "groups" | "fixed" | "rows", "column": str | null},
     "silos": [{"id": int, "tasks": [str, ...], "num_train": int, "num_test": int,
                "train_indices": [int, ...], "test_indices": [int, ...],
                "hidden_labels": {task: [int, ...]}, "feature_skew": {...},
                "dropped_tasks": {task: int}}, ...],
     "dropped_silos": [{"split_position": int, "num_train": int, "num_test": int,
                        "dropped_tasks": {task: int}}, ...]}

Indices are plain JSON integers, sorted ascending; silo ``i`` has ``id`` ``i``; a silo's tasks are
in dataset order. ``hidden_labels[task]`` lists training samples of the silo whose label for
``task`` is withheld (missing at random); ``feature_skew`` names the input transformation
(:data:`partitions.feature_skew.FEATURE_SKEWS`) and each silo's entry holds its drawn parameters.
``held_out`` records the leakage rule under which train and test were decided for the whole
dataset (:mod:`partitions.heldout`; null: each silo cut its own). ``dropped_tasks`` lists the
tasks an assignment decided from labels (``labelled``) denied the silo, each with the silo's
labelled training rows of it (fewer than ``min_labelled``); ``dropped_silos`` the silos of the
split that were left with no task and so left out of the federation (``split_position``: the
silo's place in the split's output; the remaining silos are numbered in that order).

``schema_version`` is raised whenever the layout changes (a field added, renamed or removed), and
older versions stay readable with the missing fields at their defaults: version 3 (without
``dropped_tasks`` and ``dropped_silos``), version 2 (without ``held_out`` either) and version 1
(without the global test set, hidden labels and feature skew either).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import numpy as np
import torch

from fedmtl.core.errors import ConfigError
from partitions.feature_skew import FEATURE_SKEWS
from partitions.heldout import check_groups

if TYPE_CHECKING:
    from fedmtl.core.data import MultiTaskDataset

SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
_MANIFEST_FIELDS = ("schema_version", "seed", "dataset", "tasks", "config", "silos")
_SILO_FIELDS = ("id", "tasks", "num_train", "num_test", "train_indices", "test_indices")
NO_SKEW = "none"
_NO_ROWS = np.zeros(0, np.int64)


def _index_array(values: Any, what: str) -> np.ndarray:
    """``values`` as a read-only, sorted, 1-D int64 array of distinct non-negative indices."""
    array = np.asarray(values)
    if array.size == 0:
        array = array.reshape(0).astype(np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of integers, got {array.dtype} {array.shape}")
    array = np.sort(array.astype(np.int64))
    if array.size and array[0] < 0:
        raise ValueError(f"{what} holds a negative index {int(array[0])}")
    if np.any(array[1:] == array[:-1]):
        raise ValueError(f"{what} lists an index twice")
    array.setflags(write=False)
    return array


def _counts(values: Mapping[str, Any], what: str) -> dict[str, int]:
    """``values`` as a plain ``{str: int >= 0}`` dict."""
    for key, value in values.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must map task names to integers, got {key!r}: {value!r}")
        if value < 0:
            raise ValueError(f"{what}[{key!r}] is negative ({value})")
    return dict(values)


@dataclass(frozen=True)
class DroppedSilo:
    """A silo of the split that was left with no task (an assignment decided from labels denied
    it every task) and so is not in the federation: its place in the split's output, its row
    counts and its labelled training rows of each task."""

    split_position: int
    num_train: int
    num_test: int
    dropped_tasks: Mapping[str, int]

    def __post_init__(self) -> None:
        for name in ("split_position", "num_train", "num_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dropped silo: {name} must be an integer >= 0, got {value!r}")
        object.__setattr__(
            self, "dropped_tasks", _counts(self.dropped_tasks, "dropped silo dropped_tasks")
        )

    def to_manifest(self) -> dict[str, Any]:
        """This silo's entry of the manifest's ``dropped_silos`` list."""
        return {
            "split_position": self.split_position,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "dropped_tasks": dict(self.dropped_tasks),
        }


@dataclass(frozen=True, eq=False)
class Silo:
    """One silo: the tasks it labels and the samples it holds.

    Guarantees (checked on construction): ``tasks`` are distinct; ``train_indices`` and
    ``test_indices`` are read-only, sorted, 1-D int64 arrays of distinct non-negative indices;
    ``hidden`` maps some of the silo's tasks to training indices whose label for that task is
    withheld (sorted, read-only, a subset of ``train_indices``); ``feature_skew`` holds the
    silo's drawn input-transformation parameters (JSON values); ``dropped_tasks`` maps tasks the
    silo does not hold, denied by an assignment decided from labels, to its labelled training
    rows of each (integers >= 0).
    """

    id: int
    tasks: tuple[str, ...]
    train_indices: np.ndarray
    test_indices: np.ndarray
    hidden: Mapping[str, np.ndarray] = field(default_factory=dict)
    feature_skew: Mapping[str, Any] = field(default_factory=dict)
    dropped_tasks: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"silo {self.id}: a task is listed twice in {list(self.tasks)}")
        for name in ("train_indices", "test_indices"):
            array = _index_array(getattr(self, name), f"silo {self.id} {name}")
            object.__setattr__(self, name, array)
        hidden = {}
        for task, indices in self.hidden.items():
            if task not in self.tasks:
                raise ValueError(f"silo {self.id}: hidden labels of task {task!r} it does not hold")
            array = _index_array(indices, f"silo {self.id} hidden_labels[{task!r}]")
            if np.setdiff1d(array, self.train_indices).size:
                raise ValueError(
                    f"silo {self.id}: hidden_labels[{task!r}] lists samples outside its train split"
                )
            if array.size:
                hidden[task] = array
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "feature_skew", json.loads(json.dumps(dict(self.feature_skew))))
        held = [t for t in self.dropped_tasks if t in self.tasks]
        if held:
            raise ValueError(f"silo {self.id}: dropped_tasks lists tasks it holds: {held}")
        object.__setattr__(
            self, "dropped_tasks", _counts(self.dropped_tasks, f"silo {self.id} dropped_tasks")
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Silo):
            return NotImplemented
        return (
            self.id == other.id
            and self.tasks == other.tasks
            and np.array_equal(self.train_indices, other.train_indices)
            and np.array_equal(self.test_indices, other.test_indices)
            and self.hidden.keys() == other.hidden.keys()
            and all(np.array_equal(v, other.hidden[k]) for k, v in self.hidden.items())
            and self.feature_skew == other.feature_skew
            and self.dropped_tasks == other.dropped_tasks
        )

    def __hash__(self) -> int:
        return hash(
            (self.id, self.tasks, self.train_indices.tobytes(), self.test_indices.tobytes())
        )

    def label_mask(
        self, dataset: MultiTaskDataset, split: Literal["train", "test"] = "train"
    ) -> torch.Tensor:
        """(rows of ``split``, tasks of this silo) bool: the dataset's mask for this silo's tasks,
        with the hidden training labels switched off."""
        indices = self.indices(split)
        positions = [dataset.task_names.index(t) for t in self.tasks]
        mask = dataset.mask[torch.from_numpy(indices.copy())][:, positions].clone()
        if split == "train":
            for column, task in enumerate(self.tasks):
                if task in self.hidden:
                    rows = np.searchsorted(indices, self.hidden[task])
                    mask[torch.from_numpy(rows), column] = False
        return mask

    @property
    def num_train(self) -> int:
        return int(self.train_indices.size)

    @property
    def num_test(self) -> int:
        return int(self.test_indices.size)

    def indices(self, split: Literal["train", "test"] = "train") -> np.ndarray:
        """The sample indices of ``split`` ("train" or "test")."""
        if split == "train":
            return self.train_indices
        if split == "test":
            return self.test_indices
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def labelled_counts(
        self, dataset: MultiTaskDataset, split: Literal["train", "test"] = "train"
    ) -> dict[str, int]:
        """Per task of this silo (in its order), the number of ``split`` samples labelled for it
        (hidden training labels do not count)."""
        counts = self.label_mask(dataset, split).sum(dim=0).tolist()
        return dict(zip(self.tasks, (int(c) for c in counts), strict=True))

    def to_manifest(self) -> dict[str, Any]:
        """This silo's entry of the manifest's ``silos`` list."""
        return {
            "id": self.id,
            "tasks": list(self.tasks),
            "num_train": self.num_train,
            "num_test": self.num_test,
            "train_indices": self.train_indices.tolist(),
            "test_indices": self.test_indices.tolist(),
            "hidden_labels": {task: indices.tolist() for task, indices in self.hidden.items()},
            "feature_skew": dict(self.feature_skew),
            "dropped_tasks": dict(self.dropped_tasks),
        }


@dataclass(frozen=True, eq=False)
class Partition:
    """Which tasks and samples each silo of a federation holds.

    Guarantees (checked on construction): silo ``i`` has ``id == i``; every silo's tasks are among
    ``task_names`` and in their order; ``global_test_indices`` (the global held-out test set) is a
    read-only sorted index array; ``dropped_silos`` are the split's silos left out for want of a
    task (in split order). :meth:`validate_against` checks the rest against a dataset.
    """

    dataset: str
    seed: int
    task_names: tuple[str, ...]
    silos: tuple[Silo, ...]
    config: dict[str, Any] = field(default_factory=dict)
    global_test_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    feature_skew: str = NO_SKEW
    held_out: dict[str, Any] | None = None
    dropped_silos: tuple[DroppedSilo, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_names", tuple(self.task_names))
        object.__setattr__(self, "silos", tuple(self.silos))
        object.__setattr__(self, "dropped_silos", tuple(self.dropped_silos))
        object.__setattr__(self, "config", dict(self.config))
        object.__setattr__(
            self, "global_test_indices", _index_array(self.global_test_indices, "global test set")
        )
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"partition: a task is listed twice in {list(self.task_names)}")
        for position, silo in enumerate(self.silos):
            if silo.id != position:
                raise ValueError(f"partition: silo at position {position} has id {silo.id}")
            unknown = [t for t in silo.tasks if t not in self.task_names]
            if unknown:
                raise ValueError(f"partition: silo {silo.id} holds unknown tasks {unknown}")
            if list(silo.tasks) != [t for t in self.task_names if t in silo.tasks]:
                raise ValueError(f"partition: silo {silo.id} tasks are not in dataset order")
        denied = [s.dropped_tasks for s in self.silos] + [
            s.dropped_tasks for s in self.dropped_silos
        ]
        for dropped_tasks in denied:
            unknown = [t for t in dropped_tasks if t not in self.task_names]
            if unknown:
                raise ValueError(f"partition: dropped_tasks names unknown tasks {unknown}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (
            self.dataset == other.dataset
            and self.seed == other.seed
            and self.task_names == other.task_names
            and self.silos == other.silos
            and self.config == other.config
            and np.array_equal(self.global_test_indices, other.global_test_indices)
            and self.feature_skew == other.feature_skew
            and self.held_out == other.held_out
            and self.dropped_silos == other.dropped_silos
        )

    def __hash__(self) -> int:
        return hash((self.dataset, self.seed, self.task_names, self.silos))

    @property
    def num_silos(self) -> int:
        return len(self.silos)

    def train_rows(self) -> np.ndarray:
        """Every silo's training rows, sorted: all that anything may be fitted on."""
        return np.unique(np.concatenate([s.train_indices for s in self.silos] + [_NO_ROWS]))

    def test_rows(self) -> np.ndarray:
        """Every silo's test rows and the global test set, sorted."""
        parts = [s.test_indices for s in self.silos] + [self.global_test_indices, _NO_ROWS]
        return np.unique(np.concatenate(parts))

    def holders(self, task: str) -> list[int]:
        """Ids of the silos that hold ``task``, ascending (empty when none does)."""
        if task not in self.task_names:
            raise ValueError(f"unknown task {task!r}; the partition's tasks are {self.task_names}")
        return [silo.id for silo in self.silos if task in silo.tasks]

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-ready manifest (see the module docstring for its schema)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "seed": self.seed,
            "dataset": self.dataset,
            "tasks": list(self.task_names),
            "config": json.loads(json.dumps(self.config)),
            "global_test_indices": self.global_test_indices.tolist(),
            "feature_skew": self.feature_skew,
            "held_out": self.held_out,
            "silos": [silo.to_manifest() for silo in self.silos],
            "dropped_silos": [silo.to_manifest() for silo in self.dropped_silos],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest to ``path`` (parents made, replaced atomically); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_manifest())
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            handle.write(text)
        os.replace(handle.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Partition:
        """Read a manifest written by :meth:`save`.

        A missing file, invalid JSON, an unknown ``schema_version``, a missing field or an
        inconsistent entry raises :class:`ConfigError` on ``partition.path``.
        """
        path = Path(path)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                "partition.path", f"no manifest at {path}.", "give the path of a partition.json."
            ) from None
        except (OSError, ValueError) as err:  # ValueError: not JSON, not even UTF-8 text
            raise ConfigError(
                "partition.path",
                f"cannot read {path} as JSON ({type(err).__name__}: {err}).",
                "give a partition.json.",
            ) from None
        try:
            return cls.from_manifest(manifest)
        except ConfigError as err:
            raise ConfigError(err.key, f"{path}: {err.problem}", err.fix) from None

    @classmethod
    def from_manifest(cls, manifest: Any) -> Partition:
        """The partition described by a manifest mapping; errors as in :meth:`load`."""
        if not isinstance(manifest, Mapping):
            _bad_manifest(f"expected a JSON object, got {type(manifest).__name__}")
        _require(manifest, _MANIFEST_FIELDS, "")
        version = manifest["schema_version"]
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise ConfigError(
                "partition.path",
                f"unsupported manifest schema_version {version!r} (this version reads "
                f"{list(READABLE_VERSIONS)}).",
                "rebuild the partition with this version of fedmtl.",
            )
        if not isinstance(manifest["silos"], list):
            _bad_manifest("'silos' must be a list")
        if not isinstance(manifest["config"], Mapping):
            _bad_manifest("'config' must be an object")
        dataset = _typed(manifest["dataset"], str, "dataset")
        seed = _typed(manifest["seed"], int, "seed")
        task_names = tuple(_string_list(manifest["tasks"], "tasks"))
        silos = tuple(_silo_from_manifest(entry, i) for i, entry in enumerate(manifest["silos"]))
        global_test = _int_list(manifest.get("global_test_indices", []), "global_test_indices")
        skew = _typed(manifest.get("feature_skew", NO_SKEW), str, "feature_skew")
        held_out = manifest.get("held_out")
        if held_out is not None and (
            not isinstance(held_out, Mapping)
            or held_out.get("rule") not in ("groups", "fixed", "rows")
            or not isinstance(held_out.get("column"), (str, type(None)))
        ):
            _bad_manifest("'held_out' must be null or {rule: groups | fixed | rows, column}")
        dropped_raw = manifest.get("dropped_silos", [])
        if not isinstance(dropped_raw, list):
            _bad_manifest("'dropped_silos' must be a list")
        dropped = tuple(_dropped_silo_from_manifest(e, i) for i, e in enumerate(dropped_raw))
        try:
            return cls(
                dataset,
                seed,
                task_names,
                silos,
                dict(manifest["config"]),
                np.asarray(global_test, np.int64),
                skew,
                None if held_out is None else dict(held_out),
                dropped,
            )
        except ValueError as err:
            _bad_manifest(str(err))

    def validate_against(self, dataset: MultiTaskDataset, key: str = "partition.path") -> None:
        """Check this partition against ``dataset``; a mismatch is a ConfigError on ``key``.

        Checked: the dataset name; every silo's tasks exist in the dataset; indices lie in
        ``[0, num_samples)``; no sample is in two silos, or in a silo and the global test set; no
        sample is both train and test in a silo; for a dataset with a group column, no group has
        rows on both the train side (any silo) and the test side (any silo, global test set); the
        feature skew is registered and every silo's parameters fit it.
        """
        fix = "rebuild the partition for this dataset, or point to the matching partition.json."
        if self.dataset != dataset.name:
            raise ConfigError(
                key, f"the partition is for dataset '{self.dataset}', not '{dataset.name}'.", fix
            )
        for silo in self.silos:
            missing = [t for t in silo.tasks if t not in dataset.task_names]
            if missing:
                raise ConfigError(
                    key,
                    f"silo {silo.id} holds tasks {missing} that dataset '{dataset.name}' does not "
                    f"have (it has {dataset.task_names}).",
                    fix,
                )
            for split in ("train", "test"):
                indices = silo.indices(split)
                if indices.size and indices[-1] >= dataset.num_samples:
                    raise ConfigError(
                        key,
                        f"silo {silo.id} {split} index {int(indices[-1])} is out of range for "
                        f"{dataset.num_samples} samples.",
                        fix,
                    )
            if np.intersect1d(silo.train_indices, silo.test_indices).size:
                raise ConfigError(key, f"silo {silo.id} has samples in both train and test.", fix)
        owner = np.full(dataset.num_samples, -1, dtype=np.int64)
        for silo in self.silos:
            for indices in (silo.train_indices, silo.test_indices):
                taken = owner[indices]
                clash = taken[(taken >= 0) & (taken != silo.id)]
                if clash.size:
                    raise ConfigError(
                        key, f"silos {int(clash[0])} and {silo.id} share samples.", fix
                    )
                owner[indices] = silo.id
        held_out = self.global_test_indices
        if held_out.size and held_out[-1] >= dataset.num_samples:
            raise ConfigError(key, f"global test index {int(held_out[-1])} is out of range.", fix)
        if held_out.size and np.any(owner[held_out] >= 0):
            silo_id = int(owner[held_out][owner[held_out] >= 0][0])
            raise ConfigError(key, f"silo {silo_id} holds samples of the global test set.", fix)
        if dataset.group_column is not None:
            groups = dataset.natural_ids[dataset.group_column]
            check_groups(groups, self.train_rows(), self.test_rows(), dataset.group_column, key)
        self._check_feature_skew(dataset, key, fix)

    def _check_feature_skew(self, dataset: MultiTaskDataset, key: str, fix: str) -> None:
        """The feature skew is registered and every silo's drawn parameters fit it (tried on one
        input): a manifest naming anything else would only fail on the silos, mid-run."""
        if self.feature_skew not in FEATURE_SKEWS.names():
            raise ConfigError(
                key,
                f"the manifest names feature skew {self.feature_skew!r}, which is not one of "
                f"{FEATURE_SKEWS.names()}.",
                fix,
            )
        skew = FEATURE_SKEWS.get(self.feature_skew).factory
        for silo in self.silos:
            try:
                skew.apply(dataset.inputs[:1], silo.feature_skew, 0)
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise ConfigError(
                    key,
                    f"silo {silo.id}'s feature-skew parameters {dict(silo.feature_skew)} do not "
                    f"fit skew {self.feature_skew!r} ({type(err).__name__}: {err}).",
                    fix,
                ) from None


def _bad_manifest(problem: str) -> NoReturn:
    raise ConfigError(
        "partition.path", f"invalid partition manifest: {problem}.", "rebuild the partition."
    )


def _require(entry: Mapping[str, Any], names: Sequence[str], where: str) -> None:
    missing = [n for n in names if n not in entry]
    if missing:
        _bad_manifest(f"missing field '{where}{missing[0]}'")


def _typed(value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        _bad_manifest(f"'{where}' must be a {kind.__name__}, got {value!r}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _bad_manifest(f"'{where}' must be a list of strings")
    return list(value)


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        _bad_manifest(f"'{where}' must be a list of integers")
    return list(value)


def _silo_from_manifest(entry: Any, position: int) -> Silo:
    where = f"silos[{position}]"
    if not isinstance(entry, Mapping):
        _bad_manifest(f"'{where}' must be an object")
    _require(entry, _SILO_FIELDS, f"{where}.")
    train = _int_list(entry["train_indices"], f"{where}.train_indices")
    test = _int_list(entry["test_indices"], f"{where}.test_indices")
    for name, indices in (("num_train", train), ("num_test", test)):
        if entry[name] != len(indices):
            _bad_manifest(f"'{where}.{name}' is {entry[name]!r} but lists {len(indices)} indices")
    silo_id = _typed(entry["id"], int, f"{where}.id")
    tasks = tuple(_string_list(entry["tasks"], f"{where}.tasks"))
    hidden_raw = _object(entry.get("hidden_labels", {}), f"{where}.hidden_labels")
    hidden = {
        task: np.asarray(_int_list(values, f"{where}.hidden_labels.{task}"), np.int64)
        for task, values in hidden_raw.items()
    }
    skew = _object(entry.get("feature_skew", {}), f"{where}.feature_skew")
    dropped = _object(entry.get("dropped_tasks", {}), f"{where}.dropped_tasks")
    try:
        return Silo(
            silo_id,
            tasks,
            np.asarray(train, np.int64),
            np.asarray(test, np.int64),
            hidden=hidden,
            feature_skew=skew,
            dropped_tasks=dropped,
        )
    except ValueError as err:
        _bad_manifest(str(err))


def _dropped_silo_from_manifest(entry: Any, position: int) -> DroppedSilo:
    where = f"dropped_silos[{position}]"
    if not isinstance(entry, Mapping):
        _bad_manifest(f"'{where}' must be an object")
    fields = ("split_position", "num_train", "num_test", "dropped_tasks")
    _require(entry, fields, f"{where}.")
    try:
        return DroppedSilo(
            entry["split_position"],
            entry["num_train"],
            entry["num_test"],
            _object(entry["dropped_tasks"], f"{where}.dropped_tasks"),
        )
    except ValueError as err:
        _bad_manifest(str(err))


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _bad_manifest(f"'{where}' must be an object")
    return value
