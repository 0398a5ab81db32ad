"""The contract checks of a dataset and of a trunk: what every registered one passes and a plug-in
author runs in their own tests (``check_dataset("my_data", {...})``, ``check_trunk("my_trunk")``).
Each raises ``AssertionError`` (or lets a ConfigError through) saying what broke."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import (
    MultiTaskModel,
    Trunk,
    grouped_key,
    head_task,
    is_trunk_key,
    task_role,
)
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.datasets import DATASETS, MultiTaskDataset, build_source, materialise
from fedmtl.trunks import TRUNKS, build_model, make_trunk

IMAGE = (1, 8, 8)
"""The input shape the trunk checks feed (a trunk for flat inputs sees it flattened by the MLP
convention: give ``input_shape`` for one that needs another)."""
TASKS = (TaskSpec.multiclass("digit", 10), TaskSpec.binary("odd"), TaskSpec.regression("ink"))


# ------------------------------------------------------------------------------------ datasets
def build_dataset(name: str, params: Mapping[str, Any], seed: int = 0) -> MultiTaskDataset:
    """Dataset ``name`` with ``params`` (checked against its parameter dataclass), every row."""
    values = DATASETS.parse(name, dict(params), "dataset")
    source = build_source(name, values, seed)
    return materialise(source, np.arange(source.num_samples))


def check_dataset_contract(name: str, params: Mapping[str, Any]) -> None:
    """Inputs float32 and finite, a boolean label mask, every task labelled with targets of its
    kind (classes in range, both binary labels, finite regression targets), chance levels in
    [0, 1], and an ``info`` that JSON can hold (it goes into summary.json)."""
    dataset = build_dataset(name, params)
    n = dataset.num_samples
    assert dataset.name == name, f"the dataset calls itself {dataset.name!r}"
    assert n >= 1 and dataset.tasks, "no rows or no tasks"
    assert dataset.inputs.dtype == torch.float32, "inputs are not float32"
    assert torch.isfinite(dataset.inputs).all(), "inputs are not finite"
    assert dataset.mask.shape == (n, len(dataset.tasks)) and dataset.mask.dtype == torch.bool
    for t, task in enumerate(dataset.tasks):
        labelled = dataset.targets[task.name][dataset.mask[:, t]]
        assert labelled.shape[0] > 0, f"{task.name} has no labelled sample"
        assert labelled.dtype == task.target_dtype, f"{task.name}: targets of the wrong dtype"
        if task.kind == "multiclass":
            assert int(labelled.min()) >= 0 and int(labelled.max()) < (task.num_classes or 0)
        elif task.kind == "binary":
            assert set(labelled.unique().tolist()) <= {0.0, 1.0}, f"{task.name}: not 0/1"
        else:
            assert torch.isfinite(labelled).all(), f"{task.name}: non-finite targets"
        if task.kind != "regression":
            assert len(labelled.unique()) > 1, f"{task.name} uses a single class"
    assert all(0.0 <= level <= 1.0 for level in dataset.chance_levels().values())
    json.dumps(dataset.info)


def check_dataset_is_deterministic(name: str, params: Mapping[str, Any], seed: int = 7) -> None:
    """The same seed builds the same rows, labels and info."""
    first, second = build_dataset(name, params, seed), build_dataset(name, params, seed)
    assert torch.equal(first.inputs, second.inputs), "inputs differ for one seed"
    assert torch.equal(first.mask, second.mask), "label masks differ for one seed"
    for task in first.task_names:
        assert torch.equal(first.targets[task], second.targets[task]), f"{task} differs"
    assert first.info == second.info, "info differs for one seed"


def check_dataset_selects_tasks(name: str, params: Mapping[str, Any]) -> None:
    """``dataset.tasks`` selects and orders tasks; an unknown task is a ConfigError naming it."""
    full = build_dataset(name, params)
    chosen = list(reversed(full.task_names))[:2]
    source = build_source(name, DATASETS.parse(name, dict(params), "dataset"), 0)
    dataset = materialise(source, np.arange(source.num_samples), tasks=chosen)
    assert dataset.task_names == chosen, "dataset.tasks did not choose the tasks"
    for task in chosen:
        assert torch.equal(dataset.targets[task], full.targets[task]), task
    try:
        materialise(source, np.arange(source.num_samples), tasks=[chosen[0], "no_such_task"])
    except ConfigError as err:
        assert err.key == "dataset.tasks", f"an unknown task names {err.key!r}"
    else:
        raise AssertionError("an unknown task in dataset.tasks was accepted")


def check_dataset_refuses_unknown_parameters(name: str) -> None:
    """An unknown parameter is a ConfigError naming ``dataset.<parameter>``."""
    try:
        DATASETS.parse(name, {"no_such_parameter": 1}, "dataset")
    except ConfigError as err:
        assert err.key == "dataset.no_such_parameter", err.key
    else:
        raise AssertionError("an unknown dataset parameter was accepted")


def check_dataset(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Every dataset check on ``name`` with ``params`` (default: its parameters' defaults)."""
    values = dict(params or {})
    check_dataset_contract(name, values)
    check_dataset_is_deterministic(name, values)
    check_dataset_selects_tasks(name, values)
    check_dataset_refuses_unknown_parameters(name)


# -------------------------------------------------------------------------------------- trunks
def trunk_model(
    name: str,
    params: Any = None,
    seed: int = 0,
    head_hidden: int = 0,
    input_shape: Sequence[int] = IMAGE,
) -> MultiTaskModel:
    """A multi-task model on trunk ``name`` (its default parameters unless ``params``)."""
    chosen = TRUNKS.get(name).params() if params is None else params
    config = ModelConfig(name=name, params=chosen, head_hidden=head_hidden)
    return build_model(config, tuple(input_shape), TASKS, seed=seed)


def _trunk(name: str, params: Any, input_shape: Sequence[int]) -> Trunk:
    entry = TRUNKS.get(name)
    chosen = entry.params() if params is None else params
    return make_trunk(name, chosen, tuple(input_shape), [t.name for t in TASKS])


def check_trunk_contract(name: str, params: Any = None, input_shape: Sequence[int] = IMAGE) -> None:
    """Features of the declared size for every task, float32 and finite; rows independent of
    each other (no batch statistics); gradients reaching every trunk parameter."""
    torch.manual_seed(0)
    trunk = _trunk(name, params, input_shape)
    names = [t.name for t in TASKS]
    assert isinstance(trunk.out_features, int) and trunk.out_features >= 1
    x = torch.randn(5, *input_shape)
    features = trunk.task_features(x, names)
    assert list(features) == names, f"features for {list(features)}, asked for {names}"
    for task, value in features.items():
        assert value.shape == (5, trunk.out_features), f"{task}: features of shape {value.shape}"
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), task
    trunk.eval()
    alone = trunk.task_features(x[2:3], names)
    together = trunk.task_features(x, names)
    for task in names:
        torch.testing.assert_close(alone[task], together[task][2:3])
    trunk.train()
    sum(v.sum() for v in trunk.task_features(x, names).values()).backward()  # type: ignore[union-attr]
    assert all(p.grad is not None for p in trunk.parameters()), "a parameter gets no gradient"


def check_trunk_parameter_names(
    name: str, params: Any = None, input_shape: Sequence[int] = IMAGE
) -> None:
    """Every parameter is the trunk's (``trunk.*``) or one task's head (``heads.<task>.*``),
    every state entry has a role, the heads' are their tasks', and nothing but parameters is in
    the state."""
    model = trunk_model(name, params, input_shape=input_shape)
    state = model.state_dict()
    assert {n for n, _ in model.named_parameters()} == set(state), "buffers besides parameters"
    roles = model.roles()
    assert set(roles) == set(state), "roles do not cover the state"
    tasks = {t.name for t in TASKS}
    for key in state:
        if is_trunk_key(key):
            assert head_task(key) is None, key
        else:
            assert head_task(key) in tasks, f"{key} is neither the trunk's nor a head's"
            assert roles[key] == task_role(head_task(key) or ""), f"{key}: {roles[key]}"


def _reached(model: MultiTaskModel, x: torch.Tensor) -> dict[str, set[str]]:
    """Parameter -> the tasks whose output it is in the autograd graph of (structurally: a
    parameter outside the graph gets None, whatever the values)."""
    names = [n for n, p in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    outputs = model(x)
    reached: dict[str, set[str]] = {n: set() for n in names}
    for task, output in outputs.items():
        grads = torch.autograd.grad(output.sum(), params, retain_graph=True, allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                reached[n].add(task)
    return reached


def check_trunk_roles(name: str, params: Any = None, input_shape: Sequence[int] = IMAGE) -> None:
    """The declared roles are those of the forward graph: a ``task`` parameter of t is in the
    graph of t's output only, a ``shared`` one in every task's; in a grouped model (the trunk
    restricted to each group's tasks) a ``group`` parameter in its group's tasks' only, and its
    keys are the one-trunk model's keys moved into the groups
    (:func:`fedmtl.core.models.grouped_key`: shared ones copied, a task's into its group)."""
    names = [t.name for t in TASKS]
    x = torch.randn(3, *input_shape)
    groups = {"g0": tuple(names[:2]), "g1": tuple(names[2:])}
    model = trunk_model(name, params, input_shape=input_shape)
    grouped = build_model(
        ModelConfig(name=name, params=model_params(name, params)),
        tuple(input_shape),
        TASKS,
        seed=0,
        groups=groups,
    )
    for network in (model, grouped):
        roles = network.roles()
        for key, tasks in _reached(network, x).items():
            role = roles[key]
            if role.kind == "local":
                continue
            expected = {t for t in names if role.used_by(t, network.groups)}
            assert tasks == expected, f"{key} ({role}) is in the graph of {sorted(tasks)}"
    moved = {new for key, role in model.roles().items() for new in grouped_key(key, role, groups)}
    assert moved == set(grouped.state_dict()), (
        "the grouped model's keys are not the one-trunk model's moved into the groups: "
        f"{sorted(moved ^ set(grouped.state_dict()))[:4]}"
    )


def model_params(name: str, params: Any) -> Any:
    return TRUNKS.get(name).params() if params is None else params


def check_trunk_forward(name: str, params: Any = None, input_shape: Sequence[int] = IMAGE) -> None:
    """The model answers the tasks asked for, in that order, with each task's output size."""
    model = trunk_model(name, params, input_shape=input_shape)
    x = torch.randn(4, *input_shape)
    outputs = model(x)
    assert list(outputs) == [t.name for t in TASKS]
    for task in TASKS:
        assert outputs[task.name].shape == (4, task.output_size), task.name
    some = model(x, ["ink", "digit"])
    assert list(some) == ["ink", "digit"]
    model.eval()
    torch.testing.assert_close(model(x, ["odd"])["odd"], model(x)["odd"])


def check_trunk_is_seeded(
    name: str, params: Any = None, input_shape: Sequence[int] = IMAGE
) -> None:
    """The seed fixes every parameter (another seed changes every weight matrix), and building
    leaves torch's global RNG alone."""
    a = trunk_model(name, params, seed=3, input_shape=input_shape)
    b = trunk_model(name, params, seed=3, input_shape=input_shape)
    c = trunk_model(name, params, seed=4, input_shape=input_shape)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), f"{key} differs for one seed"
        if key.endswith("weight") and value.dim() >= 2:
            assert not torch.equal(value, c.state_dict()[key]), f"{key} ignores the seed"
    torch.manual_seed(123)
    trunk_model(name, params, seed=9, input_shape=input_shape)
    after = torch.rand(8)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(8)), "building the model moved torch's global RNG"


def check_trunk_heads(name: str, params: Any = None, input_shape: Sequence[int] = IMAGE) -> None:
    """``model.head_hidden`` gives two-layer heads on the trunk's features."""
    model = trunk_model(name, params, head_hidden=6, input_shape=input_shape)
    features = model.trunk.out_features
    for task in TASKS:
        linears = [m for m in model.heads[task.name].modules() if isinstance(m, nn.Linear)]
        shapes = [(m.in_features, m.out_features) for m in linears]
        assert shapes == [(features, 6), (6, task.output_size)], (task.name, shapes)


def check_trunk(name: str, params: Any = None, input_shape: Sequence[int] = IMAGE) -> None:
    """Every trunk check on ``name`` (its default parameters unless ``params``) for inputs of
    ``input_shape``."""
    check_trunk_contract(name, params, input_shape)
    check_trunk_parameter_names(name, params, input_shape)
    check_trunk_roles(name, params, input_shape)
    check_trunk_forward(name, params, input_shape)
    check_trunk_is_seeded(name, params, input_shape)
    check_trunk_heads(name, params, input_shape)
