"""``runtime.num_threads``: torch's intra-op threads while silos train, on every runtime; the
caller's thread count restored after an in-process run; the count in ``summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import fedmtl.app.silo.batch as batch
import strategies.engine.silo as silo_side
from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.runtimes import (
    InProcessParams,
    SimulationParams,
    VectorizedParams,
    silo_threads,
    using_threads,
)
from fedmtl.app.runtimes.environment import DEFAULT_THREADS
from fedmtl.app.silo import toolkit
from fedmtl.core.errors import ConfigError
from tests.support.runs import compose_raw


@pytest.mark.parametrize(
    ("runtime", "params", "threads"),
    [
        ("inprocess", InProcessParams(), DEFAULT_THREADS),
        ("inprocess", InProcessParams(num_threads=3), 3),
        ("vectorized", VectorizedParams(), DEFAULT_THREADS),
        ("vectorized", VectorizedParams(num_threads=2), 2),
        ("simulation", SimulationParams(), 1),  # one CPU per client
        ("simulation", SimulationParams(num_cpus=2.5), 2),
        ("simulation", SimulationParams(num_cpus=0.25), 1),
        ("simulation", SimulationParams(num_cpus=2.0, num_threads=1), 1),
    ],
)
def test_threads_per_silo(runtime: str, params: Any, threads: int) -> None:
    assert silo_threads(runtime, params) == threads


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "2"])
@pytest.mark.parametrize("params", [InProcessParams, VectorizedParams, SimulationParams])
def test_bad_thread_counts_are_refused(params: Any, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        params(num_threads=value)
    assert info.value.key == "num_threads"


def test_using_threads_restores_the_count_even_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), using_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_a_simulation_worker_trains_with_its_threads() -> None:
    """A Ray worker sets its threads once, from the run's runtime config."""
    before = torch.get_num_threads()
    try:
        toolkit._use_worker_threads("simulation", SimulationParams(num_threads=before + 1))
        assert torch.get_num_threads() == before + 1
        toolkit._use_worker_threads("inprocess", InProcessParams(num_threads=before + 2))
        assert torch.get_num_threads() == before + 1  # in-process runtimes set their own
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "runtime", ["inprocess", pytest.param("vectorized", marks=pytest.mark.slow)]
)
def test_in_process_silos_train_with_the_configured_threads(
    runtime: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def spying(function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.append(torch.get_num_threads())
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(silo_side, "train_local", spying(silo_side.train_local))
    monkeypatch.setattr(batch, "train_vectorized", spying(batch.train_vectorized))
    before = torch.get_num_threads()
    wanted = before + 1
    overrides = ["experiment=smoke", f"runtime={runtime}", f"runtime.num_threads={wanted}"]
    summary = run(parse(compose_raw(overrides, tmp_path)))
    assert summary["status"] == "completed"
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before
    assert summary["provenance"]["threads_per_silo"] == wanted
