"""The tree stays clean: ruff's lint and format checks, mypy and the import-linter layer contracts
pass (as ``make lint`` runs them). A broken layer contract fails here with the offending import
chain in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable, "-m"]
COMMANDS = {
    "ruff-check": [*PYTHON, "ruff", "check", "."],
    "ruff-format": [*PYTHON, "ruff", "format", "--check", "."],
    "mypy": [*PYTHON, "mypy"],
    "import-layers": [str(Path(sys.executable).parent / "lint-imports")],
}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(COMMANDS))
def test_lint(name: str) -> None:
    result = subprocess.run(COMMANDS[name], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def import_cycles(*packages: str) -> list[list[str]]:
    """The strongly connected components (more than one module) of the packages' import graph:
    each is a cycle of imports (Tarjan's algorithm over grimp's graph, which import-linter uses)."""
    graph = grimp.build_graph(*packages)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    assert import_cycles("fedmtl", "strategies", "partitions") == []
