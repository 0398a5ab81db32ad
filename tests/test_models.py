"""Models: the contract of every registered trunk, then the multi-task model and its builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel, head_task, is_trunk_key
from fedmtl.core.registry import build_dataclass
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.trunks import TRUNKS, CNNParams, MLPParams, build_model

IMAGE = (1, 8, 8)
TASKS = (TaskSpec.multiclass("digit", 10), TaskSpec.binary("odd"), TaskSpec.regression("ink"))


def default_model(name: str, seed: int = 0, head_hidden: int = 0) -> MultiTaskModel:
    cfg = ModelConfig(name=name, params=TRUNKS.get(name).params(), head_hidden=head_hidden)
    return build_model(cfg, IMAGE, TASKS, seed=seed)


# ---------------------------------------------------------------------------------------------
# The contract of every registered trunk (a new trunk is tested the day it is registered).


@pytest.mark.parametrize("name", TRUNKS.names())
def test_trunk_contract(name: str) -> None:
    entry = TRUNKS.get(name)
    torch.manual_seed(0)
    trunk = entry.factory(IMAGE, entry.params())
    assert isinstance(trunk.out_features, int) and trunk.out_features >= 1
    x = torch.randn(5, *IMAGE)
    features = trunk(x)
    assert features.shape == (5, trunk.out_features)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # Rows are independent: one row alone gives the same features (no batch statistics).
    trunk.eval()
    torch.testing.assert_close(trunk(x[2:3]), trunk(x)[2:3])
    # Gradients reach every trunk parameter.
    trunk.train()
    trunk(x).sum().backward()
    assert all(p.grad is not None for p in trunk.parameters())


@pytest.mark.parametrize("name", TRUNKS.names())
def test_parameter_names_say_what_is_shared(name: str) -> None:
    model = default_model(name)
    state = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == set(state)  # no buffers besides parameters
    task_names = {t.name for t in TASKS}
    for key in state:
        if key.startswith("trunk."):
            assert is_trunk_key(key)
            assert head_task(key) is None
        else:
            task = key.split(".")[1]
            assert key.startswith(f"heads.{task}.") and task in task_names, key
            assert not is_trunk_key(key)
            assert head_task(key) == task
    trunk_keys = model.trunk_keys()
    head_keys = {t: model.head_keys(t) for t in task_names}
    assert trunk_keys and all(head_keys.values())
    all_keys = trunk_keys + [k for keys in head_keys.values() for k in keys]
    assert sorted(all_keys) == sorted(state)  # a partition of the state dict


@pytest.mark.parametrize("name", TRUNKS.names())
def test_forward_gives_requested_tasks(name: str) -> None:
    model = default_model(name)
    x = torch.randn(4, *IMAGE)
    outputs = model(x)
    assert list(outputs) == [t.name for t in TASKS]
    for task in TASKS:
        assert outputs[task.name].shape == (4, task.output_size)
    some = model(x, ["ink", "digit"])
    assert list(some) == ["ink", "digit"]
    assert some["ink"].shape == (4, 1) and some["digit"].shape == (4, 10)
    model.eval()
    torch.testing.assert_close(model(x, ["odd"])["odd"], model(x)["odd"])


@pytest.mark.parametrize("name", TRUNKS.names())
def test_build_model_is_seeded(name: str) -> None:
    a, b, c = default_model(name, seed=3), default_model(name, seed=3), default_model(name, seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(value, c.state_dict()[key]) for key, value in a.state_dict().items())
    # Every weight matrix differs between seeds (heads as well as trunk).
    for key, value in a.state_dict().items():
        if key.endswith("weight"):
            assert not torch.equal(value, c.state_dict()[key]), key


@pytest.mark.parametrize("name", TRUNKS.names())
def test_build_model_leaves_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    default_model(name, seed=9)
    after_build = torch.rand(8)
    torch.manual_seed(123)
    without_build = torch.rand(8)
    assert torch.equal(after_build, without_build)


def test_build_model_ignores_global_rng() -> None:
    torch.manual_seed(1)
    a = default_model("mlp", seed=5)
    torch.manual_seed(2)
    b = default_model("mlp", seed=5)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_mlp_accepts_flat_inputs() -> None:
    cfg = ModelConfig(name="mlp", params=MLPParams(hidden=[7, 5]))
    model = build_model(cfg, (64,), TASKS, seed=0)
    assert model.trunk.out_features == 5
    outputs = model(torch.randn(3, 64))
    assert outputs["digit"].shape == (3, 10)
    # Image and flat inputs of the same size give the same MLP.
    image_model = build_model(cfg, IMAGE, TASKS, seed=0)
    x = torch.randn(3, *IMAGE)
    torch.testing.assert_close(image_model(x)["ink"], model(x.reshape(3, 64))["ink"])


def test_cnn_on_flat_input_is_a_config_error() -> None:
    cfg = ModelConfig(name="cnn", params=CNNParams())
    with pytest.raises(ConfigError) as info:
        build_model(cfg, (64,), TASKS, seed=0)
    assert info.value.key == "model.name"


def test_unknown_trunk_is_a_config_error() -> None:
    cfg = ModelConfig(name="transformer", params=MLPParams())
    with pytest.raises(ConfigError) as info:
        build_model(cfg, IMAGE, TASKS, seed=0)
    assert info.value.key == "model.name"


@pytest.mark.parametrize(
    ("params_cls", "values", "key"),
    [
        (MLPParams, {"hidden": []}, "model.hidden"),
        (MLPParams, {"hidden": [8, 0]}, "model.hidden"),
        (MLPParams, {"dropout": 1.0}, "model.dropout"),
        (MLPParams, {"dropout": -0.1}, "model.dropout"),
        (MLPParams, {"width": 3}, "model.width"),
        (CNNParams, {"channels": [0]}, "model.channels"),
        (CNNParams, {"channels": []}, "model.channels"),
        (CNNParams, {"hidden": 0}, "model.hidden"),
        (CNNParams, {"channels": "16"}, "model.channels"),
    ],
)
def test_invalid_params_name_the_field(params_cls: type, values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_dataclass(params_cls, values, "model")
    assert info.value.key == key


def test_valid_params_build() -> None:
    assert build_dataclass(MLPParams, {"hidden": [4], "dropout": 0.5}, "model") == MLPParams(
        hidden=[4], dropout=0.5
    )
    assert build_dataclass(CNNParams, {"channels": [3, 5], "hidden": 9}, "model") == CNNParams(
        channels=[3, 5], hidden=9
    )


@pytest.mark.parametrize("name", TRUNKS.names())
def test_head_hidden_gives_two_layer_heads(name: str) -> None:
    model = default_model(name, head_hidden=6)
    features = model.trunk.out_features
    for task in TASKS:
        linears = [m for m in model.heads[task.name].modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [
            (features, 6),
            (6, task.output_size),
        ]
        assert any(isinstance(m, nn.ReLU) for m in model.heads[task.name].modules())
    outputs = model(torch.randn(2, *IMAGE))
    assert {k: v.shape for k, v in outputs.items()} == {t.name: (2, t.output_size) for t in TASKS}
    flat = default_model(name, head_hidden=0)
    for task in TASKS:
        linears = [m for m in flat.heads[task.name].modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(features, task.output_size)]
