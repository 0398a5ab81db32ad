"""The config group ``privacy``: its presets, its checks, and the methods and rules it refuses
before any work (strategies/engine/privacy.py)."""

from __future__ import annotations

import pytest

from fedmtl.app.run.config import parse, presets
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import TrainConfig
from strategies import METHODS
from strategies.engine import PRIVACY, MethodSetup, PrivacyParams, refusal
from tests.support.fakes import TASKS
from tests.support.runs import compose_raw


def test_the_presets_mirror_the_registry() -> None:
    assert presets("privacy") == PRIVACY.names()
    modes = {name: PRIVACY.get(name).params().mode for name in PRIVACY.names()}
    assert modes == {
        "none": "none",
        "secagg": "secagg",
        "dp_silo": "dp_silo",
        "secagg_dp_silo": "secagg_dp_silo",
        "dp_record": "dp_record",
    }


def refused(method: str, privacy: PrivacyParams, **params: object) -> ConfigError | None:
    entry = METHODS.get(method)
    built = METHODS.parse(method, params)
    setup = MethodSetup(tuple(TASKS), TrainConfig(), 0)
    return refusal(method, entry.factory(built, setup), built, privacy)


SECAGG = PrivacyParams(secure_aggregation="secagg_plus")
DP_SILO = PrivacyParams(dp="silo", noise_multiplier=1.0)
DP_RECORD = PrivacyParams(dp="record", noise_multiplier=1.0)


@pytest.mark.parametrize(
    ("method", "why"),
    [
        ("fedamp", "pairwise distances"),
        ("matfl", "clusters the silos"),
        ("fedhca2", "per-silo server state"),
        ("fmtlbench_pcgrad", "one row per silo"),
        ("fmtlbench_cagrad", "one row per silo"),
        ("fedmgda_plus", "one per silo"),
        ("fedcmoo", "own sketch"),
        ("local", "nothing leaves the silos"),
    ],
)
def test_methods_that_read_individual_updates_are_refused_with_secagg(
    method: str, why: str
) -> None:
    for privacy in (SECAGG, DP_SILO):
        error = refused(method, privacy)
        assert error is not None and error.key == "strategy"
        assert f"'{method}'" in str(error) and why in str(error)
    assert refused(method, PrivacyParams()) is None


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("strategy.robust", {"robust": "median"}),
        ("strategy.robust", {"robust": "trimmed_mean"}),
        ("strategy.robust", {"robust": "krum", "max_faulty": 1}),
        ("strategy.compression", {"compression": "topk", "compression_ratio": 0.1}),
        ("strategy.norm_bound", {"norm_bound": 2.0}),
        ("strategy.max_count_ratio", {"max_count_ratio": 3.0}),
    ],
)
def test_rules_that_read_individual_updates_are_refused(key: str, params: dict) -> None:
    error = refused("fedavg", SECAGG, **params)
    assert error is not None and error.key == key and "cannot run with privacy=secagg" in str(error)
    assert refused("fedavg", PrivacyParams(), **params) is None


@pytest.mark.parametrize(
    "method", ["fedavg", "fedprox", "fedper", "fedrep", "ditto", "single_task", "balanced"]
)
def test_methods_that_aggregate_sums_run_with_every_summed_mode(method: str) -> None:
    for privacy in (
        SECAGG,
        DP_SILO,
        PrivacyParams(secure_aggregation="secagg_plus", dp="silo", noise_multiplier=0.5),
    ):
        assert refused(method, privacy) is None


def test_dp_refuses_what_it_does_not_cover() -> None:
    silo_measured = refused("grouping", DP_SILO)
    assert silo_measured is not None and "update_similarity" in str(silo_measured)
    assert refused("grouping", DP_SILO, affinity="update_similarity") is None
    assert refused("grouping", SECAGG) is None  # summed affinities: no DP to cover them
    losses = refused("balanced", DP_SILO, weighting="dwa")
    assert losses is not None and losses.key == "strategy.weighting"
    per_task = refused("balanced", DP_RECORD, weighting="upgrad")
    assert per_task is not None and "per-task" in str(per_task)
    assert refused("fedamp", DP_RECORD) is None  # DP-SGD protects records, not sums
    assert refused("ditto", DP_RECORD) is None


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"dp": "silo"}, "noise_multiplier"),
        ({"dp": "silo", "noise_multiplier": 1.0, "target_epsilon": 3.0}, "noise_multiplier"),
        ({"noise_multiplier": 1.0}, "noise_multiplier"),
        ({"dp": "silo", "target_epsilon": 0.0}, "target_epsilon"),
        ({"dp": "silo", "noise_multiplier": 1.0, "delta": 1.0}, "delta"),
        ({"modulus_bits": 40}, "modulus_bits"),
        ({"threshold": 0.0}, "threshold"),
        ({"dp": "record", "noise_multiplier": 1.0, "adaptive_clipping": True}, "adaptive_clipping"),
    ],
)
def test_bad_values_name_their_key(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        PrivacyParams(**values)  # type: ignore[arg-type]
    assert err.value.key == key


def test_a_refused_run_fails_before_any_work() -> None:
    raw = compose_raw(
        [
            "privacy=secagg",
            "strategy=fedamp",
            "runtime=inprocess",
            "tracking=quiet",
            "experiment=smoke",
        ]
    )
    with pytest.raises(ConfigError, match="'fedamp' cannot run with privacy=secagg"):
        prepare(parse(raw))
    too_many = compose_raw(["privacy=secagg", "privacy.quantization_bits=31"])
    with pytest.raises(ConfigError, match="modulus_bits"):
        prepare(parse(too_many))
