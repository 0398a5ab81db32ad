"""Differential privacy (strategies/engine/summed.py, sums.py, accounting.py,
strategies/balancing/federated.py): clipping, the noise's statistics with fixed seeds, the
accountant against dp-accounting and a published example, target epsilons, and the balancing
Gramian's correction under noise."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp

from fedmtl.core.errors import ConfigError
from fedmtl.core.records import SiloInfo
from strategies.balancing.federated import debiased_gramian
from strategies.engine import GlobalModel, PrivacyParams, SumRule, accounting, silo_noise
from strategies.engine.sums import Contribution, add_noise, build_layout, clip_contribution, gather

MODEL = GlobalModel(
    {
        "trunk.w": np.zeros((50, 40), np.float32),
        "heads.a.w": np.zeros(30, np.float32),
        "heads.b.w": np.zeros(30, np.float32),
    }
)
SILOS = [SiloInfo(0, ("a", "b"), 10, 2, {"a": 10, "b": 8}, {"a": 2, "b": 2})]


def layout(mode: str = "per_task", bit: bool = False):  # type: ignore[no-untyped-def]
    return build_layout(
        MODEL,
        ("a", "b"),
        list(MODEL.arrays),
        mode,
        SumRule(),
        SILOS,
        False,
        bit,  # type: ignore[arg-type]
    )


def contribution(plan) -> Contribution:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    deltas = {f"heads.{t}.w": rng.normal(0, 1, 30) for t in "ab"}
    shares = {t: {"trunk.w": rng.normal(0, 1, (50, 40))} for t in "ab"}
    return gather(plan, deltas, shares, {"a": 10, "b": 8}, 10)


def test_clipping_bounds_the_whole_update_or_each_part() -> None:
    plan = layout(bit=True)
    raw = contribution(plan)
    whole = clip_contribution(plan, raw, 2.0, per_task=False)
    assert not whole.within and np.linalg.norm(whole.values[:-1]) == pytest.approx(2.0)
    assert whole.values[-1] == 0.0  # the adaptive clipping's bit: the update was clipped
    parts = clip_contribution(plan, raw, 2.0, per_task=True)
    assert plan.blocks == 2  # two tasks, no joint trunk in per-task mode
    size = 30 + 2000
    for start in (0, size):  # each task's head and share, to C / sqrt(2)
        assert np.linalg.norm(parts.values[start : start + size]) == pytest.approx(2 / math.sqrt(2))
    small = clip_contribution(plan, raw, 1e6, per_task=False)
    assert small.within and small.values[-1] == 1.0
    np.testing.assert_array_equal(small.values[:-1], raw.values[:-1])


def test_the_noise_std_is_sigma_times_c_on_what_dp_releases() -> None:
    plan = layout(bit=True)
    values = np.zeros(plan.size)
    add_noise(plan, values, std=1.5 * 0.8, bit_std=0.3, rng=np.random.default_rng(0))
    update = values[:-1]
    assert update.std() == pytest.approx(1.2, rel=0.02) and abs(update.mean()) < 0.03
    assert values[-1] != 0.0
    bits = np.array(
        [
            add_noise(plan, v := np.zeros(plan.size), 0.0, 0.3, np.random.default_rng(i)) or v[-1]
            for i in range(2000)
        ]
    )
    assert bits.std() == pytest.approx(0.3, rel=0.06)


def test_shares_of_the_noise_sum_to_the_central_noise() -> None:
    """Distributed DP: K silos each add N(0, sigma^2 C^2 / t); the sum has sigma^2 C^2 K / t."""
    plan = layout()
    sigma, clip, threshold, silos = 1.0, 0.5, 4, 6
    total = np.zeros(plan.size)
    for s in range(silos):
        share = np.zeros(plan.size)
        add_noise(plan, share, sigma * clip / math.sqrt(threshold), 0.0, np.random.default_rng(s))
        total += share
    expected = sigma * clip * math.sqrt(silos / threshold)
    assert total.std() == pytest.approx(expected, rel=0.03)


def test_the_accountant_equals_dp_accounting_and_the_published_example() -> None:
    reference = rdp.RdpAccountant()
    reference.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.2), 30))
    assert accounting.silo_epsilon(1.2, 30, 1e-5) == reference.get_epsilon(1e-5)
    assert accounting.silo_epsilon(1.0, 0, 1e-5) == 0.0
    assert accounting.silo_epsilon(0.0, 3, 1e-5) == math.inf
    # Bu, Dong, Long, Su (2020), Fig. 4: DP-SGD on MNIST, q = 256/60000, sigma 1.3, 20 epochs:
    # the moments accountant (Abadi et al. 2016) gives (1.34, 1e-5); sigma 0.7, 70 epochs: 8.68.
    # RDP's conversion is tighter than the moments accountant's, never looser.
    for sigma, epochs, published in ((1.3, 20, 1.34), (0.7, 70, 8.68)):
        steps = round(epochs * 60000 / 256)
        value = accounting.record_epsilon(sigma, 256 / 60000, steps, 1e-5)
        assert 0.8 * published <= value <= published


def test_a_target_epsilon_chooses_the_noise_and_an_impossible_one_is_refused() -> None:
    privacy = PrivacyParams(dp="silo", target_epsilon=3.0, delta=1e-5)
    sigma, delta = silo_noise(privacy, num_rounds=25, num_silos=12)
    assert delta == 1e-5
    spent = accounting.silo_epsilon(sigma, 25, delta)
    assert spent <= 3.0 and spent == pytest.approx(3.0, rel=0.02)
    assert silo_noise(PrivacyParams(dp="silo", noise_multiplier=0.7), 25, 12) == (0.7, 1e-5)
    with pytest.raises(ConfigError, match="cannot be reached") as err:
        silo_noise(PrivacyParams(dp="silo", target_epsilon=1e-3), num_rounds=100, num_silos=12)
    assert err.value.key == "privacy.target_epsilon"


def test_the_gramian_of_noisy_rows_is_debiased() -> None:
    """E||g + n||^2 = ||g||^2 + d s^2: the corrected Gramian averages to the noiseless one."""
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(3, 400, generator=generator, dtype=torch.float64)
    G = J @ J.T
    variances = [0.5, 1.0, 2.0]
    noise_std = torch.tensor(variances, dtype=torch.float64).sqrt()[:, None]
    draws = []
    raw = []
    for _ in range(300):
        noisy = J + noise_std * torch.randn(3, 400, generator=generator, dtype=torch.float64)
        gram = noisy @ noisy.T
        raw.append(gram)
        draws.append(debiased_gramian(gram, variances, 400))
    mean = torch.stack(draws).mean(0)
    biased = torch.stack(raw).mean(0)
    assert torch.allclose(
        torch.diag(biased) - torch.diag(G),
        400 * torch.tensor(variances, dtype=torch.float64),
        rtol=0.1,
    )
    assert torch.allclose(mean, G, atol=0.05 * float(torch.diag(G).min()))


def test_a_debiased_gramian_stays_positive_semi_definite() -> None:
    """A row that is mostly noise: G - diag(d s^2) alone has a negative eigenvalue, which the
    dual-cone QP refuses; the corrected Gramian is positive semi-definite and UPGrad solves it."""
    from strategies.balancing.dual_cone import DualConeParams, UPGrad  # noqa: PLC0415

    generator = torch.Generator().manual_seed(1)
    d = 400
    signal = torch.randn(3, d, generator=generator, dtype=torch.float64)
    signal[2] *= 0.01  # task 2's update is tiny beside its noise
    variances = [0.01, 0.01, 1.0]
    noise_std = torch.tensor(variances, dtype=torch.float64).sqrt()[:, None]
    noisy = signal + noise_std * torch.randn(3, d, generator=generator, dtype=torch.float64)
    gram = noisy @ noisy.T
    naive = gram - torch.diag(d * torch.tensor(variances, dtype=torch.float64))
    assert float(torch.linalg.eigvalsh(naive).min()) < 0
    corrected = debiased_gramian(gram, variances, d)
    assert float(torch.linalg.eigvalsh(corrected).min()) >= 0
    weights = UPGrad(DualConeParams())._from_gramian(corrected.float(), [0, 1, 2])
    assert torch.isfinite(weights).all()
