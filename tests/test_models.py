"""Models: the contract of every registered trunk (the kit's checks, :mod:`fedmtl.testing.data`),
then the multi-task model and its builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.registry import build_dataclass
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.testing.data import (
    check_trunk_contract,
    check_trunk_forward,
    check_trunk_heads,
    check_trunk_is_seeded,
    check_trunk_parameter_names,
    check_trunk_roles,
)
from fedmtl.trunks import TRUNKS, CNNParams, MLPParams, ResNetParams, build_model
from fedmtl.trunks.resnet import BasicBlock

IMAGE = (1, 8, 8)
TASKS = (TaskSpec.multiclass("digit", 10), TaskSpec.binary("odd"), TaskSpec.regression("ink"))


def default_model(name: str, seed: int = 0, head_hidden: int = 0) -> MultiTaskModel:
    cfg = ModelConfig(name=name, params=TRUNKS.get(name).params(), head_hidden=head_hidden)
    return build_model(cfg, IMAGE, TASKS, seed=seed)


# ---------------------------------------------------------------------------------------------
# The contract of every registered trunk (a new trunk is tested the day it is registered).


@pytest.mark.parametrize("name", TRUNKS.names())
def test_trunk_contract(name: str) -> None:
    check_trunk_contract(name)


@pytest.mark.parametrize("name", TRUNKS.names())
def test_parameter_names_say_what_is_shared(name: str) -> None:
    check_trunk_parameter_names(name)


@pytest.mark.parametrize("name", TRUNKS.names())
def test_declared_roles_match_the_forward_graph(name: str) -> None:
    check_trunk_roles(name)


@pytest.mark.parametrize("name", TRUNKS.names())
def test_forward_gives_requested_tasks(name: str) -> None:
    check_trunk_forward(name)


@pytest.mark.parametrize("name", TRUNKS.names())
def test_build_model_is_seeded_and_leaves_global_rng_alone(name: str) -> None:
    check_trunk_is_seeded(name)


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
        (ResNetParams, {"widths": []}, "model.widths"),
        (ResNetParams, {"widths": [8, 0]}, "model.widths"),
        (ResNetParams, {"blocks": [1, 2]}, "model.blocks"),
        (ResNetParams, {"blocks": [0]}, "model.blocks"),
        (ResNetParams, {"norm": "batch"}, "model.norm"),
        (ResNetParams, {"norm_groups": 0}, "model.norm_groups"),
        (ResNetParams, {"stem_stride": 3}, "model.stem_stride"),
        (ResNetParams, {"out_features": 0}, "model.out_features"),
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
    check_trunk_heads(name)
    features = default_model(name).trunk.out_features
    flat = default_model(name, head_hidden=0)
    for task in TASKS:
        linears = [m for m in flat.heads[task.name].modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(features, task.output_size)]


# ---------------------------------------------------------------------------------------------
# ResNet


@pytest.mark.parametrize(
    ("shape", "params", "spatial"),
    [
        ((1, 28, 28), ResNetParams(), [28, 14, 7, 4]),
        ((3, 64, 64), ResNetParams(), [64, 32, 16, 8]),
        (
            (3, 64, 64),
            ResNetParams(widths=[8, 16, 16, 32], blocks=[2], stem_stride=2),
            [32, 16, 8, 4],
        ),
        (
            (1, 28, 28),
            ResNetParams(widths=[6, 12], blocks=[1, 2], norm="none", out_features=5),
            [28, 14],
        ),
    ],
)
def test_resnet_shapes(shape: tuple[int, ...], params: ResNetParams, spatial: list[int]) -> None:
    model = build_model(ModelConfig(name="resnet", params=params), shape, TASKS, seed=0)
    trunk = model.trunk
    assert trunk.out_features == params.out_features
    # every stage's resolution: record the output of each residual block
    sizes: list[tuple[int, int, int]] = []
    blocks = [m for m in trunk.modules() if isinstance(m, BasicBlock)]
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[1:])) for b in blocks
    ]
    outputs = model(torch.randn(3, *shape))
    for hook in hooks:
        hook.remove()
    per_stage = params.blocks_per_stage()
    assert len(blocks) == sum(per_stage)
    ends = [sum(per_stage[: s + 1]) - 1 for s in range(len(per_stage))]
    assert [tuple(sizes[e]) for e in ends] == [
        (w, r, r) for w, r in zip(params.widths, spatial, strict=True)
    ]
    assert trunk(torch.randn(3, *shape)).shape == (3, params.out_features)
    assert {k: v.shape for k, v in outputs.items()} == {t.name: (3, t.output_size) for t in TASKS}


def test_resnet_has_no_batch_norm_and_no_buffers() -> None:
    for norm in ("group", "none"):
        model = build_model(
            ModelConfig(name="resnet", params=ResNetParams(norm=norm)), (3, 64, 64), TASKS, seed=0
        )
        kinds = {type(m) for m in model.modules()}
        assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
        assert (nn.GroupNorm in kinds) == (norm == "group")
        assert not list(model.buffers())


def test_resnet_on_flat_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(ModelConfig(name="resnet", params=ResNetParams()), (784,), TASKS, seed=0)
    assert info.value.key == "model.name"


def test_resnet_learns_a_batch() -> None:
    """A few Adam steps on one fixed batch drive the loss down (gradients flow through blocks)."""
    model = build_model(
        ModelConfig(name="resnet", params=ResNetParams(widths=[8, 16])), IMAGE, TASKS[:1], seed=0
    )
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, *IMAGE, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x)["digit"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
