"""Fault injection (fedmtl.faults, fedmtl.app.silo.faulty): each fault does exactly what it says,
the faulty silos are drawn from the seed alone, deployments refuse it, and runs under attack end
with an honest status (``diverged``, never ``completed`` at chance level)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, RecordDict

from fedmtl.app import cli
from fedmtl.app.deploy.flwr_config import run_config
from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import load_checkpoint, load_model_arrays, resumed_raw_config
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.app.run.scenario import scenario_of
from fedmtl.app.silo.client_app import REFUSED
from fedmtl.app.silo.faulty import FAULT_STATE, corrupt_reply
from fedmtl.app.silo.node import node_settings
from fedmtl.app.silo.toolkit import _silo
from fedmtl.core import records
from fedmtl.core.data import LocalData
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import TrainReply
from fedmtl.core.tasks import TaskSpec
from fedmtl.faults import (
    FAULTS,
    Fault,
    FaultContext,
    FaultParams,
    Update,
    build_fault,
    faulty_silos,
    round_rng,
)
from fedmtl.faults.attacks import NoiseParams, Scale, ScaleParams, SignFlipParams
from tests.support.deployments import local_config_json, local_grid, silo_tables
from tests.support.runs import beats_chance, check_result_files, compose_raw, run_fedmtl

UPDATE = Update(
    {
        "trunk.w": np.array([[1.0, -2.0], [3.0, 0.5]], np.float32),
        "heads.a.b": np.array([4.0], np.float32),
    },
    num_examples=20,
    task_examples={"a": 20.0},
)


def context(server_round: int = 1, first: Update | None = None) -> FaultContext:
    return FaultContext(round_rng(0, 3, server_round), server_round, first)


def test_scale_multiplies_every_array_and_claims_the_counts() -> None:
    out = build_fault("scale", ScaleParams()).corrupt(UPDATE, context())
    np.testing.assert_array_equal(out.arrays["trunk.w"], [[1e6, -2e6], [3e6, 0.5e6]])
    np.testing.assert_array_equal(out.arrays["heads.a.b"], [4e6])
    assert out.arrays["trunk.w"].dtype == np.float32
    assert out.num_examples == 1e12 and out.task_examples == {"a": 1e12}
    honest_counts = build_fault("scale", ScaleParams(factor=2.0, claimed_examples=None))
    out = honest_counts.corrupt(UPDATE, context())
    np.testing.assert_array_equal(out.arrays["heads.a.b"], [8.0])
    assert out.num_examples == 20 and out.task_examples == {"a": 20.0}


def test_sign_flip_negates_the_update() -> None:
    out = build_fault("sign_flip", SignFlipParams(factor=0.5)).corrupt(UPDATE, context())
    np.testing.assert_array_equal(out.arrays["trunk.w"], [[-0.5, 1.0], [-1.5, -0.25]])
    np.testing.assert_array_equal(out.arrays["heads.a.b"], [-2.0])


def test_noise_has_the_scale_of_each_array_and_comes_from_the_round_seed() -> None:
    out = build_fault("noise", NoiseParams(scale=2.0)).corrupt(UPDATE, context(server_round=5))
    # rms(trunk.w) = sqrt((1 + 4 + 9 + 0.25) / 4) = sqrt(3.5625); rms(heads.a.b) = 4. Arrays
    # are drawn in key order from the (seed 0, silo 3, round 5) generator.
    rng = round_rng(0, 3, 5)
    head = rng.standard_normal((1,)) * (2.0 * 4.0)
    trunk = rng.standard_normal((2, 2)) * (2.0 * np.sqrt(3.5625))
    np.testing.assert_array_equal(out.arrays["heads.a.b"], head.astype(np.float32))
    np.testing.assert_array_equal(out.arrays["trunk.w"], trunk.astype(np.float32))
    again = build_fault("noise", NoiseParams(scale=2.0)).corrupt(UPDATE, context(server_round=5))
    np.testing.assert_array_equal(again.arrays["trunk.w"], out.arrays["trunk.w"])
    other = build_fault("noise", NoiseParams(scale=2.0)).corrupt(UPDATE, context(server_round=6))
    assert not np.array_equal(other.arrays["trunk.w"], out.arrays["trunk.w"])
    big = Update({"x": np.full(200_000, 3.0, np.float32)}, 1, {})
    drawn = build_fault("noise", NoiseParams()).corrupt(big, context()).arrays["x"]
    assert abs(float(drawn.std()) - 3.0) < 0.03 and abs(float(drawn.mean())) < 0.03


def test_label_flip_flips_labelled_rows_only() -> None:
    data = LocalData(
        inputs=torch.zeros(3, 2),
        targets={
            "digit": torch.tensor([0, 3, 9]),
            "parity": torch.tensor([0.0, 1.0, 1.0]),
            "ink": torch.tensor([2.5, -1.0, 0.0]),
        },
        mask=torch.tensor([[True, True, True], [True, False, True], [False, True, True]]),
        tasks=(
            TaskSpec.multiclass("digit", 10),
            TaskSpec.binary("parity"),
            TaskSpec.regression("ink"),
        ),
    )
    flipped = build_fault("label_flip", FaultParams()).train_data(data)
    assert flipped.targets["digit"].tolist() == [9, 6, 9]  # 9 - y; row 2 unlabelled: kept
    assert flipped.targets["parity"].tolist() == [1.0, 1.0, 0.0]  # 1 - y; row 1 unlabelled
    assert flipped.targets["ink"].tolist() == [-2.5, 1.0, -0.0]
    assert flipped.targets["digit"].dtype == torch.int64
    assert torch.equal(flipped.inputs, data.inputs) and torch.equal(flipped.mask, data.mask)


def test_stale_replays_the_first_update_while_its_layout_holds() -> None:
    stale = build_fault("stale", FaultParams())
    assert stale.remembers_first and stale.corrupt(UPDATE, context()) is UPDATE
    later = Update({k: v * 7 for k, v in UPDATE.arrays.items()}, 20, {"a": 20.0})
    out = stale.corrupt(later, context(4, first=UPDATE))
    for key, value in UPDATE.arrays.items():
        np.testing.assert_array_equal(out.arrays[key], value)
    regrouped = Update({"trunks.g0.w": np.ones(2, np.float32)}, 20, {"a": 20.0})
    assert stale.corrupt(regrouped, context(5, first=UPDATE)) is regrouped


def test_a_silo_keeps_its_first_update_in_its_node_state_per_scope() -> None:
    def reply(value: float) -> TrainReply:  # a per_task reply: a head and task a's trunk share
        return TrainReply(
            deltas={"heads.a.b": np.array([value], np.float32)},
            num_examples=20,
            steps=3,
            task_examples={"a": 20.0},
            train_loss={"a": 0.5},
            task_deltas={"a": {"trunk.w": np.full((2,), value, np.float32)}},
        )

    state, stale = RecordDict(), build_fault("stale", FaultParams())
    first = corrupt_reply(stale, reply(1.0), state, "", 0, 3, 1)
    assert f"{FAULT_STATE}" in state.array_records
    np.testing.assert_array_equal(first.deltas["heads.a.b"], [1.0])
    later = corrupt_reply(stale, reply(5.0), state, "", 0, 3, 2)
    np.testing.assert_array_equal(later.deltas["heads.a.b"], [1.0])
    assert later.task_deltas is not None
    np.testing.assert_array_equal(later.task_deltas["a"]["trunk.w"], [1.0, 1.0])
    assert later.train_loss == {"a": 0.5} and later.steps == 3  # the numbers stay current
    other_run = corrupt_reply(stale, reply(9.0), state, "scope-2", 0, 3, 2)
    np.testing.assert_array_equal(other_run.deltas["heads.a.b"], [9.0])


def test_the_faulty_silos_come_from_the_seed_alone() -> None:
    # floor(fraction x 10), the same draw in every process; pinned for seed 0
    assert faulty_silos(0.1, 10, 0) == [0]
    assert faulty_silos(0.3, 10, 0) == [0, 5, 8]
    assert faulty_silos(0.49, 10, 0) == [0, 4, 5, 7]
    assert faulty_silos(0.3, 10, 1) == [0, 7, 8]
    assert faulty_silos(0.0, 10, 0) == [] and faulty_silos(0.05, 10, 0) == []
    assert faulty_silos(1.0, 4, 0) == [0, 1, 2, 3]
    assert faulty_silos(0.29, 100, 0) == faulty_silos(0.29, 100, 0)
    assert len(faulty_silos(0.29, 100, 0)) == 29  # not 28 from 0.29 x 100 = 28.999...


def test_fault_parameters_are_checked_and_every_member_is_a_fault() -> None:
    assert FAULTS.names() == ["label_flip", "noise", "none", "scale", "sign_flip", "stale"]
    assert all(isinstance(build_fault(n, FAULTS.get(n).params()), Fault) for n in FAULTS.names())
    for overrides, key in [
        (["fault=scale", "fault.fraction=1.5"], "fault.fraction"),
        (["fault=noise", "fault.scale=0"], "fault.scale"),
        (["fault=sign_flip", "fault.factor=-1"], "fault.factor"),
        (["fault=scale", "fault.claimed_examples=-3"], "fault.claimed_examples"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse(compose_raw(overrides))
        assert err.value.key == key


SMOKE = ["experiment=smoke", "tracking.plots=false", "partition.num_silos=4"]


def test_a_faulty_silo_trains_on_its_faults_rows(tmp_path: Path) -> None:
    raw = compose_raw([*SMOKE, "fault=label_flip", "fault.fraction=0.5"], tmp_path)
    experiment = prepare(parse(raw))
    assert experiment.faulty_silos == tuple(faulty_silos(0.5, 4, 0))
    config_json = experiment.config.to_json()
    for silo_id in range(4):
        node = node_settings({"partition-id": silo_id, "num-partitions": 4})
        trained_on = _silo(config_json, node)
        honest = experiment.silo_data(silo_id, "train")
        task = honest.tasks[0]
        flipped = silo_id in experiment.faulty_silos
        if task.kind == "multiclass":
            expected = (task.num_classes or 0) - 1 - honest.targets[task.name]
        else:
            expected = (
                1 - honest.targets[task.name]
                if task.kind == "binary"
                else -honest.targets[task.name]
            )
        labelled = honest.mask[:, 0]
        got = trained_on.train.targets[task.name][labelled]
        assert torch.equal(got, (expected if flipped else honest.targets[task.name])[labelled])
        assert torch.equal(
            trained_on.test.targets[task.name],
            experiment.silo_data(silo_id, "test").targets[task.name],
        )


def test_deployments_refuse_to_inject_faults(tmp_path: Path) -> None:
    tables, schema = silo_tables(tmp_path / "silos")
    with pytest.raises(ConfigError) as err:
        run_config(["experiment=flwr_tables", f"dataset.schema={schema}", "fault=sign_flip"])
    assert err.value.key == "fault" and "simulations" in err.value.fix
    raw = json.loads(local_config_json(schema))
    raw["fault"] = {"name": "sign_flip", "fraction": 1.0, "factor": 1.0}
    grid = local_grid(json.dumps(raw), [{"data-file": str(tables[0]), "silo-id": 0}])
    query = Message(records.query_content(), dst_node_id=1000, message_type=MessageType.QUERY)
    (reply,) = grid.send_and_receive([query])
    assert reply.error.reason.startswith(REFUSED) and "injects faults" in reply.error.reason


def test_a_run_under_attack_ends_diverged_and_keeps_its_sound_model(tmp_path: Path) -> None:
    """Half of 4 silos send x1e6: the trimmed mean (10% of 4 = 0 cut) is taken over, and the run
    stops as ``diverged`` with the initial model as its sound one."""
    overrides = [*SMOKE, "num_rounds=4", "fault=scale", "fault.fraction=0.5"]
    summary = run(parse(compose_raw([*overrides, "strategy.robust=trimmed_mean"], tmp_path)))
    assert summary["status"] == "diverged" and not summary["completed"]
    assert summary["fault"] == {
        "name": "scale",
        "fraction": 0.5,
        "factor": 1e6,
        "claimed_examples": 1e12,
        "silos": faulty_silos(0.5, 4, 0),
    }
    assert summary["divergence"]["model_round"] == summary["divergence"]["last_sound_round"] == 0
    arrays, meta = load_model_arrays(tmp_path / "model.safetensors")
    assert meta["round"] == "0" and meta["status"] == "diverged"
    assert all(np.isfinite(a).all() for a in arrays.values())


TEN_SILOS = [
    "runtime=inprocess",
    "tracking=quiet",
    "tracking.plots=false",
    "partition.num_silos=10",
    "fault=scale",
]


@pytest.mark.slow
def test_the_issues_attack_no_longer_completes_at_chance(tmp_path: Path) -> None:
    """Issue 18: 3 of 10 silos send their deltas x1e6 claiming 1e12 examples; with the trimmed
    mean (cutting 1 of 10 per side) the run ended ``completed`` at chance. Now it stops as
    ``diverged`` after the first round, and says which silos were faulty."""
    overrides = [*TEN_SILOS, "num_rounds=10", "fault.fraction=0.3", "strategy.robust=trimmed_mean"]
    summary = run(parse(compose_raw(overrides, tmp_path)))
    assert summary["status"] == "diverged"
    assert summary["fault"]["silos"] == [0, 5, 8]
    assert summary["divergence"]["suspect_rounds"] == [1]
    assert summary["checkpoint_round"] is None  # no round was sound: nothing saved


@pytest.mark.slow
def test_a_diverged_run_resumes_from_its_last_sound_checkpoint_with_another_defence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack starts in round 3: rounds 1-2 are sound and saved, the plain mean is then
    taken over and the run stops as ``diverged`` keeping round 2; resumed from there with a norm
    bound (a defence may change on resume), the same attack is contained to the end."""
    honest_first = Scale.corrupt

    def from_round_3(self: Scale, update: Update, context: FaultContext) -> Update:
        return update if context.server_round < 3 else honest_first(self, update, context)

    monkeypatch.setattr(Scale, "corrupt", from_round_3)
    overrides = [*TEN_SILOS, "num_rounds=8", "checkpoint_every=1"]
    summary = run(parse(compose_raw(overrides, tmp_path)))
    assert summary["status"] == "diverged"
    assert summary["checkpoint_round"] == 2 and summary["divergence"]["last_sound_round"] == 2
    _, meta = load_model_arrays(tmp_path / "model.safetensors")
    assert meta["round"] == "2" and meta["status"] == "diverged"
    with pytest.raises(ConfigError, match="cannot change when a run is resumed"):
        resumed_raw_config(tmp_path, ["fault.fraction=0.1"])
    resumed = run(parse(resumed_raw_config(tmp_path, ["strategy.norm_bound=2"])))
    assert resumed["status"] == "completed" and resumed["resumed_from"] == [2]
    assert resumed["rounds"] == 8 and resumed["checkpoint_round"] == 8
    assert beats_chance(resumed, margin=0.1) == {}


def finals(summary: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(t, k): v for t, metrics in summary["final"].items() for k, v in metrics.items()}


@pytest.mark.slow
def test_the_vectorized_runtime_injects_the_same_faults(tmp_path: Path) -> None:
    """Faulty silos stay in the batch: label-flipped rows and noise drawn from (seed, silo,
    round) give the in-process run's results up to rounding."""
    for fault in ("noise", "label_flip"):
        overrides = [*SMOKE, "num_rounds=3", f"fault={fault}", "fault.fraction=0.5"]
        runs = {
            runtime: run(
                parse(
                    compose_raw(
                        [*overrides, f"runtime={runtime}", "runtime.device=cpu"],
                        tmp_path / fault / runtime,
                    )
                )
            )
            for runtime in ("inprocess", "vectorized")
        }
        assert runs["vectorized"]["fault"]["silos"] == runs["inprocess"]["fault"]["silos"]
        got, expected = finals(runs["vectorized"]), finals(runs["inprocess"])
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (fault, key)


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(400)
def test_flowers_simulation_engine_injects_the_same_faults(tmp_path: Path) -> None:
    """``fedmtl run runtime=simulation`` on digits (Flower's engine on a Ray of its own): the
    run's result files, one thread per simulated silo, and its Ray temp dir gone afterwards;
    through Ray, a stale silo keeps its first update in its node state across rounds, and the
    final metrics equal the in-process run's bit for bit (same seeds per silo and round, every
    silo on the CPU, replies aggregated in silo order: no difference of any size is rounding)."""
    overrides = [*SMOKE, "num_rounds=3", "fault=stale", "fault.fraction=0.5"]
    out = tmp_path / "sim"
    before = set(Path(tempfile.gettempdir()).glob("fedmtl-ray-*"))
    result = run_fedmtl(
        ["run", *overrides, "runtime=simulation", "runtime.ray_num_cpus=2", f"hydra.run.dir={out}"],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(Path(tempfile.gettempdir()).glob("fedmtl-ray-*")) <= before
    simulated = json.loads((out / "summary.json").read_text())
    check_result_files(out, simulated, 3, plots=False)
    assert simulated["runtime"] == "simulation" and simulated["rejected"] == []
    assert simulated["provenance"]["threads_per_silo"] == 1  # one CPU per client
    inprocess = run(
        parse(compose_raw([*overrides, "runtime=inprocess", "runtime.device=cpu"], tmp_path / "ip"))
    )
    assert simulated["fault"]["silos"] == inprocess["fault"]["silos"] == [0, 3]
    assert finals(simulated) == finals(inprocess)


def test_an_injected_fault_is_a_scenario_of_its_own_and_no_fault_changes_no_id() -> None:
    honest = compose_raw(SMOKE)
    assert honest["fault"] == {"name": "none"}
    before_faults = {k: v for k, v in honest.items() if k != "fault"}
    assert scenario_of(honest)["id"] == scenario_of(before_faults)["id"]
    assert scenario_of(compose_raw([*SMOKE, "fault=stale"]))["id"] != scenario_of(honest)["id"]
    assert parse(before_faults).fault.name == "none"  # configs from before faults still parse


def test_thirty_percent_x1e6_against_the_median_warns_of_each_task_it_can_take_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18's attack (3 of 10 digits silos send x1e6) against ``robust=median`` with
    ``max_faulty=3``: every head has k <= 2f = 6 holders, so the log names each such task (and not
    the trunk, k = 10 > 6) and ``robust_warnings`` records them; the run is not ``completed``
    (its one round is suspect: ``diverged``)."""
    overrides = [
        *TEN_SILOS,
        "num_rounds=1",
        "train.max_steps=5",
        "fault.fraction=0.3",
        "strategy.robust=median",
        "strategy.max_faulty=3",
    ]
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        summary = run(parse(compose_raw(overrides, tmp_path)))
    holders = {task: len(silos) for task, silos in summary["holders"].items()}
    broken = {task for task, k in holders.items() if k <= 6}
    assert broken and broken <= set(summary["robust_warnings"]) <= set(holders)  # not the trunk
    for task in summary["robust_warnings"]:
        warning = summary["robust_warnings"][task]
        assert warning["max_faulty"] == 3 and warning["min_k"] <= 6
        assert "median" in warning["reason"] and "k >= 2f + 1 = 7" in warning["reason"]
        logged = [r.getMessage() for r in caplog.records if f"task {task!r}" in r.getMessage()]
        assert len(logged) == 1 and "max_faulty=3" in logged[0] and "breaks down" in logged[0]
    assert summary["status"] == "diverged"


def test_the_command_exits_1_for_a_diverged_run_and_keeps_the_last_sound_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fedmtl run``: rounds 1-2 honest and saved, then 2 of 4 silos send x1e6 to the plain mean;
    the command exits 1 naming ``diverged``, and the checkpoint on disk and ``model.safetensors``
    are round 2's (the suspect rounds 3 on are never saved)."""
    honest_first = Scale.corrupt

    def from_round_3(self: Scale, update: Update, context: FaultContext) -> Update:
        return update if context.server_round < 3 else honest_first(self, update, context)

    monkeypatch.setattr(Scale, "corrupt", from_round_3)
    overrides = [*SMOKE, "num_rounds=8", "checkpoint_every=1", "fault=scale", "fault.fraction=0.5"]
    with pytest.raises(SystemExit) as stop:
        cli._run(parse(compose_raw(overrides, tmp_path)))
    assert stop.value.code == 1
    assert "the run ended with status 'diverged'" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rounds"] < 8
    assert summary["divergence"]["suspect_rounds"][0] == 3
    assert summary["checkpoint_round"] == summary["divergence"]["last_sound_round"] == 2
    saved = load_checkpoint(tmp_path)
    assert saved.server_round == 2
    arrays, meta = load_model_arrays(tmp_path / "model.safetensors")
    assert meta == {**meta, "round": "2", "status": "diverged"}
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, saved.model[key])
