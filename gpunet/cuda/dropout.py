"""Launchers of the dropout kernel (``kernels/dropout.cu``): masks regenerated, never stored."""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _cupy_for, _device, _float_array, _grid, kernel


def _dropout(name, x, k1, k2, threshold, scale):
    cp = _cupy_for(x)
    x = _float_array(name, x, cp)
    for what, v, hi in (("k1", k1, 2**32), ("k2", k2, 2**32), ("threshold", threshold, 2**24 + 1)):
        if not 0 <= int(v) < hi:
            raise ValueError(f"gpunet.cuda.{name}: {what} must lie in [0, {hi}), got {v}")
    n = x.size
    if n >= 2**32:
        raise ValueError(f"gpunet.cuda.{name}: at most 2**32 - 1 elements, got {n}")
    dtype, dev = x.dtype, _device(x)
    with x.device:
        y = cp.empty_like(x)
        if n:
            pack = 16 // dtype.itemsize
            kernel("dropout.cu", f"dropout_apply<{_CTYPE[dtype]}>", dev)(
                (_grid(-(-n // pack), 256, dev),), (256,),
                (x, y, numpy.int64(n), numpy.uint32(int(k1)), numpy.uint32(int(k2)),
                 numpy.uint32(int(threshold)), dtype.type(scale)))
    return y


def dropout_forward(x, k1, k2, threshold, scale):
    """``y = x * keep * scale``, ``keep[i] = (bits[i] >> 8) >= threshold``.

    ``bits`` is gpunet.random's counter hash with keys ``(k1, k2) = gpunet.random.keys(seed,
    offset)`` over the flat C-ordered index; ``threshold = gpunet.random.keep_threshold(p)``;
    ``scale`` is ``1/(1-p)`` (inverted dropout) or 1 (classic). No mask is stored.
    """
    return _dropout("dropout_forward", x, k1, k2, threshold, scale)


def dropout_backward(dy, k1, k2, threshold, scale):
    """``dx = dy * keep * scale`` with the mask regenerated from the same ``(k1, k2)``."""
    return _dropout("dropout_backward", dy, k1, k2, threshold, scale)
