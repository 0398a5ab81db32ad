"""Record-level DP (``privacy=dp_record``): DP-SGD's step in local training (per-sample gradients,
clipping, noise: fedmtl/core/training.py), its accounting at the silo and at the server
(strategies/engine/accounting.py, ``RecordLedger``), its refusals, and a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmtl.app import launch
from fedmtl.app.run.config import parse
from fedmtl.core.data import LocalData, local_view
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.records import SiloInfo
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import RecordDP, dp_steps, train_local
from strategies.engine import PrivacyParams, RecordLedger, accounting, silo_dp_sgd
from tests.support.data import TINY_TASKS, small_model, tiny_dataset
from tests.support.runs import compose_raw

PLAIN_SGD = TrainConfig(local_epochs=1, batch_size=8, lr=1.0, momentum=0.0)


def tiny() -> tuple[MultiTaskModel, LocalData]:
    model = small_model((5,), TINY_TASKS)
    return model, local_view(tiny_dataset(), np.arange(8), ["a", "b", "c"])


def row_gradient(model: MultiTaskModel, data: LocalData, row: int) -> dict[str, torch.Tensor]:
    """The gradient of row ``row``'s whole loss (the sum over the tasks it is labelled for)."""
    model.zero_grad()
    total = torch.zeros(())
    for position, task in enumerate(data.tasks):
        if not bool(data.mask[row, position]):
            continue
        out = model(data.inputs[row : row + 1], [task.name])[task.name]
        y = data.targets[task.name][row : row + 1]
        if task.kind == "multiclass":
            total = total + F.cross_entropy(out, y)
        elif task.kind == "binary":
            total = total + F.binary_cross_entropy_with_logits(out[:, 0], y)
        else:
            total = total + F.mse_loss(out[:, 0], y)
    if total.requires_grad:
        total.backward()
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def test_a_step_sums_each_records_clipped_gradient_over_all_its_tasks() -> None:
    """sigma = 0, q = 1: one step moves the parameters by -lr sum_i clip_C(g_i) / n, g_i the
    gradient of row i's loss over every task it labels (a row labelled for none adds nothing)."""
    model, data = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = [row_gradient(model, data, i) for i in range(data.num_samples)]
    norms = [torch.sqrt(sum(g.pow(2).sum() for g in grad.values())) for grad in grads]
    clip = float(torch.stack(norms).median())  # some rows clipped, some not
    expected = {n: torch.zeros_like(p) for n, p in before.items()}
    for grad, norm in zip(grads, norms, strict=True):
        for n, g in grad.items():
            expected[n] += g * min(1.0, clip / (float(norm) + 1e-12))
    dp = RecordDP(clip_norm=clip, noise_multiplier=0.0, sample_rate=1.0, steps=1)
    result = train_local(model, data, PLAIN_SGD, torch.Generator().manual_seed(0), dp=dp)
    assert result.steps == 1
    for n, p in model.named_parameters():
        step = before[n] - p.detach()
        torch.testing.assert_close(step, expected[n] / data.num_samples, rtol=1e-4, atol=1e-6)


def test_the_noise_std_is_sigma_times_c_over_the_expected_batch() -> None:
    model, data = tiny()
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    sigma, clip = 1000.0, 1e-3  # the clipped sum (at most n C) is negligible beside the noise
    dp = RecordDP(clip, sigma, 1.0, 1, noise=torch.Generator().manual_seed(1))
    train_local(model, data, PLAIN_SGD, torch.Generator().manual_seed(0), dp=dp)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    std = float((before - after).std())
    assert before.numel() > 200
    assert std == pytest.approx(sigma * clip / data.num_samples, rel=0.15)


def test_dp_sgd_trains_joint_updates_only() -> None:
    model, data = tiny()
    dp = RecordDP(1.0, 1.0, 0.5, 1)
    with pytest.raises(ValueError, match="joint"):
        train_local(model, data, PLAIN_SGD, torch.Generator(), update_mode="per_task", dp=dp)


def test_a_silos_settings_and_the_servers_ledger_agree_with_the_accountant() -> None:
    privacy = PrivacyParams(dp="record", noise_multiplier=1.1)
    train = TrainConfig(local_epochs=2, batch_size=16)
    dp = silo_dp_sgd(privacy, train, 5, 100)
    assert (dp.sample_rate, dp.steps, dp.noise_multiplier) == (0.16, dp_steps(train, 100), 1.1)
    assert dp.steps == 2 * 7
    ledger = RecordLedger(privacy, train, 5)

    def info(silo_id: int, rows: int) -> SiloInfo:
        return SiloInfo(silo_id, ("a",), rows, 0, {"a": rows}, {})

    for _ in range(3):
        ledger.observe([info(0, 100), info(1, 400)])
    ledger.observe([info(1, 400)])
    delta = privacy.default_delta(100)
    small = accounting.record_epsilon(1.1, 0.16, 3 * dp.steps, delta)
    large = silo_dp_sgd(privacy, train, 5, 400)
    assert ledger.report["epsilon_per_silo"] == {
        "0": pytest.approx(small),
        "1": pytest.approx(
            accounting.record_epsilon(1.1, 0.04, 4 * large.steps, privacy.default_delta(400))
        ),
    }
    assert ledger.report["epsilon"] == max(ledger.report["epsilon_per_silo"].values())
    results = ledger.results()
    assert results["unit"] == "record" and results["rounds_per_silo"] == {"0": 3, "1": 4}
    again = RecordLedger(privacy, train, 5)
    again.load_state_dict(ledger.state_dict())
    assert again.results() == results


def test_a_target_epsilon_chooses_each_silos_sigma() -> None:
    privacy = PrivacyParams(dp="record", target_epsilon=3.0)
    train = TrainConfig(local_epochs=1, batch_size=16)
    dp = silo_dp_sgd(privacy, train, 10, 200)
    spent = accounting.record_epsilon(
        dp.noise_multiplier, dp.sample_rate, dp.steps * 10, privacy.default_delta(200)
    )
    assert spent <= 3.0 + 1e-6 and spent == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ConfigError) as err:  # every row in every step, thousands of steps
        silo_dp_sgd(PrivacyParams(dp="record", target_epsilon=1e-4), train, 10_000, 16)
    assert err.value.key == "privacy.target_epsilon"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["strategy=fedrep"], "strategy.head_epochs"),
        (["strategy=upgrad"], "privacy"),
        (["strategy=upgrad", "strategy.balancing=local"], "strategy.balancing"),
    ],
)
def test_what_dp_sgd_does_not_cover_is_refused_before_the_run(
    overrides: list[str], key: str
) -> None:
    from fedmtl.app.run.experiment import prepare  # noqa: PLC0415

    raw = compose_raw(["experiment=smoke", "privacy=dp_record", *overrides])
    with pytest.raises(ConfigError) as err:
        prepare(parse(raw))
    assert err.value.key == key


@pytest.mark.parametrize(
    "mode",
    [["privacy=dp_record"], ["privacy=secagg", "privacy.dp=record", "privacy.noise_multiplier=1"]],
)
def test_a_dp_record_run_reports_its_epsilon(tmp_path: Path, mode: list[str]) -> None:
    overrides = [
        "experiment=smoke",
        "runtime=inprocess",
        "tracking=quiet",
        "tracking.plots=false",
        "num_rounds=2",
        "train.max_steps=2",
        *mode,
    ]
    summary = launch.run(parse(compose_raw(overrides, tmp_path)))
    assert summary["status"] == "completed"
    privacy = summary["privacy"]
    assert privacy["mode"].endswith("dp_record") and privacy["unit"] == "record"
    assert privacy["epsilon"] is not None and privacy["epsilon"] > 0
    assert set(privacy["rounds_per_silo"].values()) <= {1, 2}
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if line["split"] == "train"]
    assert len(train) == 2 and train[-1]["privacy"]["epsilon"] == privacy["epsilon"]


def test_dp_sgd_trains_every_parameter_a_task_owns_by_its_role() -> None:
    """A gate in the trunk that only task ``a`` uses (role task) trains under DP-SGD as a head
    does: parameters are chosen by role, as in plain local training."""
    from tests.support.data import make_dataset  # noqa: PLC0415
    from tests.test_roles import TASKS as GATED_TASKS  # noqa: PLC0415
    from tests.test_roles import GatedTrunk  # noqa: PLC0415

    torch.manual_seed(0)
    model = MultiTaskModel(GatedTrunk(), GATED_TASKS)
    data = local_view(make_dataset(32, tasks=GATED_TASKS, seed=1), np.arange(32), ["a", "b"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dp = RecordDP(clip_norm=1.0, noise_multiplier=0.0, sample_rate=1.0, steps=2)
    train_local(model, data, PLAIN_SGD, torch.Generator().manual_seed(0), dp=dp)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert "trunk.gates.a" in moved and set(before) == moved
