"""Task specifications: losses against torch references, additive metric sums, chance levels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmtl.core.tasks import METRIC_RANGES, TaskSpec, metric_range

KINDS = ("multiclass", "binary", "regression")


def spec_of(kind: str, num_classes: int = 4) -> TaskSpec:
    if kind == "multiclass":
        return TaskSpec.multiclass("task", num_classes)
    if kind == "binary":
        return TaskSpec.binary("task")
    return TaskSpec.regression("task")


def random_batch(
    spec: TaskSpec, n: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random outputs (n x output_size) and targets (n,) of the dtype ``spec`` expects."""
    gen = torch.Generator().manual_seed(seed)
    outputs = torch.randn(n, spec.output_size, generator=gen, dtype=dtype)
    if spec.kind == "multiclass":
        targets = torch.randint(0, spec.num_classes or 2, (n,), generator=gen)
    elif spec.kind == "binary":
        targets = torch.randint(0, 2, (n,), generator=gen).to(dtype)
    else:
        targets = torch.randn(n, generator=gen, dtype=dtype)
    return outputs, targets


def add_sums(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}


# ---------------------------------------------------------------------------------------------
# Losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_loss_is_cross_entropy(seed: int) -> None:
    spec = spec_of("multiclass", 5)
    outputs, targets = random_batch(spec, 17, seed)
    torch.testing.assert_close(spec.loss(outputs, targets), F.cross_entropy(outputs, targets))
    assert spec.loss_name == "cross_entropy"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_loss_is_bce_with_logits(seed: int) -> None:
    spec = spec_of("binary")
    outputs, targets = random_batch(spec, 17, seed)
    expected = F.binary_cross_entropy_with_logits(outputs[:, 0], targets)
    torch.testing.assert_close(spec.loss(outputs, targets), expected)
    # By hand: -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], averaged.
    p = torch.sigmoid(outputs[:, 0].double())
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(spec.loss(outputs, targets)) == pytest.approx(float(by_hand), rel=1e-5)
    assert spec.loss_name == "binary_cross_entropy"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_loss_is_mse(seed: int) -> None:
    spec = spec_of("regression")
    outputs, targets = random_batch(spec, 17, seed)
    torch.testing.assert_close(spec.loss(outputs, targets), F.mse_loss(outputs[:, 0], targets))
    by_hand = float(((outputs[:, 0] - targets) ** 2).mean())
    assert float(spec.loss(outputs, targets)) == pytest.approx(by_hand, rel=1e-6)
    assert spec.loss_name == "mse"


@pytest.mark.parametrize("kind", ["binary", "regression"])
def test_single_row_loss_keeps_shapes(kind: str) -> None:
    """A batch of one row: (1, 1) outputs squeeze to (1,), not to a scalar that broadcasts."""
    spec = spec_of(kind)
    outputs, targets = random_batch(spec, 1, seed=3)
    loss = spec.loss(outputs, targets)
    assert loss.shape == ()
    if kind == "binary":
        expected = F.binary_cross_entropy_with_logits(outputs.reshape(1), targets)
    else:
        expected = F.mse_loss(outputs.reshape(1), targets)
    torch.testing.assert_close(loss, expected)


def test_loss_is_differentiable() -> None:
    for kind in KINDS:
        spec = spec_of(kind)
        outputs, targets = random_batch(spec, 6, seed=4)
        outputs.requires_grad_(True)
        spec.loss(outputs, targets).backward()
        assert outputs.grad is not None and outputs.grad.shape == outputs.shape


# ---------------------------------------------------------------------------------------------
# Metric sums: additivity and values


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), data=st.data(), seed=st.integers(0, 10_000))
def test_metric_sums_are_additive(kind: str, n: int, data: st.DataObject, seed: int) -> None:
    """Sums over two halves of a batch, added and finalized, give the whole batch's metrics."""
    split = data.draw(st.integers(0, n), label="split")
    spec = spec_of(kind, num_classes=3)
    outputs, targets = random_batch(spec, n, seed, dtype=torch.float64)
    whole = spec.metric_sums(outputs, targets)
    halves = add_sums(
        spec.metric_sums(outputs[:split], targets[:split]),
        spec.metric_sums(outputs[split:], targets[split:]),
    )
    assert set(halves) == set(whole)
    for key in whole:
        assert halves[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-9), key
    final_whole = spec.finalize_metrics(whole)
    final_halves = spec.finalize_metrics(halves)
    assert set(final_whole) == set(final_halves) == {m.name for m in spec.metrics}
    for key, value in final_whole.items():
        assert final_halves[key] == pytest.approx(value, rel=1e-7, abs=1e-9), key
    assert final_whole["loss"] == pytest.approx(float(spec.loss(outputs, targets)), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 50.0]))
def test_every_metric_stays_in_its_range(kind: str, n: int, seed: int, scale: float) -> None:
    """The ranges the report clips its bands to hold the metrics of any predictions."""
    spec = spec_of(kind, num_classes=3)
    outputs, targets = random_batch(spec, n, seed, dtype=torch.float64)
    metrics = spec.finalize_metrics(spec.metric_sums(scale * outputs, targets))
    assert {m.name for m in spec.metrics} <= set(METRIC_RANGES)
    for name, value in metrics.items():
        low, high = metric_range(name)
        assert low <= value <= high, (name, value)
    assert metric_range("unknown") == (-math.inf, math.inf)


@pytest.mark.parametrize("kind", KINDS)
def test_metric_sums_additive_over_many_chunks(kind: str) -> None:
    """Float32 batches cut in uneven chunks (as ``evaluate`` does) pool to the whole batch."""
    spec = spec_of(kind)
    outputs, targets = random_batch(spec, 101, seed=7)
    whole = spec.finalize_metrics(spec.metric_sums(outputs, targets))
    total: dict[str, float] = {}
    for start, stop in [(0, 3), (3, 50), (50, 51), (51, 101)]:
        total = add_sums(total, spec.metric_sums(outputs[start:stop], targets[start:stop]))
    pooled = spec.finalize_metrics(total)
    for key, value in whole.items():
        assert pooled[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_multiclass_accuracy_of_perfect_predictions_is_one() -> None:
    spec = spec_of("multiclass", 4)
    targets = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    outputs = 10.0 * F.one_hot(targets, 4).float()
    metrics = spec.finalize_metrics(spec.metric_sums(outputs, targets))
    assert metrics["accuracy"] == 1.0
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(outputs, targets)))
    # Wrong everywhere: accuracy 0.
    wrong = 10.0 * F.one_hot((targets + 1) % 4, 4).float()
    assert spec.finalize_metrics(spec.metric_sums(wrong, targets))["accuracy"] == 0.0


def test_binary_accuracy_counts_positive_logits_as_one() -> None:
    spec = spec_of("binary")
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    perfect = (targets * 2 - 1).unsqueeze(-1) * 3.0
    assert spec.finalize_metrics(spec.metric_sums(perfect, targets))["accuracy"] == 1.0
    outputs = torch.tensor(
        [[0.5], [0.5], [-0.5], [-0.5], [2.0]]
    )  # right, wrong, right, wrong, right
    assert spec.finalize_metrics(spec.metric_sums(outputs, targets))["accuracy"] == pytest.approx(
        3 / 5
    )


def test_regression_r2_perfect_mean_and_by_hand() -> None:
    spec = spec_of("regression")
    gen = torch.Generator().manual_seed(11)
    targets = torch.randn(50, generator=gen, dtype=torch.float64) * 2 + 3
    perfect = spec.finalize_metrics(spec.metric_sums(targets.unsqueeze(-1), targets))
    assert perfect["r2"] == pytest.approx(1.0)
    assert perfect["mse"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["mae"] == pytest.approx(0.0, abs=1e-12)

    mean = torch.full((50, 1), float(targets.mean()), dtype=torch.float64)
    at_mean = spec.finalize_metrics(spec.metric_sums(mean, targets))
    assert at_mean["r2"] == pytest.approx(0.0, abs=1e-9)

    outputs = targets.unsqueeze(-1) + 0.7 * torch.randn(50, 1, generator=gen, dtype=torch.float64)
    metrics = spec.finalize_metrics(spec.metric_sums(outputs, targets))
    residual = outputs[:, 0] - targets
    sse = float((residual**2).sum())
    sst = float(((targets - targets.mean()) ** 2).sum())
    assert metrics["r2"] == pytest.approx(1.0 - sse / sst, rel=1e-9)
    assert metrics["mse"] == pytest.approx(sse / 50, rel=1e-9)
    assert metrics["loss"] == pytest.approx(sse / 50, rel=1e-9)
    assert metrics["mae"] == pytest.approx(float(residual.abs().mean()), rel=1e-9)


def test_regression_r2_of_constant_targets_is_zero() -> None:
    spec = spec_of("regression")
    targets = torch.full((5,), 2.0)
    metrics = spec.finalize_metrics(spec.metric_sums(torch.zeros(5, 1), targets))
    assert metrics["r2"] == 0.0
    assert math.isfinite(metrics["mse"])


@pytest.mark.parametrize("kind", KINDS)
def test_finalize_of_empty_sums_is_empty(kind: str) -> None:
    spec = spec_of(kind)
    assert spec.finalize_metrics({}) == {}
    assert spec.finalize_metrics({"n": 0.0}) == {}
    outputs, targets = random_batch(spec, 0)
    empty = spec.metric_sums(outputs, targets)
    assert empty == {"n": 0.0}
    assert spec.finalize_metrics(empty) == {}


# ---------------------------------------------------------------------------------------------
# Chance level, info, validation


def test_chance_level_is_majority_frequency() -> None:
    multiclass = spec_of("multiclass", 4)
    assert multiclass.chance_level(torch.tensor([0, 1, 1, 3, 1])) == pytest.approx(3 / 5)
    assert multiclass.chance_level(torch.tensor([2, 2])) == 1.0
    binary = spec_of("binary")
    assert binary.chance_level(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)
    assert binary.chance_level(torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(2 / 3)
    regression = spec_of("regression")
    assert regression.chance_level(torch.randn(10)) == 0.0
    for spec in (multiclass, binary, regression):
        assert spec.chance_level(torch.zeros(0, dtype=spec.target_dtype)) == 0.0


def test_chance_level_matches_best_constant_accuracy() -> None:
    spec = spec_of("multiclass", 3)
    targets = torch.tensor([2, 0, 2, 1, 2, 0])
    best = max(
        spec.finalize_metrics(spec.metric_sums(F.one_hot(torch.full((6,), c), 3).float(), targets))[
            "accuracy"
        ]
        for c in range(3)
    )
    assert spec.chance_level(targets) == pytest.approx(best)


@pytest.mark.parametrize(
    ("spec", "num_classes", "primary", "higher"),
    [
        (TaskSpec.multiclass("a", 7), 7, "accuracy", True),
        (TaskSpec.binary("b"), 2, "accuracy", True),
        (TaskSpec.regression("c"), None, "r2", True),
    ],
)
def test_info(spec: TaskSpec, num_classes: int | None, primary: str, higher: bool) -> None:
    info = spec.info()
    assert info["kind"] == spec.kind
    assert info["num_classes"] == num_classes
    assert info["primary_metric"] == primary == spec.primary_metric.name
    assert info["higher_is_better"] is higher
    assert info["loss"] == spec.loss_name
    assert {m.name: m.higher_is_better for m in spec.metrics}["loss"] is False


def test_constructors_and_dtypes() -> None:
    assert TaskSpec.multiclass("a", 3).output_size == 3
    assert TaskSpec.binary("b").output_size == 1
    assert TaskSpec.regression("c").output_size == 1
    assert TaskSpec.multiclass("a", 3).target_dtype == torch.long
    assert TaskSpec.binary("b").target_dtype == torch.float32
    assert TaskSpec.regression("c").target_dtype == torch.float32


@pytest.mark.parametrize(
    "build",
    [
        lambda: TaskSpec.binary("a.b"),
        lambda: TaskSpec.regression("a/b"),
        lambda: TaskSpec.binary(""),
        lambda: TaskSpec.multiclass("m", 1),
        lambda: TaskSpec.multiclass("m", 0),
        lambda: TaskSpec("m", "multiclass", 3, None),
        lambda: TaskSpec("m", "multiclass", 3, 4),
        lambda: TaskSpec("b", "binary", 2, 2),
        lambda: TaskSpec("r", "regression", 3),
    ],
    ids=[
        "dot",
        "slash",
        "empty",
        "one-class",
        "zero-class",
        "multiclass-no-classes",
        "multiclass-size",
        "binary-size",
        "regression-size",
    ],
)
def test_invalid_specs_raise(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_regression_r2_with_offset_float32_targets() -> None:
    """R^2 must not depend on a constant offset of the targets (float32, as datasets store them)."""
    spec = spec_of("regression")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1000, generator=gen)
    error = 0.5 * torch.randn(1000, generator=gen)
    centred = spec.finalize_metrics(spec.metric_sums((noise + error).unsqueeze(-1), noise))
    targets = 1e4 + noise
    outputs = (targets + error).unsqueeze(-1)
    y, yhat = targets.double(), outputs[:, 0].double()
    by_hand = 1.0 - float(((yhat - y) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())
    assert centred["r2"] == pytest.approx(by_hand, abs=0.01)  # the offset only costs rounding
    metrics = spec.finalize_metrics(spec.metric_sums(outputs, targets))
    assert metrics["r2"] == pytest.approx(by_hand, abs=1e-3)
