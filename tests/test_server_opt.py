"""FedOpt server optimizers: each rule against a hand computation over two rounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import build_dataclass
from strategies.engine.server_opt import ServerOptimizer, ServerOptParams

X0 = {"w": np.array([1.0, -2.0], dtype=np.float32)}
DELTAS = [{"w": np.array([0.5, -1.0], dtype=np.float32)}, {"w": np.array([0.25, 2.0])}]


def run(params: ServerOptParams) -> list[np.ndarray]:
    optimizer = ServerOptimizer(params)
    x, out = dict(X0), []
    for delta in DELTAS:
        x = optimizer.step(x, delta)
        assert x["w"].dtype == np.float32
        out.append(x["w"].astype(np.float64))
    return out


def test_plain_sgd_adds_the_update() -> None:
    first, second = run(ServerOptParams())
    np.testing.assert_allclose(first, [1.5, -3.0])
    np.testing.assert_allclose(second, [1.75, -1.0])


def test_server_momentum() -> None:
    # m1 = d1 = (0.5, -1); x1 = x0 + 0.5 m1.  m2 = 0.9 m1 + d2 = (0.7, 1.1); x2 = x1 + 0.5 m2.
    first, second = run(ServerOptParams(lr=0.5, momentum=0.9))
    np.testing.assert_allclose(first, [1.25, -2.5])
    np.testing.assert_allclose(second, [1.6, -1.95], rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "yogi", "adagrad"])
def test_adaptive_rules(name: str) -> None:
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    x = X0["w"].astype(np.float64)
    m = np.zeros(2)
    v = np.zeros(2)
    expected = []
    for delta in DELTAS:
        d = delta["w"].astype(np.float64)
        m = b1 * m + (1 - b1) * d
        if name == "adam":
            v = b2 * v + (1 - b2) * d**2
        elif name == "yogi":
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        else:
            v = v + d**2
        x = x + lr * m / (np.sqrt(v) + tau)
        expected.append(x.copy())
    got = run(ServerOptParams(name=name, lr=lr))  # type: ignore[arg-type]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6)
    if name == "adam":  # first step: lr * 0.1 d / (0.1 |d| + tau), about lr * sign(d)
        d = DELTAS[0]["w"]
        np.testing.assert_allclose(
            got[0] - X0["w"], lr * 0.1 * d / (0.1 * np.abs(d) + tau), rtol=1e-6
        )


def test_state_is_kept_per_key() -> None:
    optimizer = ServerOptimizer(ServerOptParams(momentum=0.5))
    optimizer.step({"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.ones(1), "b": -np.ones(1)})
    state = optimizer.state_dict()
    assert set(state["m"]) == {"a", "b"} and state["v"] == {}


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"lr": 0.0}, "server_optimizer.lr"),
        ({"momentum": 1.0}, "server_optimizer.momentum"),
        ({"beta2": -0.1}, "server_optimizer.beta2"),
        ({"tau": -1}, "server_optimizer.tau"),
        ({"name": "lamb"}, "server_optimizer.name"),
    ],
)
def test_bad_values_name_the_key(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_dataclass(ServerOptParams, values, "server_optimizer")
    assert err.value.key == key
