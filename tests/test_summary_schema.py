"""``summary.json`` holds the fields README.md's "Where results go" table documents, no more and no
less, whether the run completed or was interrupted (the table is parsed: docs and code cannot
drift apart)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from strategies.engine import Engine
from tests.support.runs import compose_raw

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = [
    "runtime=inprocess",
    "tracking=quiet",
    "tracking.plots=false",
    "dataset=synthetic",
    "dataset.num_samples=400",
    "dataset.num_tasks=3",
    "partition.num_silos=3",
    "train.max_steps=1",
    "num_rounds=3",
]


def documented_summary_fields(readme: str) -> list[str]:
    """The top-level fields of ``summary.json`` in the README's results table: the backquoted
    names of its row's description outside parentheses (those hold nested fields, values and
    remarks), up to the description's first sentence end."""
    row = next(line for line in readme.splitlines() if line.startswith("| `summary.json` |"))
    description = row.split("|")[2]
    kept, depth = [], 0
    for position, char in enumerate(description):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            if description.startswith(". ", position):
                break
            kept.append(char)
    return re.findall(r"`([a-z_]+)`", "".join(kept))


def test_the_readme_table_is_parsed_into_top_level_fields() -> None:
    fields = documented_summary_fields(README.read_text())
    assert fields[:3] == ["schema_version", "global", "tasks"]
    assert {"status", "completed", "silos_participated", "silos_missing", "provenance"} <= set(
        fields
    )
    # nested fields, status values and the older benches' fields are not top-level fields
    assert not {"num_samples", "kind", "interrupted", "bench", "id"} & set(fields)
    assert len(fields) == len(set(fields))


def small_run(output_dir: Path) -> dict[str, Any]:
    run(parse(compose_raw(SMALL, output_dir=output_dir)))
    summary: dict[str, Any] = json.loads((output_dir / "summary.json").read_text())
    return summary


def interrupted_run(output_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A run stopped as round 2 starts by the KeyboardInterrupt that Ctrl-C and SIGTERM raise."""
    original = Engine.train_round

    def train_round(self: Engine, grid: Any, server_round: int, *args: Any, **kwargs: Any) -> Any:
        if server_round == 2:
            raise KeyboardInterrupt("stopped")
        return original(self, grid, server_round, *args, **kwargs)

    monkeypatch.setattr(Engine, "train_round", train_round)
    with pytest.raises(KeyboardInterrupt):
        small_run(output_dir)
    summary: dict[str, Any] = json.loads((output_dir / "summary.json").read_text())
    return summary


@pytest.mark.parametrize("ending", ["completed", "interrupted"])
def test_a_summary_holds_exactly_the_documented_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    if ending == "completed":
        summary = small_run(tmp_path)
    else:
        summary = interrupted_run(tmp_path, monkeypatch)
    documented = documented_summary_fields(README.read_text())
    assert summary["status"] == ending
    assert summary["completed"] is (ending == "completed")
    assert [f for f in documented if f not in summary] == []  # the docs promise no missing field
    assert sorted(set(summary) - set(documented)) == []  # and the run writes none undocumented
