"""Models: trunk registry and the multi-task model builder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fedmtl.config import ModelConfig
from fedmtl.models.multitask import MultiTaskModel, head_task, is_trunk_key
from fedmtl.models.trunks import TRUNKS
from fedmtl.tasks import TaskSpec


def build_model(
    cfg: ModelConfig,
    input_shape: tuple[int, ...],
    tasks: Iterable[TaskSpec],
    seed: int,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> MultiTaskModel:
    """The model for ``cfg``, initialised from ``seed`` (the same on the server and every silo);
    with ``groups`` (group -> tasks), one trunk per group (``trunks.<group>.*``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = TRUNKS.get(cfg.name, key="model.name").factory(input_shape, cfg.params)
        return MultiTaskModel(trunk, tasks, head_hidden=cfg.head_hidden, groups=groups)


__all__ = ["TRUNKS", "MultiTaskModel", "build_model", "head_task", "is_trunk_key"]
