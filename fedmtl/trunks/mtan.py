r"""``mtan``: multi-task attention network (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task
Learning with Attention"): a shared backbone and, for each task, soft attention modules that pick
that task's features from the backbone's at every block.

The backbone is a stack of blocks (:mod:`fedmtl.trunks.blocks`: dense blocks for tables,
conv + pool blocks for images) with outputs p^{(1)}, ..., p^{(B)}. Task i's attended features are

.. math::

    \hat a_i^{(j)} = a_i^{(j)} \odot p^{(j)}, \qquad
    a_i^{(1)} = h_i^{(1)}(g_i^{(1)}(p^{(1)})), \qquad
    a_i^{(j)} = h_i^{(j)}\big(g_i^{(j)}([p^{(j)}; f^{(j)}(\hat a_i^{(j-1)})])\big)\ (j > 1),

with g = ``Linear``/``Conv1x1 -> ReLU`` and h = ``Linear``/``Conv1x1 -> sigmoid`` (the task's
attention module, one per block), and f^{(j)} a block like the backbone's j-th (3x3 conv and the
same pooling for images) that brings the previous attended features to block j's shape, shared
across tasks as in the paper's code. Task i's head reads \hat a_i^{(B)} (images: flattened and
passed through a shared ``Linear(hidden) -> ReLU``, as the ``cnn`` trunk ends).

Simplifications, said here: the paper's attention reads the block's first-layer features u^{(j)}
where this one reads its output p^{(j)}, and there is no batch norm in g and h (batch statistics do
not average across silos).

**Roles.** The backbone, the f^{(j)} and the final dense layer are ``shared``; task i's attention
modules (g_i^{(j)}, h_i^{(j)} for every block j) are ``task`` i's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.core.checks import int_at_least
from fedmtl.core.models import SHARED, Role, TaskTrunk, task_role
from fedmtl.trunks.blocks import BlockKind, block_kind, check_widths, make_block, make_blocks


@dataclass(frozen=True)
class MTANParams:
    """``backbone``: ``auto`` (conv blocks for images, dense for tables), ``mlp`` or ``conv``;
    ``widths``: units (or channels) of each backbone block; ``hidden``: images only, the width of
    the final dense layer."""

    backbone: BlockKind = "auto"
    widths: list[int] = field(default_factory=lambda: [64, 64])
    hidden: int = 64

    def __post_init__(self) -> None:
        check_widths(self.widths)
        int_at_least(self, "hidden", 1)


def attention(kind: str, in_width: int, width: int) -> nn.Module:
    """One attention module: ``g`` (to ``width``, ReLU) then ``h`` (sigmoid)."""
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_width, width), nn.ReLU(), nn.Linear(width, width), nn.Sigmoid()
        )
    return nn.Sequential(
        nn.Conv2d(in_width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.Sigmoid()
    )


class MTANTrunk(TaskTrunk):
    """A shared backbone with per-task attention at every block (module docstring)."""

    params: MTANParams

    def __init__(
        self,
        input_shape: tuple[int, ...],
        params: MTANParams,
        tasks: Sequence[str],
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(input_shape, params, tasks, outputs)
        kind = block_kind(params.backbone, self.input_shape, "model.backbone")
        self.blocks, shapes = make_blocks(kind, self.input_shape, params.widths)
        self.bridges = nn.ModuleList(  # f^(j), j > 1: previous attended features -> block j's
            make_block(kind, shapes[j - 1], params.widths[j])[0] for j in range(1, len(shapes))
        )
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    attention(kind, w if j == 0 else 2 * w, w) for j, w in enumerate(params.widths)
                )
                for t in self.outputs
            }
        )
        self.final: nn.Module = nn.Identity()
        self.out_features = params.widths[-1]
        if kind == "conv":
            self.final = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(shapes[-1]), params.hidden), nn.ReLU()
            )
            self.out_features = params.hidden

    def task_features(self, x: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        attended: dict[str, torch.Tensor] = {}
        p = x
        for j, block in enumerate(self.blocks):
            p = block(p)
            for t in tasks:
                modules = self.attention[t]
                assert isinstance(modules, nn.ModuleList)
                if j == 0:
                    mask = modules[0](p)
                else:
                    mask = modules[j](torch.cat([p, self.bridges[j - 1](attended[t])], dim=1))
                attended[t] = mask * p
        return {t: self.final(attended[t]) for t in tasks}

    def roles(self) -> dict[str, Role]:
        return {
            key: task_role(key.split(".")[1]) if key.startswith("attention.") else SHARED
            for key in self.state_dict()
        }
