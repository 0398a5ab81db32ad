"""Feature skew: a per-silo transformation of the inputs, drawn once per partition and seeded.

A plug-in is a class with two static methods:

- ``draw(params, num_silos, input_shape, rng) -> [dict, ...]``: each silo's parameters (JSON
  values), drawn from ``rng``; they are stored in the manifest (``silos[i].feature_skew``), so a
  partition loaded from file transforms the inputs exactly as the run that wrote it.
- ``apply(inputs, silo_params, stream) -> inputs``: the transformed copy of a silo's inputs;
  ``stream`` is 0 for its train split and 1 for its test split (sampled noise differs between
  them and is the same on every call).

The global held-out test set is never transformed: it measures the unshifted distribution.
Register with ``@FEATURE_SKEWS.register("name", params=ParamsDataclass)``; configs choose one as
``partition.feature_skew: {name: ..., <params>}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedmtl.core.checks import positive
from fedmtl.core.errors import ConfigError
from fedmtl.core.registry import NoParams, Registry

FEATURE_SKEWS: Registry[Any] = Registry(
    "partition.feature_skew", entry_points="fedmtl.feature_skews"
)


@FEATURE_SKEWS.register("none", params=NoParams)
class NoSkew:
    """Inputs unchanged."""

    @staticmethod
    def draw(
        params: NoParams, num_silos: int, input_shape: Sequence[int], rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        return [{} for _ in range(num_silos)]

    @staticmethod
    def apply(inputs: torch.Tensor, silo: Mapping[str, Any], stream: int) -> torch.Tensor:
        return inputs


@dataclass(frozen=True)
class RotationParams:
    """``max_degrees``: silo angles are drawn uniformly from [-max_degrees, max_degrees]."""

    max_degrees: float = 45.0

    def __post_init__(self) -> None:
        positive(self, "max_degrees")


@FEATURE_SKEWS.register("rotation", params=RotationParams)
class Rotation:
    """Images (N, C, H, W) of silo s rotated by its angle theta_s ~ U(-max, max) degrees about the
    image centre (bilinear, edge values extend past the border)."""

    @staticmethod
    def draw(
        params: RotationParams,
        num_silos: int,
        input_shape: Sequence[int],
        rng: np.random.Generator,
    ) -> list[dict[str, Any]]:
        if len(input_shape) != 3:
            raise ConfigError(
                "partition.feature_skew.name",
                f"rotation needs image inputs (C, H, W), not shape {tuple(input_shape)}.",
                "use noise or covariate_shift for flat inputs, or an image dataset "
                "(dataset.as_image=true).",
            )
        angles = rng.uniform(-params.max_degrees, params.max_degrees, size=num_silos)
        return [{"degrees": float(a)} for a in angles]

    @staticmethod
    def apply(inputs: torch.Tensor, silo: Mapping[str, Any], stream: int) -> torch.Tensor:
        theta = math.radians(float(silo["degrees"]))
        cos, sin = math.cos(theta), math.sin(theta)
        matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=inputs.dtype)
        grid = F.affine_grid(
            matrix.expand(inputs.shape[0], 2, 3), list(inputs.shape), align_corners=False
        )
        return F.grid_sample(inputs, grid, padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class NoiseParams:
    """``max_sigma``: silo noise levels are drawn uniformly from [0, max_sigma]."""

    max_sigma: float = 0.5

    def __post_init__(self) -> None:
        positive(self, "max_sigma")


@FEATURE_SKEWS.register("noise", params=NoiseParams)
class Noise:
    """x + sigma_s eps, eps ~ N(0, I) per sample, sigma_s ~ U(0, max_sigma); eps is drawn from the
    silo's stored seed and the split's stream."""

    @staticmethod
    def draw(
        params: NoiseParams, num_silos: int, input_shape: Sequence[int], rng: np.random.Generator
    ) -> list[dict[str, Any]]:
        sigmas = rng.uniform(0.0, params.max_sigma, size=num_silos)
        seeds = rng.integers(0, 2**31 - 1, size=num_silos)
        return [{"sigma": float(s), "seed": int(n)} for s, n in zip(sigmas, seeds, strict=True)]

    @staticmethod
    def apply(inputs: torch.Tensor, silo: Mapping[str, Any], stream: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(silo["seed"]) * 2 + stream)
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
        return inputs + float(silo["sigma"]) * noise.to(inputs.device)


@dataclass(frozen=True)
class BrightnessParams:
    """``max_delta``: silo brightness offsets are drawn uniformly from [-max_delta, max_delta]
    (in the units of the inputs; digits are standardised, so 0.5 is half a standard deviation)."""

    max_delta: float = 0.5

    def __post_init__(self) -> None:
        positive(self, "max_delta")


@FEATURE_SKEWS.register("brightness", params=BrightnessParams)
class Brightness:
    """x + delta_s on every input value, delta_s ~ U(-max_delta, max_delta)."""

    @staticmethod
    def draw(
        params: BrightnessParams,
        num_silos: int,
        input_shape: Sequence[int],
        rng: np.random.Generator,
    ) -> list[dict[str, Any]]:
        deltas = rng.uniform(-params.max_delta, params.max_delta, size=num_silos)
        return [{"delta": float(d)} for d in deltas]

    @staticmethod
    def apply(inputs: torch.Tensor, silo: Mapping[str, Any], stream: int) -> torch.Tensor:
        return inputs + float(silo["delta"])


@dataclass(frozen=True)
class CovariateShiftParams:
    """``scale``: standard deviation of each silo's per-feature shift."""

    scale: float = 0.5

    def __post_init__(self) -> None:
        positive(self, "scale")


@FEATURE_SKEWS.register("covariate_shift", params=CovariateShiftParams)
class CovariateShift:
    """x + mu_s with a per-silo shift mu_s ~ N(0, scale^2 I) of the input's shape (for tabular
    and synthetic inputs: P(x) moves, the labelling function stays)."""

    @staticmethod
    def draw(
        params: CovariateShiftParams,
        num_silos: int,
        input_shape: Sequence[int],
        rng: np.random.Generator,
    ) -> list[dict[str, Any]]:
        size = int(np.prod(input_shape))
        shifts = rng.normal(0.0, params.scale, size=(num_silos, size))
        return [{"shift": row.tolist()} for row in shifts]

    @staticmethod
    def apply(inputs: torch.Tensor, silo: Mapping[str, Any], stream: int) -> torch.Tensor:
        shift = torch.tensor(silo["shift"], dtype=inputs.dtype, device=inputs.device)
        return inputs + shift.reshape(inputs.shape[1:])
