r"""``mmoe``: multi-gate mixture of experts (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018, "Modeling
Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts").

n experts f_1 .. f_n (each a plain trunk of :data:`~fedmtl.trunks.TRUNKS`: an MLP for tables, the
``cnn`` or ``resnet`` trunk for images) read the input x; each task k has its own softmax gate over
them and reads their mixture:

.. math::

    f^k(x) = \sum_{i=1}^{n} g^k(x)_i \, f_i(x), \qquad g^k(x) = \mathrm{softmax}(W_{gk} x),

with W_{gk} (n x d) acting on the flattened input (no bias, as in the paper); task k's tower (its
head, ``model.head_hidden`` > 0 for a hidden layer) reads f^k(x).

**Roles.** The experts are ``shared`` (every task's mixture reads every expert); task k's gate
W_{gk} is ``task`` k's: it is averaged over the silos holding k, kept on the silo by FedPer, and
its gradient comes from task k's loss alone.

With one expert every gate is softmax of one logit, exactly 1 (and its gradient exactly 0), so
``mmoe`` with ``num_experts: 1`` is hard parameter sharing (the "shared-bottom" model of the
paper) with that expert as the trunk, step for step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.core.checks import int_at_least
from fedmtl.core.models import SHARED, Role, TaskTrunk, Trunk, task_role
from fedmtl.core.registry import PluginConfig
from fedmtl.trunks.blocks import at_most
from fedmtl.trunks.mlp import MLPParams
from fedmtl.trunks.registry import TrunkChoice, make_trunk, plain_trunk_choice


def default_expert() -> PluginConfig:
    """An expert is an MLP with one hidden layer of 64 units unless the config names another."""
    return PluginConfig("mlp", MLPParams(hidden=[64]))


@dataclass(frozen=True)
class MMoEParams:
    """``num_experts``: n; ``expert``: the trunk every expert is (``{name, ...its parameters}``, a
    trunk with one feature vector; all experts share its output size)."""

    num_experts: int = 4
    expert: TrunkChoice = field(default_factory=default_expert)

    def __post_init__(self) -> None:
        int_at_least(self, "num_experts", 1)
        at_most(self, "num_experts")
        plain_trunk_choice(self.expert, "expert")


def mix(gate: nn.Module, gate_input: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(gate(x))_i e_i for experts stacked (B, n, F) and the gate's input (B, ...)."""
    weights = torch.softmax(gate(gate_input.flatten(1)), dim=-1)
    return torch.einsum("bn,bnf->bf", weights, experts)


def make_experts(
    choice: PluginConfig, count: int, input_shape: tuple[int, ...], key: str
) -> nn.ModuleList:
    """``count`` experts built from the trunk ``choice`` (each initialised in turn)."""
    return nn.ModuleList(
        make_trunk(choice.name, choice.params, input_shape, (), key=key) for _ in range(count)
    )


def expert_width(experts: nn.ModuleList) -> int:
    """The output size of the experts (the first one's; they are built alike)."""
    first = experts[0]
    assert isinstance(first, Trunk)
    return first.out_features


class MMoETrunk(TaskTrunk):
    """Shared experts, one softmax gate per task (module docstring)."""

    params: MMoEParams

    def __init__(
        self,
        input_shape: tuple[int, ...],
        params: MMoEParams,
        tasks: Sequence[str],
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(input_shape, params, tasks, outputs)
        self.experts = make_experts(params.expert, params.num_experts, input_shape, "model.expert")
        self.out_features = expert_width(self.experts)
        width = math.prod(input_shape)
        self.gates = nn.ModuleDict(
            {t: nn.Linear(width, params.num_experts, bias=False) for t in self.outputs}
        )

    def task_features(self, x: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)
        return {t: mix(self.gates[t], x, experts) for t in tasks}

    def roles(self) -> dict[str, Role]:
        return {
            key: task_role(key.split(".")[1]) if key.startswith("gates.") else SHARED
            for key in self.state_dict()
        }
