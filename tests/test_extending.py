"""docs/extending.md, run as a reader would: ``fedmtl new``, the tutorial's files, ``pip install``,
``fedmtl run``, the contract kit, ``fedmtl bench`` and ``fedmtl report`` with the new method; and
``fedmtl new``'s checks and an installed plug-in that cannot be loaded."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmtl.app.scaffold import KINDS, write_package
from fedmtl.core.errors import ConfigError
from tests.support.runs import REPO_ROOT, run_fedmtl

DOC = REPO_ROOT / "docs" / "extending.md"


def doc_files() -> dict[str, str]:
    """The tutorial's code blocks whose first line is ``# <path>``: path -> the file's text."""
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", DOC.read_text(), re.DOTALL)
    return {path: text for path, text in blocks}


def install(package: Path, target: Path) -> dict[str, str]:
    """``pip install`` of ``package`` into ``target`` (offline, no dependency resolution); the
    environment whose Python sees it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(package)],
        check=True, timeout=120,
    )  # fmt: skip
    return {"PYTHONPATH": os.pathsep.join([str(target), str(REPO_ROOT)]), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fedmtl_new_writes_a_package_that_compiles(kind: str, tmp_path: Path) -> None:
    written = write_package(kind, "my_plugin", tmp_path / "pkg")
    names = {p.relative_to(tmp_path / "pkg").as_posix() for p in written}
    group = KINDS[kind].config_group
    assert {"pyproject.toml", "my_plugin/__init__.py", f"my_plugin/configs/{group}/my_plugin.yaml",
            "tests/test_my_plugin.py"} <= names  # fmt: skip
    for path in written:
        text = path.read_text()
        assert "__NAME__" not in text and "__CLASS__" not in text, path
        if path.suffix == ".py":
            compile(text, str(path), "exec")
        if path.suffix == ".yaml":
            assert yaml.safe_load(text)["name"] == "my_plugin"
    assert f'"{KINDS[kind].group}"' in (tmp_path / "pkg" / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    ("name", "words"),
    [("My-Method", "lowercase Python identifier"), ("fedavg", "registered already"),
     ("json", "module named 'json' exists"), ("class", "lowercase Python identifier")],
)  # fmt: skip
def test_fedmtl_new_refuses_a_name_that_would_clash(name: str, words: str, tmp_path: Path) -> None:
    kind = "method"
    with pytest.raises(ConfigError, match=words):
        write_package(kind, name, tmp_path / "pkg")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        write_package(kind, "fresh_name", tmp_path / "full")


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.timeout(600)
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    files = doc_files()
    assert set(files) == {
        "fednova-plugin/fednova/method.py",
        "fednova-plugin/fednova/configs/strategy/fednova.yaml",
        "fednova-plugin/fednova_star.yaml",
    }
    result = run_fedmtl(["new", "method", "fednova", "--out", "fednova-plugin"], 60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path, text in files.items():
        (tmp_path / path).write_text(text)
    env = install(tmp_path / "fednova-plugin", tmp_path / "site")

    # the contract kit, as the package's own test runs it (simulation included)
    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         str(tmp_path / "fednova-plugin" / "tests")],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=tmp_path,
    )  # fmt: skip
    assert kit.returncode == 0, kit.stdout[-3000:] + kit.stderr[-3000:]

    # a bad combination stops before any work, as the tutorial says
    adam = run_fedmtl(
        ["run", "strategy=fednova", "experiment=randhie_sites", f"hydra.run.dir={tmp_path}/r"],
        120, **env,
    )  # fmt: skip
    assert adam.returncode == 2 and "FedNova normalizes SGD schedules" in adam.stderr

    # the tutorial's suite, cut to one seed and two short rounds
    suite = yaml.safe_load((tmp_path / "fednova-plugin" / "fednova_star.yaml").read_text())
    suite["seeds"] = [0]
    suite["scenarios"]["star_schools"] += ["num_rounds=2", "train.max_steps=2"]
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(suite))
    bench = run_fedmtl(["bench", str(small), "--out", str(tmp_path / "runs")], 300, **env)
    assert bench.returncode == 0, bench.stderr[-3000:]
    report = run_fedmtl(
        ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")], 120, **env
    )
    assert report.returncode == 0, report.stderr[-3000:]
    with (tmp_path / "report" / "strategies.csv").open() as file:
        rows = {row["strategy"] for row in csv.DictReader(file)}
    assert {"fedavg", "upgrad", "fednova"} <= rows


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_installed_plugin_that_clashes_names_its_entry_point_and_package(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    write_package("method", "clasher", package)
    init = package / "clasher" / "__init__.py"
    init.write_text(init.read_text().replace('register("clasher"', 'register("fedavg"'))
    env = install(package, tmp_path / "site")
    result = run_fedmtl(["run", "runtime=inprocess", f"hydra.run.dir={tmp_path}/r"], 120, **env)
    assert result.returncode == 2
    assert (
        "fedmtl.methods: plug-in entry point 'clasher' = 'clasher' of package fedmtl-clasher"
        in (result.stderr)
    )
    assert "strategy 'fedavg' is registered twice (first by fedmtl)" in result.stderr
