"""Randomness that is bit-identical on the CPU and the GPU.

Two generators live here:

* the *host generator*, a seeded ``numpy.random.Generator`` from which layer
  constructors draw their initial weights, in construction order
  (``manual_seed(seed)`` reseeds it; at import it is seeded with 0);
* a *stateless counter-based generator*: ``uniform(seed, offset, shape, xp)``. Element
  ``i`` of the flattened output is a pure function of ``(seed, offset, i)``: a cheap
  integer hash written once here and once in ``kernels/common.cuh``. Dropout uses it with
  ``offset`` = the layer's draw counter, so a mask is a function of
  ``(seed, step, layer, element)`` and backward can regenerate it instead of storing it.

The hash (all arithmetic modulo 2**32; ``mix32`` is Chris Wellons' "lowbias32")::

    mix32(x):  x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
    k1 = mix32(seed_lo ^ mix32(seed_hi + 0x9e3779b9))
    k2 = mix32(k1 ^ mix32(offset_lo ^ mix32(offset_hi + 0x3c6ef372)))
    bits[i] = mix32(mix32(i + k1) ^ k2)
    uniform[i] = (bits[i] >> 8) * 2**-24            # float32, exactly representable, in [0, 1)

``seed`` and ``offset`` are non-negative integers below 2**64; ``i`` runs over fewer than
2**32 elements. The keys are computed on the host, so a kernel only needs ``bits[i]``.
"""
from __future__ import annotations

import numpy

from . import _args
from .backend import get_array_module

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_GOLDEN2 = 0x3C6EF372

_host_rng = numpy.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the host generator that layer constructors draw initial weights from."""
    global _host_rng
    _host_rng = numpy.random.default_rng(_args.integer("manual_seed", "seed", seed, low=0))


def host_rng() -> numpy.random.Generator:
    """The host generator (initial weights, default seeds of dropout layers)."""
    return _host_rng


def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def keys(seed: int, offset: int) -> tuple[int, int]:
    """The two 32-bit keys ``(k1, k2)`` of stream ``(seed, offset)``, computed on the host."""
    seed, offset = int(seed), int(offset)
    if not 0 <= seed < 2**64 or not 0 <= offset < 2**64:
        raise ValueError(f"random: seed and offset must lie in [0, 2**64), got {seed}, {offset}")
    k1 = _mix32_int((seed & _M32) ^ _mix32_int((seed >> 32) + _GOLDEN))
    k2 = _mix32_int(k1 ^ _mix32_int((offset & _M32) ^ _mix32_int((offset >> 32) + _GOLDEN2)))
    return k1, k2


def _mix32(x, xp):
    # x is a uint32 array; multiplications wrap modulo 2**32, as in C.
    x ^= x >> xp.uint32(16)
    x *= xp.uint32(0x7FEB352D)
    x ^= x >> xp.uint32(15)
    x *= xp.uint32(0x846CA68B)
    x ^= x >> xp.uint32(16)
    return x


def random_bits(seed: int, offset: int, shape, xp=numpy, start: int = 0):
    """uint32 array of ``shape``: ``bits[start + i]`` of the hash above, element ``i`` in C
    order (``start`` > 0 draws a later stretch of the same stream: the element index is
    folded into ``k1``, ``i + start + k1`` modulo 2**32, so kernels take ``k1 + start``)."""
    k1, k2 = keys(seed, offset)
    k1 = (k1 + int(start)) & _M32
    n = int(numpy.prod(shape, dtype=numpy.int64))
    if n >= 2**32:
        raise ValueError(f"random: at most 2**32 - 1 elements per draw, got shape {tuple(shape)}")
    x = xp.arange(n, dtype=xp.uint32)
    x += xp.uint32(k1)
    x = _mix32(x, xp)
    x ^= xp.uint32(k2)
    x = _mix32(x, xp)
    return x.reshape(shape)


def uniform(seed: int, offset: int, shape, xp=numpy, start: int = 0):
    """float32 array of ``shape`` with values in [0, 1): identical bits on NumPy and CuPy
    (elements ``start, start + 1, ...`` of the stream, see ``random_bits``)."""
    bits = random_bits(seed, offset, shape, xp, start)
    return (bits >> xp.uint32(8)).astype(xp.float32) * xp.float32(2.0 ** -24)


def keep_threshold(p: float) -> int:
    """Dropout keeps element ``i`` iff ``bits[i] >> 8 >= keep_threshold(p)``.

    That is ``uniform[i] >= p`` exactly, computed on integers (the CUDA kernel does the
    same), so each element is kept with probability ``1 - p`` up to 2**-24.
    """
    return int(numpy.ceil(float(p) * 2.0 ** 24))


__all__ = ["manual_seed", "host_rng", "keys", "random_bits", "uniform", "keep_threshold",
           "get_array_module"]
