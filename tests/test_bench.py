"""``fedmtl bench``: suites checked before anything runs, tuning on a validation partition that
never touches test rows, scenario ids, resuming, and the smoke suite through ``fedmtl report``."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedmtl.app import cli
from fedmtl.app.bench.records import CELL_FILE, CellRecord, read_cell, read_summary
from fedmtl.app.bench.runner import Bench
from fedmtl.app.bench.suite import Composer, load_suite, suite_names
from fedmtl.app.run.config import parse, parse_partition, presets
from fedmtl.app.run.scenario import EXCLUDED_KEYS, scenario_of
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig, PartitionConfig, PluginConfig
from partitions import ASSIGNMENTS, SPLITS, build, hold_out
from tests.support.bench import FakeRunner
from tests.support.data import make_dataset
from tests.support.runs import compose_raw, read_jsonl

TINY = ["experiment=smoke", "dataset=synthetic", "dataset.num_samples=240", "tracking=quiet"]
SUITE: dict[str, Any] = {
    "overrides": TINY,
    "scenarios": {"tiny": None},
    "strategies": ["fedavg", {"name": "mgda", "tune": {"strategy.server_optimizer.lr": [1, 3]}}],
    "seeds": [0, 1],
    "reference": "fedavg",  # a reference that is also a listed strategy: no extra cells
    "tuning": {"grid": {"train.lr": [0.01, 0.05]}, "seeds": [0], "validation_fraction": 0.25},
}


def write_suite(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return path


# ---------------------------------------------------------------------------- the suite file
@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"strategies": ["fedavg", "fedmagic"]}, "strategies[1].name"),
        ({"seed": 3}, "seed"),
        ({"seeds": []}, "seeds"),
        (
            {"strategies": [{"name": "mgda", "overrides": ["train.lr=0.1"]}]},
            "strategies[0].overrides",
        ),
        ({"tuning": {"grid": {"train.local_epochs": [1, 2]}}}, "tuning.grid.train.local_epochs"),
        ({"overrides": [*TINY, "strategy=mgda"]}, "overrides"),
        (
            {"strategies": [{"name": "mgda", "overrides": ["strategy=cagrad"]}]},
            "strategies[0].overrides",
        ),
        ({"strategies": [{"name": "mgda", "overrides": ["seed=3"]}]}, "strategies[0].overrides"),
        ({"strategies": ["fedavg", {"name": "fedavg"}]}, "strategies"),
    ],
)
def test_a_bad_suite_file_names_its_key(tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_suite(str(write_suite(tmp_path, **changes)))
    assert err.value.key == key


@pytest.mark.parametrize(
    ("changes", "where", "key"),
    [
        (
            {"strategies": [{"name": "fedavg", "tune": {"strategy.mu": [0.1]}}]},
            "strategies[0] (fedavg).tune",
            "strategy.mu",
        ),
        ({"scenarios": {"tiny": ["partition.num_silos=0"]}}, "scenarios.tiny", "num_silos"),
    ],
)
def test_a_bad_key_stops_the_bench_before_anything_runs(
    tmp_path: Path, changes: dict[str, Any], where: str, key: str
) -> None:
    runner, out = FakeRunner(), tmp_path / "out"
    bench = Bench(load_suite(str(write_suite(tmp_path, **changes))), out, runner, progress=False)
    with pytest.raises(ConfigError) as err:
        bench.run()
    assert err.value.key.startswith(where) and key in err.value.key
    assert runner.calls == [] and not out.exists()


DOCS = Path(__file__).resolve().parents[1] / "docs"


def documented_suite() -> dict[str, Any]:
    """The example suite of docs/benchmark.md's "Writing a suite" (its first YAML block)."""
    section = (DOCS / "benchmark.md").read_text().split("## Writing a suite", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None
    data: dict[str, Any] = yaml.safe_load(match.group(1))
    return data


def test_the_documented_suite_loads_and_its_strategy_overrides_reach_the_config(
    tmp_path: Path,
) -> None:
    """docs/benchmark.md's example: mgda_server3's own server learning rate is set in its runs
    only, and every config the suite would run composes and parses."""
    path = tmp_path / "documented.yaml"
    path.write_text(yaml.safe_dump(documented_suite()))
    suite = load_suite(str(path))
    entries = {e.label: e for e in suite.entries()}
    assert entries["mgda_server3"].overrides == ("strategy.server_optimizer.lr=3.0",)
    composer = Composer()
    for scenario in suite.scenarios:
        lrs = {
            label: composer.raw(suite, scenario, entry, {})["strategy"]["server_optimizer"]["lr"]
            for label, entry in entries.items()
        }
        assert lrs == {"single_task": 1.0, "fedavg": 1.0, "mgda_server3": 3.0, "cagrad": 1.0}
    suite.validate(composer)


@pytest.mark.parametrize(
    ("entry", "grid", "says"),
    [
        ({"overrides": ["strategy.name=fedprox"]}, {}, "which the entry's `name` decides"),
        (
            {
                "overrides": ["strategy.server_optimizer.lr=3.0"],
                "tune": {"strategy.server_optimizer.lr": [1.0, 3.0]},
            },
            {},
            "which strategies[0] (mgda).tune tunes",
        ),
        (
            {"overrides": ["+strategy.server_optimizer.lr=3.0"]},
            {"strategy.server_optimizer.lr": [1.0, 2.0]},
            "which tuning.grid tunes",
        ),
        ({"overrides": ["train.local_epochs=3"]}, {}, "may only set strategy.* keys"),
    ],
)
def test_a_strategy_override_the_suite_decides_is_refused_with_the_reason(
    tmp_path: Path, entry: dict[str, Any], grid: dict[str, Any], says: str
) -> None:
    changes = {"strategies": [{"name": "mgda", **entry}], "tuning": {"grid": grid}}
    with pytest.raises(ConfigError) as err:
        load_suite(str(write_suite(tmp_path, **changes)))
    assert err.value.key.startswith("strategies[0]") and err.value.key.endswith(".overrides")
    assert says in err.value.problem


def test_an_unknown_suite_is_refused_with_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smoke"):
        load_suite("no-such-suite")
    assert cli_status(["bench", "no-such-suite", "--out", str(tmp_path / "o")]) == 2


def label(config: ExperimentConfig) -> str:
    """The strategy as results name it (``mgda`` for ``balanced`` with weighting ``mgda``)."""
    return str(config.strategy.params.label(config.strategy.name))


def cli_status(argv: list[str]) -> int:
    try:
        cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_loads(name: str) -> None:
    """Each shipped suite parses: its strategies are registered and its presets exist."""
    data = yaml.safe_load(Path(load_path(name)).read_text())
    listed = {s if isinstance(s, str) else s["name"] for s in data["strategies"]}
    assert listed <= set(presets("strategy"))
    experiments = {
        o.split("=", 1)[1]
        for overrides in [data.get("overrides") or [], *data["scenarios"].values()]
        for o in overrides or []
        if o.startswith("experiment=")
    }
    assert experiments <= set(presets("experiment"))
    suite = load_suite(name)
    assert suite.scenarios and suite.seeds


def load_path(name: str) -> str:
    return str(Path(__file__).resolve().parents[1] / "configs" / "bench" / f"{name}.yaml")


# ------------------------------------------------------------------------- tuning and resume
def test_tuning_runs_on_validation_rows_picks_the_best_and_a_rerun_skips_everything(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    runner = FakeRunner(bonus={"mgda": 0.1})
    suite = load_suite(str(write_suite(tmp_path)))
    outcome = Bench(suite, out, runner, progress=False).run()
    assert outcome.failed == []
    tuning = [c for c in runner.calls if c.partition.validation_fraction > 0]
    final = [c for c in runner.calls if c.partition.validation_fraction == 0]
    # anchor + fedavg's 2 learning rates + mgda's 2 x 2 (lr x server lr), on tuning seed 0
    assert len(tuning) == 7 and {c.seed for c in tuning} == {0}
    assert all(c.partition.validation_fraction == 0.25 for c in tuning)
    assert len(final) == 4 and {(label(c), c.seed) for c in final} == {
        (s, k) for s in ("fedavg", "mgda") for k in (0, 1)
    }
    # the fake's metrics improve with train.lr and ignore the server lr: a tie, the first wins
    assert outcome.chosen == {
        "tiny": {
            "fedavg": {"train.lr": 0.05},
            "mgda": {"train.lr": 0.05, "strategy.server_optimizer.lr": 1},
        }
    }
    assert all(c.train.lr == 0.05 for c in final)
    record = json.loads((out / "tuning.json").read_text())
    assert record["scenarios"]["tiny"]["mgda"]["chosen_point"] == 2
    records = {(s, k): cell_record(out / "runs" / "tiny" / s / f"seed{k}") for s, k in FINAL}
    assert len({r.scenario["id"] for r in records.values() if r.scenario}) == 1
    mgda = records[("mgda", 1)]
    assert mgda.cell["tuned"] == {"train.lr": 0.05, "strategy.server_optimizer.lr": 1}
    assert mgda.scenario and {"train.lr", "strategy.server_optimizer.lr"} <= set(
        mgda.scenario["excluded"]
    )
    # Delta_MTL against the reference (fedavg in this suite): a's accuracy 0.1 higher, r's MAE equal
    assert mgda.delta_mtl == pytest.approx(100 * 0.1 / (0.55 + 0.01) / 2)
    assert records[("fedavg", 1)].delta_mtl == 0.0
    assert mgda.delta_mtl_reference == "runs/tiny/fedavg/seed1"
    # the runs' own summary.json is theirs: the bench adds nothing to it
    for strategy, seed in FINAL:
        summary = read_summary(out / "runs" / "tiny" / strategy / f"seed{seed}")
        assert summary is not None and "bench" not in summary and summary["delta_mtl"] is None
    again = FakeRunner(bonus={"mgda": 0.1})
    resumed = Bench(load_suite(str(write_suite(tmp_path))), out, again, progress=False).run()
    assert again.calls == [] and len(resumed.skipped) == 11 and resumed.chosen == outcome.chosen


FINAL = [(s, k) for s in ("fedavg", "mgda") for k in (0, 1)]


def cell_record(directory: Path) -> CellRecord:
    """The bench's record of the run in ``directory`` (its ``bench_cell.json``)."""
    record = read_cell(directory)
    assert record is not None, f"no bench_cell.json in {directory}"
    return record


def test_a_crashed_run_is_run_again_and_completed_ones_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_suite(tmp_path, tuning=None, strategies=["fedavg", "mgda"])
    crashing = FakeRunner(crash={("mgda", 1, False)})
    first = Bench(load_suite(str(path)), out, crashing, progress=False).run()
    assert [(c.label, c.seed) for c, _ in first.failed] == [("mgda", 1)]
    assert read_summary(out / "runs" / "tiny" / "mgda" / "seed1")["status"] != "completed"  # type: ignore[index]
    again = FakeRunner()
    second = Bench(load_suite(str(path)), out, again, progress=False).run()
    assert [(label(c), c.seed) for c in again.calls] == [("mgda", 1)]
    assert len(second.skipped) == 3 and second.failed == []
    rerun = read_summary(out / "runs" / "tiny" / "mgda" / "seed1")
    assert rerun is not None and rerun["status"] == "completed"


def test_a_bench_resumes_over_the_runs_of_an_older_bench(tmp_path: Path) -> None:
    """Older benches kept their record inside the run's summary.json (``bench``, ``scenario``,
    ``delta_mtl``, ``delta_mtl_reference``): such runs are read, skipped and get their own
    ``bench_cell.json``."""
    out = tmp_path / "out"
    path = write_suite(tmp_path, tuning=None, strategies=["fedavg", "mgda"])
    Bench(load_suite(str(path)), out, FakeRunner(), progress=False).run()
    for directory in sorted((out / "runs").glob("*/*/seed*")):
        record = cell_record(directory)
        summary = read_summary(directory) or {}
        summary["bench"] = {"suite": record.suite, "cell": record.cell, "reference": "fedavg"}
        summary.update(
            scenario=record.scenario,
            delta_mtl=record.delta_mtl,
            delta_mtl_reference=record.delta_mtl_reference,
        )
        (directory / "summary.json").write_text(json.dumps(summary))
        (directory / CELL_FILE).unlink()
        assert read_cell(directory, summary) == record
    again = FakeRunner()
    resumed = Bench(load_suite(str(path)), out, again, progress=False).run()
    assert again.calls == [] and len(resumed.skipped) == 4
    assert all((d / CELL_FILE).exists() for d in (out / "runs").glob("*/*/seed*"))


def test_a_resumed_suite_gives_skipped_runs_its_own_scenario_ids(tmp_path: Path) -> None:
    """When one strategy now tunes ``train.lr``, the other strategies' completed runs are kept and
    get the scenario id of the suite as it is now (the tuned key left out), as new runs do."""
    out = tmp_path / "out"
    path = write_suite(tmp_path, tuning=None, strategies=["fedavg", "mgda"])
    Bench(load_suite(str(path)), out, FakeRunner(), progress=False).run()
    lr = compose_raw(list(SUITE["overrides"]))["train"]["lr"]
    tuned = {"name": "mgda", "tune": {"train.lr": [lr]}}
    path = write_suite(tmp_path, tuning=None, strategies=["fedavg", tuned])
    second = Bench(load_suite(str(path)), out, FakeRunner(), progress=False).run()
    assert {c.label for c in second.skipped} == {"fedavg"}
    records = [cell_record(d) for d in sorted((out / "runs").glob("*/*/seed*"))]
    assert len({r.scenario["id"] for r in records if r.scenario}) == 1
    assert all(r.scenario and "train.lr" in r.scenario["excluded"] for r in records)


# ------------------------------------------------------------------------------ scenario ids
def test_scenario_ids_ignore_strategy_seed_and_runtime_but_not_the_data() -> None:
    fedavg = compose_raw([*TINY, "strategy=fedavg"])
    mgda = compose_raw([*TINY, "strategy=mgda", "seed=4", "runtime=simulation"])
    digits = compose_raw([*TINY[:1], "dataset=digits", "tracking=quiet"])
    assert scenario_of(fedavg)["id"] == scenario_of(mgda)["id"]
    assert scenario_of(fedavg)["id"] != scenario_of(digits)["id"]
    assert scenario_of(fedavg)["excluded"] == sorted(EXCLUDED_KEYS)
    faster = {**fedavg, "train": {**fedavg["train"], "lr": 0.5}}
    assert scenario_of(faster)["id"] != scenario_of(fedavg)["id"]
    assert scenario_of(faster, ["train.lr"])["id"] == scenario_of(fedavg, ["train.lr"])["id"]
    validation = {**fedavg, "partition": {**fedavg["partition"], "validation_fraction": 0.2}}
    assert scenario_of(validation)["id"] != scenario_of(fedavg)["id"]
    assert scenario_of(fedavg)["name"] == "synthetic-random_k-iid-4silos"


# ----------------------------------------------------------------------- validation partition
def partition_config(validation: float = 0.0, global_test: float = 0.1) -> PartitionConfig:
    return PartitionConfig(
        num_silos=4,
        assignment=PluginConfig("all", ASSIGNMENTS.parse("all", {}, "a")),
        split=PluginConfig("iid", SPLITS.parse("iid", {}, "s")),
        global_test_fraction=global_test,
        validation_fraction=validation,
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_the_validation_partition_evaluates_on_training_rows_only(seed: int) -> None:
    dataset = make_dataset(200, 3)
    plain = build(dataset, partition_config(), seed)
    tuning = build(dataset, partition_config(validation=0.25), seed)
    test_rows = plain.test_rows()  # the silos' test splits and the global test set
    assert tuning.global_test_indices.size == 0
    assert np.intersect1d(tuning.train_rows(), test_rows).size == 0
    assert np.intersect1d(tuning.test_rows(), test_rows).size == 0
    for before, after in zip(plain.silos, tuning.silos, strict=True):
        assert after.tasks == before.tasks
        assert np.array_equal(
            np.union1d(after.train_indices, after.test_indices), before.train_indices
        )
        assert after.num_test == round(0.25 * before.num_train)


def test_the_validation_partition_keeps_groups_whole() -> None:
    base = make_dataset(240, 3, seed=1)
    people = np.arange(240) // 3  # three rows per person, spread over silos by the IID split
    dataset = dataclasses.replace(base, natural_ids={"person": people}, group_column="person")
    for validation in (0.0, 0.3):
        held = hold_out(
            240, dataset.natural_ids, "person", None, 0.25, 0.1, 7, validation_fraction=validation
        )
        assert held is not None
        partition = build(dataset, partition_config(validation=validation), 7, held)
        if not validation:
            test_people = set(people[partition.test_rows()])
            continue
        validation_people = set(people[partition.test_rows()])
        assert validation_people and not validation_people & set(people[partition.train_rows()])
        assert not validation_people & test_people  # validation groups are training groups
        assert not set(people[partition.train_rows()]) & test_people
        assert partition.global_test_indices.size == 0
        assert np.intersect1d(held.train_rows(), partition.test_rows()).size == 0  # never fitted on


def test_validation_fraction_is_checked_and_refused_for_a_saved_partition() -> None:
    with pytest.raises(ConfigError) as err:
        parse(compose_raw(["partition.validation_fraction=1.5"]))
    assert err.value.key == "partition.validation_fraction"
    with pytest.raises(ConfigError) as err:
        parse_partition({"path": "p.json", "validation_fraction": 0.2})
    assert err.value.key == "partition.validation_fraction"
    assert parse_partition({"path": "p.json", "validation_fraction": 0.0}).path == "p.json"


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_suite_then_report_gives_delta_mtl(tmp_path: Path) -> None:
    """``fedmtl bench smoke --out D && fedmtl report D --out R``: real in-process runs, with the
    single_task reference run in the scenario."""
    bench_dir, report_dir = tmp_path / "bench", tmp_path / "report"
    assert cli_status(["bench", "smoke", "--out", str(bench_dir), "--no-progress"]) == 0
    runs = bench_dir / "runs" / "tiny"
    records = [cell_record(d) for d in sorted(runs.glob("*/seed*"))]
    assert len({r.scenario["id"] for r in records if r.scenario}) == 1  # across strategies, seeds
    # the tuning runs used the validation partition: no global test set, rows from training only
    tuned = json.loads(
        (bench_dir / "tuning" / "tiny" / "_anchor" / "seed0" / "partition.json").read_text()
    )
    final = json.loads((runs / "fedavg" / "seed0" / "partition.json").read_text())
    for silo, before in zip(tuned["silos"], final["silos"], strict=True):
        assert set(silo["test_indices"]) <= set(before["train_indices"])
    assert cli_status(["report", str(bench_dir), "--out", str(report_dir)]) == 0
    with (report_dir / "strategies.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["strategy"] for r in rows} == {"fedavg", "mgda", "single_task"}
    assert all(math.isfinite(float(r["delta_mtl_mean"])) for r in rows)
    assert next(float(r["delta_mtl_mean"]) for r in rows if r["strategy"] == "single_task") == 0.0
    assert (report_dir / "report.md").read_text().count("## Scenario") == 1
    assert {p.name for p in report_dir.glob("*.png")} >= {
        "tasks_tiny.png", "curves_tiny.png", "pareto_tiny.png", "delta_mtl.png",
    }  # fmt: skip
    personal = [
        r for r in read_jsonl(runs / "mgda" / "seed0" / "metrics.jsonl") if r["split"] == "silo"
    ]
    assert personal, "the report's silo columns come from these lines"
    assert cli_status(["bench", "smoke", "--out", str(bench_dir), "--no-progress"]) == 0  # resumes
