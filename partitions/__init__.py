"""Partitions: spread a multi-task dataset over silos.

A partition is a task assignment (which tasks each silo labels, :data:`ASSIGNMENTS`) crossed with
a sample split (which samples each silo holds, :data:`SPLITS`), then a per-silo train/test split,
labels missing at random (:mod:`partitions.missing_labels`) and a per-silo feature skew
(:data:`FEATURE_SKEWS`); a global test set can be held out before the split. :func:`build` makes
one from a :class:`~fedmtl.core.schema.PartitionConfig`; :func:`load` reads a saved manifest back and
checks it against the dataset; :func:`hold_out` decides train and test for the whole dataset
under a leakage rule (:mod:`partitions.heldout`) before :func:`build` cuts the silos. A
validation partition (``validation_fraction`` > 0, for tuning) evaluates on rows carved out of the
silos' training rows instead of their test rows (:mod:`partitions.heldout`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmtl.core.errors import ConfigError
from partitions.assignment import ASSIGNMENTS, AssignmentFn, FromLabels, SiloTasks
from partitions.feature_skew import FEATURE_SKEWS
from partitions.heldout import HeldOut, carve_validation, check_groups, hold_out, validation_rng
from partitions.manifest import SCHEMA_VERSION, DroppedSilo, Partition, Silo
from partitions.missing_labels import hide_labels
from partitions.split import SPLITS

if TYPE_CHECKING:
    from fedmtl.core.data import MultiTaskDataset
    from fedmtl.core.schema import PartitionConfig, PluginConfig

log = logging.getLogger(__name__)

_NO_ROWS = np.zeros(0, np.int64)
_FEWER_SILOS = (
    "use fewer silos (partition.num_silos), a smaller partition.test_fraction, a lower "
    "partition.missing_labels rate, or a lower partition.min_train_per_task."
)


def build(
    dataset: MultiTaskDataset, cfg: PartitionConfig, seed: int, held_out: HeldOut | None = None
) -> Partition:
    """Partition ``dataset`` over ``cfg.num_silos`` silos (null: as many as the split finds in the
    data); deterministic for ``seed``.

    Steps, each with its own child of ``SeedSequence(seed)``: the global test set
    (``round(N * cfg.global_test_fraction)`` samples drawn uniformly) is held out first; the split
    gives each silo its samples from the rest; each silo's samples are divided into train and test
    by ``cfg.test_fraction`` (a seeded shuffle; at least one test and one train sample when the
    silo has two or more); the assignment gives each silo its tasks (in dataset order), from the
    task names or, for an assignment decided from labels (``labelled``), from the labels the
    silo's training rows carry; training labels are hidden at the missing-label rates; the feature
    skew draws each silo's parameters. With ``held_out`` (a dataset-wide split under a leakage
    rule, :mod:`partitions.heldout`), the global test set and every silo's train/test cut follow it
    instead. With ``cfg.validation_fraction`` > 0 every silo's test rows are replaced by validation
    rows carved out of its training rows (whole units of ``held_out.validation`` under a leakage
    rule), before the assignment, and the partition has no global test set.

    A silo that an assignment decided from labels leaves with no task is left out of the
    federation (logged as a warning and recorded in the manifest's ``dropped_silos``); the other
    silos are numbered in split order. A task it denies a silo is recorded in that silo's
    ``dropped_tasks``.

    Guarantees: silos share no sample, and none holds a global test sample; every task is held by
    some silo, and every silo holds a task; every silo has at least ``cfg.min_train_per_task``
    labelled (not hidden) training examples of each of its tasks. Any violation is a
    :class:`ConfigError`.
    """
    _check_seed(seed)  # the config's own fields are checked by PartitionConfig itself
    assign_seed, holdout_seed, global_seed, hide_seed, skew_seed = np.random.SeedSequence(
        seed
    ).spawn(5)
    skew = FEATURE_SKEWS.get(cfg.feature_skew.name, "partition.feature_skew.name").factory
    assign = ASSIGNMENTS.get(cfg.assignment.name, "partition.assignment.name").factory
    split = SPLITS.get(cfg.split.name, "partition.split.name").factory
    if held_out is None:
        global_test, pool = _hold_out(dataset.num_samples, cfg.global_test_fraction, global_seed)
    else:
        global_test = held_out.global_test
        pool = np.setdiff1d(np.arange(dataset.num_samples), global_test)
    samples = split(dataset, pool, cfg.num_silos, cfg.split.params, seed)
    _check_split(samples, cfg.num_silos)
    holdout_rng = np.random.default_rng(holdout_seed)
    silos = [
        _make_silo(i, indices, cfg.test_fraction, holdout_rng, held_out)
        for i, indices in enumerate(samples)
    ]
    if cfg.validation_fraction > 0:
        silos = _validation_silos(silos, cfg.validation_fraction, seed, held_out)
        global_test = _NO_ROWS
    silos, dropped_silos = _assign(
        dataset, silos, cfg.assignment, assign, np.random.default_rng(assign_seed)
    )
    silos = hide_labels(dataset, silos, cfg.missing_labels, np.random.default_rng(hide_seed))
    skew_params = skew.draw(
        cfg.feature_skew.params, len(silos), dataset.input_shape, np.random.default_rng(skew_seed)
    )
    silos = [
        dataclasses.replace(silo, feature_skew=params)
        for silo, params in zip(silos, skew_params, strict=True)
    ]
    partition = Partition(
        dataset.name,
        seed,
        tuple(dataset.task_names),
        tuple(silos),
        config_to_dict(cfg),
        global_test_indices=global_test,
        feature_skew=cfg.feature_skew.name,
        held_out=None if held_out is None else held_out.describe(),
        dropped_silos=tuple(dropped_silos),
    )
    partition.validate_against(dataset, key="partition.split")
    _check_min_train(partition, dataset, cfg.min_train_per_task)
    return partition


def _hold_out(
    num_samples: int, fraction: float, seed: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """(global test indices, the rest), both sorted: ``round(num_samples * fraction)`` samples
    drawn uniformly without replacement."""
    count = round(num_samples * fraction)
    if fraction > 0 and not 1 <= count < num_samples:
        raise ConfigError(
            "partition.global_test_fraction",
            f"is {fraction}: {count} of {num_samples} samples would form the global test set.",
            "choose a fraction that keeps at least one sample on each side, or 0 for none.",
        )
    held = np.random.default_rng(seed).choice(num_samples, size=count, replace=False)
    mask = np.zeros(num_samples, dtype=bool)
    mask[held] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def load(path: str | os.PathLike[str], dataset: MultiTaskDataset) -> Partition:
    """Read the manifest at ``path`` and check it against ``dataset``.

    Errors (an unreadable or invalid manifest, an unknown schema version, another dataset, tasks the
    dataset lacks, indices out of range or shared) are :class:`ConfigError` on ``partition.path``.
    """
    partition = Partition.load(path)
    partition.validate_against(dataset, key="partition.path")
    return partition


def config_to_dict(cfg: PartitionConfig) -> dict[str, Any]:
    """``cfg`` as plain JSON types: ``{num_silos, test_fraction, min_train_per_task,
    global_test_fraction, assignment: {name, params}, split: {name, params}, feature_skew:
    {name, params}, missing_labels: {rate, per_task}}``."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def split_train_test(
    indices: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``indices`` and cut off ``round(n * test_fraction)`` of them for testing.

    With two or more samples, both parts get at least one; a single sample goes to train.
    """
    n = len(indices)
    num_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
    shuffled = rng.permutation(np.asarray(indices, dtype=np.int64))
    return np.sort(shuffled[num_test:]), np.sort(shuffled[:num_test])


def _make_silo(
    silo_id: int,
    indices: np.ndarray,
    test_fraction: float,
    rng: np.random.Generator,
    held_out: HeldOut | None,
) -> Silo:
    if held_out is None:
        train, test = split_train_test(indices, test_fraction, rng)
    else:
        is_test = held_out.test[indices]
        train, test = np.sort(indices[~is_test]), np.sort(indices[is_test])
    return Silo(id=silo_id, tasks=(), train_indices=train, test_indices=test)


def _validation_silos(
    silos: list[Silo], fraction: float, seed: int, held_out: HeldOut | None
) -> list[Silo]:
    """Each silo with its test rows replaced by validation rows taken from its training rows:
    ``held_out.validation``'s rows under a leakage rule, else a seeded per-silo cut."""
    if held_out is not None and held_out.validation is None:
        raise ValueError("a validation partition needs hold_out(..., validation_fraction)")
    rng = validation_rng(seed)
    carved = []
    for silo in silos:
        if held_out is None:
            train, validation = carve_validation(silo.train_indices, fraction, rng)
        else:
            assert held_out.validation is not None
            is_validation = held_out.validation[silo.train_indices]
            train, validation = (
                silo.train_indices[~is_validation],
                silo.train_indices[is_validation],
            )
        carved.append(dataclasses.replace(silo, train_indices=train, test_indices=validation))
    return carved


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}.", "use e.g. seed=0.")


def _assign(
    dataset: MultiTaskDataset,
    silos: list[Silo],
    chosen: PluginConfig,
    assign: AssignmentFn | FromLabels,
    rng: np.random.Generator,
) -> tuple[list[Silo], list[DroppedSilo]]:
    """The silos (cut, without tasks yet) with the tasks the assignment gives them.

    An assignment decided from labels sees each silo's labelled training rows per task; the silos
    it gives no task are taken out (returned as :class:`DroppedSilo`, logged) and the others
    numbered in order. Any other assignment must give every silo a task."""
    task_names = list(dataset.task_names)
    if isinstance(assign, FromLabels):
        mask = dataset.mask.numpy()
        labelled = np.stack([mask[silo.train_indices].sum(axis=0) for silo in silos])
        given = assign(task_names, labelled, chosen.params)
    else:
        tasks_per_silo = assign(task_names, len(silos), chosen.params, rng)
        given = [SiloTasks(list(tasks)) for tasks in tasks_per_silo]
    _check_assignment(
        [g.tasks for g in given], task_names, len(silos), isinstance(assign, FromLabels)
    )
    kept: list[Silo] = []
    dropped: list[DroppedSilo] = []
    for position, (silo, choice) in enumerate(zip(silos, given, strict=True)):
        if choice.tasks:
            kept.append(
                dataclasses.replace(
                    silo, id=len(kept), tasks=tuple(choice.tasks), dropped_tasks=choice.dropped
                )
            )
        else:
            dropped.append(DroppedSilo(position, silo.num_train, silo.num_test, choice.dropped))
    lacking = [f"silo {silo.id}: {dict(silo.dropped_tasks)}" for silo in kept if silo.dropped_tasks]
    if lacking:
        log.info(
            "assignment '%s': %d of %d silos lack tasks (dropped task: its labelled training "
            "rows there): %s",
            chosen.name,
            len(lacking),
            len(kept),
            "; ".join(lacking),
        )
    if dropped:
        log.warning(
            "assignment '%s' gave %d of the split's %d silos no task (positions %s in the split): "
            "they are left out of the federation; partition.json's dropped_silos lists them",
            chosen.name,
            len(dropped),
            len(silos),
            [d.split_position for d in dropped],
        )
    return kept, dropped


def _check_assignment(
    tasks_per_silo: list[list[str]], task_names: Sequence[str], num_silos: int, from_labels: bool
) -> None:
    """Plug-in bugs are ValueError; a task without silo is a ConfigError, and so is a silo without
    tasks unless the assignment is decided from labels (that silo is then left out)."""
    if len(tasks_per_silo) != num_silos:
        raise ValueError(f"the assignment gave {len(tasks_per_silo)} silos, not {num_silos}")
    for silo_id, tasks in enumerate(tasks_per_silo):
        if [t for t in task_names if t in tasks] != list(tasks):
            raise ValueError(
                f"the assignment gave silo {silo_id} tasks {tasks}: unknown, repeated "
                f"or out of dataset order {list(task_names)}"
            )
        if not tasks and not from_labels:
            raise ConfigError(
                "partition.assignment",
                f"silo {silo_id} would hold no task.",
                "choose an assignment that gives every silo a task, or use fewer silos.",
            )
    held = {t for tasks in tasks_per_silo for t in tasks}
    orphans = [t for t in task_names if t not in held]
    if orphans:
        raise ConfigError(
            "partition.assignment",
            f"no silo holds tasks {orphans}.",
            "use more silos, more tasks per silo, or the assignment 'all'.",
        )


def _check_split(samples: list[np.ndarray], num_silos: int | None) -> None:
    """``num_silos`` non-empty silos (any number, at least one, when it is null)."""
    if num_silos is not None and len(samples) != num_silos:
        raise ValueError(f"the split gave {len(samples)} silos, not {num_silos}")
    if not samples:
        raise ValueError("the split gave no silo")
    for silo_id, indices in enumerate(samples):
        if len(indices) == 0:
            raise ConfigError(
                "partition.num_silos",
                f"silo {silo_id} would hold no sample.",
                "use fewer silos or another split.",
            )


def _check_min_train(partition: Partition, dataset: MultiTaskDataset, minimum: int) -> None:
    for silo in partition.silos:
        for task, count in silo.labelled_counts(dataset, "train").items():
            if count < minimum:
                raise ConfigError(
                    "partition.min_train_per_task",
                    f"silo {silo.id} has {count} labelled training examples of task '{task}', "
                    f"fewer than {minimum}.",
                    _FEWER_SILOS,
                )


__all__ = [
    "ASSIGNMENTS",
    "FEATURE_SKEWS",
    "SCHEMA_VERSION",
    "SPLITS",
    "DroppedSilo",
    "HeldOut",
    "Partition",
    "Silo",
    "build",
    "carve_validation",
    "check_groups",
    "config_to_dict",
    "hold_out",
    "load",
    "split_train_test",
]
