"""Fuzzing what users hand fedmtl: 200 seeded cases of config overrides and damaged files, run in
this process through compose, parse and the pre-run checks (``prepare``, the checkpoint reader),
and the bounds of every input (huge, negative and malformed sizes, among them those of issue 18)
through all of ``fedmtl run``'s checks in a process whose memory is capped. Every case must end
in success or a ConfigError that names a key: no other exception, no hang, no runaway
allocation."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedmtl.app.run.checkpoint import (
    CHECKPOINT_DIR,
    STATE_FILE,
    RunState,
    resumed_raw_config,
    save_checkpoint,
)
from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core.errors import ConfigError
from tests.support.datasets import example_overrides, shop_table, write_table
from tests.support.runs import REPO_ROOT, compose_raw, run_fedmtl

BASE = ["dataset=synthetic", "dataset.num_samples=240", "partition.num_silos=4"]
NASTY_VALUES = [
    "-1",
    "0",
    "1",
    "2.5",
    "-0.5",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "''",
    "abc",
    "null",
    "true",
    "[1,2]",
    "[]",
    "{a: 1}",
    "'../../etc/passwd'",
    "'ü∆🙂'",
    "x" * 300,
    "99999",
]
GROUP_PRESETS = {
    "dataset": ["digits", "digits_pair", "synthetic"],
    "partition": ["dirichlet_0.1", "disjoint", "mixed", "missing_labels", "shards", "natural_id"],
    "strategy": ["fedavg", "mgda", "grouping", "fedper", "fedhca2", "famo"],
    "model": ["mlp", "cnn"],
}
CONFIG_CASES = 120
FILE_CASES = 80


def leaf_keys(raw: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in raw.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def config_case(rng: random.Random, keys: list[str]) -> list[str]:
    """A few overrides: nasty values for real keys, now and then a preset, an unknown key, or a
    malformed override."""
    overrides = list(BASE)
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.65:
            overrides.append(f"{rng.choice(keys)}={rng.choice(NASTY_VALUES)}")
        elif kind < 0.85:
            group = rng.choice(sorted(GROUP_PRESETS))
            overrides.append(f"{group}={rng.choice(GROUP_PRESETS[group])}")
        elif kind < 0.95:
            overrides.append(f"{rng.choice(keys)}.nonsense={rng.choice(NASTY_VALUES)}")
        else:
            overrides.append(rng.choice(["=", "dataset", "++", "partition.num_silos==3", "a=b=c"]))
    return overrides


def expect_clear(action: Callable[[], object]) -> bool:
    """Whether ``action`` succeeded; else it raised a ConfigError naming a key with a problem."""
    try:
        action()
    except ConfigError as err:
        assert err.key and err.problem, repr(err)
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_config_fuzz_gives_only_clear_errors() -> None:
    rng = random.Random(20261201)
    keys = [k for k in leaf_keys(compose_raw(BASE)) if k not in ("output_dir", "resume")]
    accepted = 0
    for _ in range(CONFIG_CASES):
        overrides = config_case(rng, keys)

        def check(overrides: list[str] = overrides) -> None:
            prepare(parse(compose(overrides)))

        try:
            accepted += expect_clear(check)
        except Exception as err:
            pytest.fail(f"{overrides}: {type(err).__name__}: {err}")
    assert 0 < accepted < CONFIG_CASES / 2  # the cases reach both outcomes, mostly refusals


# --------------------------------------------------------------------------------------- files
def damage(rng: random.Random, good: bytes) -> bytes:
    """``good`` damaged one way: emptied, truncated, bytes flipped, random bytes, or (JSON) a
    value replaced by one of the wrong type or a field dropped."""
    kind = rng.randrange(6)
    if kind == 0:
        return b""
    if kind == 1:
        return good[: rng.randrange(1, max(2, len(good)))]
    if kind == 2:
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    try:
        document = json.loads(good)
    except ValueError:
        return good.replace(b",", b";", rng.randint(1, 5))  # a table with the wrong delimiter
    mutate(rng, document, drop=kind == 4)
    return json.dumps(document).encode()


def mutate(rng: random.Random, node: Any, drop: bool) -> None:
    """Walk down a random path of a JSON document and drop or retype what is there."""
    while True:
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            child = node[key]
            if not isinstance(child, (dict, list)) or not child or rng.random() < 0.4:
                if drop:
                    del node[key]
                else:
                    node[key] = rng.choice([None, -3, "x", [], {}, 1.5, True])
                return
            node = child
        elif isinstance(node, list) and node:
            index = rng.randrange(len(node))
            child = node[index]
            if not isinstance(child, (dict, list)) or not child or rng.random() < 0.4:
                node[index] = rng.choice([None, -3, "x", [], {}, 1.5, 10**12])
                return
            node = child
        else:
            return


@pytest.fixture(scope="module")
def good_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid files of each kind fedmtl reads: a partition manifest, a table, its feature schema
    and a run checkpoint."""
    root = tmp_path_factory.mktemp("good")
    partition = prepare(parse(compose_raw(BASE))).partition
    partition.save(root / "partition.json")
    table = write_table(shop_table(120), root / "shop.csv")
    raw = compose_raw([*example_overrides("table"), f"dataset.path={table}"])
    prepare(parse(raw))
    state = RunState(1, compose_raw(BASE, output_dir=root / "run"), {}, None, {}, {"history": []})
    save_checkpoint(root / "run", state)
    return {
        "partition": root / "partition.json",
        "table": table,
        "checkpoint": root / "run" / CHECKPOINT_DIR / STATE_FILE,
    }


def load_file(kind: str, path: Path) -> None:
    """What fedmtl does with a file of ``kind`` at ``path`` before any training."""
    if kind == "partition":
        prepare(parse(compose_raw([*BASE, "partition=from_file", f"partition.path={path}"])))
    elif kind == "table":
        prepare(parse(compose_raw([*example_overrides("table"), f"dataset.path={path}"])))
    else:
        parse(resumed_raw_config(path.parents[1], []))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_file_fuzz_gives_only_clear_errors(good_files: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(1201)
    refused = 0
    for case in range(FILE_CASES):
        kind = sorted(good_files)[case % len(good_files)]
        good = good_files[kind]
        if kind == "checkpoint":  # a whole run directory whose state.json is damaged
            run_dir = tmp_path / f"run{case}"
            (run_dir / CHECKPOINT_DIR).mkdir(parents=True)
            for file in good.parent.iterdir():
                (run_dir / CHECKPOINT_DIR / file.name).write_bytes(file.read_bytes())
            path = run_dir / CHECKPOINT_DIR / STATE_FILE
        else:
            path = tmp_path / f"case{case}{good.suffix}"
        path.write_bytes(damage(rng, good.read_bytes()))
        try:
            refused += not expect_clear(lambda kind=kind, path=path: load_file(kind, path))
        except Exception as err:
            pytest.fail(f"{kind} case {case}: {type(err).__name__}: {err}")
    assert refused > FILE_CASES / 2  # most damage is caught (a dropped optional field is not)


# ------------------------------------------------------------------------------------- bounds
ISSUE_CASES: list[tuple[list[str], str]] = [
    (["seed=99999999999999999999"], "seed"),
    (["seed=-1"], "seed"),
    (["num_rounds=1000000000000"], "num_rounds"),
    (["checkpoint_every=1e12"], "checkpoint_every"),
    (["train.batch_size=1e9"], "train.batch_size"),
    (["train.local_epochs=1e6"], "train.local_epochs"),
    (["train.max_steps=1e12"], "train.max_steps"),
    (  # 50 epochs of about 22,000 steps on each silo: beyond a silo's 50,000 steps
        [
            *("dataset=synthetic", "dataset.num_samples=60000", "partition.num_silos=3"),
            *("train.local_epochs=50", "train.batch_size=1"),
        ],
        "train.local_epochs",
    ),
    (["train.lr=1e300"], "train.lr"),
    (["train.weight_decay=1e300"], "train.weight_decay"),
    (["strategy.min_train_nodes=100"], "strategy.min_train_nodes"),  # 12 silos
    (["strategy.min_evaluate_nodes=13"], "strategy.min_evaluate_nodes"),
    (["partition.num_silos=1000000000"], "partition.num_silos"),
    (["dataset=synthetic", "partition.num_silos=1000000000"], "partition.num_silos"),
    (["dataset=synthetic", "dataset.num_tasks=100000"], "dataset.num_tasks"),
    (["dataset=synthetic", "dataset.num_samples=1000000000"], "dataset.num_samples"),
    (["dataset=synthetic", "dataset.input_dim=1000000"], "dataset.input_dim"),
    (["dataset=synthetic", "dataset.num_sites=1000000000"], "dataset.num_sites"),
    (["dataset=synthetic", "dataset.latent_dim=10000000"], "dataset.latent_dim"),
    (["dataset=digits_pair", "dataset.num_samples=1e12"], "dataset.num_samples"),
    (["model.hidden=[100000000]"], "model.hidden"),
    (["model.hidden=[1e308]"], "model.hidden"),
    (["model.head_hidden=100000000"], "model.head_hidden"),
    (["model=cnn", "model.channels=[100000,100000]"], "model.channels"),
    (["partition=iid_all", "partition.num_silos=1700", "model.hidden=[4096,4096]"], "model.hidden"),
    (["limits.memory_check=maybe"], "limits.memory_check"),
    # issue 20's dataset and architectures
    (["dataset=mmoe_synthetic", "dataset.num_samples=1000000000"], "dataset.num_samples"),
    (["dataset=mmoe_synthetic", "dataset.input_dim=10000000"], "dataset.input_dim"),
    (["dataset=mmoe_synthetic", "dataset.num_sinusoids=1000000000"], "dataset.num_sinusoids"),
    (["dataset=mmoe_synthetic", "dataset.correlation=2"], "dataset.correlation"),
    (["model=mmoe", "model.num_experts=100000000"], "model.num_experts"),
    (["model=mmoe", "model.expert.hidden=[100000000]"], "model.expert.hidden"),
    (["model=ple", "model.levels=1000000"], "model.levels"),
    (["model=ple", "model.shared_experts=1e9"], "model.shared_experts"),
    (["model=mtan", "model.widths=[100000000]"], "model.widths"),
    (["model=cross_stitch", "model.widths=[100000,100000]"], "model.widths"),
]
"""Configs that must be refused, with the key each names (issue 18, section 3)."""
VALID_CASES = [[], ["dataset=synthetic"], ["strategy=fedamp", "partition.num_silos=40"]]
HUGE_VALUES = ["99999999999999999999", "-99999999999999999999", "1000000000000", "1e9"]
HUGE_VALUES += ["1e300", "1e6", "100000", "[100000]", "''", "[]"]
BOUNDS_CASES = 60


def wide_table(path: Path, columns: int) -> Path:
    """A CSV of ``columns`` feature columns, a target ``y`` and three rows."""
    header = ",".join(f"c{i}" for i in range(columns)) + ",y\n"
    path.write_text(header + "".join(",".join(["1"] * columns) + f",{r % 2}\n" for r in range(3)))
    return path


def bounds_case(rng: random.Random, keys: list[str]) -> list[str]:
    """One or two numeric keys of the small synthetic run set to huge or malformed values."""
    picked = rng.sample(keys, rng.randint(1, 2))
    return [*BASE, *(f"{key}={rng.choice(HUGE_VALUES)}" for key in picked)]


def numeric_keys(raw: dict[str, Any]) -> list[str]:
    """The leaf keys of ``raw`` that hold numbers or lists of numbers."""
    found = []
    for key in leaf_keys(raw):
        node: Any = raw
        for part in key.split("."):
            node = node[part]
        values = node if isinstance(node, list) else [node]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            found.append(key)
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bounds_fuzz_refuses_what_cannot_run_before_any_work(tmp_path: Path) -> None:
    """Issue 18's inputs and 60 seeded draws of huge values, through every check ``fedmtl run``
    makes before its runtime starts, in a process whose address space is capped (and that sees
    2 GiB available, so that the outcomes are those of any machine): each case is refused with a
    ConfigError naming its key, or is built within the cap; none raises anything else (a
    runaway allocation hits the cap: MemoryError) or hangs (the test's timeout)."""
    table = wide_table(tmp_path / "wide.csv", 1_000_000)  # a header of a million columns
    table_case = ["dataset=table", f"dataset.path={table}", "+dataset.targets.y=binary"]
    expected = [*ISSUE_CASES, (table_case, "dataset.path")]
    rng = random.Random(181)
    keys = [k for k in numeric_keys(compose_raw(BASE)) if k not in ("output_dir", "resume")]
    drawn = [bounds_case(rng, keys) for _ in range(BOUNDS_CASES)]
    cases = [case for case, _ in expected] + VALID_CASES + drawn
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = run_fedmtl(
        [str(tmp_path / "cases.json")],
        timeout=540,
        command=[sys.executable, "-m", "tests.bounds_app"],
        cwd=REPO_ROOT,
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["case"] for r in results] == cases
    errors = [r for r in results if r["outcome"] == "error"]
    assert not errors, errors
    for (case, key), result in zip(expected, results, strict=False):
        assert (result["outcome"], result["key"]) == ("refused", key), (case, result["message"])
    valid = results[len(expected) : len(expected) + len(VALID_CASES)]
    assert all(r["outcome"] == "accepted" for r in valid), valid
    outcomes = {r["outcome"] for r in results[-BOUNDS_CASES:]}
    assert outcomes == {"accepted", "refused"}  # the draws reach both
