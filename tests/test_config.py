"""Config composition and validation: every preset parses; bad values fail early, naming the key."""

from __future__ import annotations

import dataclasses
import json
import socket
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from fedmtl.app.cli import check_run_dir, discard_run_dir, help_text
from fedmtl.app.run.config import GROUP_REGISTRIES, parse, presets
from fedmtl.app.run.experiment import is_local, prepare
from fedmtl.app.runtimes import (
    RUNTIMES,
    InProcessParams,
    SimulationParams,
    check_device,
    check_resources,
    client_device,
)
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import Registry, build_dataclass, convert
from fedmtl.core.schema import (
    ExperimentConfig,
    MissingLabelsConfig,
    PartitionConfig,
    TrackingConfig,
    TrainConfig,
)
from fedmtl.datasets import DATASETS
from fedmtl.trunks import TRUNKS
from strategies import METHODS
from tests.support.datasets import example_overrides, unset_example_overrides
from tests.support.deployments import silo_tables
from tests.support.runs import compose_raw, run_fedmtl

GROUPS = ["dataset", "model", "partition", "strategy", "runtime", "tracking", "experiment"]


def test_every_group_has_presets() -> None:
    for group in GROUPS:
        assert presets(group), f"configs/{group}/ is empty"


def preset_overrides(group: str, preset: str, tmp_path: Path) -> list[str]:
    """Overrides that compose ``group=preset`` with 4 silos, and whatever else it needs."""
    if (group, preset) == ("partition", "from_file"):  # a manifest saved by a default build
        saved = prepare(parse(compose_raw(["partition.num_silos=4"]))).partition
        return [f"{group}={preset}", f"partition.path={saved.save(tmp_path / 'partition.json')}"]
    overrides = [f"{group}={preset}", "partition.num_silos=4"]
    if (group, preset) in (("partition", "local"), ("experiment", "flwr_tables")):
        return [*overrides, "dataset=table", f"dataset.schema={silo_tables(tmp_path)[1]}"]
    if group == "dataset":
        overrides += [*example_overrides(preset), "model=mlp"]
    if group == "experiment":  # a preset of a dataset that reads files: the example files
        overrides += unset_example_overrides(compose_raw([f"{group}={preset}"])["dataset"])
    if (group, preset) in (
        ("partition", "natural_id"),
        ("partition", "labelled"),
    ):  # a 'site' column
        overrides += ["dataset=synthetic", "dataset.num_sites=8"]
    return overrides


@pytest.mark.slow  # every preset of every group (about 17 s)
@pytest.mark.parametrize(
    ("group", "preset"), [(g, p) for g in GROUPS for p in presets(g) if g != "model"]
)
def test_every_preset_parses_and_prepares(group: str, preset: str, tmp_path: Path) -> None:
    config = parse(compose_raw(preset_overrides(group, preset, tmp_path)))
    assert isinstance(config, ExperimentConfig)
    experiment = prepare(config)
    # partition=local: the silos bring the rows, the server's partition has none
    assert len(experiment.partition.silos) == (0 if is_local(config) else 4)


@pytest.mark.parametrize("model", presets("model"))
def test_every_model_preset_builds_on_digits(model: str) -> None:
    experiment = prepare(parse(compose_raw([f"model={model}", "dataset=digits"])))
    assert sum(p.numel() for p in experiment.new_model().parameters()) > 0


@pytest.mark.slow  # composes every preset of four groups (about 10 s)
def test_registries_and_config_groups_match() -> None:
    """Each plug-in group's presets name registered plug-ins (one registry per group)."""
    for group, registry in [
        ("dataset", DATASETS),
        ("model", TRUNKS),
        ("strategy", METHODS),
        ("runtime", RUNTIMES),
    ]:
        names = {
            parse(compose_raw(example_overrides(p) if group == "dataset" else [f"{group}={p}"]))
            .__getattribute__(group)
            .name
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
        (["strategy.silo_weighting=median"], "strategy.silo_weighting"),
        (["+strategy.foo=1"], "strategy.foo"),
        (["train.lr=0"], "train.lr"),
        (["train.optimizer=rmsprop"], "train.optimizer"),
        (["train.momentum=1.0"], "train.momentum"),
        (["runtime=simulation", "runtime.num_cpus=0"], "runtime.num_cpus"),
        (["runtime.num_threads=0"], "runtime.num_threads"),
        (["runtime=inprocess", "runtime.num_threads=1.5"], "runtime.num_threads"),
        (["tracking.wandb_mode=sometimes"], "tracking.wandb_mode"),
        # bounds (issue 18): each a clear error, never a traceback later
        (["seed=99999999999999999999"], "seed"),
        (["seed=-1"], "seed"),
        (["seed=4294967296"], "seed"),
        (["num_rounds=1000000000000"], "num_rounds"),
        (["checkpoint_every=1000001"], "checkpoint_every"),
        (["checkpoint_every=-1"], "checkpoint_every"),
        (["train.lr=1e300"], "train.lr"),
        (["train.weight_decay=1e300"], "train.weight_decay"),
        (["train.max_steps=abc"], "train.max_steps"),
        (["train.momentum=abc"], "train.momentum"),
        (["limits.memory_check=maybe"], "limits.memory_check"),
        (["+limits.nonsense=1"], "limits.nonsense"),
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
        (["strategy.min_train_nodes=100"], "strategy.min_train_nodes"),  # 12 silos
        (["strategy.min_evaluate_nodes=13"], "strategy.min_evaluate_nodes"),
        (["model=cnn", "dataset.as_image=false"], "model.name"),
    ],
)
def test_cross_checks_fail_before_training(overrides: list[str], key: str) -> None:
    """Errors that need the dataset or partition are raised by prepare(), before any training."""
    config = parse(compose_raw(overrides))
    with pytest.raises(ConfigError) as info:
        prepare(config)
    assert info.value.key == key


def test_the_largest_bounds_are_accepted() -> None:
    config = parse(compose_raw(["seed=4294967295", "num_rounds=1000000", "train.lr=100"]))
    assert (config.seed, config.num_rounds, config.train.lr) == (2**32 - 1, 10**6, 100)
    assert config.limits.memory_check is True


def test_an_empty_output_directory_is_refused() -> None:
    """``hydra.run.dir=`` (empty) wrote every result file into the current directory."""
    with pytest.raises(ConfigError) as err:
        check_run_dir(["dataset=synthetic", "hydra.run.dir="])
    assert err.value.key == "hydra.run.dir"
    with pytest.raises(ConfigError, match="is empty"):
        check_run_dir(["hydra.run.dir=''"])
    check_run_dir(["hydra.run.dir=runs/x"])
    raw = compose_raw([])
    raw["output_dir"] = ""
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert err.value.key == "output_dir"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("override", "key"),
    [("hydra.run.dir=", "hydra.run.dir"), ("seed=99999999999999999999", "seed")],
)
def test_the_command_refuses_bad_bounds_without_a_trace(
    tmp_path: Path, override: str, key: str
) -> None:
    """``fedmtl run`` from a directory: exit 2, the key named, no traceback, nothing written."""
    done = run_fedmtl(["run", "experiment=smoke", override], timeout=240, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"invalid config: {key}:" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_error_message_names_key_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        prepare(parse(compose_raw(["partition.assignment.k=9"])))
    message = str(info.value)
    assert message.startswith("partition.assignment.k:")
    assert "Fix:" in message


def test_gpu_request_without_gpu_is_refused_not_hung() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as info:
        check_resources(SimulationParams(num_gpus=0.5))
    assert info.value.key == "runtime.num_gpus"


def test_inprocess_cuda_without_gpu_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as info:
        check_device(InProcessParams(device="cuda"))
    assert info.value.key == "runtime.device"


def test_clients_train_on_cuda_only_when_given_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_ray_address_skips_local_resource_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU this machine lacks is the cluster's business once a cluster answers."""
    with socket.socket() as cluster:
        cluster.bind(("127.0.0.1", 0))
        cluster.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{cluster.getsockname()[1]}")
        check_resources(SimulationParams(num_gpus=1.0, ray_address="auto"))


def test_config_json_round_trip() -> None:
    config = parse(compose_raw(["dataset=synthetic", "num_rounds=3"]))

    again = parse(json.loads(config.to_json()))
    assert again == config


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (
            ["strategy.weighting=uniform"],
            "strategy.weighting",
            "renamed to strategy.silo_weighting",
        ),
        (
            ["+strategy.weighting=uniform"],
            "strategy.weighting",
            "renamed to strategy.silo_weighting",
        ),
        (["strategy=mgda", "strategy.c=1"], "strategy.c", "not a parameter of strategy 'balanced'"),
        (["strategy=cagrad", "strategy.c=1"], "strategy.c", "set strategy.weighting.c instead"),
        (["partition.assignment.kk=3"], "partition.assignment.kk", "'random_k'"),
        (["train.lrr=0.1"], "train.lrr", "not a parameter of train"),
        (["strategy=medianavg"], "strategy", "has no preset 'medianavg'"),
        (["nothing.here=1"], "nothing.here", "not a config key"),
    ],
)
def test_overrides_hydra_cannot_apply_name_the_key(
    overrides: list[str], key: str, says: str
) -> None:
    """Unknown or renamed keys fail at composition with our message, not Hydra's."""
    with pytest.raises(ConfigError) as info:
        parse(compose_raw(overrides))
    assert info.value.key == key and says in str(info.value)
    assert "_common" not in str(info.value)  # shared includes are not presets


def test_grouping_keeps_strategy_weighting_as_its_balancing_method() -> None:
    config = parse(compose_raw(["strategy=grouping", "strategy.weighting=upgrad"]))
    assert config.strategy.params.weighting.name == "upgrad"
    config = parse(compose_raw(["strategy=grouping", "strategy.weighting={name:cagrad,c:0.4}"]))
    assert config.strategy.params.weighting.params.c == 0.4


def test_balancing_presets_choose_the_weighting_and_report_under_its_name() -> None:
    config = parse(compose_raw(["strategy=cagrad", "strategy.weighting.c=0.2"]))
    assert config.strategy.name == "balanced"
    assert config.strategy.params.weighting.name == "cagrad"
    assert config.strategy.params.weighting.params.c == 0.2
    assert config.strategy.params.label(config.strategy.name) == "cagrad"


# --- one source of truth for defaults ---------------------------------------------------------
# A preset restating a parameter must give it the dataclass's default, unless the value is one of
# the preset's deliberate choices listed here (experiment presets are all choices, not checked).
DELIBERATE: dict[tuple[str, str], set[str]] = {
    ("partition", "dirichlet_0.1"): {"global_test_fraction", "split.alpha", "split.min_size"},
    ("partition", "dirichlet_0.5"): {"global_test_fraction", "split.alpha", "split.min_size"},
    ("partition", "dirichlet_1.0"): {"global_test_fraction", "split.alpha", "split.min_size"},
    ("partition", "fmtlbench_mixed"): {"global_test_fraction"},
    ("partition", "fmtlbench_multi_task"): {"global_test_fraction"},
    ("partition", "fmtlbench_single_task"): {"global_test_fraction"},
    ("partition", "explicit"): {"assignment.tasks"},
    ("partition", "natural_id"): {"assignment.k"},
    ("partition", "quantity_skew"): {"split.profile"},
    ("partition", "missing_labels"): {"missing_labels"},
    ("model", "mmoe"): {"expert.hidden"},  # experts of 64 units (mlp's default is [128, 64])
    ("model", "ple"): {"expert.hidden"},
}
PARTITION_PLUGINS = {"assignment", "split", "feature_skew"}


def plugin_differences(registry: Any, values: dict[str, Any], key: str) -> set[str]:
    """The parameters in ``values`` (a ``{name, ...}`` block) that differ from their defaults
    (a required parameter has no default: it is always the preset's choice). A parameter that is
    itself a plug-in choice (``strategy.weighting``) is the preset's choice by name, like
    ``name``; its own parameters must be their defaults."""
    name = values["name"]
    params = registry.get(name).params
    schema = {f.name: f for f in dataclasses.fields(params)}
    hints = typing.get_type_hints(params, include_extras=True)
    nested = {
        field: meta
        for field, hint in hints.items()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, Registry)
    }
    values = dict(values)
    different = set()
    for field, inner in nested.items():
        if isinstance(values.get(field), dict):
            found = plugin_differences(inner, values.pop(field), f"{key}.{field}")
            different |= {f"{field}.{f}" for f in found}
    defaults = {
        field: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for field, f in schema.items()
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    return different | {
        field
        for field, value in values.items()
        if field in defaults
        and field not in nested
        and convert(value, hints[field], key) != defaults[field]
    }


def preset_differences(group: str, preset: str) -> set[str]:
    """What ``group=preset`` sets to something other than the schema's default."""
    raw = compose_raw([f"{group}={preset}"])
    if group == "partition":
        values = raw["partition"]
        different = set()
        for field, value in values.items():
            if field in PARTITION_PLUGINS:
                registry = GROUP_REGISTRIES[f"partition.{field}"]
                found = plugin_differences(registry, value, f"partition.{field}")
                different |= {f"{field}.{f}" for f in found}
            elif field == "missing_labels":
                if build_dataclass(MissingLabelsConfig, value, "m") != MissingLabelsConfig():
                    different.add(field)
            elif field in PARTITION_DEFAULTS and value != PARTITION_DEFAULTS[field]:
                different.add(field)
        return different
    if group == "tracking":
        built = build_dataclass(TrackingConfig, raw["tracking"], "tracking")
        return {f.name for f in dataclasses.fields(built) if built != TrackingConfig()}
    different = plugin_differences(GROUP_REGISTRIES[group], raw[group], group)
    if group == "model" and raw["model"].get("head_hidden", 0) != 0:
        different.add("head_hidden")
    return different


PARTITION_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(PartitionConfig)
    if f.default is not dataclasses.MISSING
}


@pytest.mark.slow  # composes every preset (about 10 s)
@pytest.mark.parametrize(
    ("group", "preset"),
    [(g, p) for g in GROUPS if g not in ("experiment", "tracking") for p in presets(g)]
    + [("tracking", "default")],
)
def test_presets_restate_the_schema_defaults(group: str, preset: str) -> None:
    if (group, preset) == ("partition", "from_file"):
        pytest.skip("a manifest path: nothing to compare")
    assert preset_differences(group, preset) <= DELIBERATE.get((group, preset), set())


def test_the_default_run_trains_with_train_config_defaults() -> None:
    config = parse(compose_raw([]))
    assert config.train == TrainConfig()
    assert config.tracking == TrackingConfig()


def test_run_help_lists_presets_but_not_shared_includes() -> None:
    text = help_text("run")
    assert "grouping" in text and "iid_random_k" in text and "synthetic_groups" in text
    assert "_common" not in text and "_balanced" not in text
    for key, registry in GROUP_REGISTRIES.items():
        assert key in text and all(name in text for name in registry.names())


def test_a_refused_run_leaves_no_directory_behind(tmp_path: Path) -> None:
    """What Hydra wrote before the config was refused goes, with the parents it made."""
    cwd = tmp_path
    run_dir = cwd / "outputs" / "2026-12-01" / "12-00-00"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "fedmtl.log").write_text("")
    (cwd / "kept.txt").write_text("")
    discard_run_dir(run_dir, cwd.resolve())
    assert sorted(p.name for p in cwd.iterdir()) == ["kept.txt"]


def test_a_run_directory_with_results_is_never_discarded(tmp_path: Path) -> None:
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / "summary.json").write_text("{}")
    discard_run_dir(tmp_path / "run", tmp_path.resolve())
    assert (tmp_path / "run" / "summary.json").exists() and (tmp_path / "run" / ".hydra").exists()


@pytest.mark.slow  # a subprocess
def test_a_configs_folder_of_the_users_project_does_not_hide_fedmtls(tmp_path: Path) -> None:
    """A ``configs`` folder first on ``sys.path`` (here through ``PYTHONPATH``; also the current
    directory of ``python -m`` or a script's folder) leaves fedmtl's own presets in use."""
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    result = run_fedmtl(
        ["partition", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}"],
        timeout=120, cwd=tmp_path, PYTHONPATH=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "partition.json").is_file()
