"""Soft-sharing architectures (``mmoe``, ``ple``, ``mtan``, ``cross_stitch``): shapes for tables
and images, roles against the forward graph, exact reductions to hard sharing, config errors, and
runs with every strategy on every runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse, presets
from fedmtl.app.run.experiment import prepare
from fedmtl.core.data import local_view
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import SHARED, MultiTaskModel, task_role
from fedmtl.core.schema import ModelConfig, TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import train_local
from fedmtl.testing import check_trunk
from fedmtl.testing.methods import check_simulation, check_vectorized_equals_inprocess
from fedmtl.trunks import TRUNKS, build_model
from fedmtl.trunks.cross_stitch import CrossStitchTrunk
from fedmtl.trunks.mlp import MLPParams, MLPTrunk
from tests.support.data import make_dataset
from tests.support.runs import beats_chance

ARCHITECTURES = ["mmoe", "ple", "mtan", "cross_stitch"]
TINY = {  # small sizes for the runs below
    "mmoe": ["model=mmoe", "model.num_experts=2", "model.expert.hidden=[8]"],
    "ple": ["model=ple", "model.levels=2", "model.expert.hidden=[8]", "model.hidden=[8]"],
    "mtan": ["model=mtan", "model.widths=[8,8]"],
    "cross_stitch": ["model=cross_stitch", "model.widths=[8,8]"],
}
TASKS = (TaskSpec.multiclass("a", 3), TaskSpec.binary("b"), TaskSpec.regression("c"))
NAMES = [t.name for t in TASKS]


def model(name: str, values: dict, shape: tuple[int, ...] = (6,), seed: int = 0) -> MultiTaskModel:
    params = TRUNKS.parse(name, values, "model")
    return build_model(ModelConfig(name=name, params=params), shape, TASKS, seed=seed)


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(6,), (2, 8, 8)], ids=["table", "image"])
def test_every_architecture_passes_the_trunk_kit_on_tables_and_images(
    name: str, shape: tuple[int, ...]
) -> None:
    values = {"ple": {"levels": 2}, "mmoe": {"num_experts": 3}}.get(name, {})
    if shape != (6,) and name in ("mmoe", "ple"):  # conv experts for images
        values = {**values, "expert": {"name": "cnn", "channels": [4], "hidden": 8}}
    check_trunk(name, TRUNKS.parse(name, values, "model"), shape)


def test_roles_of_each_architecture() -> None:
    roles = model("mmoe", {"num_experts": 2}).roles()
    assert roles["trunk.gates.b.weight"] == task_role("b")
    assert roles["trunk.experts.1.layers.1.weight"] == SHARED
    cgc = model("ple", {"task_experts": 2, "shared_experts": 1}).roles()
    assert cgc["trunk.levels.0.task_experts.a.1.layers.1.weight"] == task_role("a")
    assert cgc["trunk.levels.0.task_gates.c.weight"] == task_role("c")
    assert cgc["trunk.levels.0.shared_experts.0.layers.1.weight"] == SHARED
    ple = model("ple", {"levels": 3}).roles()  # lower levels reach every task via shared gates
    assert ple["trunk.levels.0.task_experts.a.0.layers.1.weight"] == SHARED
    assert ple["trunk.levels.0.task_gates.a.weight"] == SHARED
    assert ple["trunk.levels.1.task_gates.a.weight"] == task_role("a")  # feeds level 2 of a only
    assert ple["trunk.levels.2.task_experts.a.0.layers.1.weight"] == task_role("a")
    mtan = model("mtan", {}).roles()
    assert mtan["trunk.attention.b.1.0.weight"] == task_role("b")
    assert mtan["trunk.bridges.0.0.weight"] == SHARED
    stitch = model("cross_stitch", {}, (2, 8, 8)).roles()
    assert stitch["trunk.columns.a.0.0.weight"] == SHARED and stitch["trunk.stitch.1"] == SHARED
    assert stitch["trunk.dense.c.1.weight"] == task_role("c")


def train(network: MultiTaskModel, mode: str = "joint") -> dict[str, torch.Tensor]:
    data = local_view(make_dataset(48, tasks=TASKS, seed=3, input_dim=6), np.arange(48), NAMES)
    cfg = TrainConfig(local_epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3)
    result = train_local(network, data, cfg, torch.Generator().manual_seed(1), mode)  # type: ignore[arg-type]
    shares = result.task_trunk_deltas or {}
    return {
        **network.state_dict(),
        **{f"{t}/{k}": v for t, s in shares.items() for k, v in s.items()},
    }


def test_mmoe_with_one_expert_is_hard_sharing_step_for_step() -> None:
    """softmax of one logit is exactly 1 and its gradient exactly 0: the shared bottom."""
    for mode in ("joint", "per_task"):
        hard = model("mlp", {"hidden": [8]})
        mixture = model(
            "mmoe", {"num_experts": 1, "expert": {"name": "mlp", "hidden": [8]}}, seed=1
        )
        rename = {k.replace("trunk.experts.0.", "trunk."): k for k in mixture.state_dict()}
        mixture.load_state_dict(
            {
                **mixture.state_dict(),
                **{rename[k]: v for k, v in hard.state_dict().items() if k in rename},
            }
        )
        x = torch.randn(5, 6)
        for task in NAMES:
            assert torch.equal(hard(x)[task], mixture(x)[task])
        after_hard, after_mixture = train(hard, mode), train(mixture, mode)
        for key, value in after_hard.items():
            other = key.replace("trunk.", "trunk.experts.0.")
            assert torch.equal(value, after_mixture[other]), (mode, key)


def test_cgc_without_task_experts_is_mmoe() -> None:
    mmoe = model("mmoe", {"num_experts": 3})
    cgc = model("ple", {"task_experts": 0, "shared_experts": 3}, seed=4)
    state = {
        k.replace("experts.", "levels.0.shared_experts.").replace(
            "gates.", "levels.0.task_gates."
        ): v
        for k, v in mmoe.state_dict().items()
    }
    cgc.load_state_dict(state)
    x = torch.randn(7, 6)
    for task in NAMES:
        torch.testing.assert_close(cgc(x)[task], mmoe(x)[task], rtol=0, atol=0)


def test_cross_stitch_with_identity_units_is_one_network_per_task() -> None:
    stitched = model("cross_stitch", {"widths": [5, 4]})
    for alpha in stitched.trunk.stitch:
        alpha.data = torch.eye(3)
    x = torch.randn(4, 6)
    features = stitched.trunk.task_features(x, NAMES)
    for task in NAMES:
        column = MLPTrunk((6,), MLPParams(hidden=[5, 4]))
        blocks = stitched.trunk.columns[task]
        column.layers[1].load_state_dict(blocks[0][0].state_dict())
        column.layers[3].load_state_dict(blocks[1][0].state_dict())
        torch.testing.assert_close(features[task], column(x), rtol=0, atol=0)
    single = CrossStitchTrunk((6,), TRUNKS.parse("cross_stitch", {}, "model"), ["a"])
    assert torch.equal(single.stitch[0].data, torch.ones(1, 1))
    torch.testing.assert_close(single(x)["a"].sum(), single.task_features(x, ["a"])["a"].sum())


def test_initial_cross_stitch_units_are_convex() -> None:
    alpha = model("cross_stitch", {"alpha_self": 0.8}).trunk.stitch[0].data
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(3))
    assert alpha[0, 0] == pytest.approx(0.8) and alpha[0, 1] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=mmoe", "model.expert=mmoe"], "model.expert.name"),
        (["model=mmoe", "model.num_experts=0"], "model.num_experts"),
        (["model=ple", "model.levels=2", "model.shared_experts=0"], "model.shared_experts"),
        (["model=ple", "model.task_experts=0", "model.shared_experts=0"], "model.shared_experts"),
        (["model=mtan", "model.backbone=conv", "dataset=synthetic"], "model.backbone"),
        (["model=cross_stitch", "model.alpha_self=1.5"], "model.alpha_self"),
    ],
)
def test_bad_architecture_configs_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        prepare(parse(compose([*overrides, "runtime=inprocess", "tracking=quiet"])))
    assert err.value.key == key


def small_run(directory: Path, *overrides: str) -> dict:
    base = [
        "dataset=synthetic",
        "dataset.num_samples=120",
        "partition.num_silos=3",
        "num_rounds=1",
        "train.max_steps=1",
        "runtime=inprocess",
        "tracking=quiet",
        "tracking.plots=false",
        "checkpoint_every=0",
    ]
    return run(parse(compose([*base, *overrides], directory)))


QUIET = ["runtime=inprocess", "tracking=quiet", "tracking.plots=false"]


@pytest.mark.slow  # 4 architectures x every shipped strategy, one tiny round each (about 30 s)
def test_every_strategy_runs_a_round_with_every_architecture() -> None:
    strategies = presets("strategy")
    for name in ARCHITECTURES:
        for strategy in strategies:
            extra = ["strategy.warmup_rounds=1", "num_rounds=2"] if strategy == "grouping" else []
            with tempfile.TemporaryDirectory() as directory:
                summary = small_run(Path(directory), *TINY[name], f"strategy={strategy}", *extra)
            assert summary["status"] == "completed", (name, strategy, summary["status"])
            assert not summary["rejected"], (name, strategy, summary["rejected"][:1])


@pytest.mark.slow  # 16 small runs
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_vectorized_runtime_trains_every_architecture_as_inprocess(
    name: str, tmp_path: Path
) -> None:
    for strategy in ("fedavg", "upgrad"):  # joint and per-task updates
        check_vectorized_equals_inprocess(strategy, TINY[name], tmp_path / strategy)


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(300)
def test_an_architecture_runs_on_the_simulation_engine(tmp_path: Path) -> None:
    check_simulation("upgrad", TINY["ple"], tmp_path)


@pytest.mark.slow  # four runs of 8 rounds on digits
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_beats_chance_federated(name: str, tmp_path: Path) -> None:
    overrides = [f"model={name}", "num_rounds=8", "partition.num_silos=6", *QUIET]
    summary = run(parse(compose(overrides, tmp_path)))
    assert beats_chance(summary, margin=0.1) == {}
