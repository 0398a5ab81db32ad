"""Bounds checked before any work: the memory estimate (fedmtl.app.run.resources) against a fixed
amount of available memory, so that every outcome is the same on every machine; the limits of a
simulation's silos; what each dataset's footprint says against what it builds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedmtl.app.launch import check_simulated_silos
from fedmtl.app.run import experiment as experiment_module
from fedmtl.app.run import resources
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import Experiment, prepare
from fedmtl.core.errors import ConfigError
from fedmtl.datasets import build_dataset
from fedmtl.datasets.digits import DigitsPairParams
from fedmtl.datasets.synthetic import SyntheticParams
from fedmtl.datasets.table import TableParams, table_shape
from tests.support.runs import compose_raw

GIB = 1024**3


@pytest.fixture
def four_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate sees 4 GiB available (a budget of 3.2 GiB), whatever this machine has."""
    monkeypatch.setattr(resources, "available_memory", lambda: 4 * GIB)


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a dataset or a model fails the test: a refusal must come before either."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built before the memory check refused the run")

    monkeypatch.setattr(experiment_module, "build_source", fail)
    monkeypatch.setattr(Experiment, "new_model", fail)


@pytest.mark.usefixtures("four_gib", "nothing_built")
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset=synthetic", "dataset.num_tasks=100000"], "dataset.num_tasks"),
        (["dataset=synthetic", "dataset.num_samples=1000000000"], "dataset.num_samples"),
        (["dataset=synthetic", "dataset.input_dim=1000000"], "dataset.input_dim"),
        (["dataset=synthetic", "dataset.num_sites=1000000000"], "dataset.num_sites"),
        (["dataset=synthetic", "partition.num_silos=1000000000"], "partition.num_silos"),
        (["dataset=digits_pair", "dataset.num_samples=1000000000"], "dataset.num_samples"),
    ],
)
def test_a_dataset_that_cannot_fit_is_refused_before_it_is_built(
    overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        prepare(parse(compose_raw(overrides)))
    assert err.value.key == key
    message = str(err.value)
    assert "of memory" in message and "4.0 GiB this machine has available" in message
    assert "limits.memory_check=false" in message


@pytest.mark.usefixtures("four_gib")
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.hidden=[100000000]"], "model.hidden"),
        (["model.head_hidden=10000000"], "model.head_hidden"),
        (["model=cnn", "model.channels=[100000,100000]"], "model.channels"),
        (["partition=iid_all", "partition.num_silos=1700", "model.hidden=[8192]"], "model.hidden"),
    ],
)
def test_a_model_that_cannot_fit_is_refused_before_it_is_built(
    monkeypatch: pytest.MonkeyPatch, overrides: list[str], key: str
) -> None:
    monkeypatch.setattr(Experiment, "new_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ConfigError) as err:
        prepare(parse(compose_raw(overrides)))
    assert err.value.key == key


def test_the_updates_of_many_silos_name_the_silos(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default model (about 17,000 parameters), but the updates of 1,790 silos held at once:
    more than 100 MiB."""
    monkeypatch.setattr(resources, "available_memory", lambda: 100 * 1024**2)
    monkeypatch.setattr(Experiment, "new_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ConfigError, match="1790 updates a round") as err:
        prepare(parse(compose_raw(["partition=iid_all", "partition.num_silos=1790"])))
    assert err.value.key == "partition.num_silos"


def test_dp_sgds_per_sample_gradients_name_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default model's gradient for each of 2,000 rows at once (record-level DP): more than
    100 MiB; the same batch without DP fits."""
    monkeypatch.setattr(resources, "available_memory", lambda: 100 * 1024**2)
    large = ["train.batch_size=2000"]
    prepare(parse(compose_raw(large)))
    with pytest.raises(ConfigError, match="DP-SGD") as err:
        prepare(parse(compose_raw([*large, "privacy=dp_record"])))
    assert err.value.key == "train.batch_size"


def test_a_wide_table_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV whose header has 10^6 columns: refused from its header and line count, before
    pandas reads it (which took gigabytes and, with a quadratic column check, hung)."""
    monkeypatch.setattr(resources, "available_memory", lambda: 4 * GIB)
    monkeypatch.setattr(experiment_module, "build_source", lambda *a: pytest.fail("read"))
    path = tmp_path / "wide.csv"
    columns = 1_000_000
    path.write_text(",".join(f"c{i}" for i in range(columns)) + ",y\n" + "1," * columns + "0\n")
    raw = compose_raw(["dataset=table", f"dataset.path={path}", "+dataset.targets.y=binary"])
    with pytest.raises(ConfigError, match=r"of 1000000 inputs.*give a smaller table") as err:
        prepare(parse(raw))
    assert err.value.key == "dataset.path"


def test_the_check_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "available_memory", lambda: 1024)  # a kibibyte
    with pytest.raises(ConfigError, match=r"set limits\.memory_check=false"):
        prepare(parse(compose_raw([])))
    prepare(parse(compose_raw(["limits.memory_check=false"])))


def test_the_default_run_fits_this_machine() -> None:
    prepare(parse(compose_raw([])))  # the real available memory
    assert resources.available_memory() > 0


def test_more_silos_than_rows_is_refused_before_the_partition() -> None:
    with pytest.raises(ConfigError, match="has 1797 rows") as err:
        prepare(parse(compose_raw(["partition.num_silos=1000000000"])))
    assert err.value.key == "partition.num_silos"


@pytest.mark.parametrize(
    "params",
    [
        SyntheticParams(num_samples=300, num_tasks=7, num_groups=2, input_dim=9, num_sites=3),
        SyntheticParams(num_samples=50, kinds="regression"),
        DigitsPairParams(num_samples=77, as_image=False),
    ],
    ids=["synthetic-sites", "synthetic-regression", "digits_pair"],
)
def test_a_footprint_matches_the_dataset_built(params: Any) -> None:
    footprint = params.footprint()
    name = "synthetic" if isinstance(params, SyntheticParams) else "digits_pair"
    dataset = build_dataset(name, params, seed=0)
    assert footprint.rows == dataset.num_samples
    assert footprint.input_size == math.prod(dataset.input_shape)
    assert footprint.num_tasks == len(dataset.tasks)
    held = dataset.inputs.nbytes + dataset.mask.nbytes
    held += sum(t.nbytes for t in dataset.targets.values())
    assert held <= footprint.nbytes  # labels counted at 8 bytes: float32 ones take less


def test_table_shapes_are_read_without_reading_the_table(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y,z", None], "t": [0, 1, 0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    assert table_shape(str(tmp_path / "t.csv")) == (3, 3)
    assert table_shape(str(tmp_path / "t.parquet")) == (3, 3)
    (tmp_path / "no-newline.csv").write_text("a,b\n1,2\n3,4")
    assert table_shape(str(tmp_path / "no-newline.csv")) == (2, 2)
    assert table_shape(str(tmp_path / "missing.csv")) is None
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert table_shape(str(tmp_path / "bad.parquet")) is None
    footprint = TableParams(path=str(tmp_path / "t.csv"), targets={"t": "binary"}).footprint()
    assert footprint is not None and (footprint.rows, footprint.input_size) == (3, 2)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.batch_size=1e9"], "train.batch_size"),
        (["train.local_epochs=1e6"], "train.local_epochs"),
        (["train.max_steps=1000000"], "train.max_steps"),
        (  # 40 epochs in batches of 1 on 1,500 training rows: 60,000 steps
            [
                *("partition=iid_all", "partition.num_silos=1", "strategy.min_available_nodes=1"),
                *("strategy.min_train_nodes=1", "strategy.min_evaluate_nodes=1"),
                *("train.local_epochs=40", "train.batch_size=1"),
            ],
            "train.local_epochs",
        ),
    ],
)
def test_what_a_simulated_silo_would_refuse_is_refused_before_the_run(
    overrides: list[str], key: str
) -> None:
    """A simulation's silos hold a node's default limits and would refuse every train message
    beyond them (the run then ended with too_few_replies): refused before it starts."""
    config = parse(compose_raw(overrides))
    with pytest.raises(ConfigError) as err:
        check_simulated_silos(config, prepare(config))
    assert err.value.key == key


def test_a_silo_limit_is_not_a_bound_of_the_schema() -> None:
    """Silos of a deployment may accept more (their node config): the schema itself allows it."""
    assert parse(compose_raw(["train.batch_size=8192"])).train.batch_size == 8192
