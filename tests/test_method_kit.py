"""Every shipped strategy preset passes the method contract kit (:mod:`fedmtl.testing.methods`),
the checks a plug-in author runs on their own method, and its reference run writes the result
files; and the kit catches what it is meant to."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import strategies.engine.intake as intake
from fedmtl.app.run.config import parse, presets
from fedmtl.core.records import Arrays, TrainReply, TrainRequest
from fedmtl.testing import check_method
from fedmtl.testing.methods import (
    check_malformed_replies_are_refused,
    check_same_seed_same_result,
)
from strategies.balanced import BalancedParams
from strategies.engine import ClientUpdate, SiloMethod, SiloTools, train_received
from strategies.fedcmoo import FedCMOOParams
from tests.support.runs import check_result_files, read_jsonl

EXTRA = {"grouping": ["strategy.warmup_rounds=1"]}
FAST = {"fedavg", "upgrad"}  # the inner loop runs these; make test, all


@pytest.mark.parametrize(
    "preset",
    [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in presets("strategy")],
)
def test_every_shipped_preset_passes_the_kit(preset: str, tmp_path: Path) -> None:
    """The kit, then its reference run (``fedmtl run strategy=<preset>``, in process): result
    files, finite metrics, each task's weight exactly where the server weighs the tasks."""
    check_method(preset, EXTRA.get(preset, []), directory=tmp_path, simulation=False)
    out = tmp_path / "reference"
    summary = json.loads((out / "summary.json").read_text())
    check_result_files(out, summary, 3, plots=False)
    assert summary["strategy"] == preset and summary["rejected"] == []
    assert all(math.isfinite(v) for m in summary["final"].values() for v in m.values())
    params = parse(summary["config"]).strategy.params
    weighted = isinstance(params, FedCMOOParams) or (
        isinstance(params, BalancedParams) and params.balancing != "local"
    )
    for row in (r for r in read_jsonl(out / "metrics.jsonl") if r["split"] == "train"):
        weights = [m["weight"] for m in row["metrics"].values() if "weight" in m]
        assert len(weights) == (len(summary["tasks"]) if weighted else 0)


class Leaky(SiloMethod):
    """A silo half that draws its seed afresh: not reproducible."""

    def train(self, tools: SiloTools, received: Arrays, request: TrainRequest) -> TrainReply:
        tools.seed = int.from_bytes(os.urandom(4), "little")
        return train_received(tools, received, request)


def test_the_kit_catches_a_silo_half_that_is_not_seeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SiloMethod, "train", Leaky.train)
    with pytest.raises(AssertionError, match="two runs of one seed"):
        check_same_seed_same_result("fedavg", [], tmp_path)


def test_the_kit_catches_corrupted_replies_reaching_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the engine's checks off, the kit sees the NaN update in the model."""
    monkeypatch.setattr(intake, "check_train_reply", _no_check)
    with pytest.raises(AssertionError):
        check_malformed_replies_are_refused("fedavg", [], tmp_path)


def _no_check(node, reply, sent, silo, mode, serves):  # type: ignore[no-untyped-def]
    return ClientUpdate(
        node, silo, dict(reply.deltas), int(reply.num_examples), dict(silo.train_per_task), {}
    )
