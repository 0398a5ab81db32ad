"""Sample split: which samples each silo holds.

A plug-in has the signature ``(dataset, pool, num_silos, params, seed) -> indices per silo``: a list
of ``num_silos`` 1-D int64 arrays of sample indices taken from ``pool`` (the samples not held out
for the global test set), pairwise disjoint, each non-empty. A split may leave samples of the pool
unused (``shards``, ``pathological``). It is deterministic for a seed. A split that finds its silos
in the data sets ``silos_from_data = True`` (a class variable) on its parameter dataclass
(``natural_id``): it is then also called with ``num_silos=None`` (``partition.num_silos`` null or
absent) and decides the number itself; every other split is always given an int. Register one with
``@SPLITS.register("name", params=ParamsDataclass)``; ``configs/partition/*.yaml`` choose it as
``split: {name: ..., <params>}``.

Every split is a flwr-datasets partitioner run on an in-memory Hugging Face ``Dataset`` with the
columns ``index`` (the pool's sample indices) and, where the partitioner needs one, ``label``
(a task's labels) or the natural-id column; nothing is downloaded.

Label skew on a task (``dirichlet``, ``pathological``, ``shards``): on a classification task
its classes; on a regression task, named in ``partition.split.task``, the 10 bins cut at the
global deciles of its labels (the bins of the partition statistics); null chooses the dataset's
first classification task. Samples whose label for that task is missing form one extra class,
``-1``, which is split like the others.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from fedmtl.core.checks import int_at_least, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import NoParams, Registry

if TYPE_CHECKING:
    from fedmtl.core.data import MultiTaskDataset

# num_silos: an int, or None for a split whose parameters set silos_from_data (module docstring)
SplitFn = Callable[["MultiTaskDataset", np.ndarray, Any, Any, int], list[np.ndarray]]
SPLITS: Registry[SplitFn] = Registry("partition.split", entry_points="fedmtl.splits")
UNLABELLED = -1
"""The class of samples whose label for the skewed task is missing."""


def check_enough_samples(num_samples: int, num_silos: int) -> None:
    """A :class:`ConfigError` on ``partition.num_silos`` when some silo would get no sample."""
    if num_silos > num_samples:
        raise ConfigError(
            "partition.num_silos",
            f"{num_silos} silos for only {num_samples} samples: some silo would hold no sample.",
            f"use at most {num_samples} silos, or a larger dataset.",
        )


def run_partitioner(
    partitioner: Any, columns: dict[str, np.ndarray], num_silos: int, key: str, fix: str
) -> list[np.ndarray]:
    """Run a flwr-datasets ``partitioner`` on a table of ``columns`` (one is ``index``) and return
    each partition's ``index`` values. The partitioner's own errors become a :class:`ConfigError`
    on ``key`` with ``fix``; its retry warnings and progress bars are silenced (a failure is
    reported instead)."""
    # Imported here: flwr-datasets (and Hugging Face datasets) take seconds to import.
    import datasets  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    partitioner.dataset = datasets.Dataset.from_dict({k: v.tolist() for k, v in columns.items()})
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            parts = [partitioner.load_partition(s) for s in range(num_silos)]
    except (ValueError, KeyError) as err:
        raise ConfigError(key, f"{type(partitioner).__name__} failed: {err}", fix) from None
    # p["index"][:] reads the column at once (p["index"] alone is a lazy column read row by row)
    return [np.asarray(p["index"][:], dtype=np.int64).reshape(-1) for p in parts]


def shuffled(pool: np.ndarray, seed: int) -> np.ndarray:
    """``pool`` in a random order drawn from ``seed``."""
    return np.random.default_rng(seed).permutation(np.asarray(pool, dtype=np.int64))


@SPLITS.register("iid", params=NoParams)
def split_iid(
    dataset: MultiTaskDataset, pool: np.ndarray, num_silos: int, params: NoParams, seed: int
) -> list[np.ndarray]:
    """Uniformly random silos of near-equal size (sizes differ by at most one); all samples used.

    The pool is shuffled with ``seed`` and cut into ``num_silos`` contiguous shards, the first
    ``len(pool) % num_silos`` one row longer: exactly flwr-datasets' ``IidPartitioner`` (a
    Hugging Face ``Dataset.shard(contiguous=True)`` per silo; ``tests/test_partition_schemes.py``
    checks they agree), computed at once because a shard costs about 1.7 ms: 17 s before round 1
    at 10,000 silos.
    """
    check_enough_samples(len(pool), num_silos)
    return [np.asarray(s) for s in np.array_split(shuffled(pool, seed), num_silos)]


REGRESSION_BINS = 10
"""A regression task's labels fall into this many bins, cut at their global quantiles."""


def label_codes(dataset: MultiTaskDataset, task: str) -> tuple[np.ndarray, int]:
    """Per sample, the class of ``task`` (regression: its bin among :data:`REGRESSION_BINS` cut at
    the deciles of the labelled samples' values), and the number of classes or bins."""
    spec = dataset.task(task)
    values = dataset.targets[task].numpy()
    if spec.kind != "regression":
        return values.astype(np.int64), int(spec.num_classes or 2)
    labelled = values[dataset.mask[:, dataset.task_names.index(task)].numpy()]
    edges = np.quantile(labelled, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64), REGRESSION_BINS


def label_column(dataset: MultiTaskDataset, pool: np.ndarray, task: str | None) -> np.ndarray:
    """The labels of ``task`` (null: the first classification task; a regression task: its decile
    bins, :func:`label_codes`) for the samples of ``pool``, with :data:`UNLABELLED` where the
    sample has no label for it."""
    key = "partition.split.task"
    classification = [t.name for t in dataset.tasks if t.kind != "regression"]
    if task is None:
        if not classification:
            raise ConfigError(
                key,
                f"dataset '{dataset.name}' has no classification task to skew labels by.",
                "name a task: a regression task is skewed by the deciles of its labels "
                f"({dataset.task_names}).",
            )
        task = classification[0]
    if task not in dataset.task_names:
        raise ConfigError(key, f"unknown task '{task}'.", f"choose one of {dataset.task_names}.")
    rows = np.asarray(pool, dtype=np.int64)
    labels = label_codes(dataset, task)[0][rows]
    labelled = dataset.mask[:, dataset.task_names.index(task)].numpy()[rows]
    return np.where(labelled, labels, UNLABELLED)


def split_by_label(
    dataset: MultiTaskDataset,
    pool: np.ndarray,
    num_silos: int,
    task: str | None,
    make_partitioner: Callable[[np.ndarray], Any],
    key: str,
    fix: str,
    seed: int,
) -> list[np.ndarray]:
    """Run ``make_partitioner(labels)`` (a flwr-datasets partitioner by the column ``label``) on
    the pool, shuffled by ``seed``, with the labels of ``task`` (:func:`label_column`). The
    partitioners cut each class's rows in the order given: unshuffled, a dataset stored in some
    order (test rows last, rows sorted by date) would hand that order to the silos."""
    check_enough_samples(len(pool), num_silos)
    pool = shuffled(pool, seed)
    labels = label_column(dataset, pool, task)
    columns = {"index": np.asarray(pool, dtype=np.int64), "label": labels}
    return run_partitioner(make_partitioner(labels), columns, num_silos, key, fix)


@dataclass(frozen=True)
class DirichletParams:
    """``task``: the task whose labels are skewed (null: first classification task); ``alpha``:
    Dirichlet concentration (smaller is more skewed); ``min_size``: samples each silo needs
    (the draw is repeated up to 10 times to reach it); ``self_balancing``: flwr-datasets' cap that
    stops giving samples to a silo once it holds more than the average."""

    task: str | None = None
    alpha: float = 0.5
    min_size: int = 2
    self_balancing: bool = False

    def __post_init__(self) -> None:
        positive(self, "alpha")
        int_at_least(self, "min_size", 1)


@SPLITS.register("dirichlet", params=DirichletParams)
def split_dirichlet(
    dataset: MultiTaskDataset,
    pool: np.ndarray,
    num_silos: int,
    params: DirichletParams,
    seed: int,
) -> list[np.ndarray]:
    """Label skew: for each class c of the task, the silos' shares p_{c,.} ~ Dir(alpha 1_S) and
    class c's samples are cut in those proportions (flwr-datasets' ``DirichletPartitioner``)."""
    from flwr_datasets.partitioner import DirichletPartitioner  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    return split_by_label(
        dataset,
        pool,
        num_silos,
        params.task,
        lambda labels: DirichletPartitioner(
            num_partitions=num_silos,
            partition_by="label",
            alpha=params.alpha,
            min_partition_size=params.min_size,
            self_balancing=params.self_balancing,
            seed=seed,
        ),
        "partition.split.alpha",
        f"no draw in 10 gave every silo {params.min_size} samples: raise alpha, lower "
        "partition.split.min_size, or use fewer silos.",
        seed,
    )


@dataclass(frozen=True)
class PathologicalParams:
    """``task``: the task whose labels are skewed; ``classes_per_silo``: the c classes each silo
    holds; ``assignment``: flwr-datasets' class assignment mode."""

    task: str | None = None
    classes_per_silo: int = 2
    assignment: Literal["random", "deterministic", "first-deterministic"] = "first-deterministic"

    def __post_init__(self) -> None:
        int_at_least(self, "classes_per_silo", 1)


@SPLITS.register("pathological", params=PathologicalParams)
def split_pathological(
    dataset: MultiTaskDataset,
    pool: np.ndarray,
    num_silos: int,
    params: PathologicalParams,
    seed: int,
) -> list[np.ndarray]:
    """Each silo holds samples of exactly c classes of the task; a class's samples are divided
    evenly among the silos that hold it, and classes no silo holds are left out
    (flwr-datasets' ``PathologicalPartitioner``)."""
    from flwr_datasets.partitioner import PathologicalPartitioner  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    def make(labels: np.ndarray) -> PathologicalPartitioner:
        num_classes = len(np.unique(labels))
        if params.classes_per_silo > num_classes:
            raise ConfigError(
                "partition.split.classes_per_silo",
                f"is {params.classes_per_silo} but the task has {num_classes} classes in the pool.",
                f"use at most {num_classes}.",
            )
        return PathologicalPartitioner(
            num_partitions=num_silos,
            partition_by="label",
            num_classes_per_partition=params.classes_per_silo,
            class_assignment_mode=params.assignment,
            seed=seed,
        )

    return split_by_label(
        dataset,
        pool,
        num_silos,
        params.task,
        make,
        "partition.split.classes_per_silo",
        "use fewer silos or more classes per silo.",
        seed,
    )


@dataclass(frozen=True)
class ShardsParams:
    """``task``: the task whose labels order the shards; ``shards_per_silo``: shards each silo
    gets; ``shard_size``: samples per shard (null: as large as the pool allows)."""

    task: str | None = None
    shards_per_silo: int = 2
    shard_size: int | None = None

    def __post_init__(self) -> None:
        int_at_least(self, "shards_per_silo", 1)
        if self.shard_size is not None:
            int_at_least(self, "shard_size", 1)


@SPLITS.register("shards", params=ShardsParams)
def split_shards(
    dataset: MultiTaskDataset, pool: np.ndarray, num_silos: int, params: ShardsParams, seed: int
) -> list[np.ndarray]:
    """The pool sorted by the task's label is cut into shards of equal size and each silo gets
    ``shards_per_silo`` random shards (McMahan et al.'s pathological non-IID split;
    flwr-datasets' ``ShardPartitioner``). An incomplete last shard is left out."""
    from flwr_datasets.partitioner import ShardPartitioner  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    return split_by_label(
        dataset,
        pool,
        num_silos,
        params.task,
        lambda labels: ShardPartitioner(
            num_partitions=num_silos,
            partition_by="label",
            num_shards_per_partition=params.shards_per_silo,
            shard_size=params.shard_size,
            seed=seed,
        ),
        "partition.split.shards_per_silo",
        "use fewer silos, fewer shards per silo or a smaller shard_size.",
        seed,
    )


@dataclass(frozen=True)
class QuantityParams:
    """``profile``: how silo sizes grow with the silo id; ``exponent``: of ``power_law``."""

    profile: Literal["linear", "square", "exponential", "power_law", "fmtlbench"] = "linear"
    exponent: float = 1.0

    def __post_init__(self) -> None:
        positive(self, "exponent")


def quantity_sizes(num_samples: int, num_silos: int, exponent: float) -> list[int]:
    """Zipf rank-size law: silo i gets floor(N w_i / sum w) samples, w_i = (i+1)^-exponent, and
    the rounding remainder goes to silo 0 (the largest)."""
    weights = np.arange(1, num_silos + 1, dtype=np.float64) ** -exponent
    sizes = np.floor(num_samples * weights / weights.sum()).astype(np.int64)
    sizes[0] += num_samples - int(sizes.sum())
    return sizes.tolist()


@SPLITS.register("quantity", params=QuantityParams)
def split_quantity(
    dataset: MultiTaskDataset, pool: np.ndarray, num_silos: int, params: QuantityParams, seed: int
) -> list[np.ndarray]:
    """Quantity skew on the shuffled pool: silo i (0-based) gets a share proportional to
    ``linear``: i+1 (also FMTL-Bench's (i+1)-proportional sizes, ``fmtlbench``); ``square``:
    (i+1)^2; ``exponential``: e^(i+1) (flwr-datasets' Linear/Square/ExponentialPartitioner);
    ``power_law``: (i+1)^-exponent (:func:`quantity_sizes`, run by ``SizePartitioner``). All
    samples are used; a silo whose share rounds to no sample is a ConfigError."""
    from flwr_datasets import partitioner as fp  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    check_enough_samples(len(pool), num_silos)
    partitioner: Any
    if params.profile in ("linear", "fmtlbench"):
        partitioner = fp.LinearPartitioner(num_silos)
    elif params.profile == "square":
        partitioner = fp.SquarePartitioner(num_silos)
    elif params.profile == "exponential":
        partitioner = fp.ExponentialPartitioner(num_silos)
    else:
        sizes = quantity_sizes(len(pool), num_silos, params.exponent)
        if min(sizes) < 1:
            raise ConfigError(
                "partition.split.exponent",
                f"is {params.exponent}: the smallest of {num_silos} silos would get no sample.",
                "lower the exponent or use fewer silos.",
            )
        partitioner = fp.SizePartitioner(sizes)
    return run_partitioner(
        partitioner,
        {"index": shuffled(pool, seed)},
        num_silos,
        "partition.split.profile",
        f"the '{params.profile}' sizes leave a silo empty: use fewer silos or a flatter profile.",
    )


@dataclass(frozen=True)
class NaturalIdParams:
    """``column``: the natural-id column of the dataset (writer, site, school, ...)."""

    column: str = "site"
    silos_from_data: ClassVar[bool] = True  # partition.num_silos may be null: one silo per id


@SPLITS.register("natural_id", params=NaturalIdParams)
def split_natural_id(
    dataset: MultiTaskDataset,
    pool: np.ndarray,
    num_silos: int | None,
    params: NaturalIdParams,
    seed: int,
) -> list[np.ndarray]:
    """Silos follow a natural id.

    ``num_silos`` null: one silo per distinct id of the pool, in ascending id order (silo ``i``
    holds the ``i``-th smallest id), so silo ids can be named in advance (``explicit``).
    ``num_silos`` given: the distinct ids, in a random order drawn from ``seed``, are cut into
    ``num_silos`` contiguous groups whose sizes differ by at most one (one id per silo when there
    are as many ids as silos), and each group is one silo. Either way flwr-datasets'
    ``NaturalIdPartitioner`` runs on the group column (its ``GroupedNaturalIdPartitioner`` cannot
    make exactly ``num_silos`` groups for every number of ids)."""
    from flwr_datasets.partitioner import NaturalIdPartitioner  # noqa: PLC0415 - heavy (Hugging Face datasets), only when splitting

    key = "partition.split.column"
    if params.column not in dataset.natural_ids:
        available = sorted(dataset.natural_ids) or "none"
        raise ConfigError(
            key,
            f"dataset '{dataset.name}' has no natural-id column '{params.column}' "
            f"(it has: {available}).",
            "choose an existing column, or another split (e.g. dataset=synthetic "
            "dataset.num_sites=12 provides 'site').",
        )
    rows = np.asarray(pool, dtype=np.int64)
    ids = np.asarray(dataset.natural_ids[params.column])[rows]
    distinct = np.unique(ids)
    if num_silos is None:
        num_silos = len(distinct)
        group_of_id = np.arange(num_silos)
    elif len(distinct) < num_silos:
        raise ConfigError(
            "partition.num_silos",
            f"is {num_silos} but column '{params.column}' has only {len(distinct)} distinct ids.",
            f"use at most {len(distinct)} silos, or null for one silo per id.",
        )
    else:
        group_of_id = np.empty(len(distinct), dtype=np.int64)
        order = np.random.default_rng(seed).permutation(len(distinct))
        for group, members in enumerate(np.array_split(order, num_silos)):
            group_of_id[members] = group
    groups = group_of_id[np.searchsorted(distinct, ids)]
    return run_partitioner(
        NaturalIdPartitioner(partition_by="group"),
        {"index": rows, "group": groups},
        num_silos,
        key,
        "use fewer silos.",
    )
