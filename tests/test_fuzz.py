"""Fuzzing what users hand fedmtl: 200 seeded cases of config overrides and damaged files, run in
this process through compose, parse and the pre-run checks (``prepare``, the checkpoint reader).
Every case must end in success or a ConfigError that names a key: no other exception, no hang."""

from __future__ import annotations

import json
import random
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
from tests.helpers import compose_raw, example_overrides, shop_table, write_table

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
