"""Every shipped strategy preset passes the method contract kit (:mod:`fedmtl.testing.methods`),
the checks a plug-in author runs on their own method; and the kit catches what it is meant to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import strategies.engine.intake as intake
from fedmtl.app.run.config import presets
from fedmtl.core.records import Arrays, TrainReply, TrainRequest
from fedmtl.testing import check_method
from fedmtl.testing.methods import (
    check_malformed_replies_are_refused,
    check_same_seed_same_result,
)
from strategies.engine import ClientUpdate, SiloMethod, SiloTools, train_received

EXTRA = {"grouping": ["strategy.warmup_rounds=1"]}
FAST = {"fedavg", "upgrad"}


@pytest.mark.parametrize(
    "preset",
    [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in presets("strategy")],
)
def test_every_shipped_preset_passes_the_kit(preset: str, tmp_path: Path) -> None:
    check_method(preset, EXTRA.get(preset, []), directory=tmp_path, simulation=False)


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
