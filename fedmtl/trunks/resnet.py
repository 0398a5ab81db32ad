r"""``resnet``: a small residual network for image inputs (C, H, W), e.g. 28x28 digits or 64x64 faces.

Layout (He et al. 2016, "basic" blocks), with S = ``len(widths)`` stages:

- stem: ``Conv3x3(C -> widths[0], stride stem_stride) -> Norm -> ReLU``;
- stage s: ``blocks[s]`` basic blocks of width ``widths[s]``; the first block of every stage but the
  first halves the resolution (stride 2). A basic block computes
  :math:`y = \mathrm{ReLU}(x' + \mathrm{Norm}(\mathrm{Conv}(\mathrm{ReLU}(\mathrm{Norm}(\mathrm{Conv}(x))))))`
  with 3x3 convolutions, where the shortcut :math:`x'` is x itself, or ``Conv1x1 -> Norm`` (stride
  2) when the width or the resolution changes;
- global average pooling over the spatial positions, then ``Linear(widths[-1] -> out_features)``:
  the features the task heads read. No activation follows it: at the start the pooled features
  vary little from image to image, and a ReLU there can switch every feature off for good (seen on
  MultiMNIST: the loss stuck at ln 10 with SGD at lr 0.05).

28x28 inputs with the defaults (widths 16, 32, 64, 128) pass through 28 -> 14 -> 7 -> 4 pixels,
64x64 inputs through 64 -> 32 -> 16 -> 8 (``stem_stride: 2`` halves them once more and saves about
4x the compute). Four stages let the last one see the whole image, which global pooling needs:
with three stages (7x7 at the end) training was markedly slower on MNIST.

**No BatchNorm.** BatchNorm's running mean and variance are statistics of each silo's own data:
averaging them across silos with different label or feature distributions does not give the
statistics of the pooled data, and a model evaluated with averaged statistics can be far off
(Hsieh et al. 2020, "The non-IID data quagmire"). Its batch statistics also make a sample's
features depend on the rest of its batch. ``norm: group`` (the default) uses GroupNorm (Wu & He
2018), which normalises each sample over groups of channels: no running statistics, no buffers, the
same computation in training and evaluation, and only affine parameters that average like weights.
``norm: none`` drops normalisation (plain residual blocks, fine at these depths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fedmtl.core.errors import ConfigError
from fedmtl.core.models import Trunk


@dataclass(frozen=True)
class ResNetParams:
    """``widths``: channels of each stage; ``blocks``: basic blocks per stage (one number for every
    stage, or one per stage); ``norm``: ``group`` (GroupNorm) or ``none``; ``norm_groups``: groups
    of GroupNorm (at most this many: gcd(norm_groups, channels)); ``stem_stride``: 1, or 2 to halve
    large inputs at once; ``out_features``: width of the final dense layer."""

    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    blocks: list[int] = field(default_factory=lambda: [1])
    norm: Literal["group", "none"] = "group"
    norm_groups: int = 8
    stem_stride: int = 1
    out_features: int = 64

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(
                "widths", f"must list positive channel counts, got {self.widths}.", "e.g. [16, 32]."
            )
        if len(self.blocks) not in (1, len(self.widths)) or any(b < 1 for b in self.blocks):
            raise ConfigError(
                "blocks",
                f"must be one count >= 1 for every stage or one per stage "
                f"({len(self.widths)}), got {self.blocks}.",
                "e.g. [1] or [2, 2, 2].",
            )
        if self.norm not in ("group", "none"):
            raise ConfigError("norm", f"{self.norm!r} is not allowed.", "choose group or none.")
        if self.norm_groups < 1:
            raise ConfigError("norm_groups", f"must be >= 1, got {self.norm_groups}.", "e.g. 8.")
        if self.stem_stride not in (1, 2):
            raise ConfigError("stem_stride", f"must be 1 or 2, got {self.stem_stride}.")
        if self.out_features < 1:
            raise ConfigError("out_features", f"must be >= 1, got {self.out_features}.")

    def blocks_per_stage(self) -> list[int]:
        return self.blocks * len(self.widths) if len(self.blocks) == 1 else list(self.blocks)


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """GroupNorm over gcd(groups, channels) groups, or the identity for ``none``."""
    if kind == "none":
        return nn.Identity()
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str, groups: int):
        super().__init__()
        bias = norm == "none"  # a norm's own shift makes a conv bias redundant
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, channels, groups)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, channels, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=bias),
                make_norm(norm, channels, groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetTrunk(Trunk):
    """Stem, residual stages, global average pooling, ``Linear`` (module docstring)."""

    def __init__(self, input_shape: tuple[int, ...], params: ResNetParams) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                "model.name",
                f"resnet needs image inputs (C, H, W), the dataset gives {input_shape}.",
                "use model=mlp, or a dataset option that keeps images (as_image: true).",
            )
        norm, groups = params.norm, params.norm_groups
        width = params.widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(
                input_shape[0],
                width,
                3,
                stride=params.stem_stride,
                padding=1,
                bias=norm == "none",
            ),
            make_norm(norm, width, groups),
            nn.ReLU(),
        ]
        for stage, (channels, count) in enumerate(
            zip(params.widths, params.blocks_per_stage(), strict=True)
        ):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(width, channels, stride, norm, groups))
                width = channels
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, params.out_features),
        ]
        self.layers = nn.Sequential(*layers)
        self.out_features = params.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
