"""A silo's own side of a deployment: node config, its own table, its limits, and the ClientApp's
checks of what the server sends with its error policy (fedmtl/app/silo/node.py, client_app.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import CONFIG_KEY, cached_experiment, prepare
from fedmtl.app.run.server import make_server_app
from fedmtl.app.silo.client_app import REFUSED, UNAVAILABLE
from fedmtl.app.silo.node import Limits, RequestRefused, load_silo, node_settings, table_silo
from fedmtl.core import records
from fedmtl.core.errors import ConfigError
from fedmtl.core.records import EvaluateRequest, MethodSpec, SiloInfo, TrainRequest
from fedmtl.core.schema import TrainConfig
from strategies.fedper import KeptHeadsSilo
from tests.support.deployments import local_config_json, local_grid, silo_tables
from tests.support.runs import compose_raw, read_jsonl

NODE = 1000  # InProcessGrid's first node


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    return silo_tables(tmp_path_factory.mktemp("silos"))


@pytest.fixture(scope="module")
def config_json(tables: tuple[list[Path], Path]) -> str:
    return local_config_json(tables[1], "num_rounds=2", "train.max_steps=5")


def nodes(tables: list[Path], **extra: Any) -> list[dict[str, Any]]:
    return [{"data-file": str(path), "silo-id": i, **extra} for i, path in enumerate(tables)]


def send(grid: Any, message_type: str, content: RecordDict, node: int = NODE) -> Message:
    (reply,) = grid.send_and_receive(
        [Message(content, dst_node_id=node, message_type=message_type)]
    )
    return reply


def train_content(config_json: str, **train: Any) -> RecordDict:
    model = cached_experiment(config_json).new_model()
    arrays = records.state_arrays(model, model.exchanged_keys())
    request = TrainRequest(
        server_round=1, train=TrainConfig(**{"max_steps": 2, **train}), method=MethodSpec("fedavg")
    )
    return records.request_content(records.to_array_record(arrays), request.to_config())


# ------------------------------------------------------------------------------- node config
def test_node_config_of_a_silo_with_its_own_table() -> None:
    node = node_settings(
        {"data-file": "/d/a.csv", "silo-id": 2, "tasks": "a, b", "max-local-epochs": 3}
    )
    assert (node.data_file, node.silo_id, node.tasks) == ("/d/a.csv", 2, ("a", "b"))
    assert node.limits == Limits(max_local_epochs=3)


@pytest.mark.parametrize(
    ("node_config", "key"),
    [
        ({}, "node_config.data-file"),
        ({"data-file": "/d/a.csv"}, "node_config.silo-id"),
        ({"data-file": 3, "silo-id": 0}, "node_config.data-file"),
        ({"data-file": "/d/a.csv", "silo-id": -1}, "node_config.silo-id"),
        ({"data-file": "/d/a.csv", "silo-id": True}, "node_config.silo-id"),
        ({"data-file": "/d/a.csv", "silo-id": 0, "tasks": "a,,b"}, "node_config.tasks"),
        ({"partition-id": 0, "tasks": "a"}, "node_config.tasks"),
        ({"partition-id": 0, "max-batch-size": 0}, "node_config.max-batch-size"),
        ({"partition-id": 0, "max-local-steps": "many"}, "node_config.max-local-steps"),
    ],
)
def test_bad_node_config_names_the_key(node_config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        node_settings(node_config)
    assert info.value.key == key and info.value.fix


# --------------------------------------------------------------------------------- own table
def test_each_silo_announces_the_tasks_its_table_labels(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    experiment = cached_experiment(config_json)
    silos = [load_silo(experiment, node_settings(n)) for n in nodes(tables[0])]
    # silo 0 leaves the third target column out, silos 1 and 2 leave its cells empty
    assert [s.info.tasks for s in silos] == [
        ("score", "flag"),
        ("flag", "level"),
        ("score", "level"),
    ]
    for silo in silos:
        assert silo.info.num_train + silo.info.num_test == 160
        assert silo.info.num_test == 40  # partition.test_fraction 0.25 of its own rows
        assert silo.info.train_per_task == silo.train.labelled_counts()
        assert silo.train.inputs.shape[1] == experiment.dataset.input_shape[0]
    assert len({s.fingerprint for s in silos}) == 3


def test_node_config_tasks_choose_a_subset(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    experiment = cached_experiment(config_json)
    silo = table_silo(experiment, str(tables[0][0]), 0, ("flag",))
    assert silo.info.tasks == ("flag",) and list(silo.train.labelled_counts()) == ["flag"]
    with pytest.raises(ConfigError) as info:
        table_silo(experiment, str(tables[0][0]), 0, ("flag", "weather"))
    assert info.value.key == "node_config.tasks"


def test_the_cut_depends_on_seed_and_silo_only(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    experiment = cached_experiment(config_json)
    first = table_silo(experiment, str(tables[0][0]), 0)
    again = table_silo(experiment, str(tables[0][0]), 0)
    other_id = table_silo(experiment, str(tables[0][0]), 5)
    assert first.fingerprint == again.fingerprint
    assert np.array_equal(first.test.inputs.numpy(), again.test.inputs.numpy())
    assert not np.array_equal(first.test.inputs.numpy(), other_id.test.inputs.numpy())


def test_too_few_labelled_rows_name_the_data_file(tables: tuple[list[Path], Path]) -> None:
    experiment = cached_experiment(
        local_config_json(tables[1], "partition.min_train_per_task=1000")
    )
    with pytest.raises(ConfigError) as info:
        table_silo(experiment, str(tables[0][0]), 0)
    assert info.value.key == "node_config.data-file"


def test_a_table_node_in_a_run_with_its_own_partition_is_refused(
    tables: tuple[list[Path], Path],
) -> None:
    demo = prepare(parse(compose_raw(["experiment=flwr_demo"])))
    with pytest.raises(ConfigError, match="partition=local"):
        load_silo(demo, node_settings(nodes(tables[0])[0]))


# --------------------------------------------------------------------------- the experiment
def test_partition_local_needs_a_schema_and_no_rows(tables: tuple[list[Path], Path]) -> None:
    with pytest.raises(ConfigError) as info:
        prepare(parse(compose_raw(["partition=local"])))  # digits: rows of its own
    assert info.value.key == "partition"
    raw = compose_raw(["dataset=table", f"dataset.schema={tables[1]}"])  # no partition=local
    with pytest.raises(ConfigError) as info:
        prepare(parse(raw))
    assert info.value.key == "dataset.path"


def test_fedmtl_run_refuses_partition_local(config_json: str) -> None:
    with pytest.raises(ConfigError) as info:
        run(parse(json.loads(config_json)))
    assert info.value.key == "partition" and "flwr run" in info.value.fix


def test_the_server_knows_tasks_and_inputs_from_the_schema_alone(config_json: str) -> None:
    experiment = cached_experiment(config_json)
    assert experiment.dataset.num_samples == 0 and experiment.partition.num_silos == 0
    assert experiment.dataset.task_names == ["score", "flag", "level"]
    assert experiment.dataset.input_shape == (5 + 1 + 4,)  # x4 has a missing flag, region 3 + 1


# ---------------------------------------------------------------------------------- limits
@pytest.mark.parametrize(
    ("train", "head_epochs", "fragment"),
    [
        ({"local_epochs": 6}, 0, "local-epochs 6 exceeds this silo's max-local-epochs (5)"),
        ({}, 6, "head-epochs 6 exceeds"),
        ({"batch_size": 65}, 0, "batch-size 65 exceeds this silo's max-batch-size (64)"),
        ({"max_steps": 101}, 0, "max-steps 101 exceeds this silo's max-local-steps (100)"),
        ({"local_epochs": 5, "batch_size": 4}, 0, "take 150 steps"),  # 5 x ceil(120 / 4)
    ],
)
def test_limits_refuse_what_exceeds_them(
    train: dict[str, Any], head_epochs: int, fragment: str
) -> None:
    limits = Limits(max_local_epochs=5, max_local_steps=100, max_batch_size=64)
    spec = MethodSpec("fedrep", {"head_epochs": head_epochs})
    request = TrainRequest(1, TrainConfig(**train), spec)
    phases = KeptHeadsSilo.from_spec(spec.params).phases(request)
    with pytest.raises(RequestRefused, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        limits.check(request, phases, num_train=120)


def test_limits_accept_capped_steps() -> None:
    limits = Limits(max_local_epochs=50, max_local_steps=100, max_batch_size=64)
    request = TrainRequest(1, TrainConfig(local_epochs=50, max_steps=100), MethodSpec("fedavg"))
    limits.check(request, {"local-epochs": 50}, num_train=10_000)


# ------------------------------------------------------------------------ the ClientApp's replies
def test_query_announces_the_silos_own_tasks_and_counts(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    grid = local_grid(config_json, nodes(tables[0]))
    reply = send(grid, MessageType.QUERY, records.query_content(), NODE + 1)
    info = SiloInfo.from_content(reply.content)
    assert (info.silo_id, info.tasks) == (1, ("flag", "level"))


def test_out_of_bounds_requests_are_refused_saying_why(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    grid = local_grid(config_json, nodes(tables[0], **{"max-local-epochs": 3}))
    reply = send(grid, MessageType.TRAIN, train_content(config_json, local_epochs=4))
    assert reply.error.reason == f"{REFUSED}local-epochs 4 exceeds this silo's max-local-epochs (3)"
    ok = send(grid, MessageType.TRAIN, train_content(config_json, local_epochs=3))
    assert not ok.has_error()


@pytest.mark.parametrize(
    ("defect", "fragment"),
    [
        ("nan", "values must be finite"),
        ("unknown-key", "the model has no parameter 'spare.weight'"),
        ("shape", "shape (1,) != the model's"),
        ("bad-config", "train request: "),
    ],
)
def test_malformed_requests_are_refused(
    tables: tuple[list[Path], Path], config_json: str, defect: str, fragment: str
) -> None:
    grid = local_grid(config_json, nodes(tables[0]))
    content = train_content(config_json)
    arrays = records.from_array_record(content.array_records[records.ARRAYS])
    key = next(iter(arrays))
    if defect == "nan":
        arrays[key] = np.full_like(arrays[key], np.nan)
    elif defect == "unknown-key":
        arrays["spare.weight"] = np.zeros(2, np.float32)
    elif defect == "shape":
        arrays[key] = np.zeros(1, np.float32)
    else:
        content.config_records[records.CONFIG]["batch-size"] = -3
    content.array_records[records.ARRAYS] = records.to_array_record(arrays)
    reply = send(grid, MessageType.TRAIN, content)
    assert reply.has_error() and reply.error.reason.startswith(REFUSED)
    assert fragment in reply.error.reason


def test_a_run_config_naming_files_is_refused_without_touching_them(
    tables: tuple[list[Path], Path], tmp_path: Path
) -> None:
    """The old file-existence oracle: a missing file, a directory and a non-JSON file named by
    the server as partition.path now get the same reply, and the silo opens none of them."""
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xfe not json")
    reasons = set()
    for path in (tmp_path / "missing.json", tmp_path, garbage):
        raw = compose_raw(["experiment=smoke", "partition=from_file", f"partition.path={path}"])
        grid = local_grid(json.dumps(raw), [{"partition-id": 0}])
        reply = send(grid, MessageType.QUERY, records.query_content())
        reasons.add(reply.error.reason)
    (reason,) = reasons
    assert reason.startswith(REFUSED) and "partition.path" in reason
    assert str(tmp_path) not in reason


def test_local_failures_give_one_opaque_reason_and_log_the_details(
    tables: tuple[list[Path], Path],
    config_json: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01\x02")
    wrong_columns = tmp_path / "wrong.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(wrong_columns, index=False)
    node_configs = [
        {"data-file": str(tmp_path / "missing.csv"), "silo-id": 0},
        {"data-file": str(tmp_path), "silo-id": 1},
        {"data-file": str(garbage), "silo-id": 2},
        {"data-file": str(wrong_columns), "silo-id": 3},
        {"data-file": str(tables[0][0])},  # no silo-id
        {"partition-id": 0},  # no data of its own in a partition=local run
    ]
    grid = local_grid(config_json, node_configs)
    with caplog.at_level(logging.ERROR, logger="fedmtl"):
        replies = [
            send(grid, MessageType.QUERY, records.query_content(), NODE + i)
            for i in range(len(node_configs))
        ]
    assert {r.error.reason for r in replies} == {UNAVAILABLE}
    assert str(tmp_path / "missing.csv") in caplog.text  # the details are in the silo's log


def test_rows_changed_during_a_run_stop_the_silo(
    tables: tuple[list[Path], Path], config_json: str, tmp_path: Path
) -> None:
    table = tmp_path / "silo.csv"
    table.write_bytes(tables[0][0].read_bytes())
    grid = local_grid(config_json, [{"data-file": str(table), "silo-id": 0}], sent=True)
    assert not send(grid, MessageType.QUERY, records.query_content()).has_error()
    node_state = grid.contexts[NODE].state
    fingerprint = node_state.config_records["fedmtl.silo"]["fingerprint"]
    node_state.config_records["fedmtl.silo"]["fingerprint"] = "0" * len(str(fingerprint))
    reply = send(grid, MessageType.TRAIN, train_content(config_json))
    assert reply.error.reason == UNAVAILABLE


def test_evaluate_requests_are_checked_too(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    grid = local_grid(config_json, nodes(tables[0]))
    content = train_content(config_json)
    content.config_records[records.CONFIG] = EvaluateRequest(
        1, MethodSpec("fedavg"), groups={"g": ("weather",)}
    ).to_config()
    reply = send(grid, MessageType.EVALUATE, content)
    assert reply.error.reason.startswith(f"{REFUSED}task groups")


def test_a_method_the_silo_does_not_know_is_refused_naming_it(
    tables: tuple[list[Path], Path], config_json: str
) -> None:
    grid = local_grid(config_json, nodes(tables[0]))
    content = train_content(config_json)
    config = content.config_records[records.CONFIG]
    config["method"] = "my_secret_method"
    reply = send(grid, MessageType.TRAIN, content)
    assert reply.error.reason.startswith(f"{REFUSED}unknown method 'my_secret_method'")
    assert "install the package that provides it" in reply.error.reason
    config["method"] = "fedprox"
    config["method-params"] = '{"mu": "lots"}'
    reply = send(grid, MessageType.TRAIN, content)
    assert reply.error.reason.startswith(f"{REFUSED}method 'fedprox'")
    assert "method-params.mu" in reply.error.reason


# ------------------------------------------------------------------------------- a whole run
def test_an_in_process_run_on_the_silos_own_tables(
    tables: tuple[list[Path], Path], config_json: str, tmp_path: Path
) -> None:
    raw = json.loads(config_json)
    raw["output_dir"] = str(tmp_path / "run")
    server_json = json.dumps(raw)
    grid = local_grid(config_json, nodes(tables[0]))
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    make_server_app(server_json)(grid, context)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rejected"] == [] and summary["rounds"] == 2
    assert set(summary["final"]) == {"score", "flag", "level"}
    trained = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["num_updates"] for r in trained] == [3, 3]
    assert CONFIG_KEY not in summary["config"]
