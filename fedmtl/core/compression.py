"""Compression of a silo's update on the wire (``strategy.compression``), with error feedback.

A silo compresses every array of its update (its joint deltas, head deltas and, in ``per_task``
mode, each task's trunk share) before it sends it; the server decodes the arrays back to dense
before any check or method sees them (:func:`decode`). What travels is the encoding itself, so
the bytes the engine counts are the bytes compression leaves:

- **top-k** (``topk``; Aji & Heafield 2017, "Sparse communication for distributed gradient
  descent", EMNLP; Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with memory", NeurIPS): of an
  array of d entries, the k = ceil(``ratio`` d) of largest magnitude travel as their flat indices
  (int32, ascending) and values (``{key}#topk-idx``, ``{key}#topk-val``); the others are 0. With
  k = d (``ratio`` 1) the array travels dense, unchanged: compression is the identity.
- **QSGD** (``qsgd``; Alistarh, Grubic, Li, Tomioka & Vojnovic 2017, "QSGD: communication-efficient
  SGD via gradient quantization and encoding", NeurIPS): with s = ``levels`` and r_i = s |x_i| /
  ||x||_2, entry i travels as the int8 code sign(x_i) l_i, where l_i = floor(r_i) + 1 with
  probability r_i - floor(r_i), else floor(r_i); the norm travels once (float32,
  ``{key}#qsgd-code``, ``{key}#qsgd-norm``). Decoded, x_i = ||x||_2 sign(x_i) l_i / s: unbiased,
  E[l_i] = r_i. The draws come from a generator seeded by (seed, silo, round), so a run is
  reproducible. s <= 127 so that a code fits one byte (a quarter of float32's bytes).
- **Error feedback** (Karimireddy, Rebjock, Stich & Jaggi 2019, "Error feedback fixes SignSGD and
  other gradient compression schemes", ICML): the silo compresses a_t = e_t + Delta_t, its update
  plus what compression dropped before, sends C(a_t) and keeps e_{t+1} = a_t - C(a_t), per array
  (per task share), in its state across rounds and checkpoints (:func:`compress`). A residual
  whose array changed shape (a grouped model's new trunk) starts again from zero.

The residual is taken before the wire's precision (``update_dtype``) rounds the values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from fedmtl.core.errors import ConfigError

Arrays = dict[str, np.ndarray]
CompressionKind = Literal["none", "topk", "qsgd"]
MAX_LEVELS = 127
"""The most QSGD levels a one-byte code holds (sign and level)."""

TOPK_INDICES = "#topk-idx"
TOPK_VALUES = "#topk-val"
QSGD_CODES = "#qsgd-code"
QSGD_NORM = "#qsgd-norm"


@dataclass(frozen=True)
class Compression:
    """How a silo's update travels: ``kind`` (``none``, ``topk`` or ``qsgd``), top-k's share of
    entries kept ``ratio`` in (0, 1], QSGD's ``levels`` s in [1, 127] (module docstring). A bad
    value raises :class:`ConfigError` naming the ``strategy`` field."""

    kind: CompressionKind = "none"
    ratio: float = 1.0
    levels: int = MAX_LEVELS

    def __post_init__(self) -> None:
        if self.kind not in get_args(CompressionKind):
            raise ConfigError("compression", f"unknown {self.kind!r}.", "use none, topk or qsgd.")
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(
                "compression_ratio", f"must be in (0, 1], got {ratio!r}.", "use e.g. 0.1."
            )
        if ratio != 1 and self.kind != "topk":
            raise ConfigError(
                "compression_ratio",
                f"is {ratio} but compression is {self.kind!r}: only topk keeps a share.",
                "set compression=topk, or drop compression_ratio (qsgd: set qsgd_levels).",
            )
        levels = self.levels
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 127:
            raise ConfigError(
                "qsgd_levels",
                f"must be an integer in [1, {MAX_LEVELS}], got {levels!r}.",
                "use e.g. 15 (4 bits of information) or 127.",
            )
        if levels != MAX_LEVELS and self.kind != "qsgd":
            raise ConfigError(
                "qsgd_levels",
                f"is {levels} but compression is {self.kind!r}.",
                "set compression=qsgd, or drop qsgd_levels.",
            )

    def kept(self, size: int) -> int:
        """k = ceil(ratio d) of d entries (top-k), at least 1 of a non-empty array."""
        if size == 0:
            return 0
        return min(size, max(1, math.ceil(round(self.ratio * size, 9))))


UNCOMPRESSED = Compression()
"""Updates that travel as they are."""


def _dequantised(codes: np.ndarray, norm: np.ndarray, levels: int) -> np.ndarray:
    """||x|| sign l / s, in float32, alike on both sides."""
    return (norm.astype(np.float32) * codes.astype(np.float32)) / np.float32(levels)


def encode(
    array: np.ndarray, compression: Compression, rng: np.random.Generator
) -> tuple[Arrays, np.ndarray]:
    """The wire arrays of one float32 ``array`` (by key suffix; ``""``: dense, as it is) and what
    the server will decode from them."""
    flat = array.reshape(-1)
    if compression.kind == "topk":
        k = compression.kept(flat.size)
        if k == flat.size:
            return {"": array}, array
        indices = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]).astype(np.int32)
        values = flat[indices]
        decoded = np.zeros_like(flat)
        decoded[indices] = values
        return {TOPK_INDICES: indices, TOPK_VALUES: values}, decoded.reshape(array.shape)
    levels = compression.levels
    norm = np.array([np.linalg.norm(flat.astype(np.float64))], dtype=np.float32)
    if norm[0] == 0:
        codes = np.zeros(flat.size, dtype=np.int8)
    else:
        scaled = levels * np.abs(flat.astype(np.float64)) / float(norm[0])
        low = np.floor(scaled)
        level = np.minimum(low + (rng.random(flat.size) < scaled - low), levels)
        codes = (np.sign(flat) * level).astype(np.int8)
    decoded = _dequantised(codes, norm, levels).reshape(array.shape)
    return {QSGD_CODES: codes, QSGD_NORM: norm}, decoded


def compress(
    arrays: Mapping[str, np.ndarray],
    compression: Compression,
    residual: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[Arrays, Arrays]:
    """The wire arrays of an update (by wire key) and the new residual (module docstring):
    C(e + Delta) and e + Delta - C(e + Delta) per key, in key order."""
    wire: Arrays = {}
    kept: Arrays = {}
    for key in sorted(arrays):
        delta = np.asarray(arrays[key], dtype=np.float32)
        error = residual.get(key)
        total = delta + error if error is not None and error.shape == delta.shape else delta
        encoded, decoded = encode(total, compression, rng)
        wire.update({key + suffix: value for suffix, value in encoded.items()})
        kept[key] = total - decoded
    return wire, kept


def decode(
    received: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    compression: Compression,
) -> Arrays:
    """The dense arrays of a reply's wire arrays, for the expected keys and ``shapes``; a
    malformed encoding (a missing or extra part, a wrong length or dtype, an index out of range
    or repeated, a code beyond s, a non-finite value) raises ValueError. Keys that are no
    encoding stay as they are, for the caller's checks."""
    if compression.kind == "none":
        return dict(received)
    left = dict(received)
    dense: Arrays = {}
    for key, shape in shapes.items():
        size = math.prod(shape)
        if compression.kind == "topk":
            k = compression.kept(size)
            if k == size:
                continue
            indices, values = _parts(left, key, TOPK_INDICES, TOPK_VALUES)
            _vector(key, indices, k, integer=True)
            _vector(key, values, k, integer=False)
            if k and (indices.min() < 0 or indices.max() >= size):
                raise ValueError(f"{key}: top-k index out of range [0, {size})")
            if np.unique(indices).size != k:
                raise ValueError(f"{key}: repeated top-k indices")
            flat = np.zeros(size, dtype=np.float32)
            flat[indices] = values
            dense[key] = flat.reshape(shape)
        else:
            codes, norm = _parts(left, key, QSGD_CODES, QSGD_NORM)
            _vector(key, codes, size, integer=True)
            _vector(key, norm, 1, integer=False)
            if codes.dtype != np.int8 or (
                size and np.abs(codes.astype(np.int16)).max() > compression.levels
            ):
                raise ValueError(f"{key}: QSGD codes must be int8 within +-{compression.levels}")
            if norm[0] < 0:
                raise ValueError(f"{key}: negative QSGD norm")
            dense[key] = _dequantised(codes, norm, compression.levels).reshape(shape)
    return {**left, **dense}


def _parts(left: Arrays, key: str, first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
    """The two wire parts of ``key`` (taken out of ``left``); the dense array must not travel."""
    if key in left:
        raise ValueError(f"{key}: sent dense, expected its {first[1:]} and {second[1:]}")
    if key + first not in left or key + second not in left:
        raise ValueError(f"{key}: missing its {first[1:]} or {second[1:]}")
    return left.pop(key + first), left.pop(key + second)


def _vector(key: str, value: np.ndarray, length: int, integer: bool) -> None:
    """A 1-d array of ``length`` integers, or of finite floats."""
    kind = np.integer if integer else np.floating
    if value.ndim != 1 or value.size != length or not np.issubdtype(value.dtype, kind):
        what = "integers" if integer else "floats"
        raise ValueError(f"{key}: expected {length} {what}, got {value.dtype} {value.shape}")
    if not integer and not np.isfinite(value).all():
        raise ValueError(f"{key}: non-finite values")
