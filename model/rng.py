"""Portable counter-based RNG (Philox-4x32-10) shared by Python, Kotlin and Swift.

torch/numpy generators differ between platforms and versions, so the phone
ports could never reproduce the reference noise. Philox is a pure function of
(key, counter) built from 32-bit multiplies and xors, which every language can
reproduce bit for bit. The spec other languages implement from is docs/rng.md.

Addressing: key = (seed lo, seed hi); block i of stream s has counter
(i lo, i hi, s lo, s hi); word n of a (seed, stream) sequence is word n % 4 of
block n // 4. Every ``offset`` argument counts these uint32 words.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

_MASK32 = 0xFFFFFFFF
_LIMIT63 = 1 << 63
SEED_LIMIT = _LIMIT63  # seeds are in [0, 2^63): the CLIs check --seed against it
_TWO_PI = 2.0 * math.pi  # float64 6.283185307179586, part of the spec
_CHUNK_BLOCKS = 1 << 14  # keeps the working lanes in cache; tuned for speed only

Shape = int | tuple[int, ...]


def _check_int(name: str, value: object, limit: int) -> int:
    """Reject non-ints (including bool and float) early: a float seed would silently change noise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # ValueError, not TypeError: callers handle every bad argument the same way.
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")  # noqa: TRY004
    value = int(value)
    if not 0 <= value < limit:
        raise ValueError(f"{name} must be in [0, {limit}), got {value}")
    return value


def _philox_lanes(
    x0: np.ndarray, x1: np.ndarray, x2: np.ndarray, x3: np.ndarray, k0: int, k1: int, rounds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run Philox on four uint64 lanes holding 32-bit values, in place where possible.

    uint64 lanes let numpy form the exact 64-bit product of two 32-bit words,
    so mulhilo is one multiply plus a shift and a mask.
    """
    m0 = np.uint64(PHILOX_M0)
    m1 = np.uint64(PHILOX_M1)
    mask = np.uint64(_MASK32)
    shift = np.uint64(32)
    t = np.empty_like(x0)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        np.multiply(x0, m0, out=x0)  # p0 = M0 * x0
        np.multiply(x2, m1, out=x2)  # p1 = M1 * x2
        np.right_shift(x2, shift, out=t)  # new x0 = hi(p1) ^ x1 ^ k0
        t ^= x1
        t ^= np.uint64(k0)
        np.bitwise_and(x2, mask, out=x1)  # new x1 = lo(p1)
        np.right_shift(x0, shift, out=x2)  # new x2 = hi(p0) ^ x3 ^ k1
        x2 ^= x3
        x2 ^= np.uint64(k1)
        np.bitwise_and(x0, mask, out=x3)  # new x3 = lo(p0)
        x0, t = t, x0
    return x0, x1, x2, x3


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox-4x32 block function on counters of shape [..., 4] with one key [2].

    Exposed so the Random123 known-answer tests can check the core directly.
    """
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.dtype != np.uint32 or counter.shape[-1:] != (4,):
        raise ValueError(f"counter must be uint32 with last dim 4, got {counter.dtype} {counter.shape}")
    if key.dtype != np.uint32 or key.shape != (2,):
        raise ValueError(f"key must be uint32 of shape (2,), got {key.dtype} {key.shape}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative int, got {rounds!r}")
    flat = counter.reshape(-1, 4).astype(np.uint64)
    lanes = _philox_lanes(
        flat[:, 0].copy(), flat[:, 1].copy(), flat[:, 2].copy(), flat[:, 3].copy(),
        int(key[0]), int(key[1]), rounds,
    )
    return np.stack(lanes, axis=-1).astype(np.uint32).reshape(counter.shape)


def uint32_stream(seed: int, stream: int, n: int, offset: int = 0) -> np.ndarray:
    """Words offset .. offset+n-1 of the (seed, stream) sequence; any slice is computable directly."""
    seed = _check_int("seed", seed, _LIMIT63)
    stream = _check_int("stream", stream, _LIMIT63)
    n = _check_int("n", n, 1 << 62)
    offset = _check_int("offset", offset, 1 << 66)
    if offset + n > 1 << 66:
        raise ValueError("offset + n must not exceed 2**66 words (2**64 blocks)")
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    first = offset // 4
    nblocks = (offset + n + 3) // 4 - first
    k0, k1 = seed & _MASK32, seed >> 32
    s0 = np.uint64(stream & _MASK32)
    s1 = np.uint64(stream >> 32)
    mask = np.uint64(_MASK32)
    out = np.empty((nblocks, 4), dtype=np.uint32)
    for start in range(0, nblocks, _CHUNK_BLOCKS):
        count = min(_CHUNK_BLOCKS, nblocks - start)
        idx = np.arange(count, dtype=np.uint64) + np.uint64(first + start)
        lanes = _philox_lanes(
            idx & mask, idx >> np.uint64(32),
            np.full(count, s0, dtype=np.uint64), np.full(count, s1, dtype=np.uint64),
            k0, k1, 10,
        )
        block = out[start:start + count]
        for j in range(4):
            block[:, j] = lanes[j]
    skip = offset % 4
    return out.reshape(-1)[skip:skip + n]


def words_to_uniform(x: np.ndarray) -> np.ndarray:
    """Map uint32 words to float32 in (0, 1): ((x >> 9) + 0.5) * 2**-23.

    23 bits, not 24: every result (2k+1) * 2**-24 is exact in float32 and at most
    1 - 2**-24, so log(u) and log(-log(u)) never see 0 or 1. With 24 bits the
    top values would round to exactly 1.0 in float32.
    """
    x = np.asarray(x, dtype=np.uint32)
    return (((x >> np.uint32(9)).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-23)).astype(np.float32)


def _size(shape: Shape) -> tuple[tuple[int, ...], int]:
    """Normalise shape, so int and tuple shapes draw the same words."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dims = tuple(_check_int("shape entry", d, 1 << 62) for d in dims)
    return dims, math.prod(dims)


def uniform(seed: int, stream: int, shape: Shape, offset: int = 0) -> np.ndarray:
    """Uniform float32 in (0, 1), one word each; bit-identical in every language."""
    dims, n = _size(shape)
    return words_to_uniform(uint32_stream(seed, stream, n, offset)).reshape(dims)


def normal(seed: int, stream: int, shape: Shape, offset: int = 0) -> np.ndarray:
    """Standard normal float32 by Box-Muller on uniform pairs (2j, 2j+1).

    Box-Muller uses a fixed two words per pair, so any element's position in the
    word sequence is known, unlike rejection methods. Math is float64 then
    rounded once to float32. Consumes 2 * ceil(n / 2) words from offset.
    """
    dims, n = _size(shape)
    pairs = (n + 1) // 2
    u = uniform(seed, stream, 2 * pairs, offset).astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u[0::2]))
    theta = _TWO_PI * u[1::2]
    z = np.empty(2 * pairs, dtype=np.float64)
    z[0::2] = r * np.cos(theta)
    z[1::2] = r * np.sin(theta)
    return z[:n].astype(np.float32).reshape(dims)


def gumbel(seed: int, stream: int, shape: Shape, offset: int = 0) -> np.ndarray:
    """Standard Gumbel float32, -log(-log(u)) in float64, one word each (for Gumbel-max sampling)."""
    dims, n = _size(shape)
    u = uniform(seed, stream, n, offset).astype(np.float64)
    return (-np.log(-np.log(u))).astype(np.float32).reshape(dims)


def uniform_t(seed: int, stream: int, shape: Shape, offset: int = 0) -> torch.Tensor:
    """torch float32 version of uniform(), for the model code."""
    import torch

    return torch.from_numpy(uniform(seed, stream, shape, offset))


def normal_t(seed: int, stream: int, shape: Shape, offset: int = 0) -> torch.Tensor:
    """torch float32 version of normal(), for the model code."""
    import torch

    return torch.from_numpy(normal(seed, stream, shape, offset))


def gumbel_t(seed: int, stream: int, shape: Shape, offset: int = 0) -> torch.Tensor:
    """torch float32 version of gumbel(), for the model code."""
    import torch

    return torch.from_numpy(gumbel(seed, stream, shape, offset))
