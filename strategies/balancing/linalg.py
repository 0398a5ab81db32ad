"""Numerics shared by the weightings: the float64 Gramian, a square factor of it, seeded randomness."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

#: float64 elements converted at a time while accumulating the Gramian (2**24 = 128 MiB), so that
#: a float32 J of 40 x 1e7 never has a float64 copy in memory.
CHUNK_ELEMENTS = 1 << 24


def gramian(J: Tensor) -> Tensor:
    """G = J J^T in float64 on the CPU, accumulated over column chunks of J on J's device."""
    rows, cols = J.shape
    step = max(1, CHUNK_ELEMENTS // max(rows, 1))
    G = torch.zeros(rows, rows, dtype=torch.float64, device=J.device)
    for start in range(0, cols, step):
        chunk = J[:, start : start + step].to(torch.float64)
        G.addmm_(chunk, chunk.T)
    return ((G + G.T) / 2).cpu()


def square_factor(G: Tensor) -> Tensor:
    """A T x T matrix M with M M^T = G (G symmetric PSD), for torchjd weightings that take J."""
    eigenvalues, vectors = torch.linalg.eigh(G)
    return vectors * eigenvalues.clamp(min=0.0).sqrt()


def call_seed(seed: int, call: int) -> int:
    """A seed for call number ``call`` of a weighting built with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, call]).generate_state(1)[0])


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded by ``seed``; the caller's RNG state is restored.

    Only the CPU generator is forked and seeded (``devices=[]``), so CUDA generators are untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
