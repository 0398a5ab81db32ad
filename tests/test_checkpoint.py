"""Checkpoints and resume: a run stopped after any round and resumed ends, bit for bit, with the
model of a run never stopped (CPU, in process); what the files hold; and what is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    STATE_FILE,
    RunState,
    join_arrays,
    load_checkpoint,
    load_model_arrays,
    restore_silo_state,
    resumed_raw_config,
    save_checkpoint,
    save_silo_state,
    split_arrays,
)
from fedmtl.app.run.config import parse
from fedmtl.app.runtimes.processes import alive, descendants, end
from fedmtl.core.errors import ConfigError
from strategies.engine import Engine
from tests.support.runs import compose_raw, fedmtl_process, read_jsonl, run_fedmtl

SMALL = [
    "runtime=inprocess",
    "tracking=quiet",
    "dataset=synthetic",
    "dataset.num_samples=800",
    "dataset.num_tasks=4",
    "dataset.num_groups=2",
    "partition.num_silos=4",
    "train.max_steps=2",
    "num_rounds=6",
    "checkpoint_every=2",
]


def stop_in_round(monkeypatch: pytest.MonkeyPatch, stop_round: int) -> None:
    """The run is stopped as round ``stop_round`` starts by the KeyboardInterrupt that Ctrl-C
    raises, and ``fedmtl``'s SIGTERM handler too (the real signals, sent to the command:
    :func:`test_a_signal_stops_the_command_and_resume_completes`)."""
    original = Engine.train_round

    def train_round(self: Engine, grid: Any, server_round: int, *args: Any, **kwargs: Any) -> Any:
        if server_round == stop_round:
            raise KeyboardInterrupt("killed")
        return original(self, grid, server_round, *args, **kwargs)

    monkeypatch.setattr(Engine, "train_round", train_round)


def without_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def run_stopped_and_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], stop_round: int
) -> tuple[Path, Path]:
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(parse(compose_raw([*SMALL, *overrides], output_dir=full)))
    with monkeypatch.context() as patch:
        stop_in_round(patch, stop_round)
        with pytest.raises(KeyboardInterrupt):
            run(parse(compose_raw([*SMALL, *overrides], output_dir=cut)))
    stopped = json.loads((cut / "summary.json").read_text())
    assert stopped["status"] == "interrupted"
    assert not (cut / MODEL_FILE).exists()
    run(parse(resumed_raw_config(cut, [])))
    return full, cut


@pytest.mark.parametrize(
    ("overrides", "stop_round", "saved"),
    [
        (["strategy=fedavg"], 4, 2),  # killed in round 4: rounds 3 and 4 are redone
        # FAMO's logits and previous losses carry over
        pytest.param(["strategy=famo"], 5, 4, marks=pytest.mark.slow),
        # grouping stopped inside its warm-up (the affinity so far is in the checkpoint) and
        # resumed across the round that forms the groups
        pytest.param(
            ["strategy=grouping", "strategy.warmup_rounds=3", "strategy.affinity_every=1"],
            3,
            2,
            marks=pytest.mark.slow,
        ),
        # the silos' own heads, saved by the silos
        pytest.param(["strategy=fedper"], 5, 4, marks=pytest.mark.slow),
        # one model per silo at the server
        pytest.param(["strategy=fedamp"], 3, 2, marks=pytest.mark.slow),
    ],
)
def test_a_resumed_run_ends_bit_identical_to_one_never_stopped(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    stop_round: int,
    saved: int,
) -> None:
    full, cut = run_stopped_and_resumed(tmp_path, monkeypatch, overrides, stop_round)
    expected, meta = load_model_arrays(full / MODEL_FILE)
    resumed, resumed_meta = load_model_arrays(cut / MODEL_FILE)
    assert sorted(resumed) == sorted(expected)
    for key, value in expected.items():
        assert resumed[key].dtype == value.dtype
        assert np.array_equal(resumed[key], value), key  # bit for bit
    assert resumed_meta == meta
    first = json.loads((full / "summary.json").read_text())
    second = json.loads((cut / "summary.json").read_text())
    assert second["status"] == "completed" and second["resumed_from"] == [saved]
    for key in ("final", "best", "rounds", "bytes_up", "bytes_down", "rejected", "groups"):
        assert second.get(key) == first.get(key), key
    # metrics.jsonl: the rounds before the checkpoint kept, the redone ones not repeated
    assert without_times(read_jsonl(cut / "metrics.jsonl")) == without_times(
        read_jsonl(full / "metrics.jsonl")
    )


SIGNALLED_S = 120
"""Hard limit on each step of a signalled run (first checkpoint, exit, resume); a healthy machine
takes seconds."""


def wait_for_checkpoint(process: subprocess.Popen[bytes], run_dir: Path, logs: Path) -> None:
    """Until ``run_dir``'s first checkpoint is committed (its state.json), the process still
    running; fails after SIGNALLED_S seconds (a deadline, not a measurement)."""
    deadline = time.monotonic() + SIGNALLED_S
    while not (run_dir / CHECKPOINT_DIR / STATE_FILE).is_file():
        assert process.poll() is None, (logs / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(4 * SIGNALLED_S)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM-to-process", "SIGINT-to-group"],
)
def test_a_signal_stops_the_command_and_resume_completes(
    tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    """``fedmtl run runtime=inprocess`` signalled after its first checkpoint, as ``kill PID``
    (SIGTERM to the process) and Ctrl-C (SIGINT to the terminal's process group) do: exit 130,
    summary.json ``interrupted``, the checkpoint loadable, and ``resume=DIR`` completes the run.
    With a million rounds to go the run cannot end before the signal, whatever the machine's
    speed; the signal lands wherever the round loop is (training, checkpointing, evaluating)."""
    out = tmp_path / "run"
    overrides = [o for o in SMALL if not o.startswith(("num_rounds=", "checkpoint_every="))]
    args = ["run", *overrides, "num_rounds=1000000", "checkpoint_every=1", f"hydra.run.dir={out}"]
    with fedmtl_process(args, tmp_path / "logs") as process:
        wait_for_checkpoint(process, out, tmp_path / "logs")
        if to_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        assert process.wait(timeout=SIGNALLED_S) == 130
    assert "fedmtl run: interrupted" in (tmp_path / "logs" / "stderr.txt").read_text()
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["status"] == "interrupted"
    assert not (out / MODEL_FILE).exists()
    saved = load_checkpoint(out).server_round  # intact: it loads
    # summary.json's checkpoint_round is the last save that finished: a signal landing between
    # the commit of state.json and the bookkeeping after it leaves it one behind the checkpoint
    assert stopped["checkpoint_round"] in (saved - 1, saved)
    assert stopped["rounds"] >= saved

    resumed = run_fedmtl(["run", f"resume={out}", f"num_rounds={saved + 2}"], timeout=SIGNALLED_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == [saved]
    assert summary["rounds"] == summary["checkpoint_round"] == saved + 2
    assert (out / MODEL_FILE).is_file()


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(4 * SIGNALLED_S)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM-to-process", "SIGINT-to-group"],
)
def test_a_signal_stops_a_simulation_and_leaves_no_process_behind(
    tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    """``fedmtl run runtime=simulation`` (Flower's engine on a Ray of its own) signalled after its
    first checkpoint: exit 130, summary.json ``interrupted``, the checkpoint loadable, no process
    of the run (Ray's included, whatever session they run in) alive after the command, its Ray
    temp dir gone, and ``resume=DIR`` completes the run (in process: a resumed run may change
    runtime)."""
    out = tmp_path / "run"
    overrides = [o for o in SMALL if not o.startswith(("num_rounds=", "checkpoint_every="))]
    overrides = [o for o in overrides if not o.startswith("runtime=")]
    args = [
        "run",
        *overrides,
        "runtime=simulation",
        "runtime.ray_num_cpus=2",
        "num_rounds=1000000",
        "checkpoint_every=1",
        f"hydra.run.dir={out}",
    ]
    ray: list[int] = []
    try:
        with fedmtl_process(args, tmp_path / "logs") as process:
            wait_for_checkpoint(process, out, tmp_path / "logs")
            ray = descendants(process.pid)  # Ray's processes, workers included, by now
            temp_dirs = {
                part for pid in ray for part in command_line(pid).split() if "fedmtl-ray-" in part
            }
            assert ray and temp_dirs, "the run started no Ray of its own"
            if to_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            assert process.wait(timeout=SIGNALLED_S) == 130
        assert not [pid for pid in ray if alive(pid)], "Ray processes outlived the run"
        for argument in temp_dirs:  # e.g. --temp-dir=/tmp/fedmtl-ray-x or a path below it
            root = argument[argument.index("/") :].split("fedmtl-ray-")[0]
            name = "fedmtl-ray-" + argument.split("fedmtl-ray-")[1].split("/")[0]
            assert not (Path(root) / name).exists(), f"{root}{name} left behind"
    finally:
        end([pid for pid in ray if alive(pid)], grace=5)
    assert "fedmtl run: interrupted" in (tmp_path / "logs" / "stderr.txt").read_text()
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["status"] == "interrupted"
    saved = load_checkpoint(out).server_round
    assert stopped["rounds"] >= saved

    resumed = run_fedmtl(
        ["run", f"resume={out}", f"num_rounds={saved + 1}", "runtime=inprocess"],
        timeout=SIGNALLED_S,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_the_checkpoint_files(tmp_path: Path) -> None:
    summary = run(parse(compose_raw([*SMALL, "strategy=fedper"], output_dir=tmp_path)))
    directory = tmp_path / CHECKPOINT_DIR
    assert sorted(p.name for p in directory.iterdir()) == [
        "arrays-6.safetensors",
        "silos",
        STATE_FILE,
    ]
    state = load_checkpoint(tmp_path)
    assert state.server_round == 6 == summary["checkpoint_round"]
    assert state.config["strategy"]["name"] == "fedper"
    assert len(state.engine["history"]) == 6
    model, meta = load_model_arrays(tmp_path / MODEL_FILE)
    assert meta["strategy"] == "fedper" and meta["round"] == "6" and meta["groups"] == "null"
    assert sorted(model) == sorted(state.model)
    # every silo keeps its newest state at or before the checkpoint it last heard of (round 4,
    # when it trained in round 6) and the newer ones
    for silo in range(4):
        files = sorted(p.name for p in (directory / "silos" / f"silo-{silo}").iterdir())
        assert files == ["round-4.safetensors", "round-5.safetensors", "round-6.safetensors"]


def test_state_trees_round_trip_through_json_and_arrays() -> None:
    tree = {
        "rng": [3, list(range(5)), None],
        "m": {"trunk.w": np.arange(6, dtype=np.float64).reshape(2, 3)},
        "history": [[1, {"a": np.float32(0.5)}], (2, np.array([True, False]))],
        "nan": float("nan"),
    }
    plain, arrays = split_arrays(tree)
    text = json.dumps(plain)
    back = join_arrays(json.loads(text), arrays)
    assert back["rng"] == [3, [0, 1, 2, 3, 4], None]
    assert np.array_equal(back["m"]["trunk.w"], tree["m"]["trunk.w"])
    assert back["history"][0] == [1, {"a": 0.5}]
    assert np.array_equal(back["history"][1][1], [True, False])
    assert np.isnan(back["nan"])


def test_silo_state_files_keep_what_a_resume_can_need(tmp_path: Path) -> None:
    arrays = {"heads.a.w": np.ones((2, 2), dtype=np.float32)}
    for server_round in (1, 2, 3, 5):
        save_silo_state(tmp_path, server_round, arrays, saved_round=2)
    # the newest at or before the last checkpoint (2), and every newer one
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-2.safetensors",
        "round-3.safetensors",
        "round-5.safetensors",
    ]
    restored = restore_silo_state(tmp_path, resume_round=4)
    assert restored is not None and np.array_equal(restored["heads.a.w"], arrays["heads.a.w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-2.safetensors",
        "round-3.safetensors",
    ]
    assert restore_silo_state(tmp_path / "none", resume_round=4) is None


def saved_run(tmp_path: Path) -> Path:
    state = RunState(
        server_round=2,
        config={"num_rounds": 4, "seed": 0},
        model={"trunk.w": np.zeros(3, dtype=np.float32)},
        groups=None,
        engine={},
        evaluator={"history": []},
    )
    save_checkpoint(tmp_path, state)
    return tmp_path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / STATE_FILE).unlink(), "holds no checkpoint"),
        (lambda d: (d / STATE_FILE).write_bytes(b"\x00\xff garbage"), "cannot be read"),
        (lambda d: (d / STATE_FILE).write_text("[1, 2]"), "cannot be read"),
        (lambda d: (d / "arrays-2.safetensors").write_bytes(b"PK\x03\x04"), "cannot be read"),
        (lambda d: (d / "arrays-2.safetensors").unlink(), "cannot be read"),
        (
            lambda d: (d / STATE_FILE).write_text(
                json.dumps({**json.loads((d / STATE_FILE).read_text()), "schema_version": 9})
            ),
            "schema_version 9",
        ),
    ],
)
def test_a_damaged_checkpoint_gives_a_clear_error(tmp_path: Path, damage, message: str) -> None:
    run_dir = saved_run(tmp_path)
    damage(run_dir / CHECKPOINT_DIR)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(run_dir)
    assert err.value.key == "resume"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=3", "seed"),
        ("strategy.name=fedavg", "strategy.name"),
        ("num_rounds=1", "num_rounds"),
        ("nonsense", "nonsense"),
    ],
)
def test_resume_refuses_changes_to_the_run(tmp_path: Path, override: str, key: str) -> None:
    run_dir = saved_run(tmp_path)
    with pytest.raises(ConfigError) as err:
        resumed_raw_config(run_dir, [override])
    assert err.value.key == key


def test_resume_may_extend_the_run_and_change_where_it_runs(tmp_path: Path) -> None:
    raw = resumed_raw_config(saved_run(tmp_path), ["num_rounds=10", "runtime=inprocess"])
    assert raw["num_rounds"] == 10
    assert raw["runtime"] == compose_raw(["runtime=inprocess"])["runtime"]
    raw = resumed_raw_config(saved_run(tmp_path), ["tracking.plots=false"])
    assert raw["tracking"] == {"plots": False}
    assert raw["resume"] == raw["output_dir"] == str(tmp_path)


def test_a_new_run_refuses_a_directory_with_results(tmp_path: Path) -> None:
    raw = compose_raw(["experiment=smoke"], output_dir=tmp_path)
    (tmp_path / "summary.json").write_text("{}")  # a previous run's result file
    with pytest.raises(ConfigError, match="already holds a run's results") as err:
        run(parse(raw))
    assert err.value.key == "output_dir"
