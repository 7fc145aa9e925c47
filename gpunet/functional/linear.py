"""The affine map of a Dense layer, forward above backward.

Forward: ``y = x @ W.T + b`` with ``x (N, in)``, ``W (out, in)`` (PyTorch's layout), ``b (out,)``.
Backward by the chain rule, for ``dy = dL/dy`` of shape ``(N, out)``:
``dx = dy @ W``, ``dW = dy.T @ x``, ``db = Σ_n dy``.
"""
from __future__ import annotations

import numpy

from .. import _args
from ..backend import get_array_module


def matmul(a, b):
    """``a @ b``. Two float16 NumPy arrays are multiplied as float32 (BLAS) and the product
    rounded once to float16: NumPy has no float16 GEMM, and its own float16 loop (float32
    accumulation too, the same numbers to rounding) is 25-100x slower. On a GPU a float16
    matmul is cuBLAS's (float32 accumulation), unchanged."""
    if a.dtype == numpy.float16 and b.dtype == numpy.float16 and isinstance(a, numpy.ndarray):
        return numpy.matmul(a.astype(numpy.float32), b.astype(numpy.float32)).astype(numpy.float16)
    return device_matmul(get_array_module(a, b), a, b)


def device_matmul(xp, a, b, out=None):
    """``xp.matmul(a, b, out=out)``, except on CUDA, where gpunet's own cuBLAS call
    (:func:`gpunet.cuda.blas.matmul`, the same ``cublasGemmEx`` CuPy makes) runs instead of
    CuPy's: CuPy refuses every cuBLAS call while a stream captures a CUDA graph, and eager and
    captured steps must compute the same products. Every GEMM of gpunet goes through here
    (``GPUNET_CUBLAS=cupy`` restores CuPy's for eager steps)."""
    if xp.__name__ == "cupy":
        from ..cuda import blas
        if blas.ENABLED:
            return blas.matmul(a, b, out=out)
    return xp.matmul(a, b) if out is None else xp.matmul(a, b, out=out)


def same_dtype(name, x, named):
    """Every array of ``named`` (``(what, array or None)`` pairs) of ``x``'s dtype, else
    ``ValueError`` naming the op (as ``conv2d`` and PyTorch's ``F.linear`` refuse a mix):
    NumPy would promote some mixes (a float64 weight made a float32 input's output float64)
    and round others back in place (a float64 bias added into a float32 output)."""
    for what, a in named:
        if a is not None and a.dtype != x.dtype:
            raise ValueError(f"{name}: input dtype {x.dtype.name} differs from the {what} dtype "
                             f"{a.dtype.name}; cast the {what}: {what}.astype(numpy.{x.dtype.name})")


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``, all of one dtype (``ValueError`` otherwise)."""
    get_array_module(x, weight, bias)
    same_dtype("linear", x, (("weight", weight), ("bias", bias)))
    y = matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y


def linear_backward(dy, x, weight, need_dx=True, need_bias=True):
    """Return ``(dx, dweight, dbias)``; ``dx`` is None when ``need_dx`` is False (the first
    layer of a network need not compute it), ``dbias`` None when there is no bias."""
    if need_dx.__class__ is not bool or need_bias.__class__ is not bool:     # "no" read as True
        need_dx = _args.flag("linear_backward", "need_dx", need_dx)
        need_bias = _args.flag("linear_backward", "need_bias", need_bias)
    get_array_module(dy, x, weight)
    same_dtype("linear_backward", x, (("weight", weight), ("dy", dy)))
    dw = matmul(dy.T, x)
    db = dy.sum(axis=0) if need_bias else None
    dx = matmul(dy, weight) if need_dx else None
    return dx, dw, db
