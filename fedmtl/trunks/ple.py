r"""``ple``: progressive layered extraction, and its one-level case CGC, customized gate control
(Tang, Liu, Zhao & Gong, RecSys 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations").

**CGC** (``levels: 1``). Each task k has m_k experts of its own, E_{k,1..m_k}, besides m_s shared
experts E_{s,1..m_s}; task k's gate mixes its own and the shared ones only:

.. math::

    g^k(x) = w^k(x)\, S^k(x), \quad w^k(x) = \mathrm{softmax}(W_g^k x), \quad
    S^k(x) = [E_{k,1}(x), \dots, E_{k,m_k}(x), E_{s,1}(x), \dots, E_{s,m_s}(x)].

**PLE** (``levels: L`` > 1) stacks L extraction networks. Level j's experts of task k read task
k's output of level j-1, its shared experts the shared output of level j-1 (x at level 1); the
gates read the same inputs:

.. math::

    g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x))\, S^{k,j}(x), \qquad
    g^{s,j}(x) = w^{s,j}(g^{s,j-1}(x))\, [S^{1,j}, \dots, S^{K,j}]\ \text{(every expert of level j)},

where the shared gate g^{s,j} exists below the last level only. Task k's tower (its head) reads
g^{k,L}(x). Level-1 experts are the trunk ``expert`` (an MLP for tables, ``cnn``/``resnet`` for
images); experts of higher levels are MLPs of widths ``hidden`` on the previous level's features.
``task_experts`` = m_k (the same for every task) and ``shared_experts`` = m_s per level.

**Roles** follow the graph: a module whose output reaches task k's tower only is ``task`` k's,
any other is ``shared``. In the last level task k's experts and gate reach k only, and so does
task k's gate of level L-1 (its output feeds only task k's experts and gate of level L); every
other module reaches every task through the shared gates (lower levels' task experts feed them).
So CGC's task experts and gates are task-specific, while in a deeper PLE the lower levels' are
shared parameters, averaged over every silo.

With ``task_experts: 0`` CGC is MMoE with ``shared_experts`` experts (``mmoe``), and with one
shared expert it is hard parameter sharing.
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
from fedmtl.trunks.blocks import at_most, check_widths
from fedmtl.trunks.mlp import MLPParams, MLPTrunk
from fedmtl.trunks.mmoe import default_expert, expert_width, make_experts, mix
from fedmtl.trunks.registry import TrunkChoice, plain_trunk_choice


@dataclass(frozen=True)
class PLEParams:
    """``levels``: extraction networks (1: CGC); ``task_experts``, ``shared_experts``: experts of
    each task and shared ones per level; ``expert``: the trunk of level-1 experts
    (``{name, ...}``); ``hidden``: widths of the MLP experts of higher levels."""

    levels: int = 1
    task_experts: int = 1
    shared_experts: int = 1
    expert: TrunkChoice = field(default_factory=default_expert)
    hidden: list[int] = field(default_factory=lambda: [64])

    def __post_init__(self) -> None:
        int_at_least(self, "levels", 1)
        at_most(self, "levels")
        int_at_least(self, "task_experts", 0)
        at_most(self, "task_experts")
        int_at_least(self, "shared_experts", 0)
        at_most(self, "shared_experts")
        check_widths(self.hidden, "hidden")
        plain_trunk_choice(self.expert, "expert")
        if self.task_experts + self.shared_experts < 1:
            raise ConfigError(
                "shared_experts", "a level needs at least one expert.", "set 1 or more."
            )
        if self.levels > 1 and self.shared_experts < 1:
            raise ConfigError(
                "shared_experts",
                "with levels > 1 the shared gate feeds the next level's shared experts, so "
                "there must be at least one.",
                "set shared_experts to 1 or more, or levels: 1 (CGC).",
            )


def reach(params: PLEParams, tasks: Sequence[str]) -> dict[str, set[str]]:
    """Each module of the full network (names as :class:`PLETrunk` registers them, ``<level>.``
    prefixed) -> the tasks whose tower its output reaches (module docstring)."""
    everyone = set(tasks)
    last = params.levels - 1
    found: dict[str, set[str]] = {}
    for j in range(last, -1, -1):
        for t in tasks:
            if j == last:
                gate = {t}
            else:
                gate = set(found[f"{j + 1}.task_gates.{t}"])
                if params.task_experts:
                    gate |= found[f"{j + 1}.task_experts.{t}"]
            found[f"{j}.task_gates.{t}"] = gate
        if j < last:
            shared_gate = set(found[f"{j + 1}.shared_experts"])
            if j + 1 < last:
                shared_gate |= found[f"{j + 1}.shared_gate"]
            found[f"{j}.shared_gate"] = shared_gate
        through_shared = found.get(f"{j}.shared_gate", set())
        for t in tasks:
            found[f"{j}.task_experts.{t}"] = found[f"{j}.task_gates.{t}"] | through_shared
        found[f"{j}.shared_experts"] = everyone if j == last else everyone | through_shared
    return found


class Level(nn.Module):
    """One extraction network: experts per task and shared, gates per task and (below the last
    level) a shared gate."""

    def __init__(self) -> None:
        super().__init__()
        self.task_experts = nn.ModuleDict()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleDict()
        self.shared_gate: nn.Module | None = None


class PLETrunk(TaskTrunk):
    """CGC (one level) or PLE (module docstring)."""

    params: PLEParams

    def __init__(
        self,
        input_shape: tuple[int, ...],
        params: PLEParams,
        tasks: Sequence[str],
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(input_shape, params, tasks, outputs)
        self.reach = reach(params, self.task_names)
        p = params
        count = len(self.task_names) * p.task_experts + p.shared_experts
        self.levels = nn.ModuleList()
        shape = tuple(input_shape)
        for j in range(p.levels):
            level = Level()
            for t in self.task_names:
                if self.exists(f"{j}.task_experts.{t}") and p.task_experts:
                    level.task_experts[t] = self.experts(p.task_experts, shape, j)
                if self.exists(f"{j}.task_gates.{t}"):
                    level.task_gates[t] = nn.Linear(
                        math.prod(shape), p.task_experts + p.shared_experts, bias=False
                    )
            level.shared_experts = self.experts(p.shared_experts, shape, j)
            if j < p.levels - 1:
                level.shared_gate = nn.Linear(math.prod(shape), count, bias=False)
            self.levels.append(level)
            width = expert_width(
                level.shared_experts
                if p.shared_experts
                else next(iter(level.task_experts.values()))  # type: ignore[arg-type]
            )
            shape = (width,)
        self.out_features = shape[0]

    def experts(self, count: int, shape: tuple[int, ...], level: int) -> nn.ModuleList:
        """``count`` experts of ``level``: the configured trunk at level 0, MLPs above."""
        if level == 0:
            return make_experts(self.params.expert, count, shape, "model.expert")
        widths = MLPParams(hidden=list(self.params.hidden))
        return nn.ModuleList(MLPTrunk(shape, widths) for _ in range(count))

    def exists(self, module: str) -> bool:
        """Whether ``module`` is built: not a task module of a task this trunk gives no output."""
        tasks = self.reach[module]
        return not (len(tasks) == 1 and next(iter(tasks)) not in self.outputs)

    def task_features(self, x: torch.Tensor, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
        last = len(self.levels) - 1
        inputs = dict.fromkeys(self.task_names, x)
        shared_input = x
        for j, level in enumerate(self.levels):
            assert isinstance(level, Level)
            shared = [expert(shared_input) for expert in level.shared_experts]
            own = {
                t: [expert(inputs[t]) for expert in experts]  # type: ignore[attr-defined]
                for t, experts in level.task_experts.items()
                if j < last or t in tasks
            }
            gated = tasks if j == last else [t for t in level.task_gates if t in inputs]
            outputs = {
                t: mix(level.task_gates[t], inputs[t], torch.stack(own.get(t, []) + shared, 1))
                for t in gated
            }
            if level.shared_gate is not None:
                every = [e for t in self.task_names for e in own.get(t, [])] + shared
                shared_input = mix(level.shared_gate, shared_input, torch.stack(every, 1))
            inputs = outputs
        return {t: inputs[t] for t in tasks}

    def roles(self) -> dict[str, Role]:
        roles: dict[str, Role] = {}
        for key in self.state_dict():
            parts = key.split(".")  # levels.<j>.<kind>[.<task>]...
            module = ".".join(parts[1:3])
            if parts[2] in ("task_experts", "task_gates"):
                module += f".{parts[3]}"
            tasks = self.reach[module]
            specific = len(tasks) == 1 and len(self.task_names) > 1
            roles[key] = task_role(next(iter(tasks))) if specific else SHARED
        return roles
