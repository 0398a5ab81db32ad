"""The tree stays clean: ruff's lint and format checks, mypy and the import-linter layer contracts
pass (as ``make lint`` runs them). A broken layer contract fails here with the offending import
chain in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
