r"""scikit-learn's bundled 8x8 handwritten digits as multi-task datasets (no download).

Pixels :math:`p \in \{0, \dots, 16\}` are scaled to :math:`x = p / 16 \in [0, 1]`; with
``normalize`` the inputs become :math:`(x - \mu) / \sigma` with one scalar mean and standard
deviation over all pixels of the built dataset.

``digits`` (1797 images, inputs (N, 1, 8, 8) or (N, 64); the seed does not change it). For digit d:

- ``digit``: multiclass, 10 classes, :math:`y = d`.
- ``parity``: binary, :math:`y = [d \text{ odd}]`.
- ``magnitude``: binary, :math:`y = [d \ge 5]`.
- ``loops``: multiclass, 3 classes, closed loops of d as usually written: 0 for 1, 2, 3, 5, 7;
  1 for 0, 4, 6, 9; 2 for 8.
- ``ink``: regression, the image's mean scaled intensity :math:`m = \frac{1}{64}\sum_j x_j`,
  standardised over the dataset: :math:`y = (m - \bar m) / \mathrm{sd}(m)`.

``parity``, ``magnitude`` and ``loops`` are functions of ``digit`` (closely related to it and
to each other in different ways), while ``ink`` depends on the handwriting as much as on the digit.

``digits_pair`` (inputs (N, 1, 8, 16) or (N, 128)): each sample puts two digit images side by side,
left index :math:`a_i` and right index :math:`b_i` drawn uniformly with replacement from the 1797
images by a numpy Generator seeded from ``seed``. With digits l and r:

- ``left``: multiclass 10, :math:`y = l`; ``right``: multiclass 10, :math:`y = r`.
- ``sum_parity``: binary, :math:`y = [(l + r) \text{ odd}]`.
- ``left_larger``: binary, :math:`y = [l > r]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedmtl.core.checks import booleans, int_at_least
from fedmtl.core.data import Footprint, MultiTaskDataset
from fedmtl.core.tasks import TaskSpec

SOURCE = "sklearn.datasets.load_digits"
LOOPS = (1, 0, 0, 0, 1, 0, 1, 0, 2, 1)  # closed loops of the digits 0..9


@dataclass(frozen=True)
class DigitsParams:
    """Parameters of ``digits``: standardise the inputs, and shape them (1, 8, 8) or (64,)."""

    normalize: bool = True
    as_image: bool = True

    def __post_init__(self) -> None:
        booleans(self, "normalize", "as_image")


@dataclass(frozen=True)
class DigitsPairParams:
    """Parameters of ``digits_pair``: number of pairs, standardisation, (1, 8, 16) or (128,)."""

    num_samples: int = 4000
    normalize: bool = True
    as_image: bool = True

    def __post_init__(self) -> None:
        int_at_least(self, "num_samples", 1)
        booleans(self, "normalize", "as_image")

    def footprint(self) -> Footprint:
        """N pairs of 128 pixels; while building, the pairs (8 bytes a pixel) and two float64
        copies of them (standardising), and the drawn indices."""
        n = self.num_samples
        return Footprint(n, 128, 4, building=n * (3 * 8 * 128 + 16), key="dataset.num_samples")


@lru_cache(maxsize=1)
def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: scaled pixels (1797, 8, 8) in [0, 1] and labels (1797,), read-only."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy, only for the digits datasets

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _inputs(images: np.ndarray, normalize: bool, as_image: bool) -> torch.Tensor:
    """Images (N, H, W) in [0, 1] -> (N, 1, H, W) or (N, H*W) float32, standardised if asked."""
    values = images.astype(np.float64)
    if normalize:
        values = (values - values.mean()) / values.std()
    shape = (len(values), 1, *values.shape[1:]) if as_image else (len(values), -1)
    return torch.tensor(values.reshape(shape), dtype=torch.float32)


def _standardize(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-12)


def _long(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def _float(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _all_labelled(n: int, num_tasks: int) -> torch.Tensor:
    return torch.ones((n, num_tasks), dtype=torch.bool)


def build_digits(params: DigitsParams, seed: int) -> MultiTaskDataset:
    """The 1797 digits with the tasks digit, parity, magnitude, loops and ink (``seed`` unused)."""
    del seed  # a fixed dataset
    images, digits = load_raw()
    tasks = (
        TaskSpec.multiclass("digit", 10),
        TaskSpec.binary("parity"),
        TaskSpec.binary("magnitude"),
        TaskSpec.multiclass("loops", 3),
        TaskSpec.regression("ink"),
    )
    targets = {
        "digit": _long(digits),
        "parity": _float(digits % 2),
        "magnitude": _float(digits >= 5),
        "loops": _long(np.asarray(LOOPS)[digits]),
        "ink": _float(_standardize(images.reshape(len(images), -1).mean(axis=1))),
    }
    n = len(digits)
    return MultiTaskDataset(
        name="digits",
        inputs=_inputs(images, params.normalize, params.as_image),
        tasks=tasks,
        targets=targets,
        mask=_all_labelled(n, len(tasks)),
        info={
            "source": SOURCE,
            "num_samples": n,
            "description": "8x8 digits; tasks digit, parity (odd), magnitude (>= 5), "
            "loops (closed loops: 0, 1 or 2) and ink (standardised mean intensity)",
        },
    )


def build_digits_pair(params: DigitsPairParams, seed: int) -> MultiTaskDataset:
    """Digit pairs side by side, drawn for ``seed``; tasks left, right, sum_parity, left_larger."""
    images, digits = load_raw()
    rng = np.random.default_rng(seed % 2**64)
    left_idx = rng.integers(0, len(digits), size=params.num_samples)
    right_idx = rng.integers(0, len(digits), size=params.num_samples)
    pairs = np.concatenate([images[left_idx], images[right_idx]], axis=2)  # (N, 8, 16)
    left, right = digits[left_idx], digits[right_idx]
    tasks = (
        TaskSpec.multiclass("left", 10),
        TaskSpec.multiclass("right", 10),
        TaskSpec.binary("sum_parity"),
        TaskSpec.binary("left_larger"),
    )
    targets = {
        "left": _long(left),
        "right": _long(right),
        "sum_parity": _float((left + right) % 2),
        "left_larger": _float(left > right),
    }
    return MultiTaskDataset(
        name="digits_pair",
        inputs=_inputs(pairs, params.normalize, params.as_image),
        tasks=tasks,
        targets=targets,
        mask=_all_labelled(params.num_samples, len(tasks)),
        info={
            "source": SOURCE,
            "num_samples": params.num_samples,
            "description": "two 8x8 digits side by side (8x16); tasks left, right, "
            "sum_parity (left + right odd) and left_larger (left > right)",
        },
    )
