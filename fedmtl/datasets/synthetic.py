r"""Synthetic multi-task data with planted task groups (and, optionally, conflicting groups).

Generative model (T tasks, G groups, input dimension d, latent dimension k, N samples):

- Groups: tasks ``t0 .. t{T-1}`` are split into G contiguous groups whose sizes differ by at most
  one (the larger groups first).
- Inputs: :math:`x_i \sim \mathcal N(0, I_d)`.
- Feature maps: each group g has :math:`z_g(x) = \tanh(\gamma\, x^\top W_g) \in \mathbb R^k`
  with gain :math:`\gamma = 2` (``FEATURE_GAIN``; a best linear fit of ``x`` keeps about 84% of
  its variance, the rest needs the nonlinearity). The columns of the :math:`W_g` are orthonormal
  and, when :math:`(\text{number of distinct maps}) \cdot k \le d`, disjoint blocks of one random
  orthogonal matrix, so distinct maps are exactly independent; otherwise each :math:`W_g` has
  i.i.d. :math:`\mathcal N(0, 1/d)` entries (nearly independent).
- Group directions: :math:`u_g` uniform on the unit sphere of :math:`\mathbb R^k`.
- Conflicting groups (``conflicting=True``): every odd group g reuses the previous group's map and
  flips its direction, :math:`W_g = W_{g-1}`, :math:`u_g = -u_{g-1}`; ``info["conflicting_pairs"]``
  lists the pairs ``[g-1, g]``. Other groups are unrelated (independent maps and directions).
- Task t in group g: direction :math:`v_t = u_g + \sigma_{task}\, e_t`,
  :math:`e_t \sim \mathcal N(0, I_k / k)` (so :math:`E\|e_t\|^2 = \|u_g\|^2 = 1`); score
  :math:`s_t = z_g(x)^\top v_t`. With independent map coordinates the correlation of two task
  scores is :math:`\cos(v_a, v_b)`: close to 1 inside a group, 0 across unrelated groups, close
  to -1 across conflicting groups.
- Noisy score: :math:`\tilde s_t = \zeta(s_t) + \sigma_{label}\, \varepsilon`,
  :math:`\varepsilon \sim \mathcal N(0, 1)`, where :math:`\zeta(a) = (a - \bar a) / \mathrm{sd}(a)`
  standardises over the N samples.
- Targets: regression :math:`y_t = \zeta(\tilde s_t)` (mean 0, variance 1); a classification task
  with C classes has :math:`y_t = c` when :math:`\tilde s_t` lies in the c-th of C equal-probability
  quantile bins (ordinal, balanced classes; binary tasks use the median).

Task kinds (``kinds``): ``regression`` (all tasks), ``classification`` (all multiclass with
``num_classes`` classes) or ``mixed``: inside each group, tasks alternate classification,
regression, classification, ... (so every group of two or more tasks holds both), and the
classification tasks alternate multiclass (``num_classes``) and binary in task order over the whole
dataset. The default (6 tasks, 3 groups) gives t0 multiclass, t1 regression, t2 binary,
t3 regression, t4 multiclass, t5 regression.

Sites (``num_sites`` K > 0, default 0 = none): a natural-id column ``site`` for natural-id
partitions. Sample i gets a site :math:`k_i` uniform in ``0 .. K-1`` and its input is shifted by
its site's offset, :math:`x_i = z_i + m_{k_i}` with :math:`z_i \sim \mathcal N(0, I_d)` and
:math:`m_k \sim \mathcal N(0, \sigma_{site}^2 I_d)` (``site_shift``); the targets are computed
from the shifted :math:`x_i`, so sites differ in P(x) (covariate shift), not in P(y | x).

Randomness comes from a numpy Generator seeded from ``seed``: the structure (maps, directions,
perturbations), the samples and the sites come from three independent child streams, so changing
``num_samples`` keeps the planted structure of a seed, and ``num_sites = 0`` gives the same data
as before sites existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedmtl.core.checks import int_at_least, non_negative
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskSpec

FEATURE_GAIN = 2.0
KINDS = ("mixed", "classification", "regression")


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the ``synthetic`` dataset (see the module docstring for the model)."""

    num_samples: int = 6000
    num_tasks: int = 6
    num_groups: int = 3
    input_dim: int = 32
    latent_dim: int = 8
    task_noise: float = 0.1
    label_noise: float = 0.05
    kinds: Literal["mixed", "classification", "regression"] = "mixed"
    num_classes: int = 3
    conflicting: bool = True
    num_sites: int = 0
    site_shift: float = 0.5

    def __post_init__(self) -> None:
        int_at_least(self, "num_samples", 2)
        int_at_least(self, "num_tasks", 1)
        int_at_least(self, "num_groups", 1)
        if self.num_groups > self.num_tasks:
            raise ConfigError(
                "num_groups",
                f"must be <= num_tasks ({self.num_tasks}), got {self.num_groups}.",
                "use fewer groups or more tasks.",
            )
        int_at_least(self, "input_dim", 1)
        int_at_least(self, "latent_dim", 1)
        int_at_least(self, "num_classes", 2)
        non_negative(self, "task_noise", "label_noise", "site_shift")
        int_at_least(self, "num_sites", 0)
        if self.kinds not in KINDS:
            raise ConfigError("kinds", f"{self.kinds!r} is not allowed.", f"choose one of {KINDS}.")


def group_sizes(num_tasks: int, num_groups: int) -> list[int]:
    """Sizes of ``num_groups`` contiguous groups of ``num_tasks`` tasks, as even as possible."""
    base, extra = divmod(num_tasks, num_groups)
    return [base + (1 if g < extra else 0) for g in range(num_groups)]


def task_kinds(sizes: list[int], kinds: str, num_classes: int) -> list[TaskSpec]:
    """Task specs ``t0 ..`` for groups of ``sizes`` under the ``kinds`` rule (module docstring)."""
    specs: list[TaskSpec] = []
    num_classification = 0
    for size in sizes:
        for position in range(size):
            name = f"t{len(specs)}"
            if kinds == "regression" or (kinds == "mixed" and position % 2 == 1):
                specs.append(TaskSpec.regression(name))
            elif kinds == "classification" or num_classification % 2 == 0:
                specs.append(TaskSpec.multiclass(name, num_classes))
                num_classification += 1
            else:
                specs.append(TaskSpec.binary(name))
                num_classification += 1
    return specs


def map_sources(num_groups: int, conflicting: bool) -> list[tuple[int, float]]:
    """Per group: (index of the group whose map and direction it uses, sign of its direction)."""
    if not conflicting:
        return [(g, 1.0) for g in range(num_groups)]
    return [(g - 1, -1.0) if g % 2 == 1 else (g, 1.0) for g in range(num_groups)]


def feature_maps(
    rng: np.random.Generator, num_maps: int, input_dim: int, latent_dim: int
) -> list[np.ndarray]:
    """``num_maps`` matrices W (input_dim x latent_dim) with orthonormal or N(0, 1/d) entries."""
    if num_maps * latent_dim <= input_dim:
        q, r = np.linalg.qr(rng.standard_normal((input_dim, input_dim)))
        q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
        return [q[:, m * latent_dim : (m + 1) * latent_dim] for m in range(num_maps)]
    scale = 1.0 / math.sqrt(input_dim)
    return [rng.standard_normal((input_dim, latent_dim)) * scale for _ in range(num_maps)]


def _standardize(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-12)


def quantile_labels(score: np.ndarray, num_classes: int) -> np.ndarray:
    """Class c for the scores in the c-th of ``num_classes`` equal-probability quantile bins."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return (ranks * num_classes) // score.shape[0]


def _target(spec: TaskSpec, noisy_score: np.ndarray) -> torch.Tensor:
    if spec.kind == "regression":
        return torch.tensor(_standardize(noisy_score), dtype=torch.float32)
    labels = quantile_labels(noisy_score, spec.num_classes or 2)
    return torch.tensor(labels, dtype=spec.target_dtype)


def build_synthetic(params: SyntheticParams, seed: int) -> MultiTaskDataset:
    """Sample the planted-group dataset of the module docstring for ``seed``."""
    structure_rng, sample_rng, site_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed % 2**64).spawn(3)
    )
    sizes = group_sizes(params.num_tasks, params.num_groups)
    specs = task_kinds(sizes, params.kinds, params.num_classes)
    sources = map_sources(params.num_groups, params.conflicting)
    own = [g for g, (source, _) in enumerate(sources) if source == g]
    own_maps = feature_maps(structure_rng, len(own), params.input_dim, params.latent_dim)
    maps = dict(zip(own, own_maps, strict=True))
    directions = {g: _unit(structure_rng.standard_normal(params.latent_dim)) for g in own}
    group_of_task = np.repeat(np.arange(params.num_groups), sizes)
    perturbations = structure_rng.standard_normal((params.num_tasks, params.latent_dim))
    perturbations /= math.sqrt(params.latent_dim)

    x = sample_rng.standard_normal((params.num_samples, params.input_dim))
    natural_ids = {}
    if params.num_sites > 0:
        sites = site_rng.integers(0, params.num_sites, size=params.num_samples)
        offsets = site_rng.normal(0.0, params.site_shift, (params.num_sites, params.input_dim))
        x = x + offsets[sites]
        natural_ids["site"] = sites
    features = {g: np.tanh(FEATURE_GAIN * (x @ maps[g])) for g in own}
    noise = sample_rng.standard_normal((params.num_samples, params.num_tasks))
    targets = {}
    for t, spec in enumerate(specs):
        source, sign = sources[int(group_of_task[t])]
        direction = sign * directions[source] + params.task_noise * perturbations[t]
        noisy = _standardize(features[source] @ direction) + params.label_noise * noise[:, t]
        targets[spec.name] = _target(spec, noisy)

    names = [s.name for s in specs]
    bounds = np.cumsum([0, *sizes])
    return MultiTaskDataset(
        name="synthetic",
        inputs=torch.tensor(x, dtype=torch.float32),
        tasks=tuple(specs),
        targets=targets,
        mask=torch.ones((params.num_samples, params.num_tasks), dtype=torch.bool),
        natural_ids=natural_ids,
        info={
            "planted_groups": [names[bounds[g] : bounds[g + 1]] for g in range(params.num_groups)],
            "conflicting_pairs": [[s, g] for g, (s, _) in enumerate(sources) if s != g],
            "description": (
                f"{params.num_tasks} tasks in {params.num_groups} planted groups; "
                "task direction = group direction + task_noise * perturbation, "
                "applied to the group's tanh feature map"
                + ("; odd groups flip the previous group's direction" if params.conflicting else "")
            ),
        },
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
