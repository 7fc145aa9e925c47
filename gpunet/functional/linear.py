"""The affine map of a Dense layer, forward above backward.

Forward: ``y = x @ W.T + b`` with ``x (N, in)``, ``W (out, in)`` (PyTorch's layout), ``b (out,)``.
Backward by the chain rule, for ``dy = dL/dy`` of shape ``(N, out)``:
``dx = dy @ W``, ``dW = dy.T @ x``, ``db = Σ_n dy``.
"""
from __future__ import annotations

from ..backend import get_array_module


def linear(x, weight, bias=None):
    xp = get_array_module(x, weight, bias)
    y = xp.matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y


def linear_backward(dy, x, weight, need_dx=True, need_bias=True):
    """Return ``(dx, dweight, dbias)``; ``dx`` is None when ``need_dx`` is False (the first
    layer of a network need not compute it), ``dbias`` None when there is no bias."""
    xp = get_array_module(dy, x, weight)
    dw = xp.matmul(dy.T, x)
    db = dy.sum(axis=0) if need_bias else None
    dx = xp.matmul(dy, weight) if need_dx else None
    return dx, dw, db
