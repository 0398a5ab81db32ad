"""Field checks for plug-in parameter dataclasses, raised from ``__post_init__``.

Each raises :class:`ConfigError` with the field name as the key; :func:`fedmtl.core.registry.build_dataclass`
prefixes the config group (``synthetic``'s ``num_groups`` becomes ``dataset.num_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedmtl.core.errors import ConfigError


def int_at_least(params: object, name: str, low: int) -> None:
    """``params.name`` is an integer >= ``low``."""
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            name, f"must be an integer >= {low}, got {value!r}.", f"use {low} or more."
        )


def positive(params: object, *names: str) -> None:
    """Each ``params.name`` is a finite number > 0."""
    _numbers(params, names, lambda v: v > 0, "a number > 0", "set a positive value.")


def non_negative(params: object, *names: str) -> None:
    """Each ``params.name`` is a finite number >= 0."""
    _numbers(params, names, lambda v: v >= 0, "a finite number >= 0", "use 0 or more.")


def _numbers(
    params: object, names: tuple[str, ...], ok: Callable[[float], bool], what: str, fix: str
) -> None:
    for name in names:
        value = getattr(params, name)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value) and ok(value)):
            raise ConfigError(name, f"must be {what}, got {value!r}.", fix)


def fraction(params: object, name: str, allow_one: bool) -> None:
    """``params.name`` lies in (0, 1), or in (0, 1] when ``allow_one``."""
    value = getattr(params, name)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and value > 0.0 and (value <= 1.0 if allow_one else value < 1.0)):
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise ConfigError(name, f"must be in {interval}, got {value!r}.", "use e.g. 0.2 or 0.5.")


def booleans(params: object, *names: str) -> None:
    """Each ``params.name`` is true or false."""
    for name in names:
        value = getattr(params, name)
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}.")
