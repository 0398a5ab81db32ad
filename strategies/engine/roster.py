"""The roster: which silo each node holds (discovery) and which are sampled each round.

- **Discovery.** Before round 1 (and for nodes that join later) the engine asks each node which
  silo it holds (``query`` message): its tasks and labelled example counts
  (:class:`fedmtl.core.records.SiloInfo`). A node whose answer is unusable (an error, a missing
  field, an unknown task, a silo id another node already holds) is ignored for the rest of the run.
- **Gone silos.** A node that stops sending heartbeats is no longer listed by the grid: it is not
  sampled until it is back (a restarted SuperNode comes back under the same node id and silo).
- **Sampling.** Each round ``max(ceil(fraction * N), min_nodes)`` of the N known nodes (all when
  fewer; for training, of the silos online: :mod:`strategies.engine.system`), drawn with a seeded
  generator from the nodes ordered by silo id, so that a seed samples the same silos on every
  runtime whatever the node ids.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedmtl.core import records
from fedmtl.core.records import SiloInfo
from strategies.engine.dispatch import answered_node, answered_nodes, unavailable
from strategies.engine.replies import REPLY_ERRORS, check_silo, client_error

log = logging.getLogger("fedmtl")

Exchange = Callable[[list[Message]], list[Message]]
"""Send messages and return the replies that came (the engine's, which it can interrupt)."""


class Roster:
    """Known silos by node id, ignored nodes, and the seeded sampling generator."""

    def __init__(self, tasks: Collection[str], seed: int) -> None:
        self.tasks = list(tasks)
        self.rng = random.Random(seed)
        self.silos: dict[int, SiloInfo] = {}
        self.ignored: set[int] = set()  # nodes whose silo description was unusable
        self._claimed: set[int] = set()  # silo ids held by known nodes

    def wait_for(self, grid: Grid, minimum: int, timeout_s: float) -> None:
        """Wait until ``minimum`` nodes are connected (RuntimeError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while len(list(grid.get_node_ids())) < minimum:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(list(grid.get_node_ids()))} nodes connected after {timeout_s}s, "
                    f"{minimum} required (strategy.min_available_nodes)"
                )
            time.sleep(0.5)

    def discover(self, grid: Grid, exchange: Exchange) -> None:
        """Query the nodes not yet known for their silo (``exchange``: messages -> replies)."""
        unknown = [n for n in grid.get_node_ids() if n not in self.silos and n not in self.ignored]
        if not unknown:
            return
        messages = [
            Message(records.query_content(), dst_node_id=n, message_type=MessageType.QUERY)
            for n in unknown
        ]
        destinations = answered_nodes(messages)
        for reply in exchange(messages):
            node = answered_node(reply, destinations)
            if unavailable(reply):  # gone before it answered: asked again when it is back
                log.warning("node %s did not answer the query: %s", node, reply.error.reason)
                continue
            try:
                if reply.has_error():
                    raise client_error(reply.error.reason or "")
                info = check_silo(SiloInfo.from_content(reply.content), self.tasks, self._claimed)
            except REPLY_ERRORS as err:
                log.warning(
                    "node %s ignored for this run: unusable silo description (%s)", node, err
                )
                self.ignored.add(node)
                continue
            self.silos[node] = info
            self._claimed.add(info.silo_id)
        held = {t for info in self.silos.values() for t in info.tasks}
        missing = [t for t in self.tasks if t not in held]
        if missing:
            log.warning("no connected silo holds tasks %s: their heads stay untrained", missing)

    def sample(
        self, grid: Grid, fraction: float, minimum: int, online: Collection[int] | None = None
    ) -> list[int]:
        """Seeded sample of the connected known nodes (of silos ``online`` only, when given):
        max(ceil(fraction * N), minimum), at most N, ordered by silo id."""
        nodes = sorted(
            (
                n
                for n in grid.get_node_ids()
                if n in self.silos and (online is None or self.silo_id(n) in online)
            ),
            key=self.silo_id,
        )
        wanted = math.ceil(round(fraction * len(nodes), 9))  # 0.28 * 25 is 7.000000000000001
        size = min(len(nodes), max(wanted, minimum))
        return sorted(self.rng.sample(nodes, size), key=self.silo_id)

    def connected(self, grid: Grid) -> list[SiloInfo]:
        """The known silos whose nodes are connected now (Flower lists only nodes that keep
        sending heartbeats), by silo id."""
        online = set(grid.get_node_ids())
        return sorted(
            (info for node, info in self.silos.items() if node in online),
            key=lambda info: info.silo_id,
        )

    def silo_id(self, node: int) -> int:
        """The silo id of a known node (sampling and aggregation go by silo id, not node id)."""
        return self.silos[node].silo_id

    def known(self) -> list[SiloInfo]:
        """Every known silo, by silo id."""
        return sorted(self.silos.values(), key=lambda info: info.silo_id)

    def state_dict(self) -> dict[str, Any]:
        """The sampling generator's state. Discovery is not in it: a resumed run asks the silos
        again (their counts were fixed when they were first announced)."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
