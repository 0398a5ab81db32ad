"""The parameters every method shares: how the engine samples silos, waits, checks and averages
their replies, and the server optimizer a trunk-and-heads method applies its step with.

A method's own parameter dataclass derives from :class:`MethodParams` and adds its fields; the
config group ``strategy`` is ``{name, ...}`` with the fields of that dataclass (it is the schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedmtl.core.checks import fraction, int_at_least, positive
from fedmtl.core.compression import MAX_LEVELS, Compression, CompressionKind
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import UpdateDtype
from strategies.engine.robust import SELECTION_RULES, NormRule, RobustRule, Trim
from strategies.engine.server_opt import ServerOptParams

DEFENCES = (
    "robust",
    "trim_fraction",
    "trim_count",
    "max_faulty",
    "norm_bound",
    "norm_rule",
    "max_count_ratio",
    "divergence_factor",
    "divergence_rounds",
)
"""The fields of :class:`MethodParams` that defend a run against faulty silos: they change how
updates are averaged and judged, never the state a checkpoint holds, so a run resumed from its
checkpoint (e.g. after it diverged) may change them (``fedmtl run resume=DIR
strategy.norm_bound=2``)."""


@dataclass(frozen=True)
class MethodParams:
    """Client sampling, timing, faults and the server optimizer, shared by every method.

    ``fraction_*``: share of known nodes sampled each round; ``min_*_nodes``: at least this many (all
    when fewer exist). ``min_available_nodes``: nodes to wait for before round 1, at most
    ``wait_for_nodes_s`` seconds. ``evaluate_every``: evaluate every k rounds (and after the last).
    ``reply_timeout_s``: how long a round waits for replies. ``server_optimizer``: the FedOpt rule
    that applies a trunk-and-heads method's combined trunk update (default: plain averaging,
    ``sgd`` with lr 1).

    Faults and robustness (:mod:`strategies.engine.robust`): a round with fewer valid updates than
    ``min_train_nodes`` (or the nodes sampled, when fewer) is sent again up to ``round_retries``
    times, then the run stops (``status: too_few_replies``); ``robust`` averages with the weighted
    ``mean``, the coordinate-wise ``median``, a ``trimmed_mean`` (cutting ``trim_count`` values,
    else the share ``trim_fraction``, else ``max_faulty`` values, else 10% at each end:
    :meth:`trim`), or selects with Flower's ``krum``, ``multikrum`` or ``bulyan`` against
    ``max_faulty`` faulty silos (which they then require); ``norm_bound`` b ``clip``-s or ``reject``-s (``norm_rule``) updates whose norm
    exceeds b times the round's median; ``max_count_ratio`` r caps the example counts a silo
    announced at r times the median. ``max_faulty`` f declares how many of a round's silos may
    be faulty: each round the engine checks every averaged group (the trunk over all updates,
    each task's head over its holders) against the rule's breakdown point and warns where f
    faulty silos could take it over (:func:`strategies.engine.robust.breakdown`).

    Divergence (:mod:`strategies.engine.divergence`): a round is suspect when a task's median
    loss over its silos is non-finite or above ``divergence_factor`` times its loss under the
    initial model; ``divergence_rounds`` suspect rounds in a row stop the run (``status:
    diverged``); ``divergence_factor`` null turns the check off.

    ``update_dtype``: the precision silos send their updates in (``float16`` or ``bfloat16``
    halve the bytes up; the server reads them back as float32).

    ``compression`` (:mod:`fedmtl.core.compression`): how silos compress their updates, with error
    feedback: ``topk`` sends the ceil(``compression_ratio`` d) entries of largest magnitude of
    each array, ``qsgd`` stochastic quantisation to ``qsgd_levels`` levels; the server decodes
    them before any check.
    """

    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 1.0
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    evaluate_every: int = 1
    wait_for_nodes_s: float = 120.0
    reply_timeout_s: float = 3600.0
    server_optimizer: ServerOptParams = field(default_factory=ServerOptParams)
    round_retries: int = 1
    robust: RobustRule = "mean"
    trim_fraction: float | None = None
    trim_count: int | None = None
    max_faulty: int | None = None
    norm_bound: float | None = None
    norm_rule: NormRule = "clip"
    max_count_ratio: float | None = None
    update_dtype: UpdateDtype = "float32"
    divergence_factor: float | None = 10.0
    divergence_rounds: int = 3
    compression: CompressionKind = "none"
    compression_ratio: float = 1.0
    qsgd_levels: int = MAX_LEVELS

    def __post_init__(self) -> None:
        fraction(self, "fraction_train", allow_one=True)
        fraction(self, "fraction_evaluate", allow_one=True)
        for name in (
            "min_train_nodes",
            "min_evaluate_nodes",
            "min_available_nodes",
            "evaluate_every",
        ):
            int_at_least(self, name, 1)
        int_at_least(self, "round_retries", 0)
        positive(self, "wait_for_nodes_s", "reply_timeout_s")
        if self.trim_fraction is not None and not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                "trim_fraction",
                f"must be in [0, 0.5), got {self.trim_fraction!r}.",
                "use e.g. 0.1, or set trim_count (values cut per side) instead.",
            )
        for name in ("trim_count", "max_faulty"):
            if getattr(self, name) is not None:
                int_at_least(self, name, 0)
        if self.trim_count is not None:
            if self.trim_fraction is not None:
                raise ConfigError(
                    "trim_count",
                    f"is {self.trim_count} but trim_fraction is set too "
                    f"({self.trim_fraction}): the cut is one or the other.",
                    "set trim_fraction=null to cut trim_count values per side, or drop trim_count.",
                )
            if self.robust != "trimmed_mean":
                raise ConfigError(
                    "trim_count",
                    f"is set but robust is {self.robust!r}: only trimmed_mean cuts values.",
                    "set robust=trimmed_mean, or drop trim_count.",
                )
        if self.robust in SELECTION_RULES and self.max_faulty is None:
            raise ConfigError(
                "max_faulty",
                f"is unset but robust={self.robust} selects updates assuming f faulty silos.",
                f"set strategy.max_faulty=f (e.g. 1) with strategy.robust={self.robust}.",
            )
        for name in ("norm_bound", "max_count_ratio"):
            if getattr(self, name) is not None:
                positive(self, name)
        factor = self.divergence_factor
        if factor is not None:
            positive(self, "divergence_factor")
            if factor <= 1.0:
                raise ConfigError(
                    "divergence_factor",
                    f"must be > 1 (a multiple of the initial loss), got {factor!r}.",
                    "use e.g. 100, or null to turn divergence detection off.",
                )
        int_at_least(self, "divergence_rounds", 1)
        self.compression_spec()

    def trim(self) -> Trim:
        """The cut of ``trimmed_mean``: ``trim_count`` values per side, else the share
        ``trim_fraction``, else ``max_faulty`` values (so that the f declared faulty silos can
        all be cut), else 10%."""
        if self.trim_count is not None:
            return Trim(count=self.trim_count)
        if self.trim_fraction is not None:
            return Trim(fraction=self.trim_fraction)
        if self.max_faulty is not None:
            return Trim(count=self.max_faulty)
        return Trim()

    def compression_spec(self) -> Compression:
        """How silos compress their updates (checked: a bad field raises ConfigError)."""
        return Compression(self.compression, self.compression_ratio, self.qsgd_levels)

    def check_experiment(self, task_names: Sequence[str], num_rounds: int) -> None:
        """Cross-check these parameters against the experiment before any training (raise
        :class:`fedmtl.core.errors.ConfigError`); the default has nothing to check."""

    def label(self, name: str) -> str:
        """The name results report for a method registered as ``name`` with these parameters
        (``summary.json``'s ``strategy``); default ``name`` itself."""
        return name
