"""A round aggregated from task-aware sums (SecAgg+, silo-level DP): from the round's train
messages to the one aggregate update the method aggregates, and the run's privacy ledger.

- ``secagg``: the silos lay out, weight and mask their replies and the server unmasks only the
  sums (:class:`~strategies.engine.secagg.SecAggRound`); replies are checked on the silo before
  masking (a silo with a non-finite update drops out), and a silo lost in any stage is listed
  under ``rejected``; a round with fewer survivors than the threshold is sent again, then the run
  stops as for too few replies.
- ``dp_silo`` without SecAgg: the replies come in the clear and are checked as usual; the server
  lays out, clips and weights each one (:mod:`strategies.engine.sums`) and adds the noise to the
  sums: a trusted aggregator (central DP).
- ``secagg_dp_silo``: each silo clips and adds N(0, sigma^2 C^2 / t) to its own weighted values,
  t the SecAgg+ threshold, so that the K >= t survivors' sum carries at least sigma^2 C^2.

Silo-level DP's noise multiplier is ``privacy.noise_multiplier`` or the one
``privacy.target_epsilon`` needs over ``num_rounds`` (:mod:`strategies.engine.accounting`). With
adaptive clipping (Andrew et al., NeurIPS 2021) every silo also reports b_s = [||x_s|| <= C], the
noised count gives b = (sum_s b_s + N(0, sigma_b^2)) / K and C <- C exp(-eta (b - gamma)).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from fedmtl.core.errors import ConfigError
from fedmtl.core.records import (
    SECAGG_DP_BIT_NOISE,
    SECAGG_DP_CLIP,
    SECAGG_DP_NOISE,
    SECAGG_DP_PER_TASK,
    SiloInfo,
)
from fedmtl.core.schema import TrainConfig
from strategies.engine import accounting
from strategies.engine.dispatch import Dispatch
from strategies.engine.intake import Intake, rejection, take_updates
from strategies.engine.params import MethodParams
from strategies.engine.privacy import PrivacyParams
from strategies.engine.replies import ClientUpdate
from strategies.engine.secagg import SecAggFailed, SecAggRound
from strategies.engine.sums import (
    WITHIN,
    Layout,
    SumRule,
    add_noise,
    build_layout,
    clip_contribution,
    decode,
    gather_update,
    weighted,
)

log = logging.getLogger("fedmtl")

Exchange = Callable[[list[Message]], list[Message]]


@dataclass
class PrivateAggregation:
    """The server's side of a privacy mode whose server sees only sums, and its ledger: the
    current clipping norm, how many rounds each silo took part in, each round's report."""

    privacy: PrivacyParams
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    seed: int = 0
    clip_norm: float = field(init=False)
    rounds: dict[int, int] = field(default_factory=dict)
    """Silo id -> rounds its update was part of the aggregate."""
    report: dict[str, Any] = field(default_factory=dict)
    """The last round's figures (metrics.jsonl's ``privacy``)."""
    contributors: list[SiloInfo] = field(default_factory=list)
    """The last attempt's contributors (record-level DP's ledger counts them)."""
    noise: np.random.Generator = field(default_factory=np.random.default_rng)
    """The server's DP noise: fresh OS entropy (a seeded stream would let silos subtract it)."""

    def __post_init__(self) -> None:
        self.clip_norm = self.privacy.clip_norm

    @property
    def dp(self) -> bool:
        return self.privacy.dp == "silo"

    def noise_multipliers(self, contributors: int) -> tuple[float, float]:
        """(sigma_Delta, sigma_b): the update's and the clipped count's noise multipliers, whose
        pair spends what sigma alone would (Andrew et al. 2021, via Flower's helper)."""
        return adaptive_noise(self.privacy, self.noise_multiplier, contributors)

    def take(
        self,
        sent: Dispatch,
        exchange: Exchange,
        silos: Mapping[int, SiloInfo],
        params: MethodParams,
        rule: SumRule,
        tasks: Sequence[str],
        check_update: Callable[[ClientUpdate], None],
        loss_before: bool = True,
    ) -> Intake:
        """The round's aggregate update (at most one) from the replies to ``sent``
        (``loss_before``: the request asked the silos for their losses before training)."""
        self.contributors = []
        sent_keys = sorted({k for arrays in sent.sent.values() for k in arrays})
        layout = build_layout(
            sent.model,
            tasks,
            sent_keys,
            sent.update_mode,
            rule,
            list(silos.values()),
            releases_numbers=self.privacy.dp == "none",  # DP (silo or record) releases none
            bit=self.dp and self.privacy.adaptive_clipping,
            loss_before=loss_before,
        )
        sampled = len(sent.messages)
        update_sigma, bit_sigma = self.noise_multipliers(sampled)
        if self.privacy.secure:
            intake, values, counts, nodes, threshold = self._secure(
                sent, exchange, silos, layout, update_sigma, bit_sigma
            )
            noise_std = update_sigma * self.clip_norm * math.sqrt(len(nodes) / threshold)
        else:
            intake = take_updates(sent, exchange(sent.messages), silos, params, check_update)
            values, counts, nodes = self._central(layout, intake.updates, update_sigma, bit_sigma)
            noise_std = update_sigma * self.clip_norm
        contributors = [silos[n] for n in nodes]
        debias = self.dp and self.privacy.correct_gramian
        update = decode(layout, values, counts, contributors, noise_std if debias else 0.0)
        self._account(sent.server_round, layout, contributors, update, noise_std, bit_sigma)
        updates = [] if update is None else [update]
        return Intake(
            updates, intake.rejected, intake.bytes_up, intake.bytes_down, intake.non_finite
        )

    def _secure(
        self,
        sent: Dispatch,
        exchange: Exchange,
        silos: Mapping[int, SiloInfo],
        layout: Layout,
        update_sigma: float,
        bit_sigma: float,
    ) -> tuple[Intake, np.ndarray, dict[str, int], list[int], int]:
        protocol = SecAggRound(self.privacy, layout, exchange, sent.server_round, self.seed)
        nodes = [m.metadata.dst_node_id for m in sent.messages]
        threshold = max(round(self.privacy.threshold * len(nodes)), 2)
        if self.dp:
            share = math.sqrt(threshold)
            protocol.extra = {
                SECAGG_DP_CLIP: float(self.clip_norm),
                SECAGG_DP_PER_TASK: self.privacy.clipping == "per_task",
                SECAGG_DP_NOISE: float(update_sigma * self.clip_norm / share),
                SECAGG_DP_BIT_NOISE: float(bit_sigma / share),
            }
        rejected: list[dict[str, Any]] = []
        try:
            values, counts, survivors = protocol.run(sent.messages)
            threshold = protocol.threshold
        except SecAggFailed as err:
            log.warning("round %d: %s", sent.server_round, err)
            values, counts, survivors = np.zeros(0), {}, []
            rejected.append(
                rejection(sent.server_round, -1, None, f"secure aggregation failed: {err}")
            )
        for node, reason in protocol.dropped:
            rejected.append(rejection(sent.server_round, node, silos.get(node), reason))
        if protocol.overflow:
            log.warning(
                "round %d: %d weighted values lay outside [-%g, %g] and were clipped; raise "
                "privacy.clipping_range",
                sent.server_round, protocol.overflow, self.privacy.clipping_range,
                self.privacy.clipping_range,
            )  # fmt: skip
        self.report = {"overflow": protocol.overflow}
        intake = Intake([], rejected, protocol.bytes_up, protocol.bytes_down)
        return intake, values, counts, survivors, threshold

    def _central(
        self, layout: Layout, updates: list[ClientUpdate], update_sigma: float, bit_sigma: float
    ) -> tuple[np.ndarray, dict[str, int], list[int]]:
        """The server's own sums of the checked updates (silo-level DP without SecAgg)."""
        total = np.zeros(layout.size)
        counts = np.zeros(len(layout.counts), dtype=np.int64)
        per_task = self.privacy.clipping == "per_task"
        for update in updates:
            contribution = gather_update(layout, update, metrics=not self.dp)
            if self.dp:
                contribution = clip_contribution(layout, contribution, self.clip_norm, per_task)
            total += weighted(layout, contribution)
            counts += contribution.counts
        if self.dp:
            add_noise(layout, total, update_sigma * self.clip_norm, bit_sigma, self.noise)
        self.report = {}
        return (
            total,
            dict(zip(layout.counts, counts.tolist(), strict=True)),
            [u.node_id for u in updates],
        )

    def _account(
        self,
        server_round: int,
        layout: Layout,
        contributors: Sequence[SiloInfo],
        update: ClientUpdate | None,
        noise_std: float,
        bit_sigma: float,
    ) -> None:
        """The round's ledger: rounds per silo, epsilon so far, the adaptive clipping step."""
        self.contributors = list(contributors)
        for silo in contributors:
            self.rounds[silo.silo_id] = self.rounds.get(silo.silo_id, 0) + 1
        self.report.update({"mode": self.privacy.mode, "contributors": len(contributors)})
        if not self.dp:
            return
        spent = max(self.rounds.values(), default=0)
        self.report.update(
            {
                "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm,
                "noise_std": noise_std,
                "delta": self.delta,
                "epsilon": finite(
                    accounting.silo_epsilon(self.noise_multiplier, spent, self.delta)
                ),
            }
        )
        if self.privacy.adaptive_clipping and update is not None and contributors:
            within = update.method_metrics.pop(WITHIN, 0.0)
            fraction = within / len(contributors)
            self.clip_norm *= math.exp(
                -self.privacy.clip_lr * (fraction - self.privacy.target_quantile)
            )
            self.report["unclipped_fraction"] = fraction
        del layout, server_round

    def results(self) -> dict[str, Any]:
        """``summary.json``'s ``privacy`` block."""
        spent = max(self.rounds.values(), default=0)
        out: dict[str, Any] = {
            "mode": self.privacy.mode,
            "secure_aggregation": self.privacy.secure_aggregation,
            "dp": self.privacy.dp,
        }
        if self.privacy.secure:
            out["secagg"] = {
                "threshold": self.privacy.threshold,
                "num_shares": self.privacy.num_shares,
                "clipping_range": self.privacy.clipping_range,
                "quantization_bits": self.privacy.quantization_bits,
                "modulus_bits": self.privacy.modulus_bits,
                "quantization_step": self.privacy.quantization_step(),
            }
        if self.dp:
            out.update(
                {
                    "unit": "silo",
                    "epsilon": finite(
                        accounting.silo_epsilon(self.noise_multiplier, spent, self.delta)
                    ),
                    "delta": self.delta,
                    "noise_multiplier": self.noise_multiplier,
                    "target_epsilon": self.privacy.target_epsilon,
                    "clip_norm": self.privacy.clip_norm,
                    "final_clip_norm": self.clip_norm,
                    "clipping": self.privacy.clipping,
                    "adaptive_clipping": self.privacy.adaptive_clipping,
                    "rounds_per_silo": {str(k): v for k, v in sorted(self.rounds.items())},
                    "sampling": "fixed-size, chosen by the server: no amplification claimed",
                    "accountant": "dp_accounting RDP",
                }
            )
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "rounds": {str(k): v for k, v in self.rounds.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
        self.rounds = {int(k): int(v) for k, v in state["rounds"].items()}


def silo_noise(privacy: PrivacyParams, num_rounds: int, num_silos: int) -> tuple[float, float]:
    """Silo-level DP's (noise multiplier, delta): ``noise_multiplier``, or the smallest one whose
    ``num_rounds`` releases spend at most ``target_epsilon`` at ``delta`` (a silo may take part in
    every round); delta defaults to 1 / silos^1.1. A target it cannot reach is a ConfigError."""
    delta = privacy.default_delta(num_silos)
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier, delta
    assert privacy.target_epsilon is not None
    sigma = accounting.calibrate(
        privacy.target_epsilon, delta, lambda s: accounting.silo_event(s, num_rounds)
    )
    return sigma, delta


def private_aggregation(
    privacy: PrivacyParams, num_rounds: int, num_silos: int, seed: int
) -> PrivateAggregation | None:
    """The engine's aggregation from sums for ``privacy`` (None when the server sees updates)."""
    if not privacy.summed:
        return None
    sigma, delta = (
        silo_noise(privacy, num_rounds, num_silos) if privacy.dp == "silo" else (0.0, 0.0)
    )
    return PrivateAggregation(privacy, sigma, delta, seed)


def adaptive_noise(privacy: PrivacyParams, sigma: float, contributors: int) -> tuple[float, float]:
    """(sigma_Delta, sigma_b) for ``contributors`` silos: sigma itself without adaptive clipping;
    with it, Flower's ``compute_adaptive_noise_params`` (Andrew et al. 2021: the count's noise
    std sigma_b, default contributors / 20, and the update's multiplier (sigma^-2 -
    (2 sigma_b)^-2)^-1/2). A sigma_b too small for sigma is a ConfigError."""
    if not privacy.adaptive_clipping:
        return sigma, 0.0
    try:
        bit, update = compute_adaptive_noise_params(
            sigma, contributors, privacy.clipped_count_stddev
        )
    except ValueError as err:
        raise ConfigError(
            "privacy.clipped_count_stddev",
            f"adaptive clipping over {contributors} silos per round: {err}",
            f"set privacy.clipped_count_stddev above {sigma / 2:g} (the count's noise), or lower "
            "the noise multiplier.",
        ) from None
    return update, bit


def finite(value: float) -> float | None:
    """``value``, or None where it is infinite (no noise: no guarantee; JSON has no infinity)."""
    return value if math.isfinite(value) else None


@dataclass
class RecordLedger:
    """Record-level DP's accounting at the server: each silo's DP-SGD settings follow from its
    announced rows and the run's train config (:func:`~strategies.engine.accounting.silo_dp_sgd`,
    as on the silo), and each silo's epsilon from the rounds it trained in; the run's epsilon is
    the largest over silos, at the smallest silo's delta."""

    privacy: PrivacyParams
    train: TrainConfig
    num_rounds: int
    rounds: dict[int, int] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def observe(self, silos: Sequence[SiloInfo]) -> None:
        """An attempt at a round released the updates of ``silos`` (counted even when the round
        is then retried: their DP-SGD steps ran and their updates left them)."""
        for info in silos:
            self.rounds[info.silo_id] = self.rounds.get(info.silo_id, 0) + 1
            self.rows[info.silo_id] = info.num_train
        self.report = {"mode": self.privacy.mode, **self._spent()}

    def _spent(self) -> dict[str, Any]:
        per_silo: dict[str, float | None] = {}
        worst, delta = 0.0, 1.0
        for silo, rounds in sorted(self.rounds.items()):
            rows = self.rows[silo]
            dp = accounting.silo_dp_sgd(self.privacy, self.train, self.num_rounds, rows)
            silo_delta = self.privacy.default_delta(rows)
            value = accounting.record_epsilon(
                dp.noise_multiplier, dp.sample_rate, dp.steps * rounds, silo_delta
            )
            per_silo[str(silo)] = finite(value)
            worst, delta = max(worst, value), min(delta, silo_delta)
        return {"epsilon": finite(worst), "delta": delta, "epsilon_per_silo": per_silo}

    def results(self) -> dict[str, Any]:
        sigmas = {
            str(s): accounting.silo_dp_sgd(
                self.privacy, self.train, self.num_rounds, n
            ).noise_multiplier
            for s, n in sorted(self.rows.items())
        }
        return {
            "mode": self.privacy.mode,
            "secure_aggregation": self.privacy.secure_aggregation,
            "dp": "record",
            "unit": "record",
            **self._spent(),
            "noise_multiplier": self.privacy.noise_multiplier,
            "noise_multiplier_per_silo": sigmas,
            "target_epsilon": self.privacy.target_epsilon,
            "clip_norm": self.privacy.clip_norm,
            "rounds_per_silo": {str(k): v for k, v in sorted(self.rounds.items())},
            "sampling": "Poisson, rate batch_size / rows per silo: amplification holds",
            "accountant": "dp_accounting RDP",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "rounds": {str(k): v for k, v in self.rounds.items()},
            "rows": {str(k): v for k, v in self.rows.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rounds = {int(k): int(v) for k, v in state["rounds"].items()}
        self.rows = {int(k): int(v) for k, v in state["rows"].items()}
