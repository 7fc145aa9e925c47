"""Maxout, forward above backward.

Input ``(N, C·pieces, ...)``, output ``(N, C, ...)``: the channels are split into ``C``
consecutive groups of ``pieces``, and

    y[:, j] = max(x[:, j·pieces], ..., x[:, j·pieces + pieces - 1])

The derivative of a max is 1 for the maximal input and 0 for the others; on ties the
whole gradient goes to the FIRST maximal input (argmax semantics, as NumPy's ``argmax``).
The forward returns the winning piece per output (``idx``, uint8 when ``pieces < 256``),
which is all the backward needs.
"""
from __future__ import annotations

import numpy

from .. import _args
from ..backend import get_array_module


def _pieces(who, pieces, channels=None):
    """The slow path of ``pieces``: not an int >= 1, or (``channels`` given) not a divisor
    of the input's channels."""
    pieces = _args.integer(who, "pieces", pieces, low=1)
    if channels is not None and channels % pieces:
        raise ValueError(f"{who}: expected pieces to divide the input's {channels} channels "
                         f"(axis 1), got {pieces}")
    return pieces


def _grouped(x, pieces):
    n, cp = x.shape[:2]
    return x.reshape((n, cp // pieces, pieces) + tuple(x.shape[2:]))


def maxout_forward(x, pieces):
    """Return ``(y, idx)``: ``y (N, C, ...)`` the group maxima, ``idx`` the index (in
    ``[0, pieces)``) of the first maximal input of each group, same shape as ``y``."""
    if pieces.__class__ is not int or pieces < 1 or x.shape[1] % pieces:
        pieces = _pieces("maxout_forward", pieces, x.shape[1])
    xp = get_array_module(x)
    g = _grouped(x, pieces)
    y = g.max(axis=2)
    # First maximum, written out so that ties resolve the same way on every backend:
    # scan the pieces from the last to the first; the last write is the smallest index.
    idx = xp.full(y.shape, pieces - 1, dtype=numpy.uint8 if pieces < 256 else numpy.int32)
    for k in range(pieces - 2, -1, -1):
        idx = xp.where(g[:, :, k] == y, idx.dtype.type(k), idx)
    return y, idx


def maxout_backward(dy, idx, pieces):
    """``dx (N, C·pieces, ...)``: ``dy`` routed to the winning input of each group, 0 elsewhere."""
    if pieces.__class__ is not int or pieces < 1:
        pieces = _pieces("maxout_backward", pieces)
    xp = get_array_module(dy, idx)
    k = xp.arange(pieces, dtype=idx.dtype).reshape((1, 1, pieces) + (1,) * (dy.ndim - 2))
    onehot = idx[:, :, None] == k
    dx = onehot * dy[:, :, None]          # bool × float keeps dy's dtype
    return dx.reshape((dy.shape[0], dy.shape[1] * pieces) + tuple(dy.shape[2:]))
