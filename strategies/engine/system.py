"""The virtual clock: the simulated wall-clock time of a federation whose silos are slow, offline or
on thin links (:class:`VirtualClock`), and the config group ``system`` (:data:`SYSTEMS`).

**Silos.** Silo s computes at F_s FLOP/s and receives and sends at B^down_s and B^up_s bit/s
(null: an infinite link), each drawn once per silo around the configured median m with a lognormal
spread sigma, x_s = m exp(sigma z_s), z_s ~ N(0, 1) seeded by (seed, quantity, silo) alone (the
same silo has the same profile in every run and runtime, whatever the other silos), or read from
a trace file (:func:`load_trace`). Silo s is online in round r with probability p_s
(``availability``, or the trace's per-silo ``availability``; a draw seeded by (seed, silo, r)),
or, when the trace gives it ``online`` intervals, while the clock is inside one of them. Only
online silos are sampled.

**One round.** A sampled silo that receives b^down bytes of arrays holding P_s values, takes k_s
local steps of r_s = min(batch size, n_s) rows and sends b^up bytes back takes

    t_s = (L + 8 b^down / B^down_s) + 6 P_s k_s r_s / F_s + (L + 8 b^up / B^up_s)

(L: ``latency_s``; 6 FLOPs per parameter and row: forward and backward pass, the 6ND estimate of
Kaplan et al. 2020, "Scaling Laws for Neural Language Models"; k_s and b^up are what the reply
reports and weighs). The round lasts max_s t_s over the replies, plus ``server_s`` (the server's
own time). With a deadline D (``deadline_s``) the server waits D at most: a silo with t_s > D is
a straggler. ``stragglers: drop`` discards its reply (Bonawitz et al. 2019, "Towards Federated
Learning at Scale"); ``stragglers: partial`` asks each silo beforehand for only the steps that
fit (FedProx's partial work, Li et al. 2020, "Federated Optimization in Heterogeneous Networks"):

    k_s = floor((D - (L + 8 b^down / B^down_s) - (L + 8 b^down / B^up_s)) F_s / (6 P_s r_s))

(the upload estimated at the download's size), and a silo with k_s < 1 is not asked; a reply
still past D (its upload larger than estimated, or a method with several local passes) is dropped.
A round in which no silo is online trains nothing and lasts D (0 without a deadline) plus
``server_s``; with ``online`` intervals the clock first waits for the next one to open.
Evaluation is measurement, not protocol: it costs no simulated time.

**Buffered rounds** (``mode: buffered``): FedBuff's asynchronous aggregation on this clock,
:mod:`strategies.engine.buffered` (``concurrency`` C, ``buffer_size`` K, staleness weights
s(tau) = (1 + tau)^(-a), :meth:`VirtualClock.staleness_weight`).

Everything here depends only on the seed, the trace, the silos sampled, their steps and the bytes
sent, so a seed and a trace give the same simulated times on every runtime.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedmtl.core.checks import int_at_least, non_negative, positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry

Stragglers = Literal["drop", "partial"]
Mode = Literal["sync", "buffered"]

FLOPS_PER_PARAMETER = 6.0
"""FLOPs per parameter, row and local step: 2 forward, 4 backward (the 6ND estimate)."""

TRACE_COLUMNS = ("silo", "gflops", "up_mbps", "down_mbps", "availability", "online")
"""A trace's columns: ``silo`` (required) and any of the others (an empty cell: the config's)."""


@dataclass(frozen=True)
class SystemParams:
    """The federation's hardware, links, availability and round deadline (module docstring).

    ``gflops``: median compute speed in GFLOP/s, ``gflops_sigma`` its lognormal spread over silos
    (0: every silo the median); ``down_mbps``/``up_mbps``: median link speeds in Mbit/s (null: an
    infinite link) with ``down_sigma``/``up_sigma``; ``latency_s``: one-way latency of a message;
    ``availability``: the probability a silo is online in a round; ``trace``: a CSV or JSON file
    of per-silo values and on/off intervals (:func:`load_trace`); ``deadline_s``: the longest a
    round waits (null: for every reply); ``stragglers``: what happens to a silo past it (``drop``
    or ``partial``); ``server_s``: the server's own time per round (per aggregation).

    ``mode: buffered``: FedBuff's asynchronous aggregation (:mod:`strategies.engine.buffered`):
    ``concurrency`` C silos train at once (null: every silo), the server aggregates the first
    ``buffer_size`` K updates to arrive (null: C), each scaled by (1 + tau)^-a
    (``staleness_exponent`` a).
    """

    gflops: float = 1.0
    gflops_sigma: float = 0.0
    down_mbps: float | None = None
    down_sigma: float = 0.0
    up_mbps: float | None = None
    up_sigma: float = 0.0
    latency_s: float = 0.0
    availability: float = 1.0
    trace: str | None = None
    deadline_s: float | None = None
    stragglers: Stragglers = "drop"
    server_s: float = 0.0
    mode: Mode = "sync"
    concurrency: int | None = None
    buffer_size: int | None = None
    staleness_exponent: float = 0.5

    def __post_init__(self) -> None:
        positive(self, "gflops")
        non_negative(self, "gflops_sigma", "down_sigma", "up_sigma", "latency_s", "server_s")
        for name in ("down_mbps", "up_mbps", "deadline_s"):
            if getattr(self, name) is not None:
                positive(self, name)
        value = self.availability
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise ConfigError(
                "availability",
                f"must be a probability in (0, 1], got {value!r}.",
                "use e.g. 0.3 (each silo online in 30% of the rounds), or 1; a silo that is "
                "never online gets availability 0 in a trace file (system.trace).",
            )
        if self.trace is not None and not self.trace.strip():
            raise ConfigError(
                "trace", "must be a file path, got an empty string.", "give a path, or null."
            )
        non_negative(self, "staleness_exponent")
        for name in ("concurrency", "buffer_size"):
            if getattr(self, name) is not None:
                int_at_least(self, name, 1)
                if self.mode != "buffered":
                    raise ConfigError(
                        name,
                        "sets FedBuff's buffered aggregation, but system.mode is 'sync'.",
                        f"set system.mode=buffered, or drop system.{name}.",
                    )
        if self.concurrency and self.buffer_size and self.buffer_size > self.concurrency:
            raise ConfigError(
                "buffer_size",
                f"is {self.buffer_size}, more updates than the {self.concurrency} silos training "
                "at once (system.concurrency) can ever send.",
                "use a buffer_size of at most system.concurrency.",
            )
        if self.mode == "buffered" and self.deadline_s is not None:
            raise ConfigError(
                "deadline_s",
                "is a synchronous round's deadline; buffered aggregation waits for no round.",
                "drop system.deadline_s, or use system.mode=sync.",
            )
        if self.stragglers == "partial" and self.deadline_s is None:
            raise ConfigError(
                "stragglers",
                "is 'partial', which fits each silo's local steps into the deadline, but "
                "system.deadline_s is null.",
                "set system.deadline_s, or use system.stragglers=drop.",
            )


@dataclass(frozen=True)
class HeterogeneousParams(SystemParams):
    """``system=heterogeneous``: silos of very different speeds and links: compute spread by
    sigma 1 (the 5th to 95th percentile span 27x), 100/20 Mbit/s links spread by sigma 0.5."""

    gflops_sigma: float = 1.0
    down_mbps: float | None = 100.0
    down_sigma: float = 0.5
    up_mbps: float | None = 20.0
    up_sigma: float = 0.5
    latency_s: float = 0.05


@dataclass(frozen=True)
class IntermittentParams(SystemParams):
    """``system=intermittent``: each silo online in 30% of the rounds."""

    availability: float = 0.3


@dataclass(frozen=True)
class ThinUplinkParams(SystemParams):
    """``system=thin_uplink``: asymmetric thin links (ADSL, a hospital's shared uplink): 1 Mbit/s
    up, 20 down, 50 ms latency."""

    down_mbps: float | None = 20.0
    up_mbps: float | None = 1.0
    latency_s: float = 0.05


# ------------------------------------------------------------------------------------ traces
@dataclass(frozen=True)
class TraceRow:
    """One silo's line of a trace: values that replace the drawn or configured ones (None: not
    given) and its online intervals [start, end) in simulated seconds."""

    gflops: float | None = None
    up_mbps: float | None = None
    down_mbps: float | None = None
    availability: float | None = None
    online: tuple[tuple[float, float], ...] | None = None


def _trace_error(path: str, problem: str) -> ConfigError:
    return ConfigError(
        "system.trace",
        f"{path}: {problem}",
        'a trace is a CSV file with a header, or a JSON list of objects (or {"silos": [...]}), '
        f"with the columns {list(TRACE_COLUMNS)}: silo (required, one row per silo id), gflops, "
        "up_mbps, down_mbps (numbers > 0), availability (a probability in [0, 1]), online (the "
        "silo's online intervals in simulated seconds, '0-600;1200-1800' or [[0, 600], [1200, "
        "1800]]); an empty cell keeps the config's value.",
    )


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(path: str, silo: int, column: str, value: Any) -> float:
    """A trace's number: a probability in [0, 1] for ``availability``, else finite and > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _trace_error(path, f"silo {silo}: {column} {value!r} is not a number.") from None
    if column == "availability":
        if not 0.0 <= number <= 1.0:
            raise _trace_error(path, f"silo {silo}: availability {value!r} is not in [0, 1].")
    elif not (math.isfinite(number) and number > 0):
        raise _trace_error(path, f"silo {silo}: {column} must be a number > 0, got {value!r}.")
    return number


def _intervals(path: str, silo: int, value: Any) -> tuple[tuple[float, float], ...]:
    if isinstance(value, str):
        pairs: list[Any] = [p.split("-") for p in re.split(r"[;\s]+", value.strip()) if p]
    elif isinstance(value, list):
        pairs = value
    else:
        raise _trace_error(path, f"silo {silo}: online {value!r} is no list of intervals.")
    out = []
    for pair in pairs:
        try:
            start, end = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise _trace_error(
                path, f"silo {silo}: online interval {pair!r} is no start-end."
            ) from None
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise _trace_error(
                path, f"silo {silo}: online interval {pair!r} needs 0 <= start < end."
            )
        out.append((start, end))
    return tuple(sorted(out))


def _rows(path: str, file: Path) -> list[Mapping[str, Any]]:
    text = file.read_text()
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise _trace_error(path, f"not valid JSON ({err}).") from None
        data = data.get("silos") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise _trace_error(path, "expected a list of objects, one per silo.")
        return data
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        raise _trace_error(path, "the file is empty.")
    return list(reader)


def load_trace(path: str, num_silos: int | None = None) -> dict[int, TraceRow]:
    """The rows of a trace file (CSV with a header, or JSON: a list of objects, or ``{"silos":
    [...]}``) by silo id; any problem (no file, a missing or unknown column, a bad value, a silo
    listed twice, a silo of the run without a row) is a ConfigError naming ``system.trace``."""
    file = Path(path)
    if not file.is_file():
        raise _trace_error(path, "no such file.")
    trace: dict[int, TraceRow] = {}
    for raw in _rows(path, file):
        row = {str(k).strip(): v for k, v in raw.items()}
        unknown = sorted(set(row) - set(TRACE_COLUMNS))
        if unknown:
            raise _trace_error(path, f"unknown columns {unknown}.")
        if _empty(row.get("silo")):
            raise _trace_error(path, f"a row without 'silo': {dict(row)}.")
        try:
            silo = int(str(row["silo"]).strip())
        except ValueError:
            raise _trace_error(path, f"silo {row['silo']!r} is not an integer id.") from None
        if silo in trace or silo < 0:
            raise _trace_error(path, f"silo {silo} is listed twice or negative.")
        values: dict[str, Any] = {}
        for column in ("gflops", "up_mbps", "down_mbps", "availability"):
            if not _empty(row.get(column)):
                values[column] = _number(path, silo, column, row[column])
        if not _empty(row.get("online")):
            values["online"] = _intervals(path, silo, row["online"])
        trace[silo] = TraceRow(**values)
    if num_silos is not None:
        missing = sorted(set(range(num_silos)) - set(trace))
        if missing:
            raise _trace_error(
                path, f"the run has {num_silos} silos; silos {missing[:10]} have no row."
            )
    return trace


# ------------------------------------------------------------------------------------- clock
@dataclass(frozen=True)
class SiloProfile:
    """A silo's compute speed (FLOP/s), link speeds (bit/s; None: infinite), probability of
    being online in a round and online intervals (None: that probability decides)."""

    flops: float
    down_bps: float | None
    up_bps: float | None
    availability: float
    online: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Transfer:
    """What a silo does in one exchange, for its timing: bytes down and up, the values it
    received (P), its local steps (k) and the rows of each step (r)."""

    down_bytes: int
    up_bytes: int
    parameters: int
    steps: int
    rows_per_step: int


@dataclass(frozen=True)
class Settled:
    """A round's timing: its simulated seconds, the silos whose replies came in time and the
    stragglers dropped (silo ids)."""

    seconds: float
    in_time: frozenset[int]
    dropped: frozenset[int] = frozenset()


_SPEED, _DOWN, _UP, _ONLINE = 1, 2, 3, 4  # independent random streams


def _draw(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *keys]))


class VirtualClock:
    """The simulated time of a run (module docstring): each silo's profile, who is online, how
    long an exchange takes, and the run's time so far (``now``, in its checkpoint state)."""

    def __init__(
        self, params: SystemParams, seed: int = 0, trace: Mapping[int, TraceRow] | None = None
    ) -> None:
        self.params = params
        self.seed = int(seed)
        self.trace = dict(trace or {})
        self.now = 0.0
        self._profiles: dict[int, SiloProfile] = {}

    def profile(self, silo: int) -> SiloProfile:
        """Silo ``silo``'s profile: its trace row's values, else drawn (module docstring)."""
        if silo not in self._profiles:
            p, row = self.params, self.trace.get(silo, TraceRow())

            gflops = self._drawn(silo, row.gflops, p.gflops, p.gflops_sigma, _SPEED)
            down = self._drawn(silo, row.down_mbps, p.down_mbps, p.down_sigma, _DOWN)
            up = self._drawn(silo, row.up_mbps, p.up_mbps, p.up_sigma, _UP)
            assert gflops is not None  # the config's median is a number
            self._profiles[silo] = SiloProfile(
                flops=gflops * 1e9,
                down_bps=None if down is None else down * 1e6,
                up_bps=None if up is None else up * 1e6,
                availability=p.availability if row.availability is None else row.availability,
                online=row.online,
            )
        return self._profiles[silo]

    def _drawn(
        self, silo: int, given: float | None, median: float | None, sigma: float, stream: int
    ) -> float | None:
        """The trace's value if ``given``, else m exp(sigma z_s) (None: an infinite link)."""
        if given is not None or median is None or sigma == 0:
            return given if given is not None else median
        return median * math.exp(sigma * float(_draw(self.seed, stream, silo).normal()))

    @property
    def always_online(self) -> bool:
        """Whether every silo is online in every round (availability 1, no trace says else)."""
        return self.params.availability >= 1.0 and all(
            row.online is None and (row.availability is None or row.availability >= 1.0)
            for row in self.trace.values()
        )

    def is_online(self, silo: int, server_round: int) -> bool:
        """Whether ``silo`` is online in ``server_round`` (at the clock's ``now``)."""
        profile = self.profile(silo)
        if profile.online is not None:
            return any(start <= self.now < end for start, end in profile.online)
        p = profile.availability
        return p >= 1.0 or float(_draw(self.seed, _ONLINE, silo, server_round).random()) < p

    def online(self, silos: Iterable[int], server_round: int) -> set[int]:
        """The ``silos`` online in ``server_round``; when none is but a trace opens an online
        interval later, the clock first moves on to the earliest such opening."""
        known = list(silos)
        found = {s for s in known if self.is_online(s, server_round)}
        if found:
            return found
        opening = [a for s in known for a, _ in self.profile(s).online or () if a > self.now]
        if not opening:
            return found
        self.now = min(opening)
        return {s for s in known if self.is_online(s, server_round)}

    def transfer_s(self, nbytes: int, bps: float | None) -> float:
        """One message of ``nbytes`` over a link of ``bps`` bit/s: L + 8 b / B."""
        return self.params.latency_s + (0.0 if bps is None else 8.0 * nbytes / bps)

    def step_s(self, silo: int, parameters: int, rows_per_step: int) -> float:
        """One local step: 6 P r / F_s seconds."""
        return FLOPS_PER_PARAMETER * parameters * rows_per_step / self.profile(silo).flops

    def duration(self, silo: int, transfer: Transfer) -> float:
        """t_s: download, local training and upload of one exchange (module docstring)."""
        profile = self.profile(silo)
        return (
            self.transfer_s(transfer.down_bytes, profile.down_bps)
            + transfer.steps * self.step_s(silo, transfer.parameters, transfer.rows_per_step)
            + self.transfer_s(transfer.up_bytes, profile.up_bps)
        )

    def step_budget(
        self, silo: int, down_bytes: int, parameters: int, rows_per_step: int
    ) -> int | None:
        """With ``stragglers: partial``: the local steps that fit in the deadline (the upload
        estimated at ``down_bytes``; 0: none fits); None when every step may run."""
        p = self.params
        if p.deadline_s is None or p.stragglers != "partial":
            return None
        profile = self.profile(silo)
        left = (
            p.deadline_s
            - self.transfer_s(down_bytes, profile.down_bps)
            - self.transfer_s(down_bytes, profile.up_bps)
        )
        per_step = self.step_s(silo, parameters, rows_per_step)
        if left <= 0:
            return 0
        return None if per_step <= 0 else math.floor(left / per_step)

    def settle(self, durations: Mapping[int, float]) -> Settled:
        """A round whose replies took ``durations`` (silo -> t_s): who came in time and how long
        the server waited (capped at the deadline; the deadline when no silo answered), plus
        ``server_s``; the clock moves on by that much."""
        deadline = self.params.deadline_s
        late = {s for s, t in durations.items() if deadline is not None and t > deadline}
        waited = max(durations.values(), default=0.0)
        if deadline is not None:
            waited = deadline if late or not durations else waited
        seconds = waited + self.params.server_s
        self.now += seconds
        return Settled(seconds, frozenset(set(durations) - late), frozenset(late))

    def staleness_weight(self, staleness: int) -> float:
        """FedBuff's s(tau) = (1 + tau)^(-a) for an update ``staleness`` aggregations old."""
        return float((1.0 + staleness) ** -self.params.staleness_exponent)

    def state_dict(self) -> dict[str, Any]:
        """The clock's time so far (profiles and draws are functions of the seed and trace)."""
        return {"now": self.now}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.now = float(state["now"])


def build_clock(params: SystemParams, seed: int, num_silos: int | None = None) -> VirtualClock:
    """The clock of a run: ``params`` with its trace read and checked against the run's
    ``num_silos`` silos (a ConfigError naming ``system.trace``)."""
    trace = load_trace(params.trace, num_silos) if params.trace is not None else None
    return VirtualClock(params, seed, trace)


def _check(name: str, factory: Any, params: type) -> None:
    """A system's parameters are a :class:`SystemParams`."""
    if not issubclass(params, SystemParams):
        raise TypeError(f"system {name!r}: its parameters must derive from SystemParams")


SYSTEMS: Registry[Any] = Registry("system", check=_check)
"""The config group ``system``: one entry per preset of ``configs/system/``, each a subclass of
:class:`SystemParams` whose defaults are the preset's; the factory builds the run's clock."""
SYSTEMS.register("ideal", params=SystemParams)(build_clock)
SYSTEMS.register("heterogeneous", params=HeterogeneousParams)(build_clock)
SYSTEMS.register("intermittent", params=IntermittentParams)(build_clock)
SYSTEMS.register("thin_uplink", params=ThinUplinkParams)(build_clock)
