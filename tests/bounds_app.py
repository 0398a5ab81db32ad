"""The checks ``fedmtl run`` makes before a run, for many configs in one process whose memory is
capped: ``python -m tests.bounds_app CASES.json`` (a JSON list of override lists) from the
repository root, for the bounds fuzz (tests/test_fuzz.py).

The process's address space is capped at what it holds after start-up plus :data:`HEADROOM`
(``RLIMIT_AS``), and the memory estimate sees :data:`AVAILABLE` bytes available, whatever the
machine has: a config the estimate lets through must then really be built within the cap (an
allocation beyond it raises MemoryError), and the outcome of every case is the same on every
machine. Prints one JSON line per case: ``{"case", "outcome": "accepted" | "refused" | "error",
"key", "message"}``.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from fedmtl.app.launch import check_simulated_silos
from fedmtl.app.run import resources
from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError

AVAILABLE = 2 * 1024**3
"""The memory available, as the estimate sees it (its budget: 80% of it)."""
HEADROOM = 3 * 1024**3
"""The address space a case may add to what the process holds after start-up."""


def check(overrides: list[str]) -> dict[str, object]:
    """What ``fedmtl run`` checks before starting its runtime, for ``overrides``."""
    try:
        config = parse(compose(overrides))
        check_simulated_silos(config, prepare(config))
    except ConfigError as err:
        return {"outcome": "refused", "key": err.key, "message": str(err)}
    except BaseException as err:
        return {"outcome": "error", "key": None, "message": f"{type(err).__name__}: {err}"}
    return {"outcome": "accepted", "key": None, "message": ""}


def address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    resources.available_memory = lambda: AVAILABLE  # the same outcome on every machine
    check(["dataset=synthetic", "dataset.num_samples=240"])  # libraries loaded before the cap
    cap = address_space() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    for case in cases:
        print(json.dumps({"case": case, **check(case)}), flush=True)


if __name__ == "__main__":
    main()
