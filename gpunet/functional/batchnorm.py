"""Batch normalization, forward above backward, one op over ``(N, C)`` or ``(N, C, H, W)``.

Statistics are per channel ``c`` (axis 1), over the ``M = N·H·W`` values of the batch
(``M = N`` for 2-D input):

    mean_c = Σ x / M,   var_c = Σ (x - mean_c)² / M          (biased: used to normalize)
    inv_std_c = 1 / sqrt(var_c + eps)
    x̂ = (x - mean_c) · inv_std_c,      y = gamma_c · x̂ + beta_c

Backward (the closed form, with the sums over the same M values of a channel):

    dbeta_c  = Σ dy,      dgamma_c = Σ dy · x̂
    dx = gamma_c · inv_std_c / M · (M·dy - dbeta_c - x̂ · dgamma_c)

A constant channel has ``var = 0``, so ``inv_std = 1/sqrt(eps)``, ``x̂ = 0``, ``y = beta``,
and the gradient stays finite. ``gamma``/``beta`` may be None (no affine part: gamma 1,
beta 0). The running statistics (momentum, unbiased variance) are the layer's business
(``gpunet.layers.BatchNorm``); ``batch_norm_eval`` applies them.

Everything is computed in ``x``'s dtype (``eps`` is a Python float), except for float16
``x`` (mixed precision): then the arithmetic, the statistics ``mean``/``var``/``inv_std``
and ``dgamma``/``dbeta`` are float32 (``gamma``/``beta`` are used as float32), and ``y`` and
``dx`` are float16, each element rounded once. When ``x`` is a CuPy array, the fused
kernels of ``kernels/batchnorm.cu`` (through ``gpunet.cuda``; with ``__half`` variants)
run instead of the NumPy body.

On NumPy, a 4-D ``x`` in channel-major memory (CHWN, as a CPU convolution leaves it, or
CNHW) is normalized one channel at a time over its own ``(C, M)`` rows, so each channel's
passes run from cache; ``y`` and ``dx`` keep that memory order. Same formulas; the sums
run over the rows (a different order of additions than the whole-tensor reductions).
"""
from __future__ import annotations

import math

import numpy

from .. import _args
from ..backend import get_array_module
from .linear import same_dtype
from .layout import ORDERS, copy_as, memory_order


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(x):
    """Shape that broadcasts a per-channel ``(C,)`` vector against ``x``."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _channel_rows(a):
    """``a (N, C, H, W)`` as ``(C, M)`` rows of its own memory when that memory is
    channel-major (CHWN, as a CPU convolution leaves it, or CNHW), with the function that
    turns ``(C, M)`` rows of that order back into an ``(N, C, H, W)`` view; else None."""
    name = memory_order(a) if a.ndim == 4 else None
    if name not in ("chwn", "cnhw"):
        return None
    t = a.transpose(ORDERS[name])
    back = tuple(numpy.argsort(ORDERS[name]))
    return t.reshape(a.shape[1], -1), (lambda r: r.reshape(t.shape).transpose(back))


def _f32(*vs):
    """The per-channel vectors of a float16 computation as float32 (None stays None)."""
    return [v if v is None or v.dtype == numpy.float32 else v.astype(numpy.float32)
            for v in vs]


def _check_affine(name, x, named):
    """``gamma``/``beta`` (and the like, ``named``) of ``x``'s dtype, or float32 for a float16
    ``x`` (mixed precision), else ``ValueError`` naming the op (``linear``'s check): on NumPy
    a mix was computed in one dtype or another (a float64 gamma: a float32 output in
    training mode, a float64 one in eval mode), where the device's kernels refused it."""
    if x.dtype == numpy.float16:
        named = [(what, a) for what, a in named if a is None or a.dtype != numpy.float32]
    same_dtype(name, x, named)


def batch_norm_forward(x, gamma, beta, eps=1e-5, running=None):
    """Training-mode batch norm. ``x (N, C[, H, W])``, ``gamma``/``beta`` ``(C,)`` or None.

    Returns ``(y, mean, var, inv_std)``: ``y`` like ``x``; the batch statistics ``(C,)``,
    ``var`` biased (divided by M). ``running`` (device arrays only): None, or
    ``(running_mean, running_var, momentum)`` of the statistics' dtype, updated in place by
    the statistics kernel (``gpunet.cuda.batchnorm_forward``).
    """
    if eps.__class__ is not float or not 0.0 < eps < math.inf:    # -1 gave NaN, "x" failed in float()
        eps = _args.real("batch_norm_forward", "eps", eps, low=0, low_open=True)
    xp = get_array_module(x, gamma, beta)
    _check_affine("batch_norm_forward", x, (("gamma", gamma), ("beta", beta)))
    if x.dtype == numpy.float16:
        gamma, beta = _f32(gamma, beta)
    if xp is not numpy:
        from .. import cuda
        return cuda.batchnorm_forward(x, gamma, beta, eps, running)   # gamma/beta None: 1 / 0
    if running is not None:
        raise ValueError("batch_norm_forward: running= is for device arrays; on the host the "
                         "caller updates the running statistics")
    if x.dtype == numpy.float16:    # float32 inside, y rounded once
        y, mean, var, inv_std = batch_norm_forward(x.astype(numpy.float32), gamma, beta, eps)
        return y.astype(numpy.float16), mean, var, inv_std
    rows = _channel_rows(x)
    if rows is not None:
        return _forward_rows(rows[0], rows[1], gamma, beta, eps)
    axes, s = _axes(x), _bcast(x)
    mean = x.mean(axis=axes)
    y = x - mean.reshape(s)                 # two passes: stable when |mean| >> std
    var = (y * y).mean(axis=axes)
    inv_std = 1.0 / numpy.sqrt(var + eps)
    y *= inv_std.reshape(s)                 # x̂
    if gamma is not None:
        y *= gamma.reshape(s)
    if beta is not None:
        y += beta.reshape(s)
    return y, mean, var, inv_std


def _forward_rows(r, back, gamma, beta, eps):
    """The forward over channel rows ``r (C, M)`` (channel-major memory), one channel at a
    time: a channel's 200 KiB or so then stays in cache through its passes, where the
    whole-tensor passes stream the batch from memory once each (and reduce over strided
    axes); (64, 16, 28, 28) in CHWN memory: 4.25 -> 1.61 ms. The same formulas."""
    c = r.shape[0]
    y = numpy.empty_like(r)
    mean = r.mean(axis=1)
    var = numpy.empty(c, dtype=r.dtype)
    for i in range(c):
        yi = y[i]
        numpy.subtract(r[i], mean[i], out=yi)
        var[i] = numpy.square(yi).mean()
    inv_std = 1.0 / numpy.sqrt(var + eps)
    for i in range(c):
        yi = y[i]
        yi *= inv_std[i]
        if gamma is not None:
            yi *= gamma[i]
        if beta is not None:
            yi += beta[i]
    return back(y), mean, var, inv_std


def batch_norm_backward(dy, x, gamma, mean, inv_std):
    """Gradients of training-mode batch norm; ``mean``/``inv_std`` are the forward's.

    Returns ``(dx, dgamma, dbeta)`` (``dgamma``/``dbeta`` ``(C,)``, computed even when
    ``gamma`` is None: they are then the gradients of an identity affine part).
    """
    xp = get_array_module(dy, x, gamma, mean, inv_std)
    _check_affine("batch_norm_backward", x, (("gamma", gamma),))
    if x.dtype == numpy.float16:
        gamma, mean, inv_std = _f32(gamma, mean, inv_std)
    if xp is not numpy:
        from .. import cuda
        return cuda.batchnorm_backward(dy, x, gamma, mean, inv_std)
    if x.dtype == numpy.float16:    # float32 inside, dx rounded once
        if dy.dtype != numpy.float16:
            raise ValueError(f"batch_norm_backward: expected float16 dy for float16 x, got {dy.dtype}")
        dx, dgamma, dbeta = batch_norm_backward(dy.astype(numpy.float32), x.astype(numpy.float32),
                                                gamma, mean, inv_std)
        return dx.astype(numpy.float16), dgamma, dbeta
    rows = _channel_rows(x)
    if rows is not None:
        if dy.strides != x.strides:     # dy in x's memory order first (one copy)
            dy = copy_as(dy, x)
        return _backward_rows(_channel_rows(dy)[0], rows[0], rows[1], gamma, mean, inv_std)
    axes, s = _axes(x), _bcast(x)
    m = x.size // x.shape[1]
    xhat = x - mean.reshape(s)
    xhat *= inv_std.reshape(s)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    k = inv_std * (1.0 / m) if gamma is None else gamma * inv_std * (1.0 / m)
    dx = dy * float(m)
    dx -= dbeta.reshape(s)
    xhat *= dgamma.reshape(s)
    dx -= xhat
    dx *= k.reshape(s)
    return dx, dgamma, dbeta


def _backward_rows(dy, x, back, gamma, mean, inv_std):
    """The backward over channel rows ``dy``, ``x (C, M)``, one channel at a time (see
    :func:`_forward_rows`). The same formulas as the whole-tensor body."""
    c, m = x.shape
    dx = numpy.empty_like(x)
    dgamma = numpy.empty(c, dtype=x.dtype)
    dbeta = dy.sum(axis=1)
    xhat = numpy.empty(m, dtype=x.dtype)
    k = inv_std * (1.0 / m) if gamma is None else gamma * inv_std * (1.0 / m)
    for i in range(c):
        dxi = dx[i]
        numpy.subtract(x[i], mean[i], out=xhat)
        xhat *= inv_std[i]
        numpy.multiply(dy[i], xhat, out=dxi)
        dgamma[i] = dxi.sum()
        numpy.multiply(dy[i], float(m), out=dxi)
        dxi -= dbeta[i]
        xhat *= dgamma[i]
        dxi -= xhat
        dxi *= k[i]
    return back(dx), dgamma, dbeta


def batch_norm_eval(x, running_mean, running_var, gamma, beta, eps=1e-5):
    """Eval-mode batch norm with fixed statistics:
    ``y = (x - running_mean) / sqrt(running_var + eps) · gamma + beta``, folded into one
    per-channel scale and shift. The statistics are cast to ``x``'s dtype; a float16 ``x``
    is computed in float32 and ``y`` rounded once. ``gamma``/``beta`` are of ``x``'s dtype
    (float32 for a float16 ``x``), as in ``batch_norm_forward`` (``ValueError`` otherwise)."""
    if eps.__class__ is not float or not 0.0 < eps < math.inf:
        eps = _args.real("batch_norm_eval", "eps", eps, low=0, low_open=True)
    xp = get_array_module(x, running_mean, running_var, gamma, beta)
    _check_affine("batch_norm_eval", x, (("gamma", gamma), ("beta", beta)))
    if x.dtype == numpy.float16:
        return batch_norm_eval(x.astype(numpy.float32), *_f32(running_mean, running_var, gamma, beta),
                               eps).astype(numpy.float16)
    s = _bcast(x)
    scale = 1.0 / xp.sqrt(running_var.astype(x.dtype, copy=False) + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -running_mean.astype(x.dtype, copy=False) * scale
    if beta is not None:
        shift += beta
    y = x * scale.reshape(s)
    y += shift.reshape(s)
    return y
