"""Privacy modes: what the config group ``privacy`` chooses, and what each mode refuses.

``privacy`` is ``{name, ...}`` with the fields of :class:`PrivacyParams` (the schema); the registry
:data:`PRIVACY` holds one entry per preset (``configs/privacy/<name>.yaml``), each a subclass whose
defaults are the preset's:

- ``none``: updates travel in the clear (the default; results are those of the plain engine).
- ``secagg``: ``secure_aggregation: secagg_plus``, SecAgg+ (Bell et al., CCS 2020, "Secure
  Single-Server Aggregation with (Poly)Logarithmic Overhead") over task-aware sums: the server
  learns, per task, only the sum over that task's holders (:mod:`strategies.engine.sums`,
  :mod:`strategies.engine.secagg`).
- ``dp_silo``: ``dp: silo``, silo-level differential privacy (DP-FedAvg, McMahan et al., ICLR
  2018): each silo's whole contribution clipped to ``clip_norm`` (the whole vector, or each task's
  part to ``clip_norm / sqrt(T_max + 1)``), Gaussian noise of std ``noise_multiplier x clip_norm``
  on every per-task sum; fixed or adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially
  Private Learning with Adaptive Clipping").
- ``secagg_dp_silo``: both; the silos add the noise in shares (distributed DP), so the server never
  sees an un-noised sum.
- ``dp_record``: ``dp: record``, DP-SGD (Abadi et al., CCS 2016) in every silo's local training:
  Poisson-sampled batches, each record's gradient (all of its tasks together) clipped to
  ``clip_norm``, Gaussian noise of std ``noise_multiplier x clip_norm`` on the batch's sum.

``noise_multiplier`` fixes the noise; ``target_epsilon`` (with ``delta``) chooses it before the
run with the accountant (:mod:`strategies.engine.accounting`). A method whose aggregation reads
individual updates (:meth:`strategies.engine.Method.secure_sums`), the robust rules that do
(``robust`` other than ``mean``, ``norm_bound``, ``max_count_ratio``) and compressed updates
(``compression``: the sums are of dense updates) are refused with the modes that sum before any
work, naming the method and why (:func:`refusal`); ``dp_record`` allows compression (it
post-processes the DP-SGD update).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fedmtl.core.checks import booleans, fraction, int_at_least, non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry
from strategies.engine.method import Method
from strategies.engine.params import MethodParams

SecureAggregation = Literal["none", "secagg_plus"]
DPUnit = Literal["none", "silo", "record"]
Clipping = Literal["whole", "per_task"]


@dataclass(frozen=True)
class PrivacyParams:
    """The privacy of a run (module docstring). Unset, every field keeps the plain run.

    SecAgg+ (``secure_aggregation: secagg_plus``; Flower's parameters, same defaults):
    ``num_shares`` the share of a round's silos each silo splits its secrets among (1.0: all of
    them; SecAgg+'s neighbourhood graph otherwise), ``threshold`` the share of those needed to
    reconstruct one (at least 2 silos; silos may drop out while at least that many stay),
    ``clipping_range`` c: each weighted value is clipped to [-c, c] before quantization,
    ``quantization_bits`` (R = 2^bits levels) and ``modulus_bits`` (the masks' ring, M = 2^bits,
    at most 32 and above ``quantization_bits + log2(silos)``).

    Differential privacy (``dp: silo | record``): ``clip_norm`` C, ``clipping`` (silo: ``whole``
    vector or ``per_task`` parts), ``adaptive_clipping`` (silo: Andrew et al.'s geometric update
    of C towards the ``target_quantile`` of the update norms with rate ``clip_lr``, the clipped
    count noised with ``clipped_count_stddev``, default rounds' silos / 20), ``noise_multiplier``
    sigma or ``target_epsilon`` (one of the two), ``delta`` (null: min(1e-5, 1 / N^1.1) with N
    the silos (silo) or the smallest silo's training rows (record)), ``correct_gramian`` (subtract the
    noise's d sigma_t^2 from the balancing Gramian's diagonal, :mod:`strategies.balancing`).
    """

    secure_aggregation: SecureAggregation = "none"
    dp: DPUnit = "none"
    num_shares: float = 1.0
    threshold: float = 0.5
    clipping_range: float = 8.0
    quantization_bits: int = 22
    modulus_bits: int = 32
    clip_norm: float = 1.0
    clipping: Clipping = "whole"
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    correct_gramian: bool = True

    def __post_init__(self) -> None:
        fraction(self, "num_shares", allow_one=True)
        fraction(self, "threshold", allow_one=True)
        positive(self, "clipping_range", "clip_norm", "clip_lr")
        int_at_least(self, "quantization_bits", 2)
        int_at_least(self, "modulus_bits", 3)
        booleans(self, "adaptive_clipping", "correct_gramian")
        fraction(self, "target_quantile", allow_one=False)
        if self.modulus_bits > 32 or self.modulus_bits <= self.quantization_bits:
            raise ConfigError(
                "modulus_bits",
                f"is {self.modulus_bits}: it must be above quantization_bits "
                f"({self.quantization_bits}) and at most 32 (Flower's masks are drawn below 2^32).",
                "keep the defaults (22 and 32) or lower quantization_bits.",
            )
        if self.clipped_count_stddev is not None:
            positive(self, "clipped_count_stddev")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError("delta", f"must be in (0, 1), got {self.delta!r}.", "use e.g. 1e-5.")
        if self.dp == "none":
            for name in ("noise_multiplier", "target_epsilon"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        name,
                        "is set but dp is none.",
                        "choose privacy=dp_silo or privacy=dp_record, or drop it.",
                    )
            return
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError(
                "noise_multiplier",
                "and target_epsilon: exactly one must be set with dp.",
                "set privacy.noise_multiplier=1.0, or privacy.noise_multiplier=null "
                "privacy.target_epsilon=3 (with privacy.delta).",
            )
        if self.noise_multiplier is not None:
            non_negative(self, "noise_multiplier")
        if self.target_epsilon is not None:
            positive(self, "target_epsilon")
        if self.dp == "record" and self.adaptive_clipping:
            raise ConfigError(
                "adaptive_clipping",
                "applies to silo-level DP (dp: silo) only.",
                "drop it, or use privacy=dp_silo.",
            )

    @property
    def secure(self) -> bool:
        """Whether updates are summed under SecAgg+."""
        return self.secure_aggregation == "secagg_plus"

    @property
    def summed(self) -> bool:
        """Whether the server aggregates from per-task sums alone (SecAgg+ or silo-level DP)."""
        return self.secure or self.dp == "silo"

    @property
    def mode(self) -> str:
        """The mode's name in results: ``none``, ``secagg``, ``dp_silo``, ``secagg_dp_silo``, ..."""
        parts = (["secagg"] if self.secure else []) + (
            [f"dp_{self.dp}"] if self.dp != "none" else []
        )
        return "_".join(parts) or "none"

    def quantization_step(self) -> float:
        """delta_q = 2c / R, the quantization step of one weighted value (R = 2^quantization_bits)."""
        return 2.0 * self.clipping_range / 2**self.quantization_bits

    def default_delta(self, population: int) -> float:
        """``delta``, or min(1e-5, 1 / N^1.1) for a population of N units (silos or rows): below
        1 / N, so that the guarantee does not allow one unit in N to be published outright."""
        if self.delta is not None:
            return self.delta
        return min(1e-5, 1.0 / max(population, 2) ** 1.1)

    def check_silos(self, num_silos: int) -> None:
        """SecAgg+ needs at least 2 silos per round, and the ring must hold their sum."""
        if not self.secure:
            return
        bits = math.log2(max(num_silos, 2))
        if self.quantization_bits + bits >= self.modulus_bits:
            raise ConfigError(
                "privacy.quantization_bits",
                f"is {self.quantization_bits}: the sum of {num_silos} silos' quantized values "
                f"needs {self.quantization_bits} + {bits:.1f} bits, more than modulus_bits "
                f"({self.modulus_bits}).",
                f"lower quantization_bits to at most {int(self.modulus_bits - bits) - 1}.",
            )


@dataclass(frozen=True)
class SecAggPreset(PrivacyParams):
    """``privacy=secagg``: SecAgg+ with Flower's defaults."""

    secure_aggregation: SecureAggregation = "secagg_plus"


@dataclass(frozen=True)
class SiloDPPreset(PrivacyParams):
    """``privacy=dp_silo``: silo-level DP, noise multiplier 1, C = 1, whole-vector clipping."""

    dp: DPUnit = "silo"
    noise_multiplier: float | None = 1.0


@dataclass(frozen=True)
class SecAggSiloDPPreset(SiloDPPreset):
    """``privacy=secagg_dp_silo``: silo-level DP with the noise added in shares under SecAgg+."""

    secure_aggregation: SecureAggregation = "secagg_plus"


@dataclass(frozen=True)
class RecordDPPreset(PrivacyParams):
    """``privacy=dp_record``: DP-SGD in local training, noise multiplier 1, C = 1."""

    dp: DPUnit = "record"
    noise_multiplier: float | None = 1.0


def privacy_mode(params: PrivacyParams) -> PrivacyParams:
    """A registered mode's factory: its validated parameters (the engine and the silos read them)."""
    return params


PRIVACY: Registry[Callable[[PrivacyParams], PrivacyParams]] = Registry("privacy")
"""Privacy modes (config group ``privacy``): one entry per preset."""
PRIVACY.register("none", params=PrivacyParams)(privacy_mode)
PRIVACY.register("secagg", params=SecAggPreset)(privacy_mode)
PRIVACY.register("dp_silo", params=SiloDPPreset)(privacy_mode)
PRIVACY.register("secagg_dp_silo", params=SecAggSiloDPPreset)(privacy_mode)
PRIVACY.register("dp_record", params=RecordDPPreset)(privacy_mode)


SUM_METHODS = (
    "use a method that aggregates sums (fedavg, fedprox, fedper, fedrep, ditto, single_task, "
    "the balancing methods, grouping), or privacy=none."
)


def _refused(key: str, label: str, mode: str, why: str, fix: str = SUM_METHODS) -> ConfigError:
    return ConfigError(key, f"'{label}' cannot run with privacy={mode}: {why}.", fix)


def refusal(
    label: str, method: Method[Any], params: MethodParams, privacy: PrivacyParams
) -> ConfigError | None:
    """Why ``method`` (reported as ``label``, with the common ``params``) cannot run under
    ``privacy``, or None: a mode in which the server sees only sums refuses a method whose
    aggregation reads individual updates and the robust rules that do; DP refuses numbers it does
    not cover (the silos' losses, the affinities they measure) and, at the record level, per-task
    shares (DP-SGD here noises the joint step only)."""
    mode = privacy.mode
    if mode == "none":
        return None
    task = method.silo_task(1)
    rule = method.secure_sums(1)
    if privacy.summed:
        if isinstance(rule, str):
            return _refused("strategy", label, mode, rule)
        if params.compression != "none":
            return _refused(
                "strategy.compression",
                f"{label} with compression={params.compression}",
                mode,
                "the server sums every silo's dense update, masked or noised as a whole, and "
                "cannot decode one silo's compressed encoding",
                "set strategy.compression=none, or privacy=none.",
            )
        if params.robust != "mean":
            return _refused(
                "strategy.robust",
                f"{label} with robust={params.robust}",
                mode,
                "a robust rule (a median, trimmed mean, Krum or Bulyan) needs every silo's own value",
                "set strategy.robust=mean, or privacy=none.",
            )
        if params.norm_bound is not None:
            return _refused(
                "strategy.norm_bound",
                label,
                mode,
                "the norm bound is relative to the round's median update norm, which needs every "
                "silo's own update",
                "drop strategy.norm_bound (with DP, privacy.clip_norm bounds every update).",
            )
        if params.max_count_ratio is not None:
            return _refused(
                "strategy.max_count_ratio",
                label,
                mode,
                "silos weight their updates by their own counts before they are summed",
                "drop strategy.max_count_ratio (the counts are fixed at discovery).",
            )
    if privacy.dp == "none":
        return None
    if not isinstance(rule, str) and rule.metrics:
        return ConfigError(
            "strategy",
            f"'{label}' asks every silo for numbers it measures on its data "
            f"({sorted(rule.metrics)[:2]} ...), which privacy={mode} does not cover.",
            "with grouping, set strategy.affinity=update_similarity (computed from the noised "
            "per-task sums), or give strategy.groups.",
        )
    if not isinstance(rule, str) and rule.needs_losses:
        return ConfigError(
            "strategy.weighting",
            f"'{label}' weighs tasks by the silos' losses, which privacy={mode} does not release.",
            "use a Gramian weighting (upgrad, mgda, cagrad, ...) or mean.",
        )
    if privacy.dp == "record" and task.params.get("weighting") is not None:
        return ConfigError(
            "strategy.balancing",
            f"'{label}' balances each silo's tasks at every local step, which DP-SGD's noised "
            "step does not do.",
            "use balancing: server with privacy=dp_silo, or plain local steps (fedavg, ditto).",
        )
    if privacy.dp == "record" and task.params.get("head_epochs"):
        return ConfigError(
            "strategy.head_epochs",
            f"'{label}' trains its heads alone before the trunk each round; DP-SGD here covers "
            "one joint pass over trunk and heads per round (a non-private head phase would void "
            "the trunk's guarantee).",
            "use fedper (head_epochs: 0: heads and trunk trained together), or privacy=dp_silo.",
        )
    if privacy.dp == "record" and task.update_mode == "per_task":
        return ConfigError(
            "privacy",
            f"'{label}' asks silos for per-task trunk shares; DP-SGD here clips and noises each "
            "record's whole gradient, so only joint updates are private.",
            "use privacy=dp_silo with this method, or a method with joint updates "
            "(fedavg, fedprox, fedper, ditto).",
        )
    return None
