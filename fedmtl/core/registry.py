"""Registries of plug-ins (datasets, models, partitioners, strategies, ...).

Each plug-in registers a factory and a dataclass of its parameters. A Hydra config group mirrors a
registry one to one: ``configs/<group>/<preset>.yaml`` holds ``name: <registered name>`` and values for
the fields of that plug-in's parameter dataclass, which is the schema (YAML holds values only).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedmtl.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class NoParams:
    """Parameters of a plug-in that takes none."""


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered plug-in: its name, factory and parameter schema."""

    name: str
    factory: F
    params: type


class Registry(Generic[F]):
    """Name -> plug-in, for one kind of plug-in (``kind`` is the config group, e.g. ``dataset``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, params: type = NoParams) -> Callable[[F], F]:
        """Decorator that registers ``factory`` under ``name`` with the parameter dataclass ``params``."""
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"params of {self.kind} '{name}' must be a dataclass")

        def decorator(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name=name, factory=factory, params=params)
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, key: str | None = None) -> Entry[F]:
        """The entry for ``name``; an unknown name is a :class:`ConfigError` naming ``key``."""
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(
                key or f"{self.kind}.name",
                f"unknown {self.kind} {name!r}.",
                f"choose one of {self.names()}.",
            )
        return self._entries[name]

    def parse(self, name: str, values: Mapping[str, Any], key: str | None = None) -> Any:
        """Validate ``values`` against the parameter dataclass of ``name`` and build it."""
        entry = self.get(name, key=f"{key}.name" if key else None)
        return build_dataclass(entry.params, values, key or self.kind)


def build_dataclass(cls: type, values: Mapping[str, Any], key: str) -> Any:
    """Build dataclass ``cls`` from ``values``, converting and checking every field's type.

    Unknown keys, missing required fields and values of the wrong type raise :class:`ConfigError`
    naming ``key.field``; a :class:`ConfigError` raised by ``__post_init__`` gets ``key`` prefixed.
    A key that ``cls.renamed_keys`` (a class attribute, old name -> new name) lists is an error
    naming its new name.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    renamed: Mapping[str, str] = getattr(cls, "renamed_keys", {})
    for old in unknown:
        if old in renamed:
            raise ConfigError(
                f"{key}.{old}",
                f"was renamed to {key}.{renamed[old]}.",
                f"set {key}.{renamed[old]} instead.",
            )
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}",
            f"is not a parameter of {cls.__name__}.",
            f"use one of {sorted(fields)}.",
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            kwargs[name] = convert(values[name], hints[name], f"{key}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{name}", "is required but missing.", "set it in the config.")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.with_prefix(key) from None


def convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` to ``annotation`` (int, float, bool, str, list, tuple, Optional, Literal)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return convert(value, option, key)
            except ConfigError:
                continue
        if len(options) == 1:  # Optional[X]: report X's own message
            return convert(value, options[0], key)
        raise ConfigError(
            key, f"{value!r} does not fit {annotation}.", "give a value of that type."
        )
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"{value!r} is not allowed.", f"choose one of {list(args)}.")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, typing.Iterable):
            raise ConfigError(key, f"expected a list, got {value!r}.", "give a YAML list.")
        items = list(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(key, f"expected {len(args)} items, got {len(items)}.")
            return tuple(
                convert(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(items, args, strict=True))
            )
        item_type = args[0] if args else Any
        converted = [convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}.")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"expected an integer, got {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}.")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}.")
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}.")
        return build_dataclass(annotation, value, key)
    return value
