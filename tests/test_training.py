"""Local training and evaluation: silo views, the masked multi-task loss, the training loop."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmtl.core.data import LocalData, local_view
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import evaluate, task_losses, train_local
from fedmtl.datasets import MultiTaskDataset, build_dataset
from fedmtl.datasets.synthetic import SyntheticParams
from tests.support.data import TINY_TASKS, small_model, tiny_dataset


@cache
def synthetic() -> MultiTaskDataset:
    params = SyntheticParams(num_samples=600, num_tasks=2, num_groups=1)
    return build_dataset("synthetic", params, seed=0)


def synthetic_view(tasks: tuple[str, ...] = ("t0", "t1")) -> LocalData:
    return local_view(synthetic(), np.arange(400), list(tasks))


def state_of(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def final_losses(model: MultiTaskModel, data: LocalData) -> dict[str, float]:
    sums = evaluate(model, data)
    return {t.name: t.finalize_metrics(sums[t.name])["loss"] for t in data.tasks}


# ---------------------------------------------------------------------------------------------
# local_view


def test_local_view_picks_rows_and_task_columns() -> None:
    dataset = tiny_dataset()
    indices = np.array([5, 1, 3, 7])
    view = local_view(dataset, indices, ["c", "a"])
    rows = torch.tensor([5, 1, 3, 7])
    assert view.num_samples == 4
    assert torch.equal(view.inputs, dataset.inputs[rows])
    assert set(view.targets) == {"c", "a"}
    assert torch.equal(view.targets["c"], dataset.targets["c"][rows])
    assert torch.equal(view.targets["a"], dataset.targets["a"][rows])
    assert [t.name for t in view.tasks] == ["c", "a"]
    assert view.tasks == (dataset.task("c"), dataset.task("a"))
    # Mask columns follow the requested task order.
    assert view.mask.shape == (4, 2)
    assert torch.equal(view.mask[:, 0], dataset.mask[rows, 2])
    assert torch.equal(view.mask[:, 1], dataset.mask[rows, 0])
    assert view.labelled_counts() == {
        "c": int(dataset.mask[rows, 2].sum()),
        "a": int(dataset.mask[rows, 0].sum()),
    }


def test_local_view_accepts_lists_and_empty_rows() -> None:
    dataset = tiny_dataset()
    view = local_view(dataset, [2, 2, 0], ["b"])
    assert torch.equal(view.inputs, dataset.inputs[[2, 2, 0]])
    assert torch.equal(view.mask, dataset.mask[[2, 2, 0]][:, [1]])
    empty = local_view(dataset, np.array([], dtype=np.int64), ["a", "b"])
    assert empty.num_samples == 0
    assert empty.mask.shape == (0, 2)
    assert empty.labelled_counts() == {"a": 0, "b": 0}


# ---------------------------------------------------------------------------------------------
# task_losses: the silo objective is their sum


def hand_loss(model: MultiTaskModel, data: LocalData, rows: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of the mean loss over the rows labelled for the task, by hand."""
    total = torch.zeros(())
    for position, task in enumerate(data.tasks):
        kept = [int(r) for r in rows if bool(data.mask[r, position])]
        if not kept:
            continue
        out = model(data.inputs[kept], [task.name])[task.name]
        y = data.targets[task.name][kept]
        if task.kind == "multiclass":
            total = total + F.cross_entropy(out, y)
        elif task.kind == "binary":
            total = total + F.binary_cross_entropy_with_logits(out[:, 0], y)
        else:
            total = total + F.mse_loss(out[:, 0], y)
    return total


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5, 6, 7], [6, 2, 4], [1, 3], [7]])
def test_task_losses_are_masked_means(rows: list[int]) -> None:
    dataset = tiny_dataset()
    data = local_view(dataset, np.arange(8), ["a", "b", "c"])
    model = small_model((5,), TINY_TASKS)
    model.eval()
    index = torch.tensor(rows)
    losses = task_losses(model, data, index)
    labelled = {t.name for i, t in enumerate(data.tasks) if bool(data.mask[index, i].any())}
    assert set(losses) == labelled
    torch.testing.assert_close(sum(losses.values()), hand_loss(model, data, index))


def test_unlabelled_entries_do_not_contribute() -> None:
    dataset = tiny_dataset()
    model = small_model((5,), TINY_TASKS)
    model.eval()
    rows = torch.arange(8)
    base = local_view(dataset, np.arange(8), ["a", "b", "c"])
    loss = task_losses(model, base, rows)
    changed = tiny_dataset()
    # Unlabelled targets: a at row 2, b at row 1, c at row 3; row 6 is unlabelled for all.
    changed.targets["a"][2] = (changed.targets["a"][2] + 1) % 3
    changed.targets["a"][6] = (changed.targets["a"][6] + 2) % 3
    changed.targets["b"][1] = 1.0 - changed.targets["b"][1]
    changed.targets["c"][3] = changed.targets["c"][3] + 100.0
    changed.targets["c"][6] = -50.0
    changed.inputs[6] = changed.inputs[6] * 10 + 3  # a row labelled for no task
    other = task_losses(model, local_view(changed, np.arange(8), ["a", "b", "c"]), rows)
    assert loss.keys() == other.keys() and all(torch.equal(loss[t], other[t]) for t in loss)
    # A labelled target does change it.
    changed.targets["c"][0] = changed.targets["c"][0] + 1.0
    moved = task_losses(model, local_view(changed, np.arange(8), ["a", "b", "c"]), rows)
    assert not torch.equal(loss["c"], moved["c"])


def test_batch_without_labels_has_no_task_loss() -> None:
    dataset = tiny_dataset()
    data = local_view(dataset, np.arange(8), ["a", "b", "c"])
    model = small_model((5,), TINY_TASKS)
    assert task_losses(model, data, torch.tensor([6])) == {}
    # Row 4 is labelled only for c: a view without c sees no labels there.
    view = local_view(dataset, np.arange(8), ["a", "b"])
    assert task_losses(model, view, torch.tensor([4, 6])) == {}


def test_task_loss_gradient_reaches_only_the_view_heads() -> None:
    dataset = tiny_dataset()
    model = small_model((5,), TINY_TASKS)
    view = local_view(dataset, np.arange(8), ["a", "c"])
    losses = task_losses(model, view, torch.arange(8))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.heads["a"].parameters())
    assert all(p.grad is not None for p in model.heads["c"].parameters())
    assert all(p.grad is None for p in model.heads["b"].parameters())


# ---------------------------------------------------------------------------------------------
# train_local


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_local_lowers_each_task_loss(optimizer: str) -> None:
    data = synthetic_view()
    model = small_model(synthetic().input_shape, synthetic().tasks)
    before = final_losses(model, data)
    lr = 0.01 if optimizer == "adam" else 0.05
    cfg = TrainConfig(local_epochs=3, batch_size=32, optimizer=optimizer, lr=lr)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(0))
    after = final_losses(model, data)
    assert result.steps == 3 * 13  # ceil(400 / 32) batches per epoch, all labelled
    assert set(result.mean_loss) == {"t0", "t1"}
    assert all(np.isfinite(v) for v in result.mean_loss.values())
    for task in ("t0", "t1"):
        assert after[task] < 0.8 * before[task], (task, before[task], after[task])


def test_train_local_changes_only_trunk_and_own_heads() -> None:
    dataset = synthetic()
    extra = TaskSpec.binary("other")
    model = small_model(dataset.input_shape, (*dataset.tasks, extra))
    before = state_of(model)
    data = synthetic_view(("t1",))
    cfg = TrainConfig(local_epochs=1, max_steps=5, optimizer="sgd", lr=0.1, weight_decay=0.01)
    train_local(model, data, cfg, torch.Generator().manual_seed(0))
    after = state_of(model)
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith(("heads.t0.", "heads.other.")):
            assert same, key
        else:
            assert key.startswith(("trunk.", "heads.t1.")), key
            assert not same, key


def test_max_steps_caps_steps() -> None:
    data = synthetic_view()
    model = small_model(synthetic().input_shape, synthetic().tasks)
    cfg = TrainConfig(local_epochs=4, batch_size=32, max_steps=3)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(0))
    assert result.steps == 3
    uncapped = TrainConfig(local_epochs=1, batch_size=100, max_steps=50)
    result = train_local(model, data, uncapped, torch.Generator().manual_seed(0))
    assert result.steps == 4  # one epoch of 400 rows: fewer steps than the cap


def test_batches_without_labels_are_skipped() -> None:
    dataset = tiny_dataset()
    data = local_view(dataset, np.arange(8), ["a", "b", "c"])
    model = small_model((5,), TINY_TASKS)
    cfg = TrainConfig(local_epochs=2, batch_size=1, optimizer="sgd", lr=0.01)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(0))
    assert result.steps == 2 * 7  # row 6 carries no label: its batch is skipped


def test_same_generator_seed_gives_identical_weights() -> None:
    data = synthetic_view()
    cfg = TrainConfig(local_epochs=2, batch_size=16, max_steps=20, optimizer="adam", lr=0.01)
    models = []
    for gen_seed in (7, 7, 8):
        model = small_model(synthetic().input_shape, synthetic().tasks, seed=1)
        train_local(model, data, cfg, torch.Generator().manual_seed(gen_seed))
        models.append(state_of(model))
    first, again, other = models
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert any(not torch.equal(first[key], other[key]) for key in first)


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_counts_labelled_rows() -> None:
    dataset = tiny_dataset()
    data = local_view(dataset, np.arange(8), ["c", "a", "b"])
    model = small_model((5,), TINY_TASKS)
    totals = evaluate(model, data)
    assert set(totals) == {"a", "b", "c"}
    for name, count in data.labelled_counts().items():
        assert totals[name]["n"] == count
    # Sums match the task's own metric_sums over the labelled rows.
    model.eval()
    with torch.no_grad():
        outputs = model(data.inputs)
    for position, task in enumerate(data.tasks):
        labelled = data.mask[:, position]
        expected = task.metric_sums(outputs[task.name][labelled], data.targets[task.name][labelled])
        assert totals[task.name].keys() == expected.keys()
        for key, value in expected.items():
            assert totals[task.name][key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_evaluate_is_independent_of_batch_size() -> None:
    data = synthetic_view()
    model = small_model(synthetic().input_shape, synthetic().tasks)
    whole = evaluate(model, data, batch_size=512)
    chunked = evaluate(model, data, batch_size=37)
    for task in data.tasks:
        assert whole[task.name]["n"] == chunked[task.name]["n"] == 400
        a = task.finalize_metrics(whole[task.name])
        b = task.finalize_metrics(chunked[task.name])
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_evaluate_of_unlabelled_task_is_empty() -> None:
    dataset = tiny_dataset()
    view = local_view(dataset, np.array([4, 6]), ["a", "c"])
    model = small_model((5,), TINY_TASKS)
    totals = evaluate(model, view)
    assert totals["a"] == {"n": 0.0}
    assert TINY_TASKS[0].finalize_metrics(totals["a"]) == {}
    assert totals["c"]["n"] == 1.0


def test_evaluate_does_not_change_the_model() -> None:
    data = synthetic_view()
    model = small_model(synthetic().input_shape, synthetic().tasks)
    before = state_of(model)
    evaluate(model, data)
    after = state_of(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_train_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# per-task decomposition of the trunk update and client-side weighting
def trunk_delta(before: dict[str, torch.Tensor], model: MultiTaskModel) -> dict[str, torch.Tensor]:
    after = model.state_dict()
    return {k: after[k] - before[k] for k in before if k.startswith("trunk.")}


def train_both_modes(cfg: TrainConfig, tasks: tuple[str, ...] = ("t0", "t1")):
    data = synthetic_view(tasks)
    results = {}
    for mode in ("joint", "per_task"):
        model = small_model(data.inputs.shape[1:], synthetic().tasks, seed=3)
        start = state_of(model)
        torch.manual_seed(0)
        result = train_local(model, data, cfg, torch.Generator().manual_seed(1), update_mode=mode)
        results[mode] = (result, trunk_delta(start, model), state_of(model))
    return results


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(lr=0.05, momentum=0.0, max_steps=6),
        TrainConfig(lr=0.05, momentum=0.9, max_steps=6),
        TrainConfig(lr=0.05, momentum=0.9, weight_decay=0.01, max_steps=6),
        TrainConfig(optimizer="adam", lr=0.01, max_steps=6),
        TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.01, max_steps=6),
    ],
    ids=["sgd", "momentum", "momentum-wd", "adam", "adam-wd"],
)
def test_per_task_shares_sum_to_the_joint_update(cfg: TrainConfig) -> None:
    results = train_both_modes(cfg)
    joint_result, joint_delta, joint_state = results["joint"]
    task_result, task_delta, task_state = results["per_task"]
    assert joint_result.task_trunk_deltas is None
    shares = task_result.task_trunk_deltas
    assert shares is not None and set(shares) == {"t0", "t1"}
    for key, delta in task_delta.items():
        summed = shares["t0"][key] + shares["t1"][key]
        torch.testing.assert_close(summed, delta, rtol=1e-4, atol=1e-6)
        # per_task mode steps exactly like joint mode (same gradient sum, same optimizer)
        torch.testing.assert_close(delta, joint_delta[key], rtol=1e-5, atol=1e-6)
    for key in joint_state:
        torch.testing.assert_close(task_state[key], joint_state[key], rtol=1e-5, atol=1e-6)


def test_plain_sgd_share_is_minus_lr_times_the_tasks_own_gradient() -> None:
    """One full-batch step of plain SGD: D_t = -eta g_t, with g_t computed independently."""
    data = synthetic_view()
    cfg = TrainConfig(lr=0.1, momentum=0.0, batch_size=data.num_samples, max_steps=1)
    model = small_model(data.inputs.shape[1:], synthetic().tasks, seed=5)
    reference = small_model(data.inputs.shape[1:], synthetic().tasks, seed=5)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(0), update_mode="per_task")
    assert result.task_trunk_deltas is not None
    rows = torch.arange(data.num_samples)
    reference.train()
    for position, task in enumerate(data.tasks):
        loss = task.loss(reference(data.inputs, [task.name])[task.name], data.targets[task.name])
        assert bool(data.mask[rows, position].all())
        grads = torch.autograd.grad(loss, list(reference.trunk.parameters()))
        for (name, _), grad in zip(reference.trunk.named_parameters(), grads, strict=True):
            torch.testing.assert_close(
                result.task_trunk_deltas[task.name][f"trunk.{name}"], -0.1 * grad
            )


def test_client_weighting_sets_the_trunk_direction() -> None:
    """A weighting that keeps only task t0 moves the trunk exactly as training on t0 alone,
    while both heads still train on their own losses."""
    data = synthetic_view()
    cfg = TrainConfig(lr=0.05, momentum=0.0, max_steps=4)
    calls: list[tuple[int, list[int]]] = []

    def only_first(matrix: torch.Tensor, losses: torch.Tensor, tasks) -> torch.Tensor:
        calls.append((matrix.shape[0], list(tasks)))
        assert losses.shape == (matrix.shape[0],) and bool((losses > 0).all())
        return torch.tensor([1.0 if t == 0 else 0.0 for t in tasks])

    weighted = small_model(data.inputs.shape[1:], synthetic().tasks, seed=2)
    start = state_of(weighted)
    result = train_local(
        weighted, data, cfg, torch.Generator().manual_seed(4), "per_task", only_first
    )
    single = small_model(data.inputs.shape[1:], synthetic().tasks, seed=2)
    train_local(single, synthetic_view(("t0",)), cfg, torch.Generator().manual_seed(4))
    assert calls == [(2, [0, 1])] * 4
    for key, delta in trunk_delta(start, weighted).items():
        torch.testing.assert_close(delta, trunk_delta(start, single)[key], rtol=1e-5, atol=1e-7)
    assert result.task_trunk_deltas is not None
    for value in result.task_trunk_deltas["t1"].values():
        assert float(value.abs().max()) == 0.0  # t1's share of the trunk is w_1 g_1 = 0
    head_keys = [k for k in start if k.startswith("heads.t1.")]
    assert any(not torch.equal(weighted.state_dict()[k], start[k]) for k in head_keys)
