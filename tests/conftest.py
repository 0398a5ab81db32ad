"""Shared test set-up: offline environment and config composition through Hydra."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import settings

from fedmtl.runtime import OFFLINE_ENV

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# Property tests explore new examples locally; CI replays a fixed sequence so that it cannot turn
# red by chance (a failure found locally is stored in .hypothesis/ and replayed first).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def compose_raw(overrides: list[str], output_dir: Path | None = None) -> dict[str, Any]:
    """The composed config mapping for ``overrides``, as ``fedmtl run`` would build it."""
    from fedmtl.cli import compose

    return compose(overrides, output_dir or ".")
