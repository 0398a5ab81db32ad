"""What a fault is: a silo that misbehaves on purpose, chosen deterministically from the run seed.

A fault (a :class:`Fault`, registered in :data:`fedmtl.faults.FAULTS`) acts in two places of a
faulty silo, both optional:

- :meth:`Fault.train_data`: the training rows it learns from (e.g. flipped labels; its test rows
  and what it announces stay true);
- :meth:`Fault.corrupt`: the update it sends after honest training (:class:`Update`: every array
  of the reply and its example counts), with a generator seeded by (seed, silo, round) and the
  silo's first update of the run (:class:`FaultContext`).

Which silos are faulty (:func:`faulty_silos`): ``floor(fraction x S)`` of the S silos, drawn
without replacement from a generator seeded by the run's seed alone, the same set every round and
in every process (the ServerApp records it in ``summary.json``; each silo finds out for itself).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedmtl.core.data import LocalData
from fedmtl.core.errors import ConfigError

Arrays = dict[str, np.ndarray]

FAULT_STREAM = zlib.crc32(b"fedmtl.faults")
"""Mixed into every seed a fault draws from, apart from the partition's and training's."""


@dataclass(frozen=True)
class FaultParams:
    """``fraction``: the share of the silos that are faulty, floor(fraction x S) of S."""

    fraction: float = 0.3

    def __post_init__(self) -> None:
        value = self.fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(
                "fraction",
                f"must be in [0, 1], got {value!r}.",
                "use e.g. 0.3 for 30% of the silos.",
            )


def faulty_count(fraction: float, num_silos: int) -> int:
    """floor(fraction x S), forgiving the rounding of e.g. 0.3 x 10 = 2.9999999999999996."""
    return min(num_silos, math.floor(fraction * num_silos + 1e-9))


def faulty_silos(fraction: float, num_silos: int, seed: int) -> list[int]:
    """The ids of the faulty silos, ascending (module docstring)."""
    count = faulty_count(fraction, num_silos)
    if count == 0:
        return []
    rng = np.random.default_rng([abs(seed), FAULT_STREAM])
    return sorted(int(s) for s in rng.choice(num_silos, size=count, replace=False))


def round_rng(seed: int, silo_id: int, server_round: int) -> np.random.Generator:
    """The generator a faulty silo draws from in a round: (seed, silo, round) alone."""
    return np.random.default_rng([abs(seed), silo_id, server_round, FAULT_STREAM])


@dataclass(frozen=True)
class Update:
    """A silo's training reply as a fault sees it: ``arrays`` (its deltas and per-task trunk
    shares, by their keys on the wire), ``num_examples`` and ``task_examples`` (the counts it
    claims; the server fixes counts from what the silo announced at discovery)."""

    arrays: Arrays
    num_examples: float
    task_examples: dict[str, float]


def same_layout(a: Arrays, b: Arrays) -> bool:
    """Whether two updates have the same keys, with the same shapes and dtypes."""
    return set(a) == set(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a
    )


@dataclass(frozen=True)
class FaultContext:
    """What a fault may use besides the update: ``rng`` (seeded by seed, silo and round),
    ``server_round`` and ``first``, the silo's first update of the run (None in that round)."""

    rng: np.random.Generator
    server_round: int
    first: Update | None = None


class Fault:
    """An honest silo: the base every fault overrides where it misbehaves."""

    remembers_first: ClassVar[bool] = False
    """Whether :meth:`corrupt` needs the silo's first update (the silo then keeps it)."""

    def __init__(self, params: Any) -> None:
        self.params = params

    def train_data(self, data: LocalData) -> LocalData:
        """The training rows the faulty silo learns from."""
        return data

    def corrupt(self, update: Update, context: FaultContext) -> Update:
        """The update the faulty silo sends instead of ``update``."""
        return update
