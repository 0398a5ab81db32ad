"""The privacy accountant: epsilon at delta for what a run released, with dp-accounting's Renyi
DP accountant (Mironov 2017; ``dp_accounting.rdp.RdpAccountant``), and the noise multiplier a
target epsilon needs (``dp_accounting.calibrate_dp_mechanism``).

- **Silo level** (``dp: silo``): each round a silo takes part in releases per-task sums of
  sensitivity C with Gaussian noise sigma C: a Gaussian mechanism of noise multiplier sigma.
  The engine samples a fixed number of silos and the server knows which, so no amplification by
  sampling is claimed: a silo that took part in r rounds has spent r compositions,
  ``SelfComposedDpEvent(GaussianDpEvent(sigma), r)``. With adaptive clipping (Andrew et al. 2021)
  the clipped-count release is part of the same mechanism: the update noise is raised so that the
  pair has noise multiplier sigma (Flower's ``compute_adaptive_noise_params``).
- **Record level** (``dp: record``): a silo with n rows runs DP-SGD with Poisson sampling of rate
  q = B / n (each row in a step's batch with probability q, independently: amplification holds),
  k steps per round: ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` composed k r times.
  The run's epsilon is the largest over silos (the smallest silo spends the most).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import RecordDP, dp_steps
from strategies.engine.privacy import PrivacyParams

if TYPE_CHECKING:
    import dp_accounting

MAX_NOISE_MULTIPLIER = 1000.0
"""The largest noise multiplier :func:`calibrate` searches: above it a target is impossible in practice."""


def _library() -> Any:
    """dp-accounting, imported where DP is used (the extra ``fedmtl[privacy]``)."""
    try:
        import dp_accounting  # noqa: PLC0415 - optional: only runs with differential privacy
    except ImportError as err:
        raise ConfigError(
            "privacy.dp",
            "needs the accountant dp-accounting, which is not installed.",
            "pip install 'fedmtl[privacy]' (make install does).",
        ) from err
    return dp_accounting


def silo_event(noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    """``rounds`` Gaussian releases of noise multiplier sigma (silo-level DP)."""
    dp_accounting = _library()
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), rounds
    )


def record_event(noise_multiplier: float, rate: float, steps: int) -> dp_accounting.DpEvent:
    """``steps`` Poisson-sampled Gaussian steps (DP-SGD) at sampling rate q."""
    dp_accounting = _library()
    step = dp_accounting.PoissonSampledDpEvent(
        rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """epsilon at ``delta`` of ``event`` (inf without noise)."""
    # dp-accounting logs (through absl) each Renyi order whose series does not converge at small
    # sampling rates; those orders are left out of the minimum, which stays a valid bound.
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = _library().rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def silo_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """epsilon at delta of a silo that took part in ``rounds`` rounds (0 before any)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon(silo_event(noise_multiplier, rounds), delta)


def record_epsilon(noise_multiplier: float, rate: float, steps: int, delta: float) -> float:
    """epsilon at delta of a record of a silo that ran ``steps`` DP-SGD steps at rate q."""
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon(record_event(noise_multiplier, min(rate, 1.0), steps), delta)


def calibrate(
    target_epsilon: float,
    delta: float,
    make_event: Callable[[float], dp_accounting.DpEvent],
) -> float:
    """The smallest noise multiplier whose release ``make_event(sigma)`` spends at most
    ``target_epsilon`` at ``delta``; a target no sigma up to :data:`MAX_NOISE_MULTIPLIER`
    reaches is a :class:`ConfigError` on ``privacy.target_epsilon``."""
    dp_accounting = _library()
    try:
        sigma = dp_accounting.calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant,
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        )
    except (ValueError, RuntimeError) as err:
        raise _impossible(target_epsilon, delta, str(err)) from None
    if not math.isfinite(sigma) or sigma > MAX_NOISE_MULTIPLIER:
        raise _impossible(target_epsilon, delta, f"it needs a noise multiplier of {sigma:.3g}")
    return float(sigma)


def _impossible(target: float, delta: float, why: str) -> ConfigError:
    return ConfigError(
        "privacy.target_epsilon",
        f"epsilon {target} at delta {delta:g} cannot be reached with this run's releases ({why}).",
        f"raise target_epsilon, lower num_rounds (or local steps), or raise delta; a noise "
        f"multiplier above {MAX_NOISE_MULTIPLIER:g} would drown every update.",
    )


def record_noise(
    privacy: PrivacyParams, rate: float, steps_per_round: int, num_rounds: int, num_rows: int
) -> tuple[float, float]:
    """Record-level DP's (noise multiplier, delta) for a silo of ``num_rows`` rows: the configured
    sigma, or the smallest whose ``num_rounds`` x ``steps_per_round`` DP-SGD steps at rate q spend
    at most ``target_epsilon`` (each silo calibrates for its own q; the server computes the same
    from the silo's announced rows). delta defaults to min(1e-5, 1 / n^1.1)."""
    delta = privacy.default_delta(num_rows)
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier, delta
    assert privacy.target_epsilon is not None
    steps = steps_per_round * num_rounds
    sigma = calibrate(privacy.target_epsilon, delta, lambda s: record_event(s, rate, steps))
    return sigma, delta


@functools.lru_cache(maxsize=256)
def silo_dp_sgd(
    privacy: PrivacyParams, train: TrainConfig, num_rounds: int, num_rows: int
) -> RecordDP:
    """A silo's DP-SGD settings: Poisson rate q = min(1, B / n), the round's steps
    (:func:`fedmtl.core.training.dp_steps`), sigma from :func:`record_noise`."""
    rate = min(1.0, train.batch_size / max(num_rows, 1))
    steps = dp_steps(train, num_rows)
    sigma, _ = record_noise(privacy, rate, steps, num_rounds, num_rows)
    return RecordDP(privacy.clip_norm, sigma, rate, steps)
