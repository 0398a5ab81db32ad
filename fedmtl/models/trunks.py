"""Shared trunks: the layers every task uses (hard parameter sharing).

A trunk maps an input of shape ``input_shape`` to a feature vector of size ``out_features``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.errors import ConfigError
from fedmtl.registry import Registry

TRUNKS: Registry = Registry("model")


class Trunk(nn.Module):
    """A module with a known feature size."""

    out_features: int


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


@dataclass(frozen=True)
class CNNParams:
    """``channels``: output channels of each 3x3 conv block; ``hidden``: width of the final layer.

    A block is ``Conv3x3 -> ReLU`` followed by 2x2 max pooling while the feature map is at least 4
    pixels on each side. No batch norm: running statistics do not average well across silos.
    """

    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64

    def __post_init__(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(
                "channels", f"must list positive sizes, got {self.channels}.", "e.g. [16, 32]."
            )
        if self.hidden < 1:
            raise ConfigError("hidden", f"must be >= 1, got {self.hidden}.")


class CNNTrunk(Trunk):
    """Small CNN for (C, H, W) inputs: conv blocks, flatten, ``Linear -> ReLU``."""

    def __init__(self, input_shape: tuple[int, ...], params: CNNParams) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                "model.name",
                f"cnn needs image inputs (C, H, W), the dataset gives {input_shape}.",
                "use model=mlp, or a dataset option that keeps images (as_image: true).",
            )
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for channels in params.channels:
            layers += [nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.ReLU()]
            if height >= 4 and width >= 4:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = channels
        layers += [nn.Flatten(), nn.Linear(in_channels * height * width, params.hidden), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.out_features = params.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


TRUNKS.register("mlp", params=MLPParams)(MLPTrunk)
TRUNKS.register("cnn", params=CNNParams)(CNNTrunk)
