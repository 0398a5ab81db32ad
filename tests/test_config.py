"""Config composition and validation: every preset parses; bad values fail early, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmtl.cli import config_dir
from fedmtl.config import ExperimentConfig, parse
from fedmtl.errors import ConfigError
from fedmtl.experiment import prepare
from fedmtl.runtime import (
    InProcessParams,
    SimulationParams,
    check_device,
    check_resources,
    client_device,
)
from tests.conftest import compose_raw

GROUPS = ["dataset", "model", "partition", "strategy", "runtime", "tracking", "experiment"]


def presets(group: str) -> list[str]:
    """The selectable presets of ``group`` (files starting with ``_`` are shared includes)."""
    files = (Path(config_dir()) / group).glob("*.yaml")
    return sorted(p.stem for p in files if not p.stem.startswith("_"))


def test_every_group_has_presets() -> None:
    for group in GROUPS:
        assert presets(group), f"configs/{group}/ is empty"


def preset_overrides(group: str, preset: str, tmp_path: Path) -> list[str]:
    """Overrides that compose ``group=preset`` with 4 silos, and whatever else it needs."""
    if (group, preset) == ("partition", "from_file"):  # a manifest saved by a default build
        saved = prepare(parse(compose_raw(["partition.num_silos=4"]))).partition
        return [f"{group}={preset}", f"partition.path={saved.save(tmp_path / 'partition.json')}"]
    overrides = [f"{group}={preset}", "partition.num_silos=4"]
    if group == "dataset":
        overrides.append("model=mlp")
    if (group, preset) == ("partition", "natural_id"):  # needs a dataset with a 'site' column
        overrides += ["dataset=synthetic", "dataset.num_sites=8"]
    return overrides


@pytest.mark.parametrize(
    ("group", "preset"), [(g, p) for g in GROUPS for p in presets(g) if g != "model"]
)
def test_every_preset_parses_and_prepares(group: str, preset: str, tmp_path: Path) -> None:
    config = parse(compose_raw(preset_overrides(group, preset, tmp_path)))
    assert isinstance(config, ExperimentConfig)
    experiment = prepare(config)
    assert len(experiment.partition.silos) == 4


@pytest.mark.parametrize("model", presets("model"))
def test_every_model_preset_builds_on_digits(model: str) -> None:
    experiment = prepare(parse(compose_raw([f"model={model}", "dataset=digits"])))
    assert sum(p.numel() for p in experiment.new_model().parameters()) > 0


def test_registries_and_config_groups_match() -> None:
    """Each plug-in group's presets name registered plug-ins (one registry per group)."""
    from fedmtl.data import DATASETS
    from fedmtl.models import TRUNKS
    from fedmtl.runtime import RUNTIMES
    from strategies import STRATEGIES

    for group, registry in [
        ("dataset", DATASETS),
        ("model", TRUNKS),
        ("strategy", STRATEGIES),
        ("runtime", RUNTIMES),
    ]:
        names = {
            parse(compose_raw([f"{group}={p}"])).__getattribute__(group).name
            for p in presets(group)
        }
        assert names == set(registry.names()), f"configs/{group}/ and its registry differ"


def test_default_run_is_the_documented_one() -> None:
    config = parse(compose_raw([]))
    experiment = prepare(config)
    assert config.dataset.name == "digits"
    assert config.runtime.name == "simulation"
    assert len(experiment.partition.silos) >= 10
    assert len(experiment.dataset.tasks) >= 3
    task_sets = {silo.tasks for silo in experiment.partition.silos}
    assert len(task_sets) > 1, "silos should hold different task subsets"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["num_rounds=-1"], "num_rounds"),
        (["num_rounds=0"], "num_rounds"),
        (["seed=abc"], "seed"),
        (["dataset.name=imagenet"], "dataset.name"),
        (["+dataset.colour=red"], "dataset.colour"),
        (["dataset=synthetic", "dataset.num_groups=0"], "dataset.num_groups"),
        (["model.hidden=[]"], "model.hidden"),
        (["model.head_hidden=-1"], "model.head_hidden"),
        (["partition.num_silos=0"], "partition.num_silos"),
        (["partition.test_fraction=1.5"], "partition.test_fraction"),
        (["partition.assignment.name=nope"], "partition.assignment.name"),
        (["partition.assignment.k=0"], "partition.assignment.k"),
        (["strategy.fraction_train=0"], "strategy.fraction_train"),
        (["strategy.weighting=median"], "strategy.weighting"),
        (["+strategy.foo=1"], "strategy.foo"),
        (["train.lr=0"], "train.lr"),
        (["train.optimizer=rmsprop"], "train.optimizer"),
        (["train.momentum=1.0"], "train.momentum"),
        (["runtime=simulation", "runtime.num_cpus=0"], "runtime.num_cpus"),
        (["tracking.wandb_mode=sometimes"], "tracking.wandb_mode"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(compose_raw(overrides))
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["partition.assignment.k=6"], "partition.assignment.k"),  # digits has 5 tasks
        (["dataset.tasks=[digit,colour]"], "dataset.tasks"),
        (["dataset.tasks=[]"], "dataset.tasks"),
        (["partition.num_silos=2", "partition.assignment.k=1"], "partition.num_silos"),
        (["partition.num_silos=5000"], "partition.num_silos"),
        (["partition=iid_all", "partition.num_silos=1"], "strategy.min_available_nodes"),
        (["model=cnn", "dataset.as_image=false"], "model.name"),
    ],
)
def test_cross_checks_fail_before_training(overrides: list[str], key: str) -> None:
    """Errors that need the dataset or partition are raised by prepare(), before any training."""
    config = parse(compose_raw(overrides))
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert info.value.key == key


def test_error_message_names_key_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        prepare(parse(compose_raw(["partition.assignment.k=9"])))
    message = str(info.value)
    assert message.startswith("partition.assignment.k:")
    assert "Fix:" in message


def test_gpu_request_without_gpu_is_refused_not_hung() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as info:
        check_resources(SimulationParams(num_gpus=0.5))
    assert info.value.key == "runtime.num_gpus"


def test_inprocess_cuda_without_gpu_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as info:
        check_device(InProcessParams(device="cuda"))
    assert info.value.key == "runtime.device"


def test_clients_train_on_cuda_only_when_given_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert client_device("simulation", SimulationParams(num_gpus=0.0)) == "cpu"
    assert client_device("simulation", SimulationParams(num_gpus=0.5)) == "cuda"
    assert client_device("inprocess", InProcessParams()) == "cuda"
    assert client_device("inprocess", InProcessParams(device="cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert client_device("simulation", SimulationParams(num_gpus=0.5)) == "cpu"
    assert client_device("inprocess", InProcessParams()) == "cpu"


def test_more_cpus_per_client_than_ray_has_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        check_resources(SimulationParams(num_cpus=4, ray_num_cpus=2))
    assert info.value.key == "runtime.num_cpus"


def test_ray_address_skips_local_resource_checks() -> None:
    check_resources(SimulationParams(num_gpus=1.0, ray_address="auto"))


def test_config_json_round_trip() -> None:
    config = parse(compose_raw(["dataset=synthetic", "num_rounds=3"]))
    import json

    again = parse(json.loads(config.to_json()))
    assert again == config
