r"""Synthetic multi-task data with planted task groups that compete for a shared trunk.

Generative model (T tasks, G groups, input dimension d, latent dimension k, N samples):

- Groups: tasks ``t0 .. t{T-1}`` are split into G contiguous groups whose sizes differ by at most
  one (the larger groups first).
- Inputs: :math:`x_i \sim \mathcal N(0, I_d)`.
- Feature maps: G *private* maps :math:`W_1 .. W_G` (one per group) and one *common* map
  :math:`W_0` (all drawn whatever ``conflict`` is), each d x k. As many as fit in d dimensions,
  private ones first, are disjoint column blocks of one random orthogonal matrix, so their
  projections :math:`W_g^\top x` are independent standard Gaussian vectors (all of them when
  :math:`(G + 1) k \le d`, the private ones when :math:`G k \le d`); a map that does not fit has
  i.i.d. :math:`\mathcal N(0, 1/d)` entries (nearly independent of the others). Features:
  :math:`z_g(x) = \tanh(\gamma\, W_g^\top x) \in \mathbb R^k` with gain :math:`\gamma = 2`
  (``FEATURE_GAIN``; a best linear fit of ``x`` keeps about 84% of a feature's variance, the rest
  needs the nonlinearity).
- Directions: :math:`u_0 .. u_G` uniform on the unit sphere of :math:`\mathbb R^k`. Task t in group
  g has a private direction :math:`v_t = u_g + \sigma_{task} e_t` and a common direction
  :math:`c_t = u_0 + \sigma_{task} e'_t`, with :math:`e_t, e'_t \sim \mathcal N(0, I_k / k)`.
- Score: with :math:`\kappa` = ``conflict`` in [0, 1] and :math:`\zeta(a) = (a - \bar a) /
  \mathrm{sd}(a)` (standardised over the N samples),

  .. math:: s_t = \sqrt{\kappa}\; \zeta\big(z_g(x)^\top v_t\big)
                + \sqrt{1 - \kappa}\; \zeta\big(z_0(x)^\top c_t\big).

  Since the coordinates of the features are independent with equal variances, the correlation of
  two tasks' scores is about :math:`\kappa \cos(v_a, v_b) + (1 - \kappa) \cos(c_a, c_b)`: close to
  1 inside a group, and about :math:`1 - \kappa` across groups (0 at the default
  :math:`\kappa = 1`, where the groups' scores are independent).
- Noisy score: :math:`\tilde s_t = \zeta(s_t) + \sigma_{label}\, \varepsilon`,
  :math:`\varepsilon \sim \mathcal N(0, 1)`.
- Targets: regression :math:`y_t = \zeta(\tilde s_t)` (mean 0, variance 1); a classification task
  with C classes has :math:`y_t = c` when :math:`\tilde s_t` lies in the c-th of C equal-probability
  quantile bins (ordinal, balanced classes; binary tasks use the median).

Why the planted groups are the best grouping (``conflict = 1``; models with a shared trunk and one
linear head per task):

- *Nothing transfers across groups.* Group g's targets depend on x only through
  :math:`W_g^\top x`, which is independent of every other group's projection, so
  :math:`E[s_b \mid W_g^\top x] = E[s_b] = 0` for a task b outside g: no function of group g's
  inputs (or targets) predicts b. Unlike a sign flip or any other linear change of shared features
  (which a task's linear head absorbs), the groups need *different* features, and no head can make
  one group's features serve another.
- *A shared trunk makes the groups compete.* A trunk of a given width must split its units between
  the groups' subspaces: a ReLU unit :math:`\max(0, w^\top x + b)` whose w mixes two groups'
  subspaces carries the other group's projection as noise inside the nonlinearity, which a linear
  head cannot remove. A step on a task of group g turns shared units toward g's subspace and away
  from what the other groups' tasks use: cross-group pairs transfer negatively (about zero in a
  trunk much wider than all the groups need). In a trunk narrow enough for the groups to compete
  (the ``synthetic_groups`` preset: [32, 4], with k = 8 tanh features per group), one shared trunk
  fits every group worse than a trunk of its own.
- *Inside a group tasks help each other.* Their scores are nearly the same function
  (:math:`\cos(v_a, v_b) \approx 1` for small ``task_noise``), so sharing a trunk costs no
  capacity and pools their labels: within-group transfer is positive.
- Hence, with G trunks, the planted partition is the only one in which no trunk serves two groups
  (any other partition into G groups has a trunk that mixes groups), so each task gets a whole
  trunk for the features it needs. Splitting a planted group (more trunks than groups) cannot gain
  from transfer, since the split tasks need the same features, only from the extra trunk's
  capacity. With :math:`\kappa < 1` the common score adds cross-group transfer (correlation about
  :math:`1 - \kappa`); at :math:`\kappa = 0` every task has the same score and one shared trunk is
  best, so ``conflict`` moves the best grouping from all-in-one to the planted groups.

``benchmarks/compare_grouping.py`` measures this: the estimators' groups, one shared trunk, the
planted groups, groups that mix planted groups and one trunk per task.

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
``num_samples`` keeps the planted structure of a seed, ``conflict`` changes only how the private
and common scores are mixed (same inputs, maps and directions), and ``num_sites = 0`` draws
nothing from the site stream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedmtl.core.checks import int_at_least, non_negative
from fedmtl.core.data import Footprint, MultiTaskDataset
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
    conflict: float = 1.0
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
        non_negative(self, "task_noise", "label_noise", "site_shift", "conflict")
        if self.conflict > 1:
            raise ConfigError(
                "conflict",
                f"must be in [0, 1], got {self.conflict!r}.",
                "use 1 for groups that share nothing, 0 for tasks that all share one score.",
            )
        int_at_least(self, "num_sites", 0)
        if self.kinds not in KINDS:
            raise ConfigError("kinds", f"{self.kinds!r} is not allowed.", f"choose one of {KINDS}.")

    def footprint(self) -> Footprint:
        """The dataset's size before it is built. Besides its tensors, :func:`build_synthetic`
        holds (bytes, N samples, d inputs, k latent, T tasks, G groups, K sites): 8 N d (float64
        inputs; three times with sites), 8 K d + 8 N (the sites' offsets and ids), 24 d^2 (the QR
        factorisation of a d x d matrix), 8 N k (G + 1) (the features), 8 N T (the label
        noise), 16 T k and 8 d k (G + 1) (the structure). The key is that of the largest term's
        factor furthest above its default (``num_sites`` against 1)."""
        n, d, k, t, g = (
            self.num_samples,
            self.input_dim,
            self.latent_dim,
            self.num_tasks,
            self.num_groups,
        )
        inputs = 8 * n * d * (3 if self.num_sites else 1)
        terms = {  # bytes -> the keys whose product they grow with
            ("num_samples", "input_dim"): inputs + 4 * n * d,
            ("input_dim",): 24 * d * d + 8 * d * k * (g + 1),
            ("num_samples", "latent_dim", "num_groups"): 8 * n * k * (g + 1),
            ("num_samples", "num_tasks"): 17 * n * t + 16 * t * k,
            ("num_sites", "input_dim"): (8 * self.num_sites * d + 8 * n) if self.num_sites else 0,
        }
        defaults = dataclasses.replace(SyntheticParams(), num_sites=1)
        keys = max(terms, key=lambda keys: terms[keys])
        key = max(  # a log ratio: the values may be huge integers
            keys, key=lambda name: math.log(getattr(self, name)) - math.log(getattr(defaults, name))
        )
        building = sum(terms.values()) - 4 * n * d - 9 * n * t  # the tensors are in nbytes
        return Footprint(n, d, t, building=building, key=f"dataset.{key}")


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


def feature_maps(
    rng: np.random.Generator, num_maps: int, input_dim: int, latent_dim: int
) -> list[np.ndarray]:
    """``num_maps`` matrices W (input_dim x latent_dim): the first ``input_dim // latent_dim`` are
    disjoint column blocks of one Haar-random orthogonal matrix, the others (those that do not fit)
    have i.i.d. N(0, 1/input_dim) entries."""
    q, r = np.linalg.qr(rng.standard_normal((input_dim, input_dim)))
    q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
    fitting = min(num_maps, input_dim // latent_dim)
    blocks = [q[:, m * latent_dim : (m + 1) * latent_dim] for m in range(fitting)]
    scale = 1.0 / math.sqrt(input_dim)
    return blocks + [
        rng.standard_normal((input_dim, latent_dim)) * scale for _ in range(num_maps - fitting)
    ]


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
    dim = params.latent_dim
    # maps[g] and directions[g]: group g's private ones (g < G); maps[G], directions[G]: common
    maps = feature_maps(structure_rng, params.num_groups + 1, params.input_dim, dim)
    directions = [_unit(structure_rng.standard_normal(dim)) for _ in maps]
    group_of_task = np.repeat(np.arange(params.num_groups), sizes)
    perturbations = structure_rng.standard_normal((params.num_tasks, 2, dim)) / math.sqrt(dim)

    x = sample_rng.standard_normal((params.num_samples, params.input_dim))
    natural_ids = {}
    if params.num_sites > 0:
        sites = site_rng.integers(0, params.num_sites, size=params.num_samples)
        offsets = site_rng.normal(0.0, params.site_shift, (params.num_sites, params.input_dim))
        x = x + offsets[sites]
        natural_ids["site"] = sites
    features = [np.tanh(FEATURE_GAIN * (x @ m)) for m in maps]
    noise = sample_rng.standard_normal((params.num_samples, params.num_tasks))
    private_weight, common_weight = math.sqrt(params.conflict), math.sqrt(1.0 - params.conflict)
    targets = {}
    for t, spec in enumerate(specs):
        own, shared = int(group_of_task[t]), params.num_groups
        private = features[own] @ (directions[own] + params.task_noise * perturbations[t, 0])
        common = features[shared] @ (directions[shared] + params.task_noise * perturbations[t, 1])
        score = private_weight * _standardize(private) + common_weight * _standardize(common)
        noisy = _standardize(score) + params.label_noise * noise[:, t]
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
            "description": (
                f"{params.num_tasks} tasks in {params.num_groups} planted groups; score = "
                f"sqrt({params.conflict:g}) x the group's private tanh features "
                f"+ sqrt(1 - {params.conflict:g}) x common tanh features "
                "(task direction = group direction + task_noise * perturbation)"
            ),
        },
    )


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)
