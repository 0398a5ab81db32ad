"""The contract checks of a method: what every shipped method passes and a plug-in author runs in
their own tests (``check_method("my_method")``).

Each check runs small experiments (synthetic data, 4 silos, 3 rounds of 3 local steps, in process
unless it says otherwise) and raises ``AssertionError`` saying what broke:

- :func:`check_registration`: registered, with a silo half and parameters of the right kinds, and
  a preset that composes and parses;
- :func:`check_same_seed_same_result`: two runs with one seed end with the same model, bit for bit;
- :func:`check_checkpoint_round_trip`: the engine's saved state loads into a fresh engine and
  gives the same state back;
- :func:`check_resume_is_bit_identical`: a run stopped after round 2 and resumed ends with the
  model of a run never stopped;
- :func:`check_malformed_replies_are_refused`: a silo whose reply is corrupted (a NaN update, or a
  negative example count when it sends nothing) is rejected, listed, and the model stays finite;
- :func:`check_vectorized_equals_inprocess`: the ``vectorized`` runtime ends with the in-process
  metrics (to 1e-4 relative where silos are trained in a batch; exactly where they are not);
- :func:`check_simulation`: one run through Flower's simulation engine (Ray) ends with the
  in-process metrics.

Most checks compare against one plain run of the experiment; :func:`check_method` makes it once
(:func:`reference_run`) and hands it to each (``reference=``), which otherwise runs its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import (
    MODEL_FILE,
    load_checkpoint,
    load_model_arrays,
    resumed_raw_config,
    split_arrays,
)
from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import prepare
from fedmtl.app.run.tracking import METRICS_FILE
from fedmtl.core.records import Arrays, TrainReply
from strategies import METHODS
from strategies.engine import Method, MethodParams, RunContext, SiloMethod, round_seed

SMALL = (
    "dataset=synthetic",
    "dataset.num_samples=400",
    "partition.num_silos=4",
    "num_rounds=3",
    "train.max_steps=3",
    "runtime=inprocess",
    "tracking=quiet",
    "tracking.plots=false",
    "checkpoint_every=1",
)
"""The experiment every check runs (the author's ``overrides`` come after it)."""

Summary = dict[str, Any]


@contextlib.contextmanager
def _directory(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="fedmtl-check-") as made:
        yield Path(made)


def _overrides(preset: str, overrides: Sequence[str]) -> list[str]:
    return [*SMALL, f"strategy={preset}", *overrides]


def run_small(
    preset: str, overrides: Sequence[str], output_dir: Path, *extra: str
) -> tuple[Summary, Arrays]:
    """One small run of ``strategy=preset``: its summary and final model arrays."""
    summary = run(parse(compose([*_overrides(preset, overrides), *extra], output_dir)))
    assert summary["status"] == "completed", f"the run ended {summary['status']!r}"
    arrays, _ = load_model_arrays(output_dir / MODEL_FILE)
    return summary, arrays


@dataclasses.dataclass(frozen=True)
class Reference:
    """A completed small run of the checked method (:func:`run_small`): its summary, final model
    arrays and run directory (checkpoint, ``metrics.jsonl``)."""

    summary: Summary
    arrays: Arrays
    directory: Path


def reference_run(preset: str, overrides: Sequence[str], directory: Path) -> Reference:
    """The plain small run the checks compare against, in ``directory``."""
    summary, arrays = run_small(preset, overrides, directory)
    return Reference(summary, arrays, directory)


def _reference(
    reference: Reference | None, preset: str, overrides: Sequence[str], directory: Path
) -> Reference:
    return reference if reference is not None else reference_run(preset, overrides, directory)


def _same_arrays(a: Arrays, b: Arrays, what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: the models hold different arrays"
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=True), f"{what}: array {key} differs"


def _close_metrics(a: Summary, b: Summary, what: str, rel: float = 0.0, abs_: float = 0.0) -> None:
    for split in ("final",):
        assert a[split].keys() == b[split].keys(), f"{what}: different tasks evaluated"
        for task, metrics in a[split].items():
            for name, value in metrics.items():
                other = b[split][task][name]
                ok = math.isclose(value, other, rel_tol=rel, abs_tol=abs_) or value == other
                assert ok, f"{what}: {task}/{name} is {value!r} against {other!r}"


def check_registration(preset: str, overrides: Sequence[str] = ()) -> None:
    """The preset names a registered method with a silo half and parameters of the right kinds,
    and composes and parses with the checks' experiment."""
    config = parse(compose(_overrides(preset, overrides)))
    entry = METHODS.get(config.strategy.name)
    assert issubclass(entry.factory, Method), f"{entry.factory!r} is not a Method"
    assert issubclass(entry.factory.silo, SiloMethod), "its silo half is not a SiloMethod"
    assert isinstance(config.strategy.params, MethodParams), "its parameters are no MethodParams"
    label = config.strategy.params.label(config.strategy.name)
    assert isinstance(label, str) and label, "its label is not a name"


def check_same_seed_same_result(
    preset: str, overrides: Sequence[str], directory: Path, reference: Reference | None = None
) -> None:
    """Two runs with the same seed end with the same model and metrics, bit for bit."""
    first = _reference(reference, preset, overrides, directory / "first")
    second, again = run_small(preset, overrides, directory / "second")
    _same_arrays(first.arrays, again, "two runs of one seed")
    _close_metrics(first.summary, second, "two runs of one seed")


def check_checkpoint_round_trip(
    preset: str, overrides: Sequence[str], directory: Path, reference: Reference | None = None
) -> None:
    """The engine state in a checkpoint loads into a fresh engine, which saves it back equal."""
    state = load_checkpoint(_reference(reference, preset, overrides, directory / "saved").directory)
    config = parse(compose(_overrides(preset, overrides), directory / "fresh"))
    engine = prepare(config).new_engine(RunContext())
    engine.load_state_dict(state.engine)
    before, arrays_before = split_arrays(state.engine)
    after, arrays_after = split_arrays(engine.state_dict())
    assert before == after, "the engine's state changed in a save-load round trip"
    _same_arrays(arrays_before, arrays_after, "the state's arrays after a round trip")


def check_resume_is_bit_identical(
    preset: str, overrides: Sequence[str], directory: Path, reference: Reference | None = None
) -> None:
    """A run stopped after round 2 and resumed to round 3 ends with the never-stopped model."""
    full = _reference(reference, preset, overrides, directory / "full")
    stopped = directory / "stopped"
    run_small(preset, overrides, stopped, "num_rounds=2")
    summary = run(parse(resumed_raw_config(stopped, ["num_rounds=3"])))
    assert summary["status"] == "completed" and summary["resumed_from"] == [2]
    resumed, _ = load_model_arrays(stopped / MODEL_FILE)
    _same_arrays(full.arrays, resumed, "a resumed run against one never stopped")
    rows = [_without_times(r) for r in _lines(stopped / METRICS_FILE)]
    assert rows == [_without_times(r) for r in _lines(full.directory / METRICS_FILE)], (
        "a resumed run's metrics.jsonl differs from one never stopped"
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _without_times(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("seconds", "wall_time_s")}


def corrupt(reply: TrainReply) -> TrainReply:
    """A reply the server must refuse: NaN in its first array, or (a silo that sends no array)
    a negative example count."""
    if reply.deltas:
        key = next(iter(reply.deltas))
        spoiled = np.array(reply.deltas[key], copy=True)
        spoiled.reshape(-1)[0] = np.nan
        return dataclasses.replace(reply, deltas={**reply.deltas, key: spoiled})
    if reply.task_deltas:
        task = next(iter(reply.task_deltas))
        shares = dict(reply.task_deltas[task])
        key = next(iter(shares))
        spoiled = np.array(shares[key], copy=True)
        spoiled.reshape(-1)[0] = np.nan
        return dataclasses.replace(
            reply, task_deltas={**reply.task_deltas, task: {**shares, key: spoiled}}
        )
    return dataclasses.replace(reply, num_examples=-1.0)


@contextlib.contextmanager
def corrupted_silo(
    silo_class: type[SiloMethod], seed_of_victim: Callable[[int], bool]
) -> Iterator[None]:
    """While inside, the silo half ``silo_class`` corrupts its reply whenever the message's round
    seed satisfies ``seed_of_victim``."""
    original = silo_class.train

    def train(self: SiloMethod, tools: Any, received: Arrays, request: Any) -> TrainReply:
        reply = original(self, tools, received, request)
        return corrupt(reply) if seed_of_victim(tools.seed) else reply

    silo_class.train = train  # type: ignore[method-assign]
    try:
        yield
    finally:
        silo_class.train = original  # type: ignore[method-assign]


def check_malformed_replies_are_refused(
    preset: str, overrides: Sequence[str], directory: Path
) -> None:
    """Silo 0's replies are corrupted in every round: each is refused and listed, the run
    completes with the other silos, and every final array and metric is finite."""
    config = parse(compose(_overrides(preset, overrides)))
    silo_class = METHODS.get(config.strategy.name).factory.silo
    victims = {round_seed(config.seed, 0, r) for r in range(1, config.num_rounds + 1)}
    extra = ("strategy.min_train_nodes=1",)
    with corrupted_silo(silo_class, victims.__contains__):
        summary, model = run_small(preset, overrides, directory / "corrupted", *extra)
    refused = [r for r in summary["rejected"] if r["silo"] == 0]
    assert len(refused) == config.num_rounds, f"refused {refused}, one per round expected"
    assert all("rejected" in r["reason"] for r in refused), refused
    assert all(np.isfinite(v).all() for v in model.values()), "a corrupted reply reached the model"
    values = [v for metrics in summary["final"].values() for v in metrics.values()]
    assert values and all(math.isfinite(v) for v in values), "non-finite final metrics"


def check_vectorized_equals_inprocess(
    preset: str, overrides: Sequence[str], directory: Path, reference: Reference | None = None
) -> None:
    """The ``vectorized`` runtime ends with the in-process metrics (silos it trains in a batch:
    to 1e-4 relative, 1e-5 absolute; silos it leaves to the ClientApp: exactly)."""
    inprocess = _reference(reference, preset, overrides, directory / "inprocess").summary
    vectorized, _ = run_small(preset, overrides, directory / "vectorized", "runtime=vectorized")
    _close_metrics(vectorized, inprocess, "vectorized against inprocess", rel=1e-4, abs_=1e-5)


def check_simulation(
    preset: str, overrides: Sequence[str], directory: Path, reference: Reference | None = None
) -> None:
    """One run through Flower's simulation engine (Ray) ends with the in-process metrics."""
    inprocess = _reference(reference, preset, overrides, directory / "inprocess").summary
    simulated, _ = run_small(
        preset,
        overrides,
        directory / "simulation",
        "runtime=simulation",
        "runtime.ray_num_cpus=2",
    )
    _close_metrics(simulated, inprocess, "simulation against inprocess")


def check_method(
    preset: str,
    overrides: Sequence[str] = (),
    directory: Path | None = None,
    simulation: bool = True,
) -> None:
    """Every check of this module on ``strategy=preset`` (with ``overrides``, e.g.
    ``plugins=[...]``), in ``directory`` (default: a temporary one; the reference run the checks
    compare against is ``directory / "reference"``); ``simulation=False`` skips the Ray run
    (seconds to start)."""
    check_registration(preset, overrides)
    with _directory(directory) as root:
        reference = reference_run(preset, overrides, root / "reference")
        check_same_seed_same_result(preset, overrides, root / "seed", reference)
        check_checkpoint_round_trip(preset, overrides, root / "checkpoint", reference)
        check_resume_is_bit_identical(preset, overrides, root / "resume", reference)
        check_malformed_replies_are_refused(preset, overrides, root / "malformed")
        check_vectorized_equals_inprocess(preset, overrides, root / "vectorized", reference)
        if simulation:
            check_simulation(preset, overrides, root / "simulation", reference)
