"""The FMTL baselines' update rules, each against a hand computation or a centralized equivalent:
local, single_task, fedprox, fedper, fedrep, ditto (silo side), fedamp, matfl, fedhca2 (server)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core import records
from fedmtl.core.records import EvaluateRequest, MethodSpec, SiloInfo, TrainRequest
from fedmtl.core.registry import NoParams
from fedmtl.core.schema import TrainConfig
from fedmtl.core.training import Proximal, evaluate, train_local
from strategies.balancing import build_weighting
from strategies.ditto import DittoSilo, DittoSiloParams
from strategies.engine import ClientUpdate, GlobalModel, MethodSetup, SiloMethod, SiloTools
from strategies.engine.silo import PERSONAL, round_seed
from strategies.fedamp import FedAMP, FedAMPParams
from strategies.fedhca2 import FedHCA2, FedHCA2Params
from strategies.fedper import KeptHeadsParams, KeptHeadsSilo
from strategies.local import LocalSilo
from strategies.matfl import MaTFL, MaTFLParams, cluster_silos
from tests.one_session_app import RUNS
from tests.support.data import TINY_TASKS, small_model, tiny_view
from tests.support.runs import compose_raw, read_jsonl, run_test_app

SMOKE = ["experiment=smoke", "num_rounds=2"]
CFG = TrainConfig(local_epochs=1, batch_size=4, lr=0.1, momentum=0.0)


SETUP = MethodSetup(TINY_TASKS, CFG)
FEDAVG = MethodSpec("fedavg")


def worker(seed: int = 5, state: RecordDict | None = None) -> SiloTools:
    model = small_model((5,), TINY_TASKS, seed=1)
    initial = records.state_arrays(model, model.exchanged_keys())
    return SiloTools(
        model=model,
        data=tiny_view(),
        state=state if state is not None else RecordDict(),
        initial=lambda: initial,
        seed=seed,
        device="cpu",
    )


def arrays_of(model: torch.nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {k: v.detach().numpy().copy() for k, v in state.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------ silo side
def test_fedprox_step_adds_mu_times_the_distance_to_the_anchor() -> None:
    """Two plain SGD steps: theta <- theta - lr (g(theta) + mu (theta - a)), by hand."""
    model, data = small_model((5,), TINY_TASKS, seed=2), tiny_view()
    twin = small_model((5,), TINY_TASKS, seed=2)
    anchor = {k: v.detach().clone() - 0.05 for k, v in model.named_parameters()}
    cfg = dataclasses.replace(CFG, batch_size=8, local_epochs=2)
    train_local(model, data, cfg, torch.Generator().manual_seed(0), proximal=Proximal(0.7, anchor))
    for _ in range(2):  # one batch of all 8 rows per epoch
        twin.zero_grad()
        losses = [
            spec.loss(twin(data.inputs, [spec.name])[spec.name][data.mask[:, i]],
                      data.targets[spec.name][data.mask[:, i]])
            for i, spec in enumerate(data.tasks)
        ]  # fmt: skip
        sum(losses).backward()  # type: ignore[union-attr]
        with torch.no_grad():
            for name, param in twin.named_parameters():
                if param.grad is not None:
                    param -= cfg.lr * (param.grad + 0.7 * (param - anchor[name]))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[key], rtol=1e-5, atol=1e-6)


def test_heads_mode_keeps_the_heads_on_the_silo() -> None:
    """FedPer: only the trunk travels; the silo's heads persist in its node state and the next
    round starts from them; evaluation uses the received trunk with the silo's own heads."""
    state = RecordDict()
    first = worker(state=state)
    trunk = arrays_of(first.model, "trunk.")
    fedper = KeptHeadsSilo(KeptHeadsParams())
    reply = fedper.train(first, trunk, TrainRequest(1, CFG, MethodSpec("fedper")))
    assert set(reply.deltas) == set(trunk)  # no head leaves the silo
    kept = records.from_array_record(state.array_records[PERSONAL])
    assert {k.split(".")[1] for k in kept} == {"a", "b", "c"} and all("heads" in k for k in kept)
    trained_heads = arrays_of(first.model, "heads.")
    second = worker(state=state)  # a fresh model object: the heads come from the node state
    fedper.evaluate(second, trunk, EvaluateRequest(2, MethodSpec("fedper")))
    for key, value in trained_heads.items():
        np.testing.assert_array_equal(second.model.state_dict()[key].numpy(), value)


def test_fedrep_phases_freeze_the_other_part() -> None:
    model, data = small_model((5,), TINY_TASKS, seed=3), tiny_view()
    trunk, heads = arrays_of(model, "trunk."), arrays_of(model, "heads.")
    train_local(model, data, CFG, torch.Generator().manual_seed(0), parts="heads", epochs=2)
    for key, value in trunk.items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value)
    assert any(not np.array_equal(model.state_dict()[k].numpy(), v) for k, v in heads.items())
    heads = arrays_of(model, "heads.")
    train_local(model, data, CFG, torch.Generator().manual_seed(1), parts="trunk")
    for key, value in heads.items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_local_mode_trains_a_model_of_its_own_and_sends_nothing() -> None:
    state = RecordDict()
    local = LocalSilo(NoParams())
    reply = local.train(worker(state=state), {}, TrainRequest(1, CFG, MethodSpec("local")))
    assert reply.deltas == {} and reply.task_deltas is None and reply.steps == 2
    reference = worker()
    reference.load_personal()
    reference.train(TrainRequest(1, CFG, FEDAVG))
    kept = records.from_array_record(state.array_records[PERSONAL])
    for key, value in kept.items():
        np.testing.assert_array_equal(value, reference.model.state_dict()[key].numpy())


def test_ditto_sends_the_fedavg_update_and_keeps_a_pulled_personal_model() -> None:
    received = arrays_of(worker().model)
    plain = SiloMethod(NoParams()).train(worker(), received, TrainRequest(1, CFG, FEDAVG))
    state = RecordDict()
    request = TrainRequest(1, CFG, MethodSpec("ditto", {"lam": 0.3}))
    ditto = DittoSilo(DittoSiloParams(lam=0.3)).train(worker(state=state), received, request)
    for key, value in plain.deltas.items():  # the global update is FedAvg's, bit for bit
        np.testing.assert_array_equal(ditto.deltas[key], value)
    reference = worker()
    records.load_arrays(reference.model, received)
    anchor = {k: torch.from_numpy(v) for k, v in received.items()}
    reference.train(
        TrainRequest(1, CFG, FEDAVG), proximal=Proximal(0.3, anchor), seed=reference.seed + 1
    )
    kept = records.from_array_record(state.array_records[PERSONAL])
    for key, value in kept.items():
        np.testing.assert_array_equal(value, reference.model.state_dict()[key].numpy())


# --------------------------------------------------------------------------- end to end
def final_of(overrides: list[str], tmp_path: Path) -> dict:
    return run(parse(compose_raw([*SMOKE, *overrides], tmp_path)))


def test_local_sends_no_array_and_matches_training_each_silo_alone(tmp_path: Path) -> None:
    summary = final_of(["strategy=local"], tmp_path)
    assert summary["bytes_up"] == summary["bytes_down"] == 0
    assert summary["global"] is None
    experiment = prepare(parse(compose_raw(SMOKE)))
    data = experiment.silo_data(0, "train")
    model = experiment.new_model()
    for server_round in (1, 2):  # silo 0 alone, with its round seeds
        seed = round_seed(experiment.config.seed, 0, server_round)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            train_local(model, data, experiment.config.train, torch.Generator().manual_seed(seed))
    sums = evaluate(model, experiment.silo_data(0, "test"))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    (last,) = [r for r in rows if r["split"] == "silo" and r["silo"] == 0 and r["round"] == 2]
    for task, metrics in last["metrics"].items():
        expected = experiment.dataset.task(task).finalize_metrics(sums[task])
        assert metrics == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_single_task_is_one_fedavg_federation_per_task(tmp_path: Path) -> None:
    both = ["partition=iid_all", "partition.num_silos=4", "dataset.tasks=[digit,parity]"]
    single = final_of(["strategy=single_task", *both], tmp_path / "st")
    alone = final_of(["strategy=fedavg", *both[:2], "dataset.tasks=[digit]"], tmp_path / "fa")
    assert single["final"]["digit"] == pytest.approx(alone["final"]["digit"], rel=1e-6)
    assert single["bytes_up"] > alone["bytes_up"]  # two trunks travel instead of one


@pytest.mark.slow  # two runs
def test_fedprox_with_mu_zero_is_fedavg(tmp_path: Path) -> None:
    prox = final_of(["strategy=fedprox", "strategy.mu=0"], tmp_path / "p")
    fedavg = final_of(["strategy=fedavg"], tmp_path / "f")
    assert prox["final"] == fedavg["final"]


# ------------------------------------------------------------------------------ server side
def silo(silo_id: int, tasks: tuple[str, ...]) -> SiloInfo:
    return SiloInfo(silo_id, tasks, 10, 2, dict.fromkeys(tasks, 10), dict.fromkeys(tasks, 2))


def test_fedamp_cloud_model_mixes_silos_by_attention() -> None:
    strategy = FedAMP(FedAMPParams(alpha=0.4, sigma=2.0), SETUP)
    strategy.models.update(
        {
            0: {"trunk.w": np.array([0.0, 0.0]), "heads.a.w": np.array([1.0])},
            1: {"trunk.w": np.array([1.0, 1.0]), "heads.a.w": np.array([3.0])},
            2: {"trunk.w": np.array([2.0, 0.0]), "heads.b.w": np.array([5.0])},
        }
    )
    model = GlobalModel(
        {"trunk.w": np.zeros(2), "heads.a.w": np.zeros(1), "heads.b.w": np.zeros(1)}
    )
    cloud = strategy.arrays_for(silo(0, ("a",)), model, "train")
    # squared distances from silo 0: 2 to silo 1, 4 to silo 2; a = exp(-1), exp(-2)
    a1, a2 = np.exp(-1.0), np.exp(-2.0)
    expected_trunk = 0.6 * np.zeros(2) + 0.4 * (a1 * np.array([1, 1]) + a2 * np.array([2, 0])) / (
        a1 + a2
    )
    assert cloud is not None
    np.testing.assert_allclose(cloud["trunk.w"], expected_trunk)
    np.testing.assert_allclose(cloud["heads.a.w"], 0.6 * 1.0 + 0.4 * 3.0)  # silo 1 holds a alone


def update(
    silo_id: int, tasks: tuple[str, ...], sent: dict, deltas: dict, n: int = 10
) -> ClientUpdate:
    return ClientUpdate(
        silo_id + 100, silo(silo_id, tasks), deltas, n, dict.fromkeys(tasks, n), {}, sent=sent
    )


def test_matfl_clusters_silos_and_averages_the_trunk_per_cluster() -> None:
    deltas = [
        np.array([1.0, 0.1]),
        np.array([0.9, 0.0]),
        np.array([-1.0, 0.1]),
        np.array([-0.8, 0.0]),
    ]
    labels = cluster_silos(deltas, threshold=1.0)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    strategy = MaTFL(MaTFLParams(distance_threshold=1.0), SETUP)
    sent = {"trunk.w": np.zeros(2, np.float32)}
    updates = [
        update(i, ("a",), sent, {"trunk.w": d.astype(np.float32)}, n=10 * (i + 1))
        for i, d in enumerate(deltas)
    ]
    strategy.models.update({i: {"trunk.w": np.zeros(2, np.float32)} for i in range(4)})
    strategy.absorb(
        1,
        GlobalModel({"trunk.w": np.zeros(2)}),
        updates,
        {u.silo.silo_id: {"trunk.w": u.deltas["trunk.w"]} for u in updates},
    )
    first = (10 * deltas[0] + 20 * deltas[1]) / 30
    second = (30 * deltas[2] + 40 * deltas[3]) / 70
    for i, expected in enumerate([first, first, second, second]):
        np.testing.assert_allclose(strategy.models[i]["trunk.w"], expected, rtol=1e-6)
    assert strategy.clusters[0]["clusters"] == [[0, 1], [2, 3]]


def test_fedhca2_trunk_heads_and_learned_weights() -> None:
    strategy = FedHCA2(FedHCA2Params(), SETUP)
    sent = {"trunk.w": np.zeros(2, np.float32), "heads.a.0.weight": np.zeros(2, np.float32)}
    rows = {0: np.array([1.0, 0.0]), 1: np.array([0.0, 2.0]), 2: np.array([0.0, 1.0])}
    heads = {0: np.array([0.5, 0.0]), 1: np.array([0.0, 0.5]), 2: np.array([1.0, 1.0])}
    tasks = {0: ("a",), 1: ("a", "b"), 2: ("a", "b")}
    updates = [
        update(
            i,
            tasks[i],
            sent,
            {
                "trunk.w": rows[i].astype(np.float32),
                "heads.a.0.weight": heads[i].astype(np.float32),
            },
        )
        for i in range(3)
    ]
    strategy.models.update({i: {k: v.copy() for k, v in sent.items()} for i in range(3)})
    strategy.absorb(1, GlobalModel(sent), updates, {})
    ca, _ = build_weighting("cagrad", {"c": 0.4, "rescale": True})(
        torch.tensor(np.stack([rows[0], rows[1], rows[2]])), None, [0, 1, 2]
    )
    homo = {0: rows[0], 1: (rows[1] + rows[2]) / 2, 2: (rows[1] + rows[2]) / 2}  # same tasks
    for i in range(3):
        np.testing.assert_allclose(
            strategy.models[i]["trunk.w"], homo[i] + 0.1 * ca.numpy(), rtol=1e-5
        )
    values = np.stack([heads[0], heads[1], heads[2]])
    scores = values @ heads[0] / np.sqrt(2)
    attention = np.exp(scores) / np.exp(scores).sum() @ values
    np.testing.assert_allclose(
        strategy.models[0]["heads.a.0.weight"], heads[0] + 0.1 * attention, rtol=1e-5
    )
    # the next round's delta of silo 0 points along Delta_ca: alpha grows by lr <Delta_ca, next>
    following = {
        "trunk.w": ca.numpy().astype(np.float32),
        "heads.a.0.weight": np.zeros(2, np.float32),
    }
    strategy.absorb(2, GlobalModel(sent), [update(0, ("a",), sent, following)], {})
    alpha = strategy.hyper[(0, "trunk")].value
    gradient = -float(ca.numpy() @ ca.numpy()) + 1e-4 * 0.1
    assert alpha == pytest.approx(0.1 - 0.01 * gradient)


# ----------------------------------------------------------------- Flower's simulation engine
@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(330)
def test_every_baseline_and_mode_runs_through_the_simulation_engine_in_one_ray_session(
    tmp_path: Path,
) -> None:
    """tests/one_session_app.py runs the nine baselines, UPGrad with per-task trunk updates and a
    silo-side weighting, and task grouping one after another in one Flower simulation (one Ray
    session, the same simulated silos): each run completes with every silo, and ends where the
    same run ends in process (the silos' personal state is kept per run); the per-task updates
    and the silos' weights reach the metrics, and grouping measures its affinity on the Ray
    workers and forms the same groups as in process."""
    out = tmp_path / "sim"
    result = run_test_app("one_session_app", [str(out)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    inprocess: dict[str, dict] = {}
    for name, overrides in RUNS.items():
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["status"] == "completed", (name, summary["status"])
        assert summary["runtime"] == "simulation" and summary["rejected"] == []
        assert summary["silos_participated"] == [0, 1, 2, 3]
        inprocess[name] = final_of(overrides, tmp_path / "inprocess" / name)
        for task, metrics in inprocess[name]["final"].items():
            for name_, value in metrics.items():
                simulated = summary["final"][task][name_]
                assert simulated == pytest.approx(value, rel=1e-4, abs=1e-5), (name, task, name_)

    train_rows = [
        r for r in read_jsonl(out / "upgrad_both" / "metrics.jsonl") if r["split"] == "train"
    ]
    tasks = set(inprocess["upgrad_both"]["final"])
    assert all(set(r["metrics"]) == tasks for r in train_rows)  # one update share per task
    assert all("weight" in m for r in train_rows for m in r["metrics"].values())

    grouping = json.loads((out / "grouping" / "summary.json").read_text())
    assert grouping["grouping"]["round"] == 1
    assert grouping["groups"] == inprocess["grouping"]["groups"]
    assert (
        json.loads((out / "grouping" / "affinity.json").read_text())["groups"] == grouping["groups"]
    )
