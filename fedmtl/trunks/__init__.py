"""Trunks: the shared layers of a model, a registry of plug-ins.

A trunk maps an input of the dataset's ``input_shape`` to features of size ``out_features``: one
vector every task's head reads (hard parameter sharing: ``mlp``, ``cnn``, ``resnet``;
:class:`fedmtl.core.models.Trunk`), or one per task (soft sharing, with parameter roles of their
own: ``mmoe``, ``ple``, ``mtan``, ``cross_stitch``; :class:`fedmtl.core.models.TaskTrunk`). Each
is registered with its parameter dataclass; the config group ``model``
(``configs/model/<name>.yaml``) mirrors :data:`TRUNKS`. :func:`build_model` puts a trunk and one
head per task together into a :class:`~fedmtl.core.models.MultiTaskModel`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import ModelConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.trunks.cnn import CNNParams, CNNTrunk
from fedmtl.trunks.cross_stitch import CrossStitchParams, CrossStitchTrunk
from fedmtl.trunks.mlp import MLPParams, MLPTrunk
from fedmtl.trunks.mmoe import MMoEParams, MMoETrunk
from fedmtl.trunks.mtan import MTANParams, MTANTrunk
from fedmtl.trunks.ple import PLEParams, PLETrunk
from fedmtl.trunks.registry import TRUNKS, TrunkChoice, make_trunk, takes_tasks
from fedmtl.trunks.resnet import ResNetParams, ResNetTrunk

TRUNKS.register("mlp", params=MLPParams)(MLPTrunk)
TRUNKS.register("cnn", params=CNNParams)(CNNTrunk)
TRUNKS.register("resnet", params=ResNetParams)(ResNetTrunk)
TRUNKS.register("mmoe", params=MMoEParams)(MMoETrunk)
TRUNKS.register("ple", params=PLEParams)(PLETrunk)
TRUNKS.register("mtan", params=MTANParams)(MTANTrunk)
TRUNKS.register("cross_stitch", params=CrossStitchParams)(CrossStitchTrunk)


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
    tasks = list(tasks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = make_trunk(cfg.name, cfg.params, input_shape, [t.name for t in tasks])
        return MultiTaskModel(trunk, tasks, head_hidden=cfg.head_hidden, groups=groups)


__all__ = [
    "TRUNKS",
    "CNNParams",
    "CNNTrunk",
    "CrossStitchParams",
    "CrossStitchTrunk",
    "MLPParams",
    "MLPTrunk",
    "MMoEParams",
    "MMoETrunk",
    "MTANParams",
    "MTANTrunk",
    "PLEParams",
    "PLETrunk",
    "ResNetParams",
    "ResNetTrunk",
    "TrunkChoice",
    "build_model",
    "make_trunk",
    "takes_tasks",
]
