"""Compressed sketches of a silo's per-task gradient matrix J (k x d), as FedCMOO's silos send them
(Askin et al., AISTATS 2025, and the authors' code), each about ``budget`` x d floats:

- ``randsvd``: J^T (d x k) folded into a near-square q x (c k) matrix M, q = floor(sqrt(d k)),
  c = ceil(d / q) (rows [i q, (i + 1) q) of J^T become columns [i k, (i + 1) k) of M; zero
  padding), and the rank-r randomised SVD (Halko et al. 2011; ``torch.svd_lowrank``, 2 power
  iterations, r // 10 oversamples) M ~ U S V^T, r = floor(budget d / (q + c k)) (at least 1):
  sent as U S (q x r) and V (c k x r). Folding makes the low-rank structure worth having: J
  itself has rank k.
- ``topk``: the K = floor(budget d / 2) entries of J largest in absolute value, as their float32
  values and int32 flat indices (8 bytes an entry: two floats' worth).
- ``none``: J itself (k x d floats: the exact per-task gradients).

:func:`decompress` gives the server Jhat (float64); :func:`sketch_shapes` what a reply must hold.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch

from fedmtl.core.records import Arrays

SketchKind = Literal["randsvd", "topk", "none"]
SKETCHES: tuple[str, ...] = get_args(SketchKind)


def _fold_shape(k: int, d: int) -> tuple[int, int]:
    """(q, c): the folded matrix is q x (c k)."""
    q = max(1, math.isqrt(d * k))
    return q, -(-d // q)


def _rank(budget: float, k: int, d: int) -> int:
    q, c = _fold_shape(k, d)
    return max(1, min(int(budget * d) // (q + c * k), q, c * k))


def _top(budget: float, k: int, d: int) -> int:
    return max(1, min(int(budget * d) // 2, k * d))


def fold(J: np.ndarray) -> np.ndarray:
    """J (k x d) as the near-square q x (c k) matrix (module docstring)."""
    k, d = J.shape
    q, c = _fold_shape(k, d)
    padded = np.zeros((c * q, k), dtype=J.dtype)
    padded[:d] = J.T
    return padded.reshape(c, q, k).transpose(1, 0, 2).reshape(q, c * k)


def unfold(M: np.ndarray, k: int, d: int) -> np.ndarray:
    """The inverse of :func:`fold`: J (k x d) from M."""
    q, c = _fold_shape(k, d)
    return M.reshape(q, c, k).transpose(1, 0, 2).reshape(c * q, k)[:d].T


def sketch_shapes(
    compression: str, budget: float, k: int, d: int
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays a sketch of a k x d matrix holds: key -> (shape, dtype kind)."""
    if compression == "randsvd":
        q, c = _fold_shape(k, d)
        r = _rank(budget, k, d)
        return {"sketch.u": ((q, r), "f"), "sketch.v": ((c * k, r), "f")}
    if compression == "topk":
        K = _top(budget, k, d)
        return {"sketch.values": ((K,), "f"), "sketch.indices": ((K,), "i")}
    _known(compression)
    return {"sketch.rows": ((k, d), "f")}


def compress(J: np.ndarray, compression: str, budget: float) -> Arrays:
    """The sketch of J (k x d) (randomised: call it with torch's generator seeded)."""
    k, d = J.shape
    J = J.astype(np.float32)
    if compression == "randsvd":
        M = torch.from_numpy(fold(J))
        r = _rank(budget, k, d)
        U, S, V = torch.svd_lowrank(M, q=min(r + r // 10, *M.shape), niter=2)
        u = (U[:, :r] * S[:r]).numpy().astype(np.float32)
        return {"sketch.u": u, "sketch.v": V[:, :r].numpy().astype(np.float32)}
    if compression == "topk":
        flat = J.reshape(-1)
        K = _top(budget, k, d)
        kept = np.sort(np.argpartition(-np.abs(flat), K - 1)[:K])
        index = np.int32 if k * d < 2**31 else np.int64
        return {"sketch.values": flat[kept], "sketch.indices": kept.astype(index)}
    _known(compression)
    return {"sketch.rows": J}


def decompress(arrays: Arrays, compression: str, k: int, d: int) -> np.ndarray:
    """Jhat (k x d, float64) from a sketch."""
    if compression == "randsvd":
        M = arrays["sketch.u"].astype(np.float64) @ arrays["sketch.v"].astype(np.float64).T
        return unfold(M, k, d)
    if compression == "topk":
        J = np.zeros(k * d)
        J[arrays["sketch.indices"].astype(np.int64)] = arrays["sketch.values"]
        return J.reshape(k, d)
    _known(compression)
    return arrays["sketch.rows"].astype(np.float64)


def _known(compression: str) -> None:
    """Past ``randsvd`` and ``topk``: ``none``, or a ValueError."""
    if compression != "none":
        raise ValueError(f"unknown compression {compression!r}; one of {list(SKETCHES)}")
