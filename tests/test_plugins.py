"""Plug-ins from outside the repository: a method in a single file (``plugins=[file.py]``) or in
an installed package (entry points), its presets on Hydra's search path, the errors that name a
broken plug-in, the silos' refusal to load code a run config names, and ``fedmtl new``."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import Message, MessageType

from fedmtl.app.deploy.flwr_config import run_config
from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse, presets
from fedmtl.app.run.plugins import REGISTRIES
from fedmtl.app.silo.client_app import REFUSED
from fedmtl.core import records
from fedmtl.core import registry as registry_module
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import PluginError
from strategies import METHODS
from tests.helpers import local_config_json, local_grid, silo_tables

SMALL = [
    "dataset=synthetic",
    "dataset.num_samples=300",
    "partition.num_silos=3",
    "num_rounds=2",
    "train.max_steps=2",
    "runtime=inprocess",
    "tracking=quiet",
]

METHOD = '''
"""A plug-in method in one file: FedAvg's averaging with a pull towards zero."""
from dataclasses import dataclass

from strategies import METHODS
from strategies.engine import Averaging, AveragingParams


@dataclass(frozen=True)
class ShrinkParams(AveragingParams):
    factor: float = 0.5


class Shrink(Averaging[ShrinkParams]):
    def trunk_step(self, round_, model, updates):
        step = super().trunk_step(round_, model, updates)
        scaled = {k: (v * self.params.factor).astype(v.dtype) for k, v in step.delta.items()}
        return type(step)(scaled, step.task_weights)


METHODS.register("shrink", params=ShrinkParams)(Shrink)
'''
PRESET = """
defaults:
  - _common
  - _self_
name: shrink
factor: 0.5
"""


@pytest.fixture
def isolated() -> Iterator[None]:
    """Registries, loaded plug-in modules and preset folders as they were before the test.

    Only new top-level modules (the plug-ins) are forgotten: a submodule of a package already
    loaded (torch._dynamo, imported by the first optimizer step) keeps state outside Python, and
    importing it a second time fails."""
    saved = [(r, dict(r._entries), dict(r._origins), r._discovered) for r in REGISTRIES]
    folders = list(registry_module.PLUGIN_CONFIG_DIRS)
    modules = set(sys.modules)
    yield
    for reg, entries, origins, discovered in saved:
        reg._entries, reg._origins, reg._discovered = entries, origins, discovered
    registry_module.PLUGIN_CONFIG_DIRS[:] = folders
    for name in set(sys.modules) - modules:
        if name.partition(".")[0] not in modules:
            del sys.modules[name]


def write_plugin(directory: Path, source: str = METHOD, preset: str | None = PRESET) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "shrink.py"
    path.write_text(textwrap.dedent(source))
    if preset is not None:
        (directory / "configs" / "strategy").mkdir(parents=True)
        (directory / "configs" / "strategy" / "shrink.yaml").write_text(preset)
    return path


def test_a_single_file_method_runs_with_its_preset(tmp_path: Path, isolated: None) -> None:
    plugin = write_plugin(tmp_path / "plugin")
    raw = compose([*SMALL, f"plugins=[{plugin}]", "strategy=shrink"], tmp_path / "run")
    assert raw["plugins"] == [str(plugin.resolve())]  # absolute: every process finds it
    assert "shrink" in presets("strategy")
    summary = run(parse(raw))
    assert summary["status"] == "completed" and summary["strategy"] == "shrink"
    with pytest.raises(ConfigError) as err:
        parse(compose([*SMALL, f"plugins=[{plugin}]", "strategy=shrink", "strategy.factor=x"]))
    assert err.value.key == "strategy.factor"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("from strategies import METHODS\nfrom strategies.engine import Averaging, "
         "AveragingParams\nMETHODS.register('fedavg', params=AveragingParams)(Averaging)\n",
         "strategy 'fedavg' is registered twice (first by fedmtl)"),
        ("import no_such_module_anywhere\n", "No module named 'no_such_module_anywhere'"),
        ("from strategies import METHODS\nMETHODS.register('odd')(len)\n",
         "is not a strategies.engine.Method"),
        ("from dataclasses import dataclass\nfrom strategies import METHODS\n"
         "from strategies.engine import Averaging\n@dataclass\nclass P: pass\n"
         "METHODS.register('odd', params=P)(Averaging)\n", "are not a MethodParams"),
    ],
)  # fmt: skip
def test_a_broken_plugin_is_named_before_any_work(
    tmp_path: Path, isolated: None, source: str, words: str
) -> None:
    plugin = write_plugin(tmp_path, source, preset=None)
    with pytest.raises(PluginError) as err:
        compose([*SMALL, f"plugins=[{plugin}]"], tmp_path / "run")
    assert err.value.key == "plugins" and f"file {plugin}" in str(err.value)
    assert words in str(err.value)
    assert not (tmp_path / "run").exists()


def test_plugins_must_be_a_list_of_names(isolated: None) -> None:
    with pytest.raises(ConfigError, match="expected a list of module names"):
        parse({**compose(SMALL), "plugins": "shrink"})
    with pytest.raises(PluginError, match="is not a file"):
        compose([*SMALL, "plugins=[/no/such/plugin.py]"])


def test_deployments_never_load_code_a_run_config_names(tmp_path: Path, isolated: None) -> None:
    plugin = write_plugin(tmp_path / "plugin")
    tables, schema = silo_tables(tmp_path / "silos")
    raw = json.loads(local_config_json(schema))
    raw["plugins"] = [str(plugin)]
    grid = local_grid(json.dumps(raw), [{"data-file": str(tables[0]), "silo-id": 0}])
    query = Message(records.query_content(), dst_node_id=1000, message_type=MessageType.QUERY)
    (reply,) = grid.send_and_receive([query])
    assert reply.error.reason.startswith(REFUSED) and "plug-ins" in reply.error.reason
    assert "shrink" not in METHODS  # the silo did not import the file
    with pytest.raises(ConfigError) as err:
        run_config([f"plugins=[{plugin}]", "experiment=flwr_tables", f"dataset.schema={schema}"])
    assert err.value.key == "plugins" and "install the plug-in package" in err.value.fix
