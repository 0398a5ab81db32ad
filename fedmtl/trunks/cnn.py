"""``cnn``: a small convolutional trunk for image inputs (C, H, W)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import Trunk


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
