"""``fedmtl bench SUITE --out DIR``: run a suite's grid of scenarios x strategies x seeds.

The suite (:mod:`fedmtl.app.bench.suite`) is parsed and every config it will run is composed,
parsed and checked first, so a bad strategy or key stops the command before any training. Then, in
this one process (each run calls :func:`fedmtl.app.launch.run`):

1. **Tuning** (when a strategy has a grid): every grid point of every such strategy, and the
   anchor (``fedavg`` with its defaults), run on the *validation partition* of each scenario
   (``partition.validation_fraction``: each silo evaluates on rows carved out of its training
   rows; test rows and the global test set are never used) for the tuning seeds. A grid point's
   score is the mean over those seeds of its Delta_MTL (%) against the anchor run of the same
   seed (:mod:`fedmtl.app.bench.stats`: accuracy for classification, MAE for regression); the
   highest score wins, ties going to the point listed first; when every point failed, the defaults
   are kept. ``DIR/tuning.json`` records the grids, every score and the choice.
2. **Final runs**: every strategy (the Delta_MTL reference first) in every scenario for every seed,
   with its chosen values, on the scenario's own partition.

Each run has its own directory: ``DIR/runs/<scenario>/<strategy>/seed<k>`` (tuning:
``DIR/tuning/<scenario>/<strategy>/p<i>-<values>/seed<k>``, the anchor under ``_anchor``). A run
whose ``summary.json`` says it completed, with the same config, and whose ``bench_cell.json`` names
this suite's cell, is skipped, so a suite resumes after a crash; a run that crashed (or was killed,
or whose config changed) is run again from an empty directory. A run that raises is recorded as
failed and the grid goes on. The run's ``summary.json`` is its own; the bench writes beside it
``bench_cell.json`` (:mod:`fedmtl.app.bench.records`): the suite, the cell (phase, scenario,
strategy label, seed, tuned values), the scenario id as the suite defines it (its tuned keys left
out) and, once the reference run of the same scenario and seed exists, the run's Delta_MTL.
``DIR/bench.json`` holds the resolved suite, provenance and every run's status.

Runs use wandb's group = the suite's name (offline by default, ``tracking.wandb``). Runs on
``runtime=simulation`` go through Flower's ``run_simulation``, which starts Ray and shuts it down
at its end (``RayBackend.terminate`` calls ``ray.shutdown()`` unconditionally in Flower 1.41-1.42):
one Ray session cannot span the grid without patching Flower, so each such run pays Ray's start-up;
with ``runtime.ray_address`` pointing to a running cluster (``ray start --head``), a run only
connects to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from fedmtl.app.bench.records import (
    BENCH_FILE,
    TUNING_FILE,
    CellRecord,
    read_cell,
    read_summary,
    write_cell,
    write_json,
)
from fedmtl.app.bench.stats import summary_delta
from fedmtl.app.bench.suite import (
    ANCHOR_STRATEGY,
    Composer,
    StrategyEntry,
    Suite,
    load_suite,
    suite_names,
)
from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.provenance import provenance
from fedmtl.app.run.scenario import scenario_of, without_keys
from fedmtl.app.run.tracking import SUMMARY_FILE
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig

log = logging.getLogger("fedmtl")

RUNS_DIR = "runs"
TUNING_DIR = "tuning"
ANCHOR_LABEL = "_anchor"
CRITERION = (
    "mean over the tuning seeds of Delta_MTL (%) on the validation partition against fedavg with "
    "its default hyperparameters on the same partition and seed (accuracy for classification, "
    "MAE for regression); the highest wins, ties go to the grid point listed first"
)
Runner = Callable[[ExperimentConfig], dict[str, Any]]
Phase = Literal["tune", "final"]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its phase, scenario, strategy (label and registered name), seed, tuned
    values (with their grid point index in the tuning phase), directory and raw config."""

    phase: Phase
    scenario: str
    label: str
    strategy: str
    seed: int
    tuned: Mapping[str, Any]
    point: int | None
    directory: Path
    raw: Mapping[str, Any] = field(repr=False)

    def key(self) -> dict[str, Any]:
        """What identifies the cell in its ``bench_cell.json``."""
        return {
            "phase": self.phase,
            "scenario": self.scenario,
            "strategy": self.label,
            "seed": self.seed,
            "tuned": dict(self.tuned),
            "point": self.point,
        }

    @property
    def name(self) -> str:
        point = "" if self.point is None else f"/p{self.point}"
        return f"{self.phase}:{self.scenario}/{self.label}{point}/seed{self.seed}"


@dataclass
class Outcome:
    """What a bench did: the cells run, skipped (already complete) and failed (with the error)."""

    ran: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    chosen: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def slug(point: Mapping[str, Any], index: int) -> str:
    """A directory name for grid point ``index``: ``p<index>-key=value+key=value`` (unsafe
    characters replaced)."""
    text = "+".join(f"{k}={v}" for k, v in point.items())
    return f"p{index}-" + re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def _comparable(raw: Mapping[str, Any]) -> str:
    """A run's config as compared for resuming (where results go, tracking and the checks before
    a run left out)."""
    kept = without_keys(raw, ["output_dir", "tracking", "limits"])
    return json.dumps(kept, sort_keys=True, default=str)


class Bench:
    """Runs one suite into ``out`` (module docstring); ``runner`` runs one parsed config and
    returns its summary (default :func:`fedmtl.app.launch.run`)."""

    def __init__(
        self, suite: Suite, out: Path, runner: Runner = run, progress: bool = True
    ) -> None:
        self.suite = suite
        self.out = out
        self.runner = runner
        self.progress = progress
        self.composer = Composer()
        self.anchor = StrategyEntry(ANCHOR_LABEL, ANCHOR_STRATEGY, where="tuning anchor")
        self.outcome = Outcome()
        self.status: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ planning
    def _cell(
        self,
        phase: Phase,
        scenario: str,
        entry: StrategyEntry,
        seed: int,
        tuned: Mapping[str, Any],
        point: int | None,
    ) -> Cell:
        if phase == "tune":
            base = self.out / TUNING_DIR / scenario / entry.label
            directory = base if point is None else base / slug(tuned, point)
        else:
            directory = self.out / RUNS_DIR / scenario / entry.label
        directory = (directory / f"seed{seed}").resolve()
        validation = self.suite.tuning.validation_fraction if phase == "tune" else 0.0
        raw = self.composer.raw(
            self.suite,
            scenario,
            entry,
            tuned,
            seed=seed,
            validation=validation,
            output_dir=str(directory),
        )
        return Cell(
            phase, scenario, entry.label, entry.name, seed, dict(tuned), point, directory, raw
        )

    def tuning_cells(self) -> list[Cell]:
        """The anchor and every grid point of every strategy with a grid, per scenario and
        tuning seed (empty when nothing is tuned)."""
        if not self.suite.tunes:
            return []
        cells = []
        for scenario in self.suite.scenarios:
            for seed in self.suite.tuning.seeds:
                cells.append(self._cell("tune", scenario, self.anchor, seed, {}, None))
            for entry in self.suite.entries():
                for index, point in enumerate(self.suite.grid_points(entry)):
                    for seed in self.suite.tuning.seeds:
                        cells.append(self._cell("tune", scenario, entry, seed, point, index))
        return cells

    def final_cells(self, chosen: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Cell]:
        """Every strategy (reference first) in every scenario for every seed, with the values
        ``chosen[scenario][label]`` (none when the strategy was not tuned)."""
        cells = []
        for scenario in self.suite.scenarios:
            for entry in self.suite.entries():
                tuned = chosen.get(scenario, {}).get(entry.label, {})
                for seed in self.suite.seeds:
                    cells.append(self._cell("final", scenario, entry, seed, tuned, None))
        return cells

    @property
    def num_final_cells(self) -> int:
        return len(self.suite.scenarios) * len(self.suite.entries()) * len(self.suite.seeds)

    # ----------------------------------------------------------------------------- running
    def completed_summary(self, cell: Cell) -> dict[str, Any] | None:
        """The summary of ``cell`` when a previous bench completed it with the same config."""
        summary = read_summary(cell.directory)
        if summary is None or summary.get("status") != "completed":
            return None
        record = read_cell(cell.directory, summary)
        if record is None or record.cell != cell.key():
            return None
        if _comparable(summary.get("config", {})) != _comparable(cell.raw):
            return None
        return summary

    def execute(self, cell: Cell) -> dict[str, Any] | None:
        """Run ``cell`` unless it is complete (then only its ``bench_cell.json`` is written again);
        its summary, or None when it failed."""
        done = self.completed_summary(cell)
        if done is not None:  # its scenario id as this suite defines it (tuned keys may differ)
            self._annotate(cell, done)
            self.outcome.skipped.append(cell)
            self._status(cell, "skipped")
            return done
        if cell.directory.exists():
            shutil.rmtree(cell.directory)  # a crashed or outdated run: start afresh
        try:
            self.runner(parse(cell.raw))
        except Exception as err:  # one failing run must not stop the grid
            self._fail(cell, f"{type(err).__name__}: {err}")
            return None
        summary = read_summary(cell.directory)
        if summary is None or summary.get("status") != "completed":
            reason = "the run did not complete" if summary else f"the run wrote no {SUMMARY_FILE}"
            self._fail(cell, reason)
            return None
        self._annotate(cell, summary)
        self.outcome.ran.append(cell)
        self._status(cell, "ran")
        return summary

    def _record(self, cell: Cell, summary: Mapping[str, Any]) -> CellRecord:
        """The bench's record of ``cell`` (its Delta_MTL not yet known)."""
        name = cell.scenario + ("-validation" if cell.phase == "tune" else "")
        return CellRecord(
            suite=self.suite.name,
            cell=cell.key(),
            reference=self.suite.reference,
            scenario=scenario_of(summary["config"], self.suite.excluded_keys(), name),
        )

    def _annotate(self, cell: Cell, summary: Mapping[str, Any]) -> None:
        """Write the run's ``bench_cell.json``: the suite, the cell and its scenario id."""
        write_cell(cell.directory, self._record(cell, summary))

    def _fail(self, cell: Cell, reason: str) -> None:
        self.outcome.failed.append((cell, reason))
        self._status(cell, "failed", reason)
        tqdm.write(f"fedmtl bench: {cell.name} failed: {reason}", file=sys.stderr)

    def _status(self, cell: Cell, status: str, error: str | None = None) -> None:
        entry = {**cell.key(), "dir": str(cell.directory.relative_to(self.out.resolve()))}
        self.status.append({**entry, "status": status, "error": error})

    def run(self) -> Outcome:
        """Validate the suite, then tune, choose, run the final grid and fill in Delta_MTL."""
        self.suite.validate(self.composer)
        self.out.mkdir(parents=True, exist_ok=True)
        self.out = self.out.resolve()
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if self.suite.reference_missing:
            log.warning(
                "the Delta_MTL reference strategy '%s' is not registered: Delta_MTL stays null",
                self.suite.reference,
            )
        tuning = self.tuning_cells()
        bar = tqdm(
            total=len(tuning) + self.num_final_cells,
            desc=f"bench {self.suite.name}",
            unit="run",
            disable=not self.progress,
        )
        with bar:
            tuned = {}
            for cell in tuning:
                bar.set_postfix_str(cell.name, refresh=True)
                tuned[cell.name] = self.execute(cell)
                bar.update(1)
            if tuning:
                record = self.choose(tuning, tuned)
                write_json(self.out / TUNING_FILE, record)
            finals = self.final_cells(self.outcome.chosen)
            summaries: dict[Path, dict[str, Any] | None] = {}
            for cell in finals:
                bar.set_postfix_str(cell.name, refresh=True)
                summaries[cell.directory] = self.execute(cell)
                bar.update(1)
        self.fill_deltas(finals, summaries)
        write_json(
            self.out / BENCH_FILE,
            {
                "suite": self.suite.to_dict(),
                "started": started,
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "provenance": provenance(),
                "criterion": CRITERION if tuning else None,
                "runs": self.status,
            },
        )
        return self.outcome

    # ------------------------------------------------------------------------- tuning choice
    def choose(
        self, cells: Sequence[Cell], summaries: Mapping[str, dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Score every grid point against the anchor (module docstring), set
        ``outcome.chosen[scenario][label]`` and return ``tuning.json``'s contents."""
        anchors = {
            (c.scenario, c.seed): summaries.get(c.name) for c in cells if c.label == ANCHOR_LABEL
        }
        record: dict[str, Any] = {
            "suite": self.suite.name,
            "criterion": CRITERION,
            "anchor": ANCHOR_STRATEGY,
            "validation_fraction": self.suite.tuning.validation_fraction,
            "seeds": list(self.suite.tuning.seeds),
            "scenarios": {},
        }
        for scenario in self.suite.scenarios:
            per_strategy: dict[str, Any] = {}
            for entry in self.suite.entries():
                points = self.suite.grid_points(entry)
                if not points:
                    continue
                rows = []
                means: list[float | None] = []
                for index, point in enumerate(points):
                    runs = [
                        c
                        for c in cells
                        if (c.scenario, c.label, c.point) == (scenario, entry.label, index)
                    ]
                    scores = {
                        str(c.seed): self._score(
                            summaries.get(c.name), anchors.get((scenario, c.seed))
                        )
                        for c in runs
                    }
                    valid = [v for v in scores.values() if v is not None]
                    mean = sum(valid) / len(valid) if valid and len(valid) == len(scores) else None
                    means.append(mean)
                    rows.append(
                        {
                            "point": index,
                            "values": point,
                            "scores": scores,
                            "mean": mean,
                            "runs": [str(c.directory.relative_to(self.out)) for c in runs],
                        }
                    )
                # the highest mean wins; max keeps the first of equal maxima (listed first)
                scored = {i: m for i, m in enumerate(means) if m is not None}
                best = max(scored, key=scored.__getitem__) if scored else None
                chosen = dict(points[best]) if best is not None else {}
                self.outcome.chosen.setdefault(scenario, {})[entry.label] = chosen
                if best is None:
                    log.warning("%s/%s: no grid point ran; defaults kept", scenario, entry.label)
                per_strategy[entry.label] = {
                    "strategy": entry.name,
                    "grid": {k: list(v) for k, v in self.suite.grid(entry).items()},
                    "points": rows,
                    "chosen": chosen,
                    "chosen_point": best,
                }
            record["scenarios"][scenario] = per_strategy
        return record

    @staticmethod
    def _score(summary: dict[str, Any] | None, anchor: dict[str, Any] | None) -> float | None:
        """A tuning run's score: its Delta_MTL against the anchor run (None when either failed)."""
        if summary is None or anchor is None:
            return None
        return summary_delta(summary, anchor).value

    # ------------------------------------------------------------------------------ Delta_MTL
    def fill_deltas(
        self, cells: Sequence[Cell], summaries: Mapping[Path, dict[str, Any] | None]
    ) -> None:
        """Write each final run's Delta_MTL against the reference run of its scenario and seed into
        its ``bench_cell.json`` (null, with ``delta_mtl_reference`` null, when there is none)."""
        reference = self.suite.reference_entry()
        for cell in cells:
            summary = summaries.get(cell.directory)
            if summary is None:
                continue
            ref_summary, ref_dir = None, None
            if reference is not None:
                ref_cell = next(
                    c
                    for c in cells
                    if (c.scenario, c.label, c.seed) == (cell.scenario, reference.label, cell.seed)
                )
                ref_summary = summaries.get(ref_cell.directory)
                ref_dir = str(ref_cell.directory.relative_to(self.out))
            delta = summary_delta(summary, ref_summary) if ref_summary is not None else None
            record = dataclasses.replace(
                self._record(cell, summary),
                delta_mtl=delta.value if delta is not None else None,
                delta_mtl_reference=ref_dir if ref_summary is not None else None,
            )
            write_cell(cell.directory, record)


def describe_plan(bench: Bench) -> list[str]:
    """The lines ``--dry-run`` prints: the suite's scenarios, strategies and run counts."""
    suite = bench.suite
    entries = suite.entries()
    tuning = bench.tuning_cells()
    lines = [
        f"suite {suite.name} ({suite.path}): {suite.description}".rstrip(": "),
        f"  scenarios:  {', '.join(suite.scenarios)}",
        f"  strategies: {', '.join(e.label for e in entries)}",
        f"  seeds:      {list(suite.seeds)}",
        f"  reference:  {suite.reference}"
        + (" (not registered: Delta_MTL will be null)" if suite.reference_missing else ""),
    ]
    if tuning:
        lines.append(
            f"  tuning:     {len(tuning)} runs on the validation partition "
            f"(fraction {suite.tuning.validation_fraction}, seeds {list(suite.tuning.seeds)})"
        )
        for entry in entries:
            grid = suite.grid(entry)
            if grid:
                lines.append(f"    {entry.label}: {dict((k, list(v)) for k, v in grid.items())}")
    lines.append(f"  final:      {bench.num_final_cells} runs")
    return lines


def main(argv: list[str]) -> int:
    """``fedmtl bench SUITE --out DIR [--dry-run] [--no-progress]``; the exit status: 0 when every
    run completed, 1 when some failed, 2 for a bad suite (nothing ran)."""
    parser = argparse.ArgumentParser(
        prog="fedmtl bench",
        description="Run a benchmark suite: scenarios x strategies x seeds, tuned on a validation "
        "split, resumable.",
        epilog=f"shipped suites (configs/bench/): {', '.join(suite_names())}",
    )
    parser.add_argument("suite", help="a suite name from configs/bench/ or a path to a suite file")
    parser.add_argument("--out", required=True, type=Path, help="output directory (resumable)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the suite and list its runs; run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        bench = Bench(load_suite(args.suite), args.out, progress=not args.no_progress)
        if args.dry_run:
            bench.suite.validate(bench.composer)
            print("\n".join(describe_plan(bench)))
            return 0
        outcome = bench.run()
    except ConfigError as err:
        print(f"fedmtl bench: invalid suite: {err}", file=sys.stderr)
        return 2
    total = len(outcome.ran) + len(outcome.skipped) + len(outcome.failed)
    print(
        f"bench {bench.suite.name}: {total} runs ({len(outcome.ran)} ran, "
        f"{len(outcome.skipped)} already complete, {len(outcome.failed)} failed) in {bench.out}"
    )
    for scenario, chosen in outcome.chosen.items():
        for label, values in chosen.items():
            print(f"  tuned {scenario}/{label}: {values or 'defaults (no grid point ran)'}")
    if bench.suite.reference_missing:
        print(f"  Delta_MTL: reference strategy '{bench.suite.reference}' is not registered")
    for cell, reason in outcome.failed:
        print(f"  FAILED {cell.name}: {reason}", file=sys.stderr)
    print(f"next: fedmtl report {bench.out} --out {bench.out / 'report'}")
    return 1 if outcome.failed else 0
