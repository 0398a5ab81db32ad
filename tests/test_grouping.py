"""Federated task grouping: grouped models, affinity estimators, their combination, the strategy."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel, group_trunk_key, is_trunk_key, trunk_group
from fedmtl.core.records import SiloInfo
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import make_optimizer, task_losses, train_local
from strategies import METHODS
from strategies.engine import ClientUpdate, GlobalModel, MethodSetup, ReplyError, Round
from strategies.grouping import AffinityAccumulator, Grouping, GroupingParams, solve
from strategies.grouping.affinity import AFFINITIES, SiloProbe, cosine_pairs
from tests.support.data import TINY_TASKS, small_model, tiny_view
from tests.support.runs import compose_raw

GROUPS = {"g0": ("a", "c"), "g1": ("b",)}


def grouped_model(seed: int = 0) -> MultiTaskModel:
    return small_model((5,), TINY_TASKS, seed=seed, groups=GROUPS)


# ---------------------------------------------------------------------------------------------
# grouped model


def test_grouped_model_names_one_trunk_per_group_and_routes_heads() -> None:
    plain = small_model((5,), TINY_TASKS)
    model = MultiTaskModel(plain.trunk, TINY_TASKS, groups=GROUPS)
    keys = model.trunk_keys()
    assert {trunk_group(k) for k in keys} == {"g0", "g1"} and all(is_trunk_key(k) for k in keys)
    assert group_trunk_key("g1", "trunk.layers.0.weight") == "trunks.g1.layers.0.weight"
    x = torch.randn(4, 5)
    with torch.no_grad():  # each group's trunk starts as a copy of the shared one
        model.heads.load_state_dict(plain.heads.state_dict())
        out, ref = model(x), plain(x)
        for task in ("a", "b", "c"):
            torch.testing.assert_close(out[task], ref[task])
        next(iter(model.trunks["g1"].parameters())).add_(1.0)  # g1's trunk moves: only b changes
        moved = model(x)
    torch.testing.assert_close(moved["a"], ref["a"])
    assert not torch.allclose(moved["b"], ref["b"])
    assert set(model.shared_parameters(["b"])) == {k for k in keys if trunk_group(k) == "g1"}


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"g0": ("a", "b")}, "in no group"),
        ({"g0": ("a", "b"), "g1": ("b", "c")}, "in groups"),
        ({"g0": ("a", "b", "c"), "g1": ()}, "empty"),
        ({"g0": ("a", "b", "z"), "g1": ("c",)}, "unknown task"),
    ],
)
def test_grouped_model_rejects_groups_that_do_not_partition_the_tasks(
    groups: dict[str, tuple[str, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MultiTaskModel(small_model((5,), TINY_TASKS).trunk, TINY_TASKS, groups=groups)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_per_task_shares_of_a_grouped_model_cover_their_group_and_sum_to_the_step(
    optimizer: str,
) -> None:
    """Each task's share covers its own group's trunk only; with momentum (or Adam) and weight
    decay the shares of a group's tasks still sum to that trunk's step (weight decay is split
    among the tasks that use the parameter)."""
    cfg = TrainConfig(batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.01, optimizer=optimizer)
    model = grouped_model()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = train_local(
        model, tiny_view(), cfg, torch.Generator().manual_seed(0), update_mode="per_task"
    )
    shares = result.task_trunk_deltas
    assert shares is not None
    for task, group in (("a", "g0"), ("b", "g1"), ("c", "g0")):
        assert shares[task] and {trunk_group(k) for k in shares[task]} == {group}
    for key, value in model.state_dict().items():
        if is_trunk_key(key):
            summed = sum(shares[t][key] for t in shares if key in shares[t])
            torch.testing.assert_close(summed, value - start[key], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# affinity estimators


def sgd_setup(momentum: float) -> tuple[MultiTaskModel, Any, torch.optim.Optimizer, torch.Tensor]:
    model = small_model((5,), TINY_TASKS, seed=3)
    data = tiny_view()
    cfg = TrainConfig(lr=0.3, momentum=momentum, weight_decay=0.01)
    params = list(model.trunk.parameters()) + list(model.heads.parameters())
    optimizer = make_optimizer(params, cfg)
    rows = torch.arange(8)
    if momentum:  # give the optimizer a momentum state: the measurement must use and keep it
        sum(task_losses(model, data, rows).values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, data, optimizer, rows


def stepped_loss(model, optimizer, data, rows, tasks: list[str], target: str) -> float:
    """L_target after one real optimizer step on ``tasks``, computed on deep copies."""
    twin = copy.deepcopy(model)
    twin_opt = type(optimizer)(
        list(twin.trunk.parameters()) + list(twin.heads.parameters()), **optimizer.defaults
    )
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.eval()
    sum(task_losses(twin, data, rows)[t] for t in tasks).backward()
    twin_opt.step()
    with torch.no_grad():
        return float(task_losses(twin, data, rows)[target])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_transfer_gain_is_one_minus_the_loss_ratio_of_real_steps(momentum: float) -> None:
    model, data, optimizer, rows = sgd_setup(momentum)
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    gains = AFFINITIES.get("transfer_gain").factory().measure(model, data, rows, optimizer)
    assert len(gains) == 6  # ordered pairs of the 3 tasks labelled in the batch
    for (i, j), value in gains.items():
        alone = stepped_loss(model, optimizer, data, rows, [j], j)
        both = stepped_loss(model, optimizer, data, rows, [i, j], j)
        # float32 losses of order 1: their ratio carries errors of about 1e-7 each
        assert value == pytest.approx(1 - both / alone, rel=1e-5, abs=1e-6)
    for key, tensor in model.state_dict().items():  # model and optimizer are left untouched
        torch.testing.assert_close(tensor, state[key])
    after = optimizer.state_dict()["state"]
    for index, entry in opt_state["state"].items():
        torch.testing.assert_close(after[index]["momentum_buffer"], entry["momentum_buffer"])
    assert all(p.grad is None for p in model.parameters())


def test_tag_lookahead_steps_the_trunk_only() -> None:
    model, data, optimizer, rows = sgd_setup(0.0)
    z = AFFINITIES.get("tag").factory().measure(model, data, rows, optimizer)
    with torch.no_grad():
        before = {t: float(v) for t, v in task_losses(model, data, rows).items()}
    for (i, j), value in z.items():
        twin = copy.deepcopy(model)
        loss = task_losses(twin, data, rows)[i]
        grads = torch.autograd.grad(loss, list(twin.trunk.parameters()))
        with torch.no_grad():
            for p, g in zip(twin.trunk.parameters(), grads, strict=True):
                p.sub_(0.3 * g)
            after = float(task_losses(twin, data, rows)[j])
        assert value == pytest.approx(1 - after / before[j], rel=1e-5, abs=1e-7)


def test_silo_probe_averages_every_kth_step_and_training_is_unchanged() -> None:
    cfg = TrainConfig(batch_size=2, lr=0.1, momentum=0.9)
    reference = small_model((5,), TINY_TASKS, seed=1)
    train_local(reference, tiny_view(), cfg, torch.Generator().manual_seed(0))
    model = small_model((5,), TINY_TASKS, seed=1)
    probe = SiloProbe(AFFINITIES.get("tag").factory(), model, tiny_view(), every=2)
    result = train_local(model, tiny_view(), cfg, torch.Generator().manual_seed(0), probe=probe)
    assert probe.steps == result.steps and probe.counts
    assert max(probe.counts.values()) <= math.ceil(result.steps / 2)
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference.state_dict()[key])


def test_cosine_pairs_skip_zero_rows() -> None:
    rows = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.zeros(2)]
    pairs = cosine_pairs(rows)
    assert pairs == {
        (0, 1): pytest.approx(1 / math.sqrt(2)),
        (1, 0): pytest.approx(1 / math.sqrt(2)),
    }


def test_accumulator_weighted_mean_coverage_and_rules() -> None:
    acc = AffinityAccumulator(["a", "b", "c", "d"])
    acc.add("a", "b", 0.4, weight=30)
    acc.add("a", "b", 0.1, weight=10)  # (0.4 * 30 + 0.1 * 10) / 40
    acc.add("b", "a", 0.2, weight=5)
    acc.add("c", "d", -0.5, weight=1)  # one way only: used both ways
    acc.add("a", "a", 9.0, weight=1)  # the diagonal is ignored
    estimate = acc.estimate()
    assert estimate[0, 1] == pytest.approx(0.325) and estimate[1, 0] == pytest.approx(0.2)
    assert math.isnan(estimate[0, 0]) and math.isnan(estimate[0, 2])
    assert acc.uncovered() == [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]
    zero = acc.filled("zero")
    assert zero[3, 2] == pytest.approx(-0.5) and zero[0, 2] == 0 and zero[0, 0] == 0
    forbid = acc.filled("forbid")
    assert forbid[0, 2] == pytest.approx(-(1 + 4 * 1.525))  # 1 + T x sum of |measured|
    # a strongly positive uncovered neighbour is never grouped with a under "forbid"
    acc.add("b", "c", 5.0, 1)
    acc.add("c", "b", 5.0, 1)
    groups = solve(acc.filled("forbid"))
    assert all(not ({0, 2} <= set(g) or {0, 3} <= set(g)) for g in groups)


# ---------------------------------------------------------------------------------------------
# the strategy


def make_grouping(**params: Any) -> Grouping:
    tasks = [TaskSpec.regression(n) for n in ("a", "b", "c")]
    return Grouping(GroupingParams(**params), MethodSetup(tasks, TrainConfig()))


def update(
    silo_id: int, tasks: dict[str, int], deltas: dict[str, float], **kw: Any
) -> ClientUpdate:
    info = SiloInfo(silo_id, tuple(tasks), 10, 2, dict(tasks), dict.fromkeys(tasks, 1))
    arrays = {k: np.full(2, v, dtype=np.float32) for k, v in deltas.items()}
    return ClientUpdate(0, info, arrays, 10, dict(tasks), {}, **kw)


def test_group_trunks_are_averaged_over_the_silos_holding_a_group_task() -> None:
    strategy = make_grouping()
    strategy.groups = {"g0": ("a", "b"), "g1": ("c",)}
    trunk = {"trunks.g0.w": np.zeros(2, np.float32), "trunks.g1.w": np.zeros(2, np.float32)}
    updates = [
        update(0, {"a": 3, "b": 1}, {"trunks.g0.w": 1.0}),  # m = 4 for g0
        update(1, {"b": 4, "c": 2}, {"trunks.g0.w": 3.0, "trunks.g1.w": 5.0}),  # m = 4, 2
        update(2, {"c": 6}, {"trunks.g1.w": -1.0}),  # m = 6 for g1
    ]
    delta = strategy.trunk_step(Round(7), GlobalModel(trunk, strategy.groups), updates).delta
    assert delta is not None
    np.testing.assert_allclose(delta["trunks.g0.w"], (4 * 1 + 4 * 3) / 8)
    np.testing.assert_allclose(delta["trunks.g1.w"], (2 * 5 - 6 * 1) / 8)


def test_silos_receive_only_the_trunks_of_their_groups() -> None:
    strategy = make_grouping()
    groups = {"g0": ("a", "b"), "g1": ("c",)}
    arrays = {
        "trunks.g0.w": np.zeros(1),
        "trunks.g1.w": np.zeros(1),
        **{f"heads.{t}.w": np.zeros(1) for t in "abc"},
    }
    silo = SiloInfo(0, ("b",), 1, 1, {"b": 1}, {"b": 1})
    model = GlobalModel(arrays, groups)
    assert set(strategy.arrays_for(silo, model, "train")) == {"trunks.g0.w", "heads.b.w"}


def test_forming_groups_copies_the_trunk_and_its_server_momentum() -> None:
    strategy = make_grouping(server_optimizer={"name": "sgd", "momentum": 0.9})
    for pair, value in {
        ("a", "b"): 0.5,
        ("b", "a"): 0.5,
        ("a", "c"): -0.3,
        ("b", "c"): -0.2,
    }.items():
        strategy.accumulator.add(*pair, value, 1.0)
    strategy.server_optimizer.m["trunk.w"] = np.ones(2)
    arrays = {"trunk.w": np.arange(2.0), "heads.a.w": np.zeros(1)}
    model = strategy.form_groups(5, GlobalModel(arrays))
    grouped = model.arrays
    assert strategy.groups == model.groups == {"g0": ("a", "b"), "g1": ("c",)}
    assert set(grouped) == {"trunks.g0.w", "trunks.g1.w", "heads.a.w"}
    np.testing.assert_array_equal(grouped["trunks.g1.w"], arrays["trunk.w"])
    assert set(strategy.server_optimizer.m) == {"trunks.g0.w", "trunks.g1.w"}
    results = strategy.results()
    assert results["groups"] == [["a", "b"], ["c"]]
    assert results["grouping"]["objective"] == pytest.approx(0.5)  # (0.5 + 0.5) / 2
    assert results["grouping"]["uncovered_pairs"] == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("strategy.affinity=psychic", "strategy.affinity"),
        ("strategy.warmup_rounds=6", "strategy.warmup_rounds"),
        ("strategy.num_groups=9", "strategy.num_groups"),
        ("strategy.max_group_size=0", "strategy.max_group_size"),
        ("strategy.weighting=nope", "strategy.weighting"),
        ("+strategy.weighting_params.c=0.4", "strategy.weighting_params"),
        ("strategy.weighting={name:cagrad,c:-1}", "strategy.weighting.c"),
        ("strategy.weighting={c:0.4}", "strategy.weighting.name"),
        ("strategy.groups=[[t0,t1],[t2]]", "strategy.groups"),
    ],
)
def test_bad_grouping_config_names_the_key(tmp_path: Path, override: str, key: str) -> None:
    raw = compose_raw(
        [
            "dataset=synthetic",
            "strategy=grouping",
            "num_rounds=6",
            "runtime=inprocess",
            *override.split(),
        ],
        tmp_path,
    )

    with pytest.raises(ConfigError) as err:
        prepare(parse(raw))
    assert err.value.key == key


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"affinity/a/c": 0.1}, "does not hold"),
        ({"affinity/a/a": 0.1}, "unexpected method metric"),
        ({"loss/a": 0.1}, "unexpected method metric"),
    ],
)
def test_affinities_of_tasks_a_silo_does_not_hold_are_refused(
    metrics: dict[str, float], reason: str
) -> None:
    strategy = make_grouping()
    good = update(0, {"a": 3, "b": 1}, {}, method_metrics={"affinity/a/b": 0.2})
    strategy.check_update(good)
    with pytest.raises(ReplyError, match=reason):
        strategy.check_update(update(0, {"a": 3, "b": 1}, {}, method_metrics=metrics))


def test_grouping_strategy_is_registered_with_its_config() -> None:
    assert "grouping" in METHODS
    assert METHODS.get("grouping").params is GroupingParams


# ---------------------------------------------------------------------------------------------
# end to end (in process)

SMALL = [
    "dataset=synthetic",
    "dataset.num_samples=1200",
    "partition.num_silos=6",
    "partition.assignment.name=random_k",
    "partition.assignment.k=3",
    "runtime=inprocess",
    "tracking=quiet",
    "tracking.plots=true",
]


@pytest.mark.parametrize(
    ("affinity", "extra"),
    [
        ("transfer_gain", []),
        pytest.param("tag", ["strategy.solver=tag"], marks=pytest.mark.slow),
        pytest.param("update_similarity", ["strategy.weighting=upgrad"], marks=pytest.mark.slow),
    ],
)
def test_grouping_pipeline_writes_groups_affinity_and_heatmap(
    tmp_path: Path, affinity: str, extra: list[str]
) -> None:
    overrides = [
        *SMALL, "strategy=grouping", f"strategy.affinity={affinity}", "strategy.warmup_rounds=2",
        "num_rounds=3", *extra,
    ]  # fmt: skip
    summary = run(parse(compose_raw(overrides, tmp_path)))
    groups = summary["groups"]
    assert sorted(t for g in groups for t in g) == sorted(summary["tasks"])
    info = summary["grouping"]
    assert info["round"] == 2 and info["solver_seconds"] >= 0 and math.isfinite(info["objective"])
    report = json.loads((tmp_path / "affinity.json").read_text())
    assert report["tasks"] == summary["tasks"] and report["groups"] == groups
    size = len(summary["tasks"])
    assert np.array(report["solved_on"]).shape == (size, size)
    assert [r["round"] for r in report["per_round"]] == [1, 2]
    assert (tmp_path / "affinity.png").stat().st_size > 1000
    assert summary["rejected"] == []
    assert all(math.isfinite(v) for m in summary["final"].values() for v in m.values())


@pytest.mark.slow
def test_groups_found_match_the_planted_groups(tmp_path: Path) -> None:
    """experiment=synthetic_groups (3 planted groups with independent features competing for a
    [32, 4] trunk; every pair of tasks held by some silo), default estimator and warm-up (5
    rounds): the groups found are the planted ones. benchmarks/compare_grouping.py measures every
    estimator on 5 seeds, and the accuracy of the groups against one shared trunk."""
    overrides = [
        "experiment=synthetic_groups", "strategy=grouping", "runtime=inprocess",
        "tracking=quiet", "num_rounds=6", "seed=0",
    ]  # fmt: skip
    summary = run(parse(compose_raw(overrides, tmp_path)))
    planted = summary["dataset_info"]["planted_groups"]
    assert sorted(map(sorted, summary["groups"])) == sorted(map(sorted, planted))
    assert summary["grouping"]["never_held_together"] == []


@pytest.mark.parametrize("rule", ["zero", pytest.param("forbid", marks=pytest.mark.slow)])
def test_pairs_no_silo_holds_together_are_flagged_and_ruled(tmp_path: Path, rule: str) -> None:
    """digit and loops are never on one silo: flagged in summary.json and affinity.json, filled
    by the rule (forbid: never in one group)."""
    overrides = [
        "partition=explicit", "strategy=grouping", "strategy.warmup_rounds=2",
        f"strategy.uncovered={rule}", "runtime=inprocess", "tracking=quiet", "num_rounds=3",
    ]  # fmt: skip
    summary = run(parse(compose_raw(overrides, tmp_path)))
    info = summary["grouping"]
    assert ["digit", "loops"] in info["never_held_together"]
    assert ["digit", "loops"] in info["uncovered_pairs"] and info["uncovered_rule"] == rule
    report = json.loads((tmp_path / "affinity.json").read_text())
    tasks = report["tasks"]
    digit, loops = tasks.index("digit"), tasks.index("loops")
    assert report["estimate"][digit][loops] is None
    solved = report["solved_on"][digit][loops]
    assert solved == 0 if rule == "zero" else solved < 0
    assert report["estimate"][tasks.index("digit")][tasks.index("parity")] is not None
    if rule == "forbid":
        assert not any({"digit", "loops"} <= set(g) for g in summary["groups"])


def test_given_groups_skip_measurement_and_train_one_trunk_each(tmp_path: Path) -> None:
    overrides = [
        *SMALL, "strategy=grouping", "strategy.groups=[[t0,t1],[t2,t3],[t4,t5]]",
        "strategy.warmup_rounds=1", "num_rounds=2",
    ]  # fmt: skip
    summary = run(parse(compose_raw(overrides, tmp_path)))
    assert summary["groups"] == [["t0", "t1"], ["t2", "t3"], ["t4", "t5"]]
    assert summary["grouping"]["source"] == "given" and summary["grouping"]["objective"] is None
    assert not (tmp_path / "affinity.json").exists()
    assert all(math.isfinite(v) for m in summary["final"].values() for v in m.values())
