"""Memory orders of ``(N, C, H, W)`` arrays on the CPU path.

A whole-batch convolution on NumPy returns its output as an NCHW view of CHWN memory
(``gpunet.functional.conv``); pooling and batch norm run in the memory order they are
given when it is one of the orders below, and return their results in it.
"""
from __future__ import annotations

import numpy

# memory order name -> the transpose of an (N, C, H, W) array that is C-contiguous in it
ORDERS = {"nchw": (0, 1, 2, 3), "chwn": (1, 2, 3, 0), "cnhw": (1, 0, 2, 3)}


def memory_order(a):
    """``"nchw"`` (C-contiguous), ``"chwn"`` (C-contiguous ``(C, H, W, N)`` memory, a CPU
    convolution's output) or ``"cnhw"`` (C-contiguous ``(C, N, H, W)``) for a 4-D ``a``,
    checked in that order (an array that is several, e.g. with ``N == 1``, is ``"nchw"``);
    None for any other memory."""
    for name, order in ORDERS.items():
        if a.transpose(order).flags.c_contiguous:
            return name
    return None


def copy_as(a, like):
    """A copy of ``a`` in ``like``'s memory order (NumPy)."""
    out = numpy.empty_like(like, dtype=a.dtype)     # order "K": like's strides
    out[...] = a
    return out


def empty_in(shape, dtype, name):
    """An uninitialized NumPy ``(N, C, H, W)`` array of ``shape`` in memory order ``name``."""
    order = ORDERS[name]
    return numpy.empty(tuple(shape[i] for i in order), dtype=dtype).transpose(numpy.argsort(order))


def as_order(a, name):
    """``a`` (NumPy, 4-D) itself when its memory order is ``name``, else a copy in it."""
    if memory_order(a) == name:
        return a
    out = empty_in(a.shape, a.dtype, name)
    out[...] = a
    return out
