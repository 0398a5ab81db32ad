"""Layer blocks that the soft-sharing trunks stack (``mtan``'s backbone, ``cross_stitch``'s
columns): dense blocks for tables, convolutional blocks for images.

- ``mlp``: block j is ``Linear(w_{j-1} -> w_j) -> ReLU`` (the first flattens its input);
- ``conv``: block j is ``Conv3x3(c_{j-1} -> c_j) -> ReLU``, then 2x2 max pooling while the feature
  map is at least 4 pixels on each side (the ``cnn`` trunk's blocks). No normalisation: batch
  statistics do not average across silos (:mod:`fedmtl.trunks.resnet`).

``auto`` picks ``conv`` for image inputs (C, H, W) and ``mlp`` otherwise.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from fedmtl.core.errors import ConfigError

BlockKind = Literal["auto", "mlp", "conv"]


def block_kind(kind: BlockKind, input_shape: tuple[int, ...], key: str) -> Literal["mlp", "conv"]:
    """The block kind for inputs of ``input_shape`` (``auto``: conv for images); conv blocks on
    inputs that are no images are a ConfigError naming ``key``."""
    if kind == "auto":
        return "conv" if len(input_shape) == 3 else "mlp"
    if kind == "conv" and len(input_shape) != 3:
        raise ConfigError(
            key,
            f"conv blocks need image inputs (C, H, W), the dataset gives {input_shape}.",
            "use mlp (or auto), or a dataset option that keeps images (as_image: true).",
        )
    return kind


def make_block(
    kind: Literal["mlp", "conv"], in_shape: tuple[int, ...], width: int
) -> tuple[nn.Module, tuple[int, ...]]:
    """One block from inputs of ``in_shape`` to ``width`` units or channels, and its output shape."""
    if kind == "mlp":
        layers: list[nn.Module] = []
        if len(in_shape) != 1:
            layers.append(nn.Flatten())
        layers += [nn.Linear(math.prod(in_shape), width), nn.ReLU()]
        return nn.Sequential(*layers), (width,)
    channels, height, breadth = in_shape
    layers = [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
    if height >= 4 and breadth >= 4:
        layers.append(nn.MaxPool2d(2))
        height, breadth = height // 2, breadth // 2
    return nn.Sequential(*layers), (width, height, breadth)


def make_blocks(
    kind: Literal["mlp", "conv"], input_shape: tuple[int, ...], widths: list[int]
) -> tuple[nn.ModuleList, list[tuple[int, ...]]]:
    """Blocks of ``widths`` stacked from inputs of ``input_shape``, and each block's output shape."""
    blocks, shapes = nn.ModuleList(), []
    shape = tuple(input_shape)
    for width in widths:
        block, shape = make_block(kind, shape, width)
        blocks.append(block)
        shapes.append(shape)
    return blocks, shapes


def check_widths(widths: list[int], key: str = "widths") -> None:
    """A non-empty list of positive widths (ConfigError naming ``key`` otherwise)."""
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(key, f"must list positive widths, got {widths}.", "e.g. [64, 32].")


MAX_EXPERTS = 1024
"""The most experts of one kind (``mmoe``'s, ``ple``'s per task or shared per level) and the
most ``ple`` levels: each is a module object, built (on PyTorch's meta device) before the memory
check can count its parameters; a sanity bound far above any useful size, which catches typos."""


def at_most(params: object, name: str, most: int = MAX_EXPERTS) -> None:
    """``params.<name>`` is at most ``most`` (a ConfigError naming ``name`` otherwise)."""
    value = getattr(params, name)
    if value > most:
        raise ConfigError(name, f"is {value!r}, above {most}.", f"use at most {most}.")
