"""Launchers of the dropout kernel (``kernels/dropout.cu``): masks regenerated, never stored."""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _cupy_for, _device, _float_array, _grid, kernel

_HALF = numpy.dtype(numpy.float16)


def _dropout(name, x, k1, k2, threshold, scale):
    """float16 runs ``dropout_apply<__half>``: the product in float, rounded once, with the
    scale rounded to float16 first (NumPy's float16 bits); float32/float64 as before."""
    cp = _cupy_for(x)
    if not (isinstance(x, cp.ndarray) and x.dtype == _HALF):
        x = _float_array(name, x, cp)
    else:
        x = cp.ascontiguousarray(x)
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
            half = dtype == _HALF
            kernel("dropout.cu", f"dropout_apply<{'__half' if half else _CTYPE[dtype]}>", dev)(
                (_grid(-(-n // pack), 256, dev),), (256,),
                (x, y, numpy.int64(n), numpy.uint32(int(k1)), numpy.uint32(int(k2)),
                 numpy.uint32(int(threshold)),
                 numpy.float32(numpy.float16(scale)) if half else dtype.type(scale)))
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
