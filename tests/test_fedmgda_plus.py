"""FedMGDA+ (``strategies.fedmgda_plus``): its trunk step against FedAvg (epsilon 0) and against
MGDA's min-norm point computed independently (large epsilon); its weights keep their constraints;
bad parameters are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedmtl.core.errors import ConfigError
from fedmtl.core.records import SiloInfo
from fedmtl.core.schema import TrainConfig
from strategies import METHODS
from strategies.balancing.mgda import min_norm_weights
from strategies.engine import AveragingParams, ClientUpdate, GlobalModel, MethodSetup, Round
from strategies.fedavg import FedAvg
from strategies.fedmgda_plus import FedMGDAPlus, FedMGDAPlusParams, fedmgda_weights
from tests.support.data import TINY_TASKS

SETUP = MethodSetup(TINY_TASKS, TrainConfig())
MODEL = GlobalModel({"trunk.w": np.zeros(3, np.float32), "heads.a.w": np.zeros(1, np.float32)})
ROWS = [[1.0, 0.0, 0.5], [0.0, 2.0, -1.0], [-1.0, 1.0, 0.0], [0.5, 0.5, 3.0]]
COUNTS = [10, 30, 20, 40]


def updates() -> list[ClientUpdate]:
    made = []
    for i, (row, n) in enumerate(zip(ROWS, COUNTS, strict=True)):
        info = SiloInfo(i, ("a",), n, 2, {"a": n}, {"a": 2})
        deltas = {"trunk.w": np.array(row, np.float32), "heads.a.w": np.array([i], np.float32)}
        made.append(ClientUpdate(i, info, deltas, n, {"a": n}, {}, sent=MODEL.arrays))
    return made


def step(params: FedMGDAPlusParams) -> np.ndarray:
    result = FedMGDAPlus(params, SETUP).aggregate(Round(1), MODEL, updates())
    return result.model.arrays["trunk.w"]


def test_epsilon_zero_without_normalization_is_fedavg() -> None:
    fedavg = FedAvg(AveragingParams(), SETUP).aggregate(Round(1), MODEL, updates()).model.arrays
    ours = FedMGDAPlus(FedMGDAPlusParams(epsilon=0.0, normalize=False), SETUP)
    mine = ours.aggregate(Round(1), MODEL, updates()).model.arrays
    np.testing.assert_allclose(mine["trunk.w"], fedavg["trunk.w"], rtol=1e-6)
    np.testing.assert_array_equal(mine["heads.a.w"], fedavg["heads.a.w"])  # heads: FedAvg's


def test_large_epsilon_is_the_min_norm_point_of_the_normalized_updates() -> None:
    rows = np.array(ROWS)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    expected = min_norm_weights(unit @ unit.T) @ unit  # MGDA's solver, KKT-polished
    np.testing.assert_allclose(step(FedMGDAPlusParams(epsilon=1.0)), expected, atol=1e-6)
    raw = np.array(ROWS)
    plain = min_norm_weights(raw @ raw.T) @ raw
    got = step(FedMGDAPlusParams(epsilon=2.0, normalize=False))
    np.testing.assert_allclose(got, plain, atol=1e-6)


def test_the_step_is_scaled_by_the_server_learning_rate() -> None:
    base = step(FedMGDAPlusParams(epsilon=0.05))
    params = METHODS.parse("fedmgda_plus", {"epsilon": 0.05, "server_optimizer": {"lr": 0.5}})
    np.testing.assert_allclose(step(params), 0.5 * base, rtol=1e-6)


@given(
    rows=arrays(np.float64, (5, 4), elements=st.floats(-3, 3, allow_subnormal=False)),
    counts=st.lists(st.integers(1, 100), min_size=5, max_size=5),
    epsilon=st.floats(0.0, 1.5),
)
def test_the_weights_stay_on_the_simplex_within_epsilon_and_are_optimal(
    rows: np.ndarray, counts: list[int], epsilon: float
) -> None:
    lambda0 = np.array(counts, float) / sum(counts)
    weights = fedmgda_weights(torch.from_numpy(rows), lambda0, epsilon)
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert (weights >= -1e-12).all()
    assert np.abs(weights - lambda0).max() <= epsilon + 1e-9
    # no better point of the box on the simplex: lambda0 and every vertex-ward move from it
    G = rows @ rows.T
    value = weights @ G @ weights
    assert value <= lambda0 @ G @ lambda0 + 1e-7 * (1 + np.trace(G))


@pytest.mark.parametrize(
    ("field", "value"), [("epsilon", -0.1), ("epsilon", float("nan")), ("normalize", "yes")]
)
def test_bad_parameters_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        FedMGDAPlusParams(**{field: value})  # type: ignore[arg-type]
