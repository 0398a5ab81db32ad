"""Shared test set-up: the offline environment, hypothesis profiles, and torch's global RNG reset
before every test (what several test modules share lives in :mod:`tests.support`).

pytest-randomly runs the tests in a random order and reseeds ``random`` and numpy before each
test; the fixture below does the same for torch, so no test depends on what ran before it.
"""

from __future__ import annotations

import os

import pytest
import torch
from _pytest.nodeid import coerce_node_id
from hypothesis import settings

from fedmtl.app.runtimes import OFFLINE_ENV

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# Property tests explore new examples locally; CI replays a fixed sequence so that it cannot turn
# red by chance (a failure found locally is stored in .hypothesis/ and replayed first).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


GROUPS = {"simulation": "ray", "processes": "flwr"}
"""Tests that start Ray (marker ``simulation``) run one at a time on one xdist worker (``--dist
loadgroup``), and so do those that start a SuperLink and SuperNodes (``processes``): two
clusters of a kind at once on two cores would race their own timeouts. A Ray test and a
deployment test may run side by side (own ports, own temp and Flower directories)."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each Ray or deployment test joins its group, whose name ``--dist loadgroup`` reads from the
    end of the test's id (``...::test@ray``). pytest-xdist 3.8 writes that suffix where pytest 9
    no longer reads an id (``_nodeid``; pytest 9 keeps ``_id``), so it is written here: without
    it every group's tests ran side by side."""
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        group = next((g for m, g in GROUPS.items() if item.get_closest_marker(m)), None)
        if group is not None and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{group}")


@pytest.fixture(autouse=True)
def reset_torch_rng(request: pytest.FixtureRequest) -> None:
    """Torch's global RNG starts every test from the session's seed (pytest-randomly's, when it
    runs), whatever ran before."""
    seed = request.config.getoption("randomly_seed", default=None)
    torch.manual_seed(seed if isinstance(seed, int) else 0)
