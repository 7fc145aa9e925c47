"""Launchers of the dropout kernel (``kernels/dropout.cu``): masks regenerated, never stored."""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _cupy_for, _device, _float_array, _grid, kernel

_HALF = numpy.dtype(numpy.float16)


def _dropout(name, x, k1, k2, threshold, scale, state=None):
    """float16 runs ``dropout_apply<__half>``: the product in float, rounded once, with the
    scale rounded to float16 first (NumPy's float16 bits); float32/float64 as before.
    With ``state`` (a draw state, see ``next_draw``), ``dropout_apply_state`` reads the
    keys from it instead: ``k1`` is then the element offset ``start`` and ``k2`` unused."""
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
    if state is not None:
        _check_state(name, state, cp, dev)
    with x.device:
        y = cp.empty_like(x)
        if n:
            pack = 16 // dtype.itemsize
            half = dtype == _HALF
            t = '__half' if half else _CTYPE[dtype]
            keys = ((numpy.uint32(int(k1)), numpy.uint32(int(k2))) if state is None
                    else (state, numpy.uint32(int(k1))))
            with numpy.errstate(over="ignore"):     # float16, p > 1 - 1/65520: an inf scale
                s = numpy.float32(numpy.float16(scale)) if half else dtype.type(scale)
            kernel("dropout.cu", f"dropout_apply{'' if state is None else '_state'}<{t}>", dev)(
                (_grid(-(-n // pack), 256, dev),), (256,),
                (x, y, numpy.int64(n), *keys, numpy.uint32(int(threshold)), s))
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


# -- draws whose counter lives on the device (a Dropout layer there; CUDA graphs) ----------
def _check_state(name, state, cp, dev):
    if not (isinstance(state, cp.ndarray) and state.dtype == numpy.uint64 and state.shape == (3,)
            and state.flags.c_contiguous):
        raise TypeError(f"gpunet.cuda.{name}: expected a draw state (a contiguous uint64 device "
                        f"array of shape (3,), see draw_state), got {type(state).__name__} "
                        f"{getattr(state, 'dtype', '')} {getattr(state, 'shape', '')}")
    if _device(state) != dev:
        raise ValueError(f"gpunet.cuda.{name}: the draw state is on device {_device(state)}, "
                         f"the array on {dev}")


def draw_state(xp, seed, counter):
    """A new draw state on ``xp``'s current device: uint64 ``[counter, k1, 0]``, ``k1`` the
    seed's key (``gpunet.random.keys``); word 2 receives the ``k2`` of each draw."""
    from ..random import keys
    k1, _ = keys(seed, counter)
    return xp.asarray(numpy.array([int(counter), k1, 0], dtype=numpy.uint64))


def next_draw(state):
    """Take the next draw of ``state`` on the device (one single-thread launch): its ``k2``
    is ``gpunet.random.keys(seed, counter)[1]`` and the counter advances by one; nothing is
    read back to the host."""
    cp = _cupy_for(state)
    dev = _device(state)
    _check_state("next_draw", state, cp, dev)
    with state.device:
        kernel("dropout.cu", "dropout_next_draw", dev)((1,), (1,), (state,))


def dropout_forward_state(x, state, start, threshold, scale):
    """``dropout_forward`` with the keys of ``state``'s last draw (``next_draw``) and the
    element offset ``start`` (modulo 2**32) folded into ``k1``: the mask that
    ``dropout_forward(x, (k1 + start) % 2**32, k2, ...)`` applies."""
    return _dropout("dropout_forward", x, int(start) & 0xFFFFFFFF, 0, threshold, scale, state)


def dropout_backward_state(dy, state, start, threshold, scale):
    """``dropout_backward`` with the keys of ``state``'s last draw."""
    return _dropout("dropout_backward", dy, int(start) & 0xFFFFFFFF, 0, threshold, scale, state)
