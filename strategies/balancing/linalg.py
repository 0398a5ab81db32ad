"""Numerics shared by the weightings: the Gramian (float64, blockwise float32 for large J), a square
factor of it, seeded randomness."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

#: float64 elements converted at a time while accumulating a float64 Gramian (2**24 = 128 MiB).
CHUNK_ELEMENTS = 1 << 24

#: Columns per block of the blockwise Gramian: each block's product is computed in float32.
BLOCK_COLUMNS = 1 << 13

#: A J with at least this many entries, not float64, gets the blockwise float32 Gramian; a
#: smaller one (or a float64 one) is accumulated in float64 throughout, which is cheap there.
FLOAT32_MIN_ELEMENTS = 1 << 22


def gramian(J: Tensor) -> Tensor:
    """G = J J^T (T x T) in float64 on the CPU, computed on J's device with bounded memory.

    - float64 J, or fewer than :data:`FLOAT32_MIN_ELEMENTS` entries: column chunks of J converted
      to float64 and multiplied there (exact up to float64 rounding).
    - otherwise blockwise: with J = [J_1 ... J_B] cut into blocks of :data:`BLOCK_COLUMNS`
      columns, G = sum_b float64(J_b J_b^T), each block product in float32 (one batched matmul
      per chunk of blocks, no float64 copy of J) and the sum in float64. An entry's error is that
      of a float32 dot product over one block, about sqrt(BLOCK_COLUMNS) 2^-24 ||J_i|| ||J_j||
      (typically 1e-8 relative at T = 40, d = 1e7), instead of growing with d as one float32
      product over all columns would; at a fraction of the float64 product's time.
    """
    rows, cols = J.shape
    if J.dtype == torch.float64 or J.numel() < FLOAT32_MIN_ELEMENTS:
        return _gramian_float64(J)
    J32 = J.to(torch.float32)
    G = torch.zeros(rows, rows, dtype=torch.float64, device=J.device)
    per_chunk = max(1, CHUNK_ELEMENTS // max(rows * BLOCK_COLUMNS, 1))
    step = per_chunk * BLOCK_COLUMNS
    for start in range(0, cols, step):
        chunk = J32[:, start : start + step]
        count = chunk.shape[1] // BLOCK_COLUMNS
        if count:
            blocks = chunk[:, : count * BLOCK_COLUMNS].reshape(rows, count, BLOCK_COLUMNS)
            blocks = blocks.transpose(0, 1)  # (blocks, T, columns), a view
            G += torch.bmm(blocks, blocks.transpose(1, 2)).to(torch.float64).sum(dim=0)
        rest = chunk[:, count * BLOCK_COLUMNS :]
        if rest.shape[1]:
            G += (rest @ rest.T).to(torch.float64)
    return ((G + G.T) / 2).cpu()


def _gramian_float64(J: Tensor) -> Tensor:
    """G = J J^T accumulated in float64 over column chunks of J (converted chunk by chunk)."""
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
