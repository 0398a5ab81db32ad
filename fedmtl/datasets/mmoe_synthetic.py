r"""``mmoe_synthetic``: the synthetic data of Ma, Zhao, Yi, Chen, Hong & Chi (KDD 2018, "Modeling
Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", section 3.2), two
regression tasks whose relatedness is set by the correlation rho (``correlation``).

The generator, step by step as the paper gives it:

1. two orthogonal unit vectors u_1, u_2 in R^d (``input_dim``): Gaussian draws, orthonormalised
   (Gram-Schmidt);
2. the tasks' weight vectors, with scale c (``scale``) and correlation rho in [-1, 1]:

   .. math::  w_1 = c\,u_1, \qquad w_2 = c\,(\rho\,u_1 + \sqrt{1 - \rho^2}\,u_2),

   so that cos(w_1, w_2) = rho exactly;
3. inputs x in R^d with independent N(0, 1) entries;
4. the labels, with m (``num_sinusoids``) sinusoids of shared shape parameters alpha_i, beta_i:

   .. math::  y_k = w_k^\top x + \sum_{i=1}^{m} \sin(\alpha_i\, w_k^\top x + \beta_i) + \epsilon_k,
              \quad \epsilon_k \sim N(0, \sigma^2)\ \text{i.i.d.} (\sigma = ``noise_std``).

Since x ~ N(0, I), the linear parts w_1^T x and w_2^T x are jointly Gaussian with Pearson
correlation rho; the sinusoids make the labels' own correlation a monotone function of rho, equal
to 1 (up to the noise) at rho = 1.

What the paper leaves open, chosen here: alpha_i and beta_i are drawn from N(0, 1) (the paper calls
them "given parameters"), and N(0, 0.01) is read as a variance (sigma = 0.1). u_1, u_2, alpha and
beta depend on ``structure_seed`` only, so runs of every seed share one pair of tasks (the paper's
repetitions vary data and initialisation for a fixed task pair); the samples and noise depend on
the run's seed. The paper uses d = 100, c = 1, m = 10 (the defaults).

Tasks: ``y1`` and ``y2`` (regression, every row labelled). ``info`` records rho, the weights'
cosine and the labels' Pearson correlation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedmtl.core.checks import int_at_least, non_negative, positive
from fedmtl.core.data import Footprint, MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskSpec


@dataclass(frozen=True)
class MMoESyntheticParams:
    """``correlation``: rho in [-1, 1]; ``num_samples``; ``input_dim``: d; ``scale``: c;
    ``num_sinusoids``: m; ``noise_std``: sigma; ``structure_seed``: the seed of u_1, u_2, alpha and
    beta (the task pair)."""

    correlation: float = 0.5
    num_samples: int = 10000
    input_dim: int = 100
    scale: float = 1.0
    num_sinusoids: int = 10
    noise_std: float = 0.1
    structure_seed: int = 0

    def __post_init__(self) -> None:
        is_number = isinstance(self.correlation, (int, float)) and not isinstance(
            self.correlation, bool
        )
        if not (is_number and -1.0 <= self.correlation <= 1.0):
            raise ConfigError(
                "correlation", f"must be in [-1, 1], got {self.correlation!r}.", "e.g. 0.5."
            )
        int_at_least(self, "num_samples", 2)
        int_at_least(self, "input_dim", 2)
        int_at_least(self, "num_sinusoids", 0)
        int_at_least(self, "structure_seed", 0)
        positive(self, "scale")
        non_negative(self, "noise_std")

    def footprint(self) -> Footprint:
        """N rows of d inputs and 2 tasks; while building (bytes): the float64 inputs 8 N d, the
        sinusoids' arguments and their sines 16 N m (one task at a time), their parameters
        alpha, beta 16 m, and the labels and noise 40 N. The key:
        ``num_sinusoids`` when the sinusoids outweigh the inputs, else ``num_samples`` or
        ``input_dim``, whichever is further above its default."""
        n, d, m = self.num_samples, self.input_dim, self.num_sinusoids
        building = 8 * n * d + 16 * n * m + 16 * m + 40 * n
        defaults = MMoESyntheticParams()
        if 2 * m > d:
            key = "num_sinusoids"
        else:
            ratio_n = math.log(n) - math.log(defaults.num_samples)
            key = (
                "num_samples"
                if ratio_n >= math.log(d) - math.log(defaults.input_dim)
                else "input_dim"
            )
        return Footprint(n, d, 2, building=building, key=f"dataset.{key}")


@dataclass(frozen=True)
class TaskPair:
    """The structure of the two tasks: their weight vectors and the sinusoids' parameters."""

    w1: np.ndarray
    w2: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray


def orthonormal_pair(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Two orthogonal unit vectors of R^dim (Gaussian draws, Gram-Schmidt)."""
    first = rng.standard_normal(dim)
    first /= np.linalg.norm(first)
    second = rng.standard_normal(dim)
    second -= (second @ first) * first
    second /= np.linalg.norm(second)
    return first, second


def task_pair(params: MMoESyntheticParams) -> TaskPair:
    """w_1 = c u_1, w_2 = c (rho u_1 + sqrt(1 - rho^2) u_2), alpha, beta ~ N(0, 1)."""
    rng = np.random.default_rng(np.random.SeedSequence(params.structure_seed))
    u1, u2 = orthonormal_pair(rng, params.input_dim)
    rho, c = params.correlation, params.scale
    shape = rng.standard_normal((2, params.num_sinusoids))
    return TaskPair(
        w1=c * u1,
        w2=c * (rho * u1 + math.sqrt(max(0.0, 1.0 - rho * rho)) * u2),
        alpha=shape[0],
        beta=shape[1],
    )


def labels(x: np.ndarray, w: np.ndarray, pair: TaskPair) -> np.ndarray:
    """w^T x + sum_i sin(alpha_i w^T x + beta_i), without the noise."""
    linear = x @ w
    return linear + np.sin(np.outer(linear, pair.alpha) + pair.beta).sum(axis=1)


def build_mmoe_synthetic(params: MMoESyntheticParams, seed: int) -> MultiTaskDataset:
    """The two-task dataset of the module docstring for ``seed``."""
    pair = task_pair(params)
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, 1]))
    n = params.num_samples
    x = rng.standard_normal((n, params.input_dim))
    noise = rng.normal(0.0, params.noise_std, (n, 2))
    y1 = labels(x, pair.w1, pair) + noise[:, 0]
    y2 = labels(x, pair.w2, pair) + noise[:, 1]
    cosine = float(pair.w1 @ pair.w2 / (np.linalg.norm(pair.w1) * np.linalg.norm(pair.w2)))
    return MultiTaskDataset(
        name="mmoe_synthetic",
        inputs=torch.tensor(x, dtype=torch.float32),
        tasks=(TaskSpec.regression("y1"), TaskSpec.regression("y2")),
        targets={
            "y1": torch.tensor(y1, dtype=torch.float32),
            "y2": torch.tensor(y2, dtype=torch.float32),
        },
        mask=torch.ones((n, 2), dtype=torch.bool),
        info={
            "correlation": params.correlation,
            "weight_cosine": round(cosine, 6),
            "label_correlation": round(float(np.corrcoef(y1, y2)[0, 1]), 6),
            "description": (
                "Ma et al. 2018's synthetic tasks: y_k = w_k.x + sum_i sin(alpha_i w_k.x + beta_i)"
                f" + noise, cos(w_1, w_2) = {params.correlation:g}"
            ),
        },
    )
