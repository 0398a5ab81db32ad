"""``fedmtl new KIND NAME --out DIR``: a pip-installable plug-in package to start from.

KIND is ``method``, ``dataset`` or ``trunk``. The package holds a ``pyproject.toml`` whose entry
point registers the plug-in in every fedmtl process once installed (``fedmtl.methods``,
``fedmtl.datasets``, ``fedmtl.trunks``), the module with every hook documented (a working
example: task-aware FedAvg, two synthetic tasks, a one-layer MLP), a preset beside it
(``NAME/configs/<group>/NAME.yaml``, found by Hydra through the plug-in's ``configs/`` folder),
and a test that runs fedmtl's contract kit (:mod:`fedmtl.testing`). After ``pip install -e DIR``,
``fedmtl run <group>=NAME`` and ``fedmtl bench`` with it work at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fedmtl.app.run.plugins import GROUP_REGISTRIES
from fedmtl.core.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """One kind of plug-in the scaffold writes: its entry-point group, config group and module."""

    group: str
    config_group: str
    module: str
    title: str


KINDS = {
    "method": Kind("fedmtl.methods", "strategy", "method", "Method"),
    "dataset": Kind("fedmtl.datasets", "dataset", "dataset", "Dataset"),
    "trunk": Kind("fedmtl.trunks", "model", "trunk", "Trunk"),
}


def class_name(name: str) -> str:
    """``my_method`` -> ``MyMethod``."""
    return "".join(part.capitalize() for part in name.split("_"))


def check_name(kind: str, name: str) -> None:
    """A plug-in name that is a new Python package name and a new name in its registry."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name) or keyword.iskeyword(name):
        raise ConfigError(
            "NAME",
            f"{name!r} is not a lowercase Python identifier.",
            "use letters, digits and _ (e.g. my_method).",
        )
    registry = GROUP_REGISTRIES[KINDS[kind].config_group]
    if name in registry:
        raise ConfigError(
            "NAME",
            f"{kind} {name!r} is registered already ({registry.origin(name)}).",
            "choose another name.",
        )
    if importlib.util.find_spec(name) is not None:
        raise ConfigError(
            "NAME",
            f"a Python module named {name!r} exists already; the plug-in package would hide it.",
            "choose another name.",
        )


def render(template: str, kind: str, name: str) -> str:
    """A template with the plug-in's names filled in."""
    info = KINDS[kind]
    values = {
        "__NAME__": name,
        "__CLASS__": class_name(name),
        "__KIND__": kind,
        "__KIND_TITLE__": info.title,
        "__GROUP__": info.group,
        "__CONFIG_GROUP__": info.config_group,
    }
    for token, value in values.items():
        template = template.replace(token, value)
    return template


def write_package(kind: str, name: str, out: Path) -> list[Path]:
    """Write the plug-in package of ``kind`` called ``name`` into ``out`` (absent or empty)."""
    if kind not in KINDS:
        raise ConfigError("KIND", f"unknown kind {kind!r}.", f"choose one of {sorted(KINDS)}.")
    check_name(kind, name)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", f"{out} exists and is not empty.", "give a new directory.")
    info = KINDS[kind]
    templates = files("fedmtl.app.scaffold") / "templates"
    own = templates / kind
    targets = {
        out / "pyproject.toml": templates / "common_pyproject.toml.tmpl",
        out / "README.md": templates / "common_readme.md.tmpl",
        out / name / "__init__.py": own / "__init__.py.tmpl",
        out / name / f"{info.module}.py": own / f"{info.module}.py.tmpl",
        out / name / "configs" / info.config_group / f"{name}.yaml": own / "preset.yaml.tmpl",
        out / "tests" / f"test_{name}.py": own / "test.py.tmpl",
    }
    for target, template in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(template.read_text(), kind, name))
    return list(targets)


def main(argv: list[str]) -> None:
    """``fedmtl new KIND NAME --out DIR``."""
    parser = argparse.ArgumentParser(prog="fedmtl new", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("name", help="the plug-in's name (a lowercase Python identifier)")
    parser.add_argument("--out", type=Path, help="the package's directory (default: ./NAME)")
    args = parser.parse_args(argv)
    out = args.out or Path(args.name)
    try:
        written = write_package(args.kind, args.name, out)
    except ConfigError as err:
        print(f"fedmtl new: {err}", file=sys.stderr)
        sys.exit(2)
    group = KINDS[args.kind].config_group
    print("\n".join(str(p) for p in written))
    print(
        f"\nnext: pip install -e {out}\n"
        f"      fedmtl run {group}={args.name} runtime=inprocess num_rounds=5\n"
        f"      python -m pytest {out / 'tests'}"
    )
