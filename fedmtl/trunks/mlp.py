"""``mlp``: a multilayer perceptron trunk for any input (flattened)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import Trunk


@dataclass(frozen=True)
class MLPParams:
    """``hidden``: widths of the hidden layers; ``dropout``: probability after each layer."""

    hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(
                "hidden", f"must list positive widths, got {self.hidden}.", "e.g. [128, 64]."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}.")


class MLPTrunk(Trunk):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` for each hidden width."""

    def __init__(self, input_shape: tuple[int, ...], params: MLPParams) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in params.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if params.dropout > 0:
                layers.append(nn.Dropout(params.dropout))
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
