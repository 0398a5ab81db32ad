"""Trunks: the shared layers of a model (hard parameter sharing), a registry of plug-ins.

A trunk maps an input of the dataset's ``input_shape`` to a feature vector of size ``out_features``
(:class:`fedmtl.core.models.Trunk`). Each is registered with its parameter dataclass; the config
group ``model`` (``configs/model/<name>.yaml``) mirrors :data:`TRUNKS`. :func:`build_model` puts a
trunk and one head per task together into a :class:`~fedmtl.core.models.MultiTaskModel`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fedmtl.core.models import MultiTaskModel
from fedmtl.core.registry import Registry
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.trunks.cnn import CNNParams, CNNTrunk
from fedmtl.trunks.mlp import MLPParams, MLPTrunk
from fedmtl.trunks.resnet import ResNetParams, ResNetTrunk

TRUNKS: Registry = Registry("model", entry_points="fedmtl.trunks")
TRUNKS.register("mlp", params=MLPParams)(MLPTrunk)
TRUNKS.register("cnn", params=CNNParams)(CNNTrunk)
TRUNKS.register("resnet", params=ResNetParams)(ResNetTrunk)


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    tasks: Iterable[TaskSpec],
    seed: int,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> MultiTaskModel:
    """The model for ``cfg``, initialised from ``seed`` (the same on the server and every silo);
    with ``groups`` (group -> tasks), one trunk per group (``trunks.<group>.*``). The caller's
    global torch RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = TRUNKS.get(cfg.name, key="model.name").factory(input_shape, cfg.params)
        return MultiTaskModel(trunk, tasks, head_hidden=cfg.head_hidden, groups=groups)


__all__ = [
    "TRUNKS",
    "CNNParams",
    "CNNTrunk",
    "MLPParams",
    "MLPTrunk",
    "ResNetParams",
    "ResNetTrunk",
    "build_model",
]
