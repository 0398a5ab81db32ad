"""Server optimizers of the FedOpt family (Reddi et al., ICLR 2021, "Adaptive Federated Optimization").

The strategy hands the optimizer the round's combined trunk update Delta (already a descent step:
the silos' updates are trained-minus-received, so the pseudo-gradient is -Delta). Per array, with
state m, v starting at zero:

- ``sgd``:      m <- mu m + Delta;                      x <- x + eta m   (mu = 0, eta = 1: FedAvg;
  mu > 0: FedAvgM, Hsu et al. 2019)
- ``adagrad``:  m <- b1 m + (1 - b1) Delta;  v <- v + Delta^2
- ``adam``:     m <- b1 m + (1 - b1) Delta;  v <- b2 v + (1 - b2) Delta^2
- ``yogi``:     m <- b1 m + (1 - b1) Delta;  v <- v - (1 - b2) Delta^2 sign(v - Delta^2)
  and for the three adaptive ones x <- x + eta m / (sqrt(v) + tau).

As in the paper, there is no bias correction; ``tau`` bounds the adaptivity (the paper's grid
uses 1e-3 as default). The state is kept across rounds and is serialisable (:meth:`state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedmtl.core.checks import positive
from fedmtl.core.errors import ConfigError

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServerOptParams:
    """``strategy.params.server_optimizer``: which FedOpt rule and its hyperparameters.

    Typical learning rates: 1.0 for ``sgd`` (plain averaging), 1e-2 to 1e-1 for ``adam``/``yogi``.
    """

    name: Literal["sgd", "adam", "yogi", "adagrad"] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        positive(self, "lr", "tau")
        for name in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(name, "must be in [0, 1).", "use e.g. 0.9, or 0 for none.")


class ServerOptimizer:
    """Applies one FedOpt rule to a dict of arrays, keeping its moments across rounds."""

    def __init__(self, params: ServerOptParams) -> None:
        self.params = params
        self.m: Arrays = {}
        self.v: Arrays = {}

    def step(self, current: Arrays, update: Arrays) -> Arrays:
        """New arrays ``current + step(update)`` for every key of ``update`` (dtypes kept)."""
        p = self.params
        new: Arrays = {}
        for key, delta in update.items():
            delta64 = delta.astype(np.float64)
            m = self.m.get(key, np.zeros_like(delta64))
            if p.name == "sgd":
                m = p.momentum * m + delta64
                step = p.lr * m
            else:
                m = p.beta1 * m + (1.0 - p.beta1) * delta64
                v = self.v.get(key, np.zeros_like(delta64))
                square = delta64 * delta64
                if p.name == "adagrad":
                    v = v + square
                elif p.name == "adam":
                    v = p.beta2 * v + (1.0 - p.beta2) * square
                else:  # yogi
                    v = v - (1.0 - p.beta2) * square * np.sign(v - square)
                self.v[key] = v
                step = p.lr * m / (np.sqrt(v) + p.tau)
            self.m[key] = m
            new[key] = (current[key] + step).astype(current[key].dtype)
        return new

    def split_state(self, mapping: Mapping[str, Sequence[str]]) -> None:
        """Give each of ``mapping[key]`` a copy of ``key``'s moments and drop ``key``'s (used when
        one trunk becomes one trunk per task group: each copy keeps the trunk's momentum)."""
        for state in (self.m, self.v):
            for key, copies in mapping.items():
                if key in state:
                    moment = state.pop(key)
                    state.update({new: moment.copy() for new in copies})

    def state_dict(self) -> dict[str, Arrays]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self.m = {k: np.asarray(v, dtype=np.float64) for k, v in state["m"].items()}
        self.v = {k: np.asarray(v, dtype=np.float64) for k, v in state["v"].items()}
