"""The vectorised runtime: batched local training equals the sequential loop, silo by silo.

Tolerances: batched products and masked means add in another order than the sequential loop, so
parameters, per-task shares and losses agree to rtol 1e-4 and atol 1e-5 (float32); Adam's
per-task shares divide by sqrt(v_hat) + eps and amplify rounding most (observed ~2e-5 relative).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.silo.batch import sequential_reason
from fedmtl.core.data import LocalData, local_view
from fedmtl.core.records import Groups, MethodSpec, TrainRequest
from fedmtl.core.schema import ModelConfig, TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import mean_task_losses, train_local
from fedmtl.core.vectorized import SiloJob, train_vectorized, unsupported
from fedmtl.trunks import MLPParams, build_model
from strategies import METHODS
from tests.support.data import make_dataset, small_model
from tests.support.runs import compose_raw, read_jsonl

RTOL, ATOL = 1e-4, 1e-5
TASKS = (TaskSpec.multiclass("a", 3), TaskSpec.binary("b"), TaskSpec.regression("c"))
# (tasks, rows): different task sets and sizes, so silos take different numbers of steps.
SILOS = [(("a", "b", "c"), 37), (("b",), 64), (("c", "a"), 5), (("a",), 50), (("b", "c"), 21)]


def silo_views() -> list[LocalData]:
    """Five silos of one dataset whose labels are 40% missing (some batches have none)."""
    dataset = make_dataset(200, tasks=TASKS, label_rate=0.4, seed=1, input_dim=5)
    views, start = [], 0
    for tasks, rows in SILOS:
        views.append(local_view(dataset, np.arange(start, start + rows), list(tasks)))
        start += rows
    return views


def starts(count: int) -> list[dict[str, torch.Tensor]]:
    """A different starting model per silo (the server may send per-silo values)."""
    model = small_model((5,), TASKS, seed=3)
    return [{k: v.detach() + 0.01 * s for k, v in model.named_parameters()} for s in range(count)]


def sequential(
    data: LocalData, start: dict[str, torch.Tensor], cfg: TrainConfig, seed: int, mode: str
) -> tuple[dict[str, torch.Tensor], object, dict[str, float]]:
    """What the in-process runtime computes for one silo: loss before, then train_local."""
    model = small_model((5,), TASKS, seed=3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(start[name])
    loss_before = mean_task_losses(model, data)
    result = train_local(model, data, cfg, torch.Generator().manual_seed(seed), update_mode=mode)
    return dict(model.named_parameters()), result, loss_before


CONFIGS = {
    "sgd-momentum-decay": TrainConfig(
        local_epochs=2, batch_size=4, lr=0.05, momentum=0.9, weight_decay=0.01
    ),
    "plain-sgd": TrainConfig(local_epochs=2, batch_size=4, lr=0.05, momentum=0.0),
    "adam-decay": TrainConfig(
        local_epochs=2, batch_size=4, optimizer="adam", lr=0.01, weight_decay=0.01
    ),
    "adam-max-steps": TrainConfig(local_epochs=3, batch_size=8, optimizer="adam", max_steps=5),
}


def test_losses_before_training_only_when_asked() -> None:
    views = silo_views()
    jobs = [SiloJob(v, 7, b) for v, b in zip(views, starts(len(views)), strict=True)]
    cfg = CONFIGS["plain-sgd"]
    asked = train_vectorized(small_model((5,), TASKS, seed=3), jobs, cfg, "joint")
    skipped = train_vectorized(
        small_model((5,), TASKS, seed=3), jobs, cfg, "joint", "float32", False
    )
    assert all(outcome.loss_before for outcome in asked)
    assert all(outcome.loss_before == {} for outcome in skipped)
    for with_losses, without in zip(asked, skipped, strict=True):  # the training is the same
        for key, value in with_losses.params.items():
            torch.testing.assert_close(without.params[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["joint", "per_task"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_training_equals_the_sequential_loop(name: str, mode: str) -> None:
    cfg = CONFIGS[name]
    views = silo_views()
    begin = starts(len(views))
    seeds = [101 + s for s in range(len(views))]
    jobs = [SiloJob(v, seed, b) for v, seed, b in zip(views, seeds, begin, strict=True)]
    outcomes = train_vectorized(small_model((5,), TASKS, seed=3), jobs, cfg, mode)  # type: ignore[arg-type]
    skipped = False
    for view, seed, start, outcome in zip(views, seeds, begin, outcomes, strict=True):
        params, result, loss_before = sequential(view, start, cfg, seed, mode)
        batches = cfg.local_epochs * math.ceil(view.num_samples / cfg.batch_size)
        skipped |= cfg.max_steps is None and result.steps < batches
        assert outcome.result.steps == result.steps
        own = [t.name for t in view.tasks]
        for key, value in params.items():
            if key.startswith("heads.") and key.split(".")[1] not in own:
                continue  # heads of other tasks are neither used nor sent
            torch.testing.assert_close(outcome.params[key], value.detach(), rtol=RTOL, atol=ATOL)
        assert outcome.result.mean_loss == pytest.approx(result.mean_loss, rel=RTOL, abs=ATOL)
        assert outcome.loss_before == pytest.approx(loss_before, rel=RTOL, abs=ATOL)
        if mode == "per_task":
            assert result.task_trunk_deltas is not None
            assert outcome.result.task_trunk_deltas is not None
            assert set(outcome.result.task_trunk_deltas) == set(own)
            for task, shares in result.task_trunk_deltas.items():
                for key, share in shares.items():
                    got = outcome.result.task_trunk_deltas[task][key]
                    torch.testing.assert_close(got, share, rtol=RTOL, atol=ATOL)
        else:
            assert outcome.result.task_trunk_deltas is None
    assert skipped or cfg.max_steps is not None, "no silo skipped an unlabelled batch"


def test_models_that_cannot_be_batched_exactly_say_why() -> None:
    with_dropout = build_model(
        ModelConfig("mlp", MLPParams(hidden=[8], dropout=0.2)), (5,), TASKS, seed=0
    )
    assert "dropout" in (unsupported(with_dropout) or "")
    grouped = small_model((5,), TASKS, seed=0, groups={"g": ("a", "b"), "h": ("c",)})
    assert "task group" in (unsupported(grouped) or "")
    assert unsupported(small_model((5,), TASKS, seed=0)) is None
    with pytest.raises(ValueError, match="dropout"):
        train_vectorized(with_dropout, [], TrainConfig(), "joint")


def reason(name: str, params: dict[str, Any], groups: Groups | None = None) -> str | None:
    """Why method ``name``'s silo half, asked with ``params``, trains one silo at a time."""
    request = TrainRequest(1, TrainConfig(), MethodSpec(name, params), groups=groups)
    return sequential_reason(request, METHODS.get(name).factory.silo.from_spec(params))


def test_requests_that_train_one_by_one_say_why() -> None:
    for plain in ("fedavg", "balanced", "grouping", "matfl", "fedhca2", "single_task"):
        assert reason(plain, {}) is None, plain
    assert reason("fedprox", {"mu": 0.0}) is None
    cases = {
        "KeptHeadsSilo": ("fedper", {}),
        "LocalSilo": ("local", {}),
        "DittoSilo": ("ditto", {"lam": 0.1}),
        "silo-side balancing": ("balanced", {"weighting": {"name": "mgda"}}),
        "proximal": ("fedprox", {"mu": 0.1}),
        "affinity probe": ("grouping", {"affinity": "tag", "every": 2}),
    }
    for words, (name, params) in cases.items():
        assert words in (reason(name, params) or ""), name
    assert "task group" in (reason("fedavg", {}, {"g": ("a",)}) or "")


SMALL = [
    "dataset=synthetic",
    "dataset.num_samples=600",
    "partition.num_silos=4",
    "tracking=quiet",
    "num_rounds=2",
]


def run_both(tmp_path: Path, extra: list[str]) -> tuple[list[dict], list[dict]]:
    """The same experiment on ``inprocess`` and ``vectorized``: their metrics.jsonl rows."""
    rows = []
    for runtime in ("inprocess", "vectorized"):
        out = tmp_path / runtime
        run(parse(compose_raw([*SMALL, *extra, f"runtime={runtime}"], out)))
        rows.append(read_jsonl(out / "metrics.jsonl"))
    return rows[0], rows[1]


def assert_rows_close(expected: list[dict], got: list[dict], exact: bool = False) -> None:
    assert [(r["round"], r["split"]) for r in got] == [(r["round"], r["split"]) for r in expected]
    for want, have in zip(expected, got, strict=True):
        flat_want = json.dumps(want["metrics"], sort_keys=True)
        if exact:
            assert json.dumps(have["metrics"], sort_keys=True) == flat_want
            continue
        for task, metrics in want["metrics"].items():
            for key, value in metrics.items():
                if isinstance(value, float):
                    assert have["metrics"][task][key] == pytest.approx(value, rel=RTOL, abs=ATOL)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "extra",
    [
        ["strategy=fedavg", "train.optimizer=adam", "train.lr=0.01"],
        ["strategy=mgda"],  # per_task updates, balanced at the server
    ],
)
def test_vectorized_runtime_equals_inprocess(
    tmp_path: Path, extra: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        expected, got = run_both(tmp_path, extra)
    assert "one by one" not in caplog.text
    assert_rows_close(expected, got)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_vectorized_runtime_falls_back_to_sequential_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropout masks cannot be batched exactly: the silos train one by one, results unchanged."""
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        expected, got = run_both(tmp_path, ["model.dropout=0.2"])
    assert "vectorized runtime: training silos one by one: dropout" in caplog.text
    assert_rows_close(expected, got, exact=True)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_trains_close_to_float32(precision: str) -> None:
    """Autocast changes results by more than rounding, but not by much on a few steps."""
    views = silo_views()
    jobs = [SiloJob(v, 7 + s, b) for s, (v, b) in enumerate(zip(views, starts(5), strict=True))]
    cfg = CONFIGS["sgd-momentum-decay"]
    exact = train_vectorized(small_model((5,), TASKS, seed=3), jobs, cfg, "joint")
    mixed = train_vectorized(small_model((5,), TASKS, seed=3), jobs, cfg, "joint", precision)  # type: ignore[arg-type]
    for want, got in zip(exact, mixed, strict=True):
        assert got.result.steps == want.result.steps
        assert got.result.mean_loss == pytest.approx(want.result.mean_loss, abs=0.02)
        for key, value in want.params.items():
            torch.testing.assert_close(got.params[key], value, rtol=0, atol=0.05)
