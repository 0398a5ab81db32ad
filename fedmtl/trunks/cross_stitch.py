r"""``cross_stitch``: cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, CVPR 2016,
"Cross-stitch Networks for Multi-task Learning"): one network (column) per task, with linear
units that mix the columns' activations after every block.

Each of the T tasks has a column of blocks (:mod:`fedmtl.trunks.blocks`: dense blocks for tables,
conv + pool blocks for images). After block j the cross-stitch unit, a T x T matrix alpha^{(j)},
mixes the columns' outputs x_1^{(j)}, ..., x_T^{(j)} (the same weights at every unit and channel,
as in the paper's equation (1)):

.. math::

    \tilde x_t^{(j)} = \sum_{u=1}^{T} \alpha^{(j)}_{t u} \, x_u^{(j)},

and column t's block j+1 reads \tilde x_t^{(j)}. Task t's head reads \tilde x_t^{(B)} (images:
flattened and passed through the column's own ``Linear(hidden) -> ReLU``, the fc layer before the
paper's task outputs). alpha starts at alpha_S = ``alpha_self`` on the diagonal and alpha_D =
(1 - alpha_S) / (T - 1) elsewhere (the paper's (alpha_S, alpha_D) = (0.9, 0.1) for two tasks, a
convex combination), and is learned with the rest (the paper scales its learning rate up by
10^2 to 10^3; here it trains at the silos' rate).

**Roles.** Through the cross-stitch units every task's output depends on every column, so the
columns' blocks and the units are ``shared``: each is averaged over every silo, as the paper's
joint training has every loss reach every column. Only the images' final dense layer of column t
(after the last unit) is ``task`` t's.

With alpha = I the columns are T independent networks (one trunk per task, as ``single_task``
trains them); with one task the unit is the scalar 1 and the network is the column's plain stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.core.checks import int_at_least
from fedmtl.core.errors import ConfigError
from fedmtl.core.models import SHARED, Role, TaskTrunk, task_role
from fedmtl.trunks.blocks import BlockKind, block_kind, check_widths, make_blocks


@dataclass(frozen=True)
class CrossStitchParams:
    """``backbone``: ``auto`` (conv blocks for images, dense for tables), ``mlp`` or ``conv``;
    ``widths``: units (or channels) of each block of a column; ``hidden``: images only, the width
    of each column's final dense layer; ``alpha_self``: the initial diagonal of the units."""

    backbone: BlockKind = "auto"
    widths: list[int] = field(default_factory=lambda: [64, 64])
    hidden: int = 64
    alpha_self: float = 0.9

    def __post_init__(self) -> None:
        check_widths(self.widths)
        int_at_least(self, "hidden", 1)
        if not 0.0 <= self.alpha_self <= 1.0:
            raise ConfigError(
                "alpha_self", f"must be in [0, 1], got {self.alpha_self}.", "use e.g. 0.9."
            )


def initial_alpha(tasks: int, alpha_self: float) -> torch.Tensor:
    """alpha_S on the diagonal, (1 - alpha_S) / (T - 1) elsewhere (the identity for T = 1)."""
    if tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - alpha_self) / (tasks - 1)
    return torch.full((tasks, tasks), other) + (alpha_self - other) * torch.eye(tasks)


class CrossStitchTrunk(TaskTrunk):
    """One column per task, cross-stitch units after every block (module docstring)."""

    params: CrossStitchParams

    def __init__(
        self,
        input_shape: tuple[int, ...],
        params: CrossStitchParams,
        tasks: Sequence[str],
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(input_shape, params, tasks, outputs)
        kind = block_kind(params.backbone, self.input_shape, "model.backbone")
        columns = {t: make_blocks(kind, self.input_shape, params.widths) for t in self.task_names}
        self.columns = nn.ModuleDict({t: blocks for t, (blocks, _) in columns.items()})
        shape = columns[self.task_names[0]][1][-1]
        count = len(self.task_names)
        self.stitch = nn.ParameterList(
            nn.Parameter(initial_alpha(count, params.alpha_self)) for _ in params.widths
        )
        self.out_features = params.widths[-1]
        self.dense = nn.ModuleDict()
        if kind == "conv":
            self.dense = nn.ModuleDict(
                {
                    t: nn.Sequential(
                        nn.Flatten(), nn.Linear(math.prod(shape), params.hidden), nn.ReLU()
                    )
                    for t in self.outputs
                }
            )
            self.out_features = params.hidden

    def task_features(self, x: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        names = self.task_names
        columns = [x] * len(names)
        for j, alpha in enumerate(self.stitch):
            outputs = []
            for t, value in zip(names, columns, strict=True):
                blocks = self.columns[t]
                assert isinstance(blocks, nn.ModuleList)
                outputs.append(blocks[j](value))
            stacked = torch.stack(outputs)  # (T, B, ...)
            mixed = torch.tensordot(alpha, stacked, dims=([1], [0]))
            columns = list(mixed.unbind(0))
        features = dict(zip(names, columns, strict=True))
        if len(self.dense):
            return {t: self.dense[t](features[t]) for t in tasks}
        return {t: features[t] for t in tasks}

    def roles(self) -> dict[str, Role]:
        return {
            key: task_role(key.split(".")[1]) if key.startswith("dense.") else SHARED
            for key in self.state_dict()
        }
