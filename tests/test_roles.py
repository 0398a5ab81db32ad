"""Parameter roles (``fedmtl.core.models.Role``) and their readers: the model declares them, the
engine's global model, aggregation and reply checks, local training's per-task shares and the
silos' kept state read them, never parameter names. A model whose trunk holds parameters of one
task (a gate) and of the silo (a local scale) is aggregated by role."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from torch import nn

from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import MODEL_FILE, load_model_arrays, silo_state_dir
from fedmtl.app.run.config import compose, parse
from fedmtl.core.data import local_view
from fedmtl.core.models import (
    LOCAL,
    SHARED,
    MultiTaskModel,
    Role,
    Trunk,
    group_role,
    hard_sharing_roles,
    task_role,
)
from fedmtl.core.records import SiloInfo, TrainReply
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import train_local
from fedmtl.testing.methods import SMALL, check_resume_is_bit_identical
from fedmtl.trunks import TRUNKS, MLPParams, MLPTrunk
from strategies.engine import AveragingParams, ClientUpdate, GlobalModel, MethodSetup, Round
from strategies.engine.replies import check_train_reply
from strategies.fedavg import FedAvg
from tests.support.data import make_dataset

TASKS = (TaskSpec.binary("a"), TaskSpec.regression("b"))
ROLES = {
    "trunk.w": SHARED,
    "trunk.gates.a.w": task_role("a"),
    "heads.a.w": task_role("a"),
    "heads.b.w": task_role("b"),
}


def test_roles_say_who_uses_a_parameter() -> None:
    groups = {"g": ("a", "b"), "h": ("c",)}
    assert SHARED.used_by("x") and SHARED.is_shared
    assert task_role("a").used_by("a") and not task_role("a").used_by("b")
    assert group_role("g").used_by("b", groups) and not group_role("g").used_by("c", groups)
    assert not LOCAL.used_by("a") and not LOCAL.is_shared
    with pytest.raises(ValueError, match="needs"):
        Role("task")
    assert str(task_role("a")) == "task:a"


def test_hard_sharing_roles_come_from_the_names() -> None:
    keys = ["trunk.w", "trunks.g0.w", "heads.a.0.weight"]
    assert hard_sharing_roles(keys) == {
        "trunk.w": SHARED,
        "trunks.g0.w": group_role("g0"),
        "heads.a.0.weight": task_role("a"),
    }
    with pytest.raises(ValueError, match="neither"):
        hard_sharing_roles(["gate.w"])


def test_the_global_model_sends_and_splits_by_role() -> None:
    arrays = {k: np.full(2, float(i), np.float32) for i, k in enumerate(ROLES)}
    model = GlobalModel(arrays, roles=ROLES)
    assert model.trunk().keys() == {"trunk.w"}
    assert model.task_keys("a") == ["trunk.gates.a.w", "heads.a.w"]
    assert model.keys_for(["b"]) == ["trunk.w", "heads.b.w"]  # no gate of a
    assert model.serves("trunk.w", "b") and not model.serves("trunk.gates.a.w", "a")
    grouped, copies = model.grouped({"g0": ("a",), "g1": ("b",)})
    assert grouped.roles == {
        "heads.a.w": task_role("a"),
        "heads.b.w": task_role("b"),
        "trunks.g0.w": group_role("g0"),
        "trunks.g1.w": group_role("g1"),
        "trunks.g0.gates.a.w": task_role("a"),  # moved into a's group, not copied
    }
    assert copies == {"trunk.w": ["trunks.g0.w", "trunks.g1.w"]}
    np.testing.assert_array_equal(grouped.arrays["trunks.g0.gates.a.w"], arrays["trunk.gates.a.w"])
    assert grouped.keys_for(["b"]) == ["heads.b.w", "trunks.g1.w"]
    with pytest.raises(ValueError, match="local"):
        GlobalModel({"x": np.zeros(1)}, roles={"x": LOCAL})


def update(silo_id: int, examples: dict[str, int], delta: float) -> ClientUpdate:
    info = SiloInfo(silo_id, tuple(examples), 10, 2, examples, examples)
    deltas = {
        k: np.full(2, delta, np.float32)
        for k, role in ROLES.items()
        if role.kind == "shared" or role.owner in examples
    }
    return ClientUpdate(silo_id, info, deltas, sum(examples.values()), examples, {})


def test_a_task_parameter_of_the_trunk_is_averaged_over_its_task_holders() -> None:
    arrays = {k: np.zeros(2, np.float32) for k in ROLES}
    model = GlobalModel(arrays, roles=ROLES)
    updates = [
        update(0, {"a": 1}, 1.0),
        update(1, {"a": 3, "b": 1}, -1.0),
        update(2, {"b": 6}, 2.0),
    ]
    method = FedAvg(AveragingParams(), MethodSetup(TASKS, TrainConfig()))
    new = method.aggregate(Round(1), model, updates).model.arrays
    # shared: weights n_s = 1, 4, 6; the gate of a like a's head: over a's holders, n_{s,a} = 1, 3
    np.testing.assert_allclose(new["trunk.w"], (1 * 1.0 + 4 * -1.0 + 6 * 2.0) / 11)
    np.testing.assert_allclose(new["trunk.gates.a.w"], (1 * 1.0 + 3 * -1.0) / 4)
    np.testing.assert_allclose(new["heads.b.w"], (1 * -1.0 + 6 * 2.0) / 7)


def test_per_task_replies_share_only_the_shared_parameters() -> None:
    model = GlobalModel({k: np.zeros(2, np.float32) for k in ROLES}, roles=ROLES)
    silo = SiloInfo(3, ("a", "b"), 10, 2, {"a": 5, "b": 5}, {"a": 1, "b": 1})
    sent = {k: model.arrays[k] for k in model.keys_for(silo.tasks)}
    joint = {k: np.ones(2, np.float32) for k in sent if k != "trunk.w"}
    shares = {t: {"trunk.w": np.full(2, v, np.float32)} for t, v in (("a", 1.0), ("b", 2.0))}
    reply = TrainReply(joint, 10, 1, {"a": 5, "b": 5}, {}, task_deltas=shares)
    checked = check_train_reply(1, reply, sent, silo, "per_task", model.serves)
    np.testing.assert_allclose(checked.deltas["trunk.w"], 3.0)  # the shares' sum
    assert "trunk.gates.a.w" in checked.deltas  # the gate travels whole, as a head does


class GatedTrunk(Trunk):
    """An MLP with a scale per task on its features (task ``a``'s own parameter in the trunk)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.gates = nn.ParameterDict({"a": nn.Parameter(torch.ones(3))})
        self.out_features = 3

    def task_features(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        features = self.layers(x)
        return {t: features * self.gates[t] if t in self.gates else features for t in tasks}

    def roles(self) -> dict[str, Role]:
        return {k: task_role("a") if k.startswith("gates.") else SHARED for k in self.state_dict()}


def test_local_training_splits_only_the_shared_parameters_per_task() -> None:
    torch.manual_seed(0)
    model = MultiTaskModel(GatedTrunk(), TASKS)
    assert list(model.task_parameters("a")) == [
        "trunk.gates.a",
        "heads.a.0.weight",
        "heads.a.0.bias",
    ]
    dataset = make_dataset(32, tasks=TASKS, seed=1)
    data = local_view(dataset, np.arange(32), ["a", "b"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(local_epochs=1, batch_size=8, lr=0.1, momentum=0.0)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(0), "per_task")
    assert result.task_trunk_deltas is not None
    assert set(result.task_trunk_deltas["a"]) == {"trunk.layers.0.weight", "trunk.layers.0.bias"}
    total = sum(result.task_trunk_deltas[t]["trunk.layers.0.weight"] for t in ("a", "b"))
    moved = model.state_dict()["trunk.layers.0.weight"] - start["trunk.layers.0.weight"]
    torch.testing.assert_close(total, moved)
    assert not torch.equal(model.state_dict()["trunk.gates.a"], start["trunk.gates.a"])


# ------------------------------------------------------------------- a parameter kept on the silo
class SiloScaleTrunk(MLPTrunk):
    """``mlp`` with a per-feature scale each silo keeps for itself (role ``local``, as FedBN keeps
    its normalisation layers)."""

    def __init__(self, input_shape: tuple[int, ...], params: MLPParams) -> None:
        super().__init__(input_shape, params)
        self.silo_scale = nn.Parameter(torch.ones(self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.silo_scale

    def roles(self) -> dict[str, Role]:
        return {k: LOCAL if k == "silo_scale" else SHARED for k in self.state_dict()}


@pytest.fixture
def silo_scale() -> Iterator[list[str]]:
    """The trunk ``silo_scale`` registered for the test (``model=mlp model.name=silo_scale``)."""
    TRUNKS.register("silo_scale", params=MLPParams)(SiloScaleTrunk)
    try:
        yield ["model=mlp", "model.name=silo_scale", "model.hidden=[8]"]
    finally:
        TRUNKS._entries.pop("silo_scale")
        TRUNKS._origins.pop("silo_scale")


def test_a_local_parameter_stays_on_each_silo_and_persists(
    silo_scale: list[str], tmp_path: Path
) -> None:
    raw = compose([*SMALL, *silo_scale, "strategy=fedavg"], tmp_path / "run")
    summary = run(parse(raw))
    assert summary["status"] == "completed"
    arrays, _ = load_model_arrays(tmp_path / "run" / MODEL_FILE)
    assert "trunk.silo_scale" not in arrays and "trunk.layers.1.weight" in arrays
    scales = []
    for silo in range(4):
        files = sorted(silo_state_dir(tmp_path / "run", silo).glob("round-*.safetensors"))
        scales.append(safetensors.numpy.load(files[-1].read_bytes())["trunk.silo_scale"])
    assert all(not np.allclose(s, 1.0) for s in scales), "a silo's scale never trained"
    assert not any(np.allclose(scales[0], s) for s in scales[1:]), "silos share a scale"
    assert math.isfinite(sum(float(s.sum()) for s in scales))


@pytest.mark.slow  # three small runs
def test_a_resumed_run_restores_the_silos_local_parameters(
    silo_scale: list[str], tmp_path: Path
) -> None:
    check_resume_is_bit_identical("fedavg", silo_scale, tmp_path)
