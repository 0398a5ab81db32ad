"""Checkpoints and resume: a run stopped after any round and resumed ends, bit for bit, with the
model of a run never stopped (CPU, in process); what the files hold; and what is refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
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
    canonical_json,
    join_arrays,
    load_checkpoint,
    load_model_arrays,
    restore_silo_state,
    resumed_raw_config,
    save_checkpoint,
    save_model,
    save_silo_state,
    sha256,
    split_arrays,
)
from fedmtl.app.run.config import parse
from fedmtl.app.run.lock import LOCK_FILE, is_locked, run_lock
from fedmtl.app.run.tracking import read_metric_lines
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
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    stop_round: int,
    damage: Callable[[Path], None] = lambda run_dir: None,
) -> tuple[Path, Path]:
    """A run, and the same run stopped as ``stop_round`` starts, ``damage``-d and resumed."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(parse(compose_raw([*SMALL, *overrides], output_dir=full)))
    with monkeypatch.context() as patch:
        stop_in_round(patch, stop_round)
        with pytest.raises(KeyboardInterrupt):
            run(parse(compose_raw([*SMALL, *overrides], output_dir=cut)))
    stopped = json.loads((cut / "summary.json").read_text())
    assert stopped["status"] == "interrupted"
    assert not (cut / MODEL_FILE).exists()
    damage(cut)
    run(parse(resumed_raw_config(cut, [])))
    return full, cut


@pytest.mark.parametrize(
    ("overrides", "stop_round", "saved"),
    [
        (["strategy=fedavg"], 4, 2),  # killed in round 4: rounds 3 and 4 are redone
        # the silos' error-feedback residuals of compressed updates, saved by the silos
        pytest.param(
            ["strategy=fedavg", "strategy.compression=topk", "strategy.compression_ratio=0.1"],
            4,
            2,
            marks=pytest.mark.slow,
        ),
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


@pytest.mark.slow  # two runs each
@pytest.mark.parametrize(
    "tail",
    [
        b'{"round": 4, "split": "personal", "metr',  # a kill during an append: a torn line
        b"\xff\xfe\x00 not fedmtl's \x81\n\n{]\n",  # bytes appended by something else
    ],
    ids=["torn-line", "garbage"],
)
def test_resume_drops_a_torn_tail_of_metrics_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: bytes
) -> None:
    """The checkpoint is the truth: unreadable lines of metrics.jsonl are dropped on resume and
    the file ends as that of a run never stopped."""

    def append(run_dir: Path) -> None:
        with (run_dir / "metrics.jsonl").open("ab") as handle:
            handle.write(tail)

    full, cut = run_stopped_and_resumed(tmp_path, monkeypatch, ["strategy=fedavg"], 5, append)
    assert without_times(read_jsonl(cut / "metrics.jsonl")) == without_times(
        read_jsonl(full / "metrics.jsonl")
    )
    assert json.loads((cut / "summary.json").read_text())["status"] == "completed"
    assert read_metric_lines(cut / "metrics.jsonl")[1] == []


def test_reading_metrics_skips_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"round": 1, "split": "train"}\n\xff\n[1]\n{"round": "2"}\n{"round": 2}\n{"ro'
    )
    rows, dropped = read_metric_lines(path)
    assert rows == [{"round": 1, "split": "train"}, {"round": 2}]
    assert dropped == [2, 3, 4, 6]


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
def test_a_signal_stops_a_simulation_and_leaves_no_process_behind(tmp_path: Path) -> None:
    """``fedmtl run runtime=simulation`` (Flower's engine on a Ray of its own) sent SIGINT with
    its process group after its first checkpoint, as Ctrl-C does (Ray's workers get it too):
    exit 130, summary.json ``interrupted``, the checkpoint loadable, no process of the run (Ray's
    included, whatever session they run in) alive after the command, its Ray temp dir gone, and
    ``resume=DIR`` completes the run (in process: a resumed run may change runtime). SIGTERM to
    the command alone goes to the same handler (``stopping_on_signals`` takes SIGINT and SIGTERM
    alike); only the group signal also reaches Ray's workers, the harder case."""
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
            os.killpg(process.pid, signal.SIGINT)
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

    # in process: the command's resume is tested above (a signalled in-process run)
    resumed = run(parse(resumed_raw_config(out, [f"num_rounds={saved + 1}", "runtime=inprocess"])))
    assert resumed["status"] == "completed"
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


def edited(directory: Path, checksums: bool, **fields: Any) -> None:
    """``state.json`` with ``fields`` replaced; with ``checksums``, its checksums made to match
    again (an edit that knows the format, so that the checks behind the checksums are reached)."""
    document = json.loads((directory / STATE_FILE).read_text())
    document.update(fields)
    if checksums:
        document["config_sha256"] = sha256(canonical_json(document["config"]))
        body = {k: v for k, v in document.items() if k != "sha256"}
        document["sha256"] = sha256(canonical_json(body))
    (directory / STATE_FILE).write_text(json.dumps(document))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the arrays' data: the file still parses
    path.write_bytes(bytes(data))


def outside_file(directory: Path) -> None:
    """The arrays file replaced by a link to a copy of it outside the checkpoint directory."""
    arrays = directory / "arrays-2.safetensors"
    elsewhere = directory.parent.parent / "other-arrays-2.safetensors"
    elsewhere.write_bytes(arrays.read_bytes())
    arrays.unlink()
    arrays.symlink_to(elsewhere)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / STATE_FILE).unlink(), "holds no checkpoint"),
        (lambda d: (d / STATE_FILE).write_bytes(b"\x00\xff garbage"), "cannot be read"),
        (lambda d: (d / STATE_FILE).write_text("[1, 2]"), "not a JSON object"),
        (lambda d: (d / "arrays-2.safetensors").write_bytes(b"PK\x03\x04"), "does not match"),
        (lambda d: (d / "arrays-2.safetensors").unlink(), "cannot be read"),
        (lambda d: edited(d, False, schema_version=9), "schema_version 9"),
        (lambda d: edited(d, True, schema_version=2), "older fedmtl"),
        # flipped bytes in the arrays: loaded silently before checksums
        (lambda d: flip_last_byte(d / "arrays-2.safetensors"), "arrays-2.safetensors does not"),
        # a hand-edited config (the run would go on with other silos than its rounds so far)
        (
            lambda d: edited(d, False, config={"num_rounds": 4, "seed": 0, "silos": 5}),
            "its config does not match the checksum",
        ),
        (lambda d: edited(d, False, round=1), "state.json does not match the checksum"),
        (lambda d: edited(d, False, engine=None), "state.json does not match the checksum"),
        # edits with matching checksums meet the checks behind them
        (lambda d: edited(d, True, engine=None), "engine is NoneType, not a mapping"),
        (lambda d: edited(d, True, evaluator=[1]), "evaluator is list, not a mapping"),
        (lambda d: edited(d, True, round="2"), "not a round number"),
        (
            lambda d: edited(d, True, arrays="../../other/arrays-2.safetensors"),
            "not a file arrays-<round>.safetensors",
        ),
        (lambda d: edited(d, True, files={}), "files does not list exactly the arrays file"),
        (lambda d: edited(d, True, extra=1), "fields fedmtl does not write: extra"),
        (lambda d: outside_file(d), "leads outside"),
    ],
)
def test_a_damaged_or_edited_checkpoint_is_refused(tmp_path: Path, damage, message: str) -> None:
    run_dir = saved_run(tmp_path / "run")
    damage(run_dir / CHECKPOINT_DIR)
    with pytest.raises(ConfigError, match=message) as err:
        load_checkpoint(run_dir)
    assert err.value.key == "resume"


def test_a_checkpoint_names_the_checksums_of_its_files_and_config(tmp_path: Path) -> None:
    run_dir = saved_run(tmp_path)
    document = json.loads((run_dir / CHECKPOINT_DIR / STATE_FILE).read_text())
    arrays = (run_dir / CHECKPOINT_DIR / "arrays-2.safetensors").read_bytes()
    assert document["schema_version"] == 3
    assert document["files"] == {"arrays-2.safetensors": hashlib.sha256(arrays).hexdigest()}
    assert document["config_sha256"] == sha256(canonical_json({"num_rounds": 4, "seed": 0}))
    assert load_checkpoint(run_dir).server_round == 2


def test_a_damaged_silo_state_file_is_refused(tmp_path: Path) -> None:
    save_silo_state(tmp_path, 1, {"heads.a.w": np.ones((4, 4), dtype=np.float32)}, saved_round=1)
    flip_last_byte(tmp_path / "round-1.safetensors")
    with pytest.raises(ValueError, match="does not match its checksum"):
        restore_silo_state(tmp_path, resume_round=1)


def test_safetensors_files_are_byte_identical_for_the_same_content(tmp_path: Path) -> None:
    """safetensors writes its header's maps in hash order (another order in each call); fedmtl's
    files are canonical, so identical runs write identical model files."""
    arrays = {"trunk.w": np.arange(6, dtype=np.float32), "heads.a.b": np.zeros(2)}
    meta = {"strategy": "fedavg", "round": "6", "zeta": "z", "alpha": "a"}
    written = set()
    for n in range(12):
        path = save_model(tmp_path / str(n), arrays, {"g0": ("a",)}, meta)
        written.add(path.read_bytes())
    assert len(written) == 1
    loaded, metadata = load_model_arrays(path)
    assert metadata == {**meta, "format": "fedmtl", "groups": '{"g0": ["a"]}'}
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    (length,) = struct.unpack("<Q", written.pop()[:8])
    assert length % 8 == 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=3", "seed"),
        ("strategy.name=fedavg", "strategy.name"),
        ("num_rounds=1", "num_rounds"),
        ("num_rounds=abc", "num_rounds"),  # was a ValueError traceback
        ("num_rounds=[3]", "num_rounds"),
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


def test_a_new_run_refuses_a_directory_with_a_checkpoint(tmp_path: Path) -> None:
    raw = compose_raw(["experiment=smoke"], output_dir=tmp_path)
    saved_run(tmp_path)  # a previous run's checkpoint
    with pytest.raises(ConfigError, match="already holds a run's results") as err:
        run(parse(raw))
    assert err.value.key == "output_dir"
    assert f"resume={tmp_path}" in str(err.value)


# ------------------------------------------------------------------- one run at a time, restarts
def test_the_run_lock_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    with run_lock(tmp_path, "resume"):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert is_locked(tmp_path)
        with (
            pytest.raises(ConfigError, match=f"pid {os.getpid()}") as err,
            run_lock(tmp_path, "resume"),
        ):
            pass
        assert err.value.key == "resume"
    assert not is_locked(tmp_path)
    with run_lock(tmp_path, "output_dir"):  # free again once released
        pass
    with (
        pytest.raises(ConfigError, match="not a directory"),
        run_lock(tmp_path / "missing", "resume", create=False),
    ):
        pass
    assert not (tmp_path / "missing").exists()


def stopped_before_first_checkpoint(out: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A run in ``out`` stopped in round 2, checkpoints every 2 rounds: the files it left."""
    with monkeypatch.context() as patch:
        stop_in_round(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run(parse(compose_raw(SMALL, output_dir=out)))
    assert not (out / CHECKPOINT_DIR / STATE_FILE).exists()
    return sorted(p.name for p in out.iterdir())


def test_a_run_stopped_before_its_first_checkpoint_gives_way_to_a_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to resume (the error says to start a new run there), and a new run there moves
    the files left aside and completes."""
    out = tmp_path / "run"
    left = stopped_before_first_checkpoint(out, monkeypatch)
    assert {"metrics.jsonl", "summary.json", "partition.json"} <= set(left)
    with pytest.raises(ConfigError, match="holds no checkpoint") as err:
        resumed_raw_config(out, [])
    assert f"hydra.run.dir={out}" in str(err.value) and "a new run takes" in str(err.value)

    summary = run(parse(compose_raw(SMALL, output_dir=out)))
    assert summary["status"] == "completed" and summary["resumed_from"] == []
    aside = out / "unfinished-1"
    assert sorted(p.name for p in aside.iterdir()) == sorted(n for n in left if n != LOCK_FILE)
    assert json.loads((aside / "summary.json").read_text())["status"] == "interrupted"
    rounds = [row["round"] for row in read_jsonl(out / "metrics.jsonl") if row["split"] == "train"]
    assert rounds == [1, 2, 3, 4, 5, 6]


def test_a_refused_config_leaves_an_unfinished_run_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    before = stopped_before_first_checkpoint(out, monkeypatch)
    with pytest.raises(ConfigError):  # refused when the experiment is built
        run(parse(compose_raw([*SMALL, "dataset.tasks=[nope]"], output_dir=out)))
    assert sorted(p.name for p in out.iterdir()) == before


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], logs: Path) -> None:
    """Until ``condition`` holds, the process still running; fails after SIGNALLED_S seconds (a
    deadline, not a measurement)."""
    deadline = time.monotonic() + SIGNALLED_S
    while not condition():
        assert process.poll() is None, (logs / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "the process did not get there in time"
        time.sleep(0.05)


def unique_lines(run_dir: Path) -> list[tuple[Any, ...]]:
    """metrics.jsonl's (round, split, silo) keys, each of which must appear once."""
    keys = [(r["round"], r["split"], r.get("silo")) for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert len(keys) == len(set(keys)), "a round was written twice"
    return keys


@pytest.mark.slow
@pytest.mark.timeout(5 * SIGNALLED_S)
def test_two_resumes_of_one_run_the_second_is_refused_and_a_killed_holder_blocks_nothing(
    tmp_path: Path,
) -> None:
    """Two real processes resume one run: the second exits 2 naming the first's pid (before the
    lock both went on, writing every round twice). The first is then killed with SIGKILL, in the
    middle of a round: its lock dies with it and the next resume completes, every round once."""
    out = tmp_path / "run"
    run(parse(compose_raw([*SMALL, "num_rounds=2"], output_dir=out)))
    long = [f"resume={out}", "num_rounds=1000000", "checkpoint_every=1"]
    with fedmtl_process(["run", *long], tmp_path / "first") as first:
        wait_for(
            lambda: (
                (out / LOCK_FILE).read_text() == f"{first.pid}\n" and len(unique_lines(out)) > 40
            ),  # rounds 1-2 hold 2 x 7 lines: it is training
            first,
            tmp_path / "first",
        )
        second = run_fedmtl(["run", *long], timeout=SIGNALLED_S)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another fedmtl run (pid {first.pid} holds" in second.stderr
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=SIGNALLED_S)
    unique_lines(out)
    saved = load_checkpoint(out).server_round
    resumed = run_fedmtl(["run", f"resume={out}", f"num_rounds={saved + 1}"], timeout=SIGNALLED_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = [key[0] for key in unique_lines(out) if key[1] == "train"]
    assert rounds == list(range(1, saved + 2))


@pytest.mark.slow
@pytest.mark.timeout(5 * SIGNALLED_S)
def test_a_run_killed_before_its_first_checkpoint_is_started_again_in_place(
    tmp_path: Path,
) -> None:
    """``fedmtl run`` killed with SIGKILL after a round but before any checkpoint: ``resume=DIR``
    says to start a new run there, and that new run takes the directory and completes."""
    out = tmp_path / "run"
    overrides = [o for o in SMALL if not o.startswith(("num_rounds=", "checkpoint_every="))]
    args = ["run", *overrides, "num_rounds=1000000", "checkpoint_every=0", f"hydra.run.dir={out}"]
    with fedmtl_process(args, tmp_path / "logs") as process:
        wait_for(lambda: (out / "metrics.jsonl").is_file() and unique_lines(out) != [], process,
                 tmp_path / "logs")  # fmt: skip
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=SIGNALLED_S)
    assert not (out / "summary.json").exists()  # no chance to write it
    resumed = run_fedmtl(["run", f"resume={out}"], timeout=SIGNALLED_S)
    assert resumed.returncode == 2 and "holds no checkpoint" in resumed.stderr
    assert f"new run in the same directory (hydra.run.dir={out})" in resumed.stderr
    again = run_fedmtl(["run", *SMALL, f"hydra.run.dir={out}"], timeout=SIGNALLED_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stopped before its first checkpoint" in again.stdout + again.stderr  # the log
    assert (out / "unfinished-1" / "metrics.jsonl").is_file()
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
