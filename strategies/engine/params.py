"""The parameters every method shares: how the engine samples silos, waits, checks and averages
their replies, and the server optimizer a trunk-and-heads method applies its step with.

A method's own parameter dataclass derives from :class:`MethodParams` and adds its fields; the
config group ``strategy`` is ``{name, ...}`` with the fields of that dataclass (it is the schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedmtl.core.checks import fraction, int_at_least, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import UpdateDtype
from strategies.engine.robust import NormRule, RobustRule
from strategies.engine.server_opt import ServerOptParams


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
    ``mean``, the coordinate-wise ``median`` or a ``trimmed_mean`` (cutting ``trim_fraction`` at
    each end); ``norm_bound`` b ``clip``-s or ``reject``-s (``norm_rule``) updates whose norm
    exceeds b times the round's median; ``max_count_ratio`` r caps the example counts a silo
    announced at r times the median.

    ``update_dtype``: the precision silos send their updates in (``float16`` or ``bfloat16``
    halve the bytes up; the server reads them back as float32).
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
    trim_fraction: float = 0.1
    norm_bound: float | None = None
    norm_rule: NormRule = "clip"
    max_count_ratio: float | None = None
    update_dtype: UpdateDtype = "float32"

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
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                "trim_fraction",
                f"must be in [0, 0.5), got {self.trim_fraction!r}.",
                "use e.g. 0.1.",
            )
        for name in ("norm_bound", "max_count_ratio"):
            if getattr(self, name) is not None:
                positive(self, name)

    def check_experiment(self, task_names: Sequence[str], num_rounds: int) -> None:
        """Cross-check these parameters against the experiment before any training (raise
        :class:`fedmtl.core.errors.ConfigError`); the default has nothing to check."""

    def label(self, name: str) -> str:
        """The name results report for a method registered as ``name`` with these parameters
        (``summary.json``'s ``strategy``); default ``name`` itself."""
        return name
