"""Losses as plain functions, each returning ``(loss, dinput)`` in one pass.

``loss`` is a 0-d array on the input's device and in its dtype; ``dinput`` is the gradient of
that (mean) loss with respect to the first argument.
"""
from __future__ import annotations

import numpy

from ..backend import get_array_module


def _check_logits(name, logits):
    if not hasattr(logits, "ndim") or logits.ndim != 2:
        raise ValueError(f"{name}: expected logits of shape (N, C), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"{name}: expected floating-point logits, got {logits.dtype.name}")


def check_labels(name, logits, labels, ignore_index=None, check_values=True):
    """Validate labels for (N, C) logits: int class indices (N,) in [0, C) (or
    ``ignore_index``), or probabilities (N, C). Raises ``ValueError``/``TypeError``.
    ``check_values=False`` checks shapes and dtypes only (the CUDA launcher checks the
    values itself, in the same device round trip that counts the valid rows)."""
    n, c = logits.shape
    if not hasattr(labels, "ndim"):
        raise TypeError(f"{name}: expected labels as an array, got {type(labels).__name__}")
    xp = get_array_module(logits, labels)
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer class labels of shape ({n},), got dtype {labels.dtype.name}")
        if labels.shape[0] != n:
            raise ValueError(f"{name}: expected {n} labels (one per logits row), got {labels.shape[0]}")
        if n == 0:
            return
        if xp is numpy:   # two reductions decide the common case; the mask only on failure
            if labels.min() >= 0 and labels.max() < c:
                return
        if not check_values:
            return
        bad = (labels < 0) | (labels >= c)
        if ignore_index is not None:
            bad &= labels != ignore_index
        if bool(bad.any()):
            i = int(xp.argmax(bad))
            raise ValueError(f"{name}: labels must lie in [0, {c}) (or equal ignore_index="
                             f"{ignore_index}); got {int(labels[i])} at row {i}")
    elif labels.ndim == 2:
        if labels.shape != logits.shape:
            raise ValueError(f"{name}: expected probability targets of shape {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.kind != "f":
            raise ValueError(f"{name}: expected floating-point probability targets, got {labels.dtype.name}")
    else:
        raise ValueError(f"{name}: expected labels of shape ({n},) or ({n}, {c}), got {tuple(labels.shape)}")


# -- softmax cross-entropy ---------------------------------------------------------------
def softmax_cross_entropy(logits, labels, label_smoothing=0.0, ignore_index=None):
    """Fused softmax + cross-entropy: ``(loss, dlogits)``.

    ``loss = mean_n [ logsumexp(z_n) - Σ_c t_nc z_nc ]`` over the rows not ignored, where the
    target ``t`` is the one-hot of an integer label (or the given probability row), smoothed
    as ``(1-ε)·t + ε/C``. The gradient is ``(softmax(z) - t) / N_valid``; ignored rows get
    zero loss and zero gradient. The row max is subtracted first, so logits of ±1e4 stay
    finite. On CuPy arrays, one fused kernel (``kernels/softmax_xent.cu``) does both.
    """
    name = "softmax_cross_entropy"
    _check_logits(name, logits)
    xp = get_array_module(logits, labels)
    check_labels(name, logits, labels, ignore_index, check_values=xp is numpy)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    if xp is not numpy:
        from .. import cuda
        return cuda.softmax_xent(logits, labels, eps, ignore_index)

    n, c = logits.shape
    # Shift by the row max (exp never overflows), gather what the loss needs from the
    # shifted logits, then exponentiate in place and scale by 1/(N_valid·row sum) in one
    # multiply: the one (N, C) buffer becomes dlogits.
    z = numpy.subtract(logits, logits.max(axis=1, keepdims=True))
    if labels.ndim == 1:
        if ignore_index is None:
            valid, idx, n_valid = None, labels, n
        else:
            valid = labels != ignore_index
            idx = numpy.where(valid, labels, 0)
            n_valid = int(numpy.count_nonzero(valid))
        if n_valid == 0:
            return _all_ignored(logits)
        rows = numpy.arange(n)
        z_y = z[rows, idx]
        z_sum = z.sum(axis=1) if eps else None
    else:
        t = labels.astype(logits.dtype, copy=False)
        if eps:
            t = (1.0 - eps) * t + eps / c
        t_sum = t.sum(axis=1)
        tz = numpy.einsum("ij,ij->i", t, z)
        n_valid = n
        if n == 0:
            return _all_ignored(logits)
    scale = 1.0 / n_valid
    p = numpy.exp(z, out=z)
    s = p.sum(axis=1, keepdims=True)
    log_s = numpy.log(s[:, 0])                      # logsumexp of the shifted row
    if labels.ndim == 1:
        # row loss = log s - Σ_c t_c z_c,  t = (1-ε) onehot + ε/C
        f = numpy.divide(scale, s)
        if valid is not None:
            w = valid.astype(logits.dtype)
            f *= w[:, None]
            on = w * ((1.0 - eps) * scale)
            total = numpy.dot(w, log_s) - (1.0 - eps) * numpy.dot(w, z_y)
            if eps:
                total -= (eps / c) * numpy.dot(w, z_sum)
        else:
            on = (1.0 - eps) * scale
            total = log_s.sum() - (1.0 - eps) * z_y.sum()
            if eps:
                total -= (eps / c) * z_sum.sum()
        p *= f                                      # softmax / N_valid
        p[rows, idx] -= on                          # - (1-ε) onehot / N_valid
        if eps:
            p -= (eps / c * scale) if valid is None else (eps / c * scale) * w[:, None]
        dz = p
    else:
        total = numpy.dot(log_s, t_sum) - tz.sum()
        p *= numpy.divide(t_sum[:, None], s)
        p -= t
        p *= scale
        dz = p
    loss = numpy.asarray(total * scale, dtype=logits.dtype)
    return loss, dz


def _all_ignored(logits):
    # every row ignored: PyTorch returns NaN; gpunet returns 0 loss and 0 gradient,
    # so a batch of padding cannot poison training.
    return numpy.zeros((), dtype=logits.dtype), numpy.zeros_like(logits)


def _check_pair(name, what, x, y):
    """An elementwise loss takes a floating-point ``x`` and targets ``y`` of its shape."""
    if not hasattr(x, "shape") or x.dtype.kind != "f":
        raise ValueError(f"{name}: expected floating-point {what}, got {getattr(x, 'dtype', type(x).__name__)}")
    if not hasattr(y, "shape") or tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{name}: expected targets of shape {tuple(x.shape)}, got {tuple(getattr(y, 'shape', ()))}")


# -- binary cross-entropy with logits ----------------------------------------------------------
def bce_with_logits(z, y):
    """``mean( max(z,0) - z·y + log1p(e^-|z|) )``, finite for any finite z; gradient
    ``(σ(z) - y) / numel``."""
    _check_pair("bce_with_logits", "logits", z, y)
    xp = get_array_module(z, y)
    y = y.astype(z.dtype, copy=False)
    e = xp.abs(z)
    xp.negative(e, out=e)
    xp.exp(e, out=e)                                # e^-|z| <= 1
    t = xp.log1p(e)
    t += xp.maximum(z, 0)
    t -= z * y
    loss = t.mean()
    # σ(z) = 1/(1+e) for z >= 0, e/(1+e) below: the numerator is max(e, [z >= 0]) since
    # e <= 1 (no xp.where, which is slow on mixed signs)
    dz = (z >= 0).astype(z.dtype)
    xp.maximum(dz, e, out=dz)
    e += 1.0
    dz /= e
    dz -= y
    dz *= 1.0 / z.size
    return xp.asarray(loss, dtype=z.dtype), dz


# -- mean squared error -----------------------------------------------------------------------
def mse(x, y):
    """``mean((x - y)²)`` over all elements; gradient ``2 (x - y) / numel``."""
    _check_pair("mse", "input", x, y)
    xp = get_array_module(x, y)
    d = x - y.astype(x.dtype, copy=False)
    loss = xp.asarray((d * d).mean(), dtype=x.dtype)
    d *= 2.0 / x.size
    return loss, d
