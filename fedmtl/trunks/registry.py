"""The registry of trunks (:data:`TRUNKS`, config group ``model``) and the one way to build one.

A trunk's factory is called ``factory(input_shape, params)``, or, for a
:class:`~fedmtl.core.models.TaskTrunk` (features per task), ``factory(input_shape, params, tasks)``
(:func:`make_trunk`). A trunk parameter may itself choose a trunk (:data:`TrunkChoice`: the
experts of ``mmoe`` and ``ple``), as ``strategy.weighting`` chooses a weighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import TaskTrunk, Trunk
from fedmtl.core.registry import PluginConfig, Registry

TRUNKS: Registry[Any] = Registry("model", entry_points="fedmtl.trunks")

TrunkChoice = Annotated[PluginConfig, TRUNKS]
"""A config field naming a trunk: ``mlp`` or ``{name: cnn, channels: [8, 16]}``."""


def takes_tasks(factory: Any) -> bool:
    """Whether a trunk factory is a :class:`TaskTrunk` (built with the model's task names)."""
    return isinstance(factory, type) and issubclass(factory, TaskTrunk)


def make_trunk(
    name: str, params: Any, input_shape: tuple[int, ...], tasks: Sequence[str], key: str = "model"
) -> Trunk:
    """The trunk ``name`` with ``params`` for inputs of ``input_shape`` (and ``tasks``, for a
    trunk with features per task); an unknown name is a ConfigError naming ``key.name``."""
    factory = TRUNKS.get(name, key=f"{key}.name").factory
    if takes_tasks(factory):
        return factory(tuple(input_shape), params, tuple(tasks))
    return factory(tuple(input_shape), params)


def plain_trunk_choice(choice: PluginConfig, key: str) -> PluginConfig:
    """``choice`` when it names a trunk with one feature vector for every task (an expert must
    be one); a ConfigError naming ``key`` otherwise."""
    if takes_tasks(TRUNKS.get(choice.name, key=f"{key}.name").factory):
        raise ConfigError(
            f"{key}.name",
            f"{choice.name} gives features per task and cannot serve as {key}.",
            "choose a plain trunk such as mlp, cnn or resnet.",
        )
    return choice
