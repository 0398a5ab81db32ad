"""Registries of plug-ins (datasets, models, partitioners, methods, ...) and their discovery.

Each plug-in registers a factory and a dataclass of its parameters. A Hydra config group mirrors a
registry one to one: ``configs/<group>/<preset>.yaml`` holds ``name: <registered name>`` and values for
the fields of that plug-in's parameter dataclass, which is the schema (YAML holds values only).

**Plug-ins from other packages.** A registry made with an entry-point group (e.g.
``fedmtl.methods``) loads, the first time it is asked for a name, every installed entry point of
that group: each names a module (or an object in one) of another package that registers its
members into the registry when imported. A package that fails to import, clashes with a name
already registered, or registers a malformed member is a :class:`PluginError` naming the entry
point and its package, raised before any work. :func:`load_plugin_modules` does the same for the
modules and files a config names (``plugins=[my_module, path/to/file.py]``). A plug-in's presets
(Hydra configs, e.g. ``strategy/my_method.yaml``) live in a ``configs/`` folder beside its module;
:data:`PLUGIN_CONFIG_DIRS` collects those of the plug-ins loaded so far.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
import typing
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from fedmtl.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class PluginError(ConfigError):
    """A plug-in that cannot be used: it does not import, clashes with a registered name or
    registers a malformed member. ``key`` names the plug-in (entry point or config key)."""


_LOADING: list[str] = []
"""The plug-ins being loaded (innermost last): members registered meanwhile are theirs."""

PLUGIN_CONFIG_DIRS: list[Path] = []
"""The ``configs/`` folders of the plug-ins loaded so far (Hydra searches them for presets)."""


def load_plugin(key: str, what: str, load: Callable[[], object], module: str | None = None) -> None:
    """Run ``load`` (an import that registers members), as plug-in ``what``; any failure is a
    :class:`PluginError` naming ``key`` and ``what``. The ``configs/`` folder beside ``module``
    (once loaded), if any, joins :data:`PLUGIN_CONFIG_DIRS`."""
    _LOADING.append(what)
    try:
        load()
        _note_config_dir(module)
    except PluginError:
        raise
    except Exception as err:  # an import error, a clash or a malformed member
        raise PluginError(
            key,
            f"plug-in {what} cannot be loaded: {type(err).__name__}: {err}",
            "fix or uninstall it, or rename the clashing member.",
        ) from err
    finally:
        _LOADING.pop()


def _note_config_dir(module: str | None) -> None:
    loaded = sys.modules.get(module) if module else None
    path = getattr(loaded, "__file__", None)
    if path is not None:
        configs = Path(path).resolve().parent / "configs"
        if configs.is_dir() and configs not in PLUGIN_CONFIG_DIRS:
            PLUGIN_CONFIG_DIRS.append(configs)


def load_plugin_modules(names: Sequence[str], key: str = "plugins") -> None:
    """Import the modules (``my_package.module``) and files (``path/to/file.py``) a config names,
    once per process; each registers its members into the registries it imports."""
    for name in names:
        if name.endswith(".py"):
            path = Path(name).resolve()
            module = file_module_name(path)
            if module in sys.modules:
                continue
            if not path.is_file():
                raise PluginError(key, f"{name} is not a file.", "give the path of a .py file.")
            load_plugin(key, f"file {name}", functools.partial(_import_file, path, module), module)
        elif name in sys.modules:
            _note_config_dir(name)
        else:
            import_it = functools.partial(importlib.import_module, name)
            load_plugin(key, f"module {name}", import_it, name)


def file_module_name(path: Path) -> str:
    """The module name a plug-in file is imported under: the same in every process on a machine
    (pickled objects of the plug-in name it), distinct for files of the same name elsewhere."""
    return f"fedmtl_plugin_{path.stem}_{zlib.crc32(str(path).encode()):08x}"


def _import_file(path: Path, module: str) -> None:
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[module]
        raise


@dataclass(frozen=True)
class NoParams:
    """Parameters of a plug-in that takes none."""


@dataclass(frozen=True)
class PluginConfig:
    """A registered plug-in chosen by ``name`` with its validated parameter dataclass."""

    name: str
    params: Any

    def to_dict(self) -> dict[str, Any]:
        """``{name, ...params}``, as a config holds it."""
        return {"name": self.name, **dataclasses.asdict(self.params)}


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered plug-in: its name, factory and parameter schema."""

    name: str
    factory: F
    params: type


class Registry(Generic[F]):
    """Name -> plug-in, for one kind of plug-in (``kind`` is the config group, e.g. ``dataset``).

    ``entry_points``: the entry-point group whose installed plug-ins register here (module
    docstring); ``check``: raises TypeError for a member that is not of this kind (e.g. a method
    without its silo half), so a malformed plug-in fails when it registers.
    """

    def __init__(
        self,
        kind: str,
        entry_points: str | None = None,
        check: Callable[[str, Any, type], None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_points = entry_points
        self.check = check
        self._entries: dict[str, Entry[F]] = {}
        self._origins: dict[str, str] = {}  # name -> the plug-in that registered it
        self._discovered = entry_points is None

    def register(self, name: str, params: type = NoParams) -> Callable[[F], F]:
        """Decorator that registers ``factory`` under ``name`` with the parameter dataclass ``params``."""
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"params of {self.kind} '{name}' must be a dataclass")

        def decorator(factory: F) -> F:
            if not callable(factory):
                raise TypeError(f"{self.kind} '{name}': {factory!r} is not callable")
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is registered twice (first by "
                    f"{self._origins.get(name, 'fedmtl')})"
                )
            if self.check is not None:
                self.check(name, factory, params)
            self._entries[name] = Entry(name=name, factory=factory, params=params)
            self._origins[name] = _LOADING[-1] if _LOADING else "fedmtl"
            return factory

        return decorator

    def origin(self, name: str) -> str:
        """Who registered ``name``: ``fedmtl``, or the plug-in (entry point or module) that did."""
        self.discover()
        return self._origins[name]

    def discover(self) -> None:
        """Load this registry's installed plug-ins (entry points), once per process."""
        if self._discovered:
            return
        self._discovered = True
        assert self.entry_points is not None
        points = importlib.metadata.entry_points(group=self.entry_points)
        for point in sorted(points, key=lambda p: p.name):
            dist = point.dist.name if point.dist is not None else "an unknown package"
            load_plugin(
                self.entry_points,
                f"entry point '{point.name}' = '{point.value}' of package {dist}",
                point.load,
                point.module,
            )

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, key: str | None = None) -> Entry[F]:
        """The entry for ``name``; an unknown name is a :class:`ConfigError` naming ``key``."""
        self.discover()
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
    hints = typing.get_type_hints(cls, include_extras=True)
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
    if origin is Annotated:
        registries = [m for m in annotation.__metadata__ if isinstance(m, Registry)]
        if registries:
            return plugin_choice(registries[0], value, key)
        return convert(value, args[0], key)
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


def plugin_choice(registry: Registry[Any], value: Any, key: str) -> PluginConfig:
    """A plug-in field's value, ``name`` or ``{name, ...params}``, as a :class:`PluginConfig`
    with its parameters checked against ``registry``."""
    if isinstance(value, PluginConfig):
        return value
    if isinstance(value, str):
        registry.get(value, key=key)  # an unknown name is the value at ``key`` itself
        return PluginConfig(value, registry.parse(value, {}, key))
    if not isinstance(value, Mapping) or "name" not in value:
        raise ConfigError(
            f"{key}.name",
            f"expected a {registry.kind} name or {{name, ...}}, got {value!r}.",
            f"choose one of {registry.names()}.",
        )
    params = {k: v for k, v in value.items() if k != "name"}
    return PluginConfig(value["name"], registry.parse(value["name"], params, key))
