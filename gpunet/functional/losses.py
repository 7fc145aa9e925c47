"""Losses as plain functions, each returning ``(loss, dinput)`` in one pass.

``loss`` is on the input's device and in its dtype (float32 for softmax cross-entropy of
float16 logits): a 0-d array for ``reduction="mean"``
(the default) or ``"sum"``, the unreduced per-row (per-element) losses for ``"none"``;
these are PyTorch's meanings. ``dinput`` is the gradient with respect to the first argument
of the reduced loss, and for ``"none"`` of the sum of the unreduced losses (what PyTorch's
``loss.backward(torch.ones_like(loss))`` gives). An empty batch raises ``ValueError``.
"""
from __future__ import annotations

import math
import numbers

import numpy

from .. import _args
from ..backend import array_hint, device_mismatch, get_array_module, is_array


def _module(name, what, x, other_what, other):
    """The array module of a loss's two arrays; on two devices, ``TypeError`` naming the loss,
    both arguments and their devices, and the move that fixes it (the second argument goes
    where the first, the model's output, is)."""
    if type(x) is type(other) is numpy.ndarray:     # the CPU's every call: one comparison
        return numpy
    _check_array(name, other_what, other)   # a list is not "on the host": it is not an array
    bad = device_mismatch(x, other)
    if bad is not None:
        dx, do = bad
        raise TypeError(f"{name}: expected {other_what} on {dx} (the device of the {what}), got them on "
                        f"{do}; move them with gpunet.to_device({other_what}, {dx!r})")
    return get_array_module(x, other)


def _check_array(name, what, a):
    """A loss takes NumPy or CuPy arrays, as PyTorch's take tensors: anything else (a list,
    a number) raises ``TypeError`` naming the loss and the argument."""
    if not is_array(a):
        raise TypeError(f"{name}: expected {what} as a NumPy or CuPy array, got {type(a).__name__}{array_hint(a)}")


def _check_logits(name, logits):
    _check_array(name, "logits", logits)
    if logits.ndim != 2:
        raise ValueError(f"{name}: expected logits of shape (N, C), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"{name}: expected floating-point logits, got {logits.dtype.name}")


def check_labels(name, logits, labels, ignore_index=None, check_values=True):
    """Validate labels for (N, C) logits: int class indices (N,) in [0, C) (or
    ``ignore_index``), or probabilities (N, C). Raises ``ValueError``/``TypeError``.
    ``check_values=False`` checks shapes and dtypes only (the CUDA kernel checks the
    values itself, on the device; see ``softmax_cross_entropy``)."""
    n, c = logits.shape
    _check_array(name, "labels", labels)
    xp = get_array_module(logits, labels)
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            # float or bool labels (a habit from Keras, y read from a CSV, y = column == "yes")
            # and class names: say how to make the integer indices PyTorch's CrossEntropyLoss
            # takes too
            hint = ("; class labels are integer indices: y.astype(numpy.int64)" if labels.dtype.kind in "fb"
                    else "; map class names to indices 0..C-1 first: "
                         "names, y = numpy.unique(y, return_inverse=True)" if labels.dtype.kind in "US"
                    else "")
            raise ValueError(f"{name}: expected integer class labels of shape ({n},), got dtype "
                             f"{labels.dtype.name}{hint}")
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
            also = "" if ignore_index is None else f" (or equal ignore_index={ignore_index})"
            raise ValueError(f"{name}: labels must lie in [0, {c}){also}; got {int(labels[i])} "
                             f"at row {i}{label_range_hint(int(labels[i]), c, ignore_index)}")
    elif labels.ndim == 2:
        if labels.shape != logits.shape:
            # (N, 1) integer labels are Keras' sparse labels: gpunet (as PyTorch) takes them 1-D
            hint = ("; class indices go as a 1-D array: y.ravel()"
                    if labels.shape == (n, 1) and labels.dtype.kind in "iu" else "")
            raise ValueError(f"{name}: expected probability targets of shape {tuple(logits.shape)} "
                             f"or integer class labels of shape ({n},), got {tuple(labels.shape)}{hint}")
        if labels.dtype.kind != "f":
            raise ValueError(f"{name}: expected floating-point probability targets, got {labels.dtype.name}; "
                             f"pass one-hot rows as floats (y.astype(logits.dtype)) or class indices "
                             f"(y.argmax(1))")
    else:
        raise ValueError(f"{name}: expected labels of shape ({n},) or ({n}, {c}), got {tuple(labels.shape)}")


def label_range_hint(label, c, ignore_index=None):
    """What a label outside ``[0, C)`` most often means (this check's and the CUDA kernel's
    message): ``C`` or more, labels numbered from 1 or a last layer with too few outputs; a
    negative one without ``ignore_index``, padding meant to be skipped."""
    if c == 1:      # softmax over one column is 1 whatever the logit: the loss learns nothing
        return (" (the logits have 1 column: two classes with one output go with BCEWithLogits and "
                "float 0/1 targets of shape (N, 1), or give the last layer 2 outputs)")
    if label >= c:
        return (f" (the logits have {c} columns, one per class: labels numbered from 1 need y - 1, "
                f"more classes need a last layer with more outputs)")
    if ignore_index is None:
        return f" (if such rows are padding to skip: SoftmaxCrossEntropy(ignore_index={label}))"
    return ""


# -- reductions ------------------------------------------------------------------------------
REDUCTIONS = ("mean", "sum", "none")


def _data_for_a_setting(name, what, value):
    """An array where a loss's setting belongs is data given to the loss's constructor
    (``SoftmaxCrossEntropy(logits, labels)``, as ``F.cross_entropy(logits, y)`` takes it):
    ``TypeError`` saying that a loss is an object, called on the data (never the array's
    printout, which the range error would show). A NumPy scalar (``numpy.float32(0.1)``) is
    a number, not data."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, numpy.generic):
        hint = (f"; a loss is an object called on the data: {name}()(prediction, target)"
                if name[:1].isupper() else "")           # a class's name, not a function's
        raise TypeError(f"{name}: expected {what}, got an array of shape {tuple(value.shape)}{hint}")


def check_reduction(name, reduction):
    """``reduction`` must be one of ``"mean"``, ``"sum"``, ``"none"`` (PyTorch's meanings)."""
    _data_for_a_setting(name, "reduction 'mean', 'sum' or 'none'", reduction)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        keras = ("; Keras' 'sum_over_batch_size' is 'mean'" if reduction in ("sum_over_batch_size", "auto")
                 else "")
        raise ValueError(f"{name}: expected reduction 'mean', 'sum' or 'none', got {reduction!r}{keras}")
    return reduction


def check_label_smoothing(name, value):
    """``label_smoothing`` must be a real number in ``[0, 1]``; returns it as a float."""
    _data_for_a_setting(name, "label_smoothing in [0, 1]", value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {value!r}")
    return float(value)


def check_nonempty(name, what, x):
    """A loss of nothing is a bug upstream (an empty batch), not 0: raise ``ValueError``."""
    if x.size == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got {what} of shape {tuple(x.shape)}")


def _reduce(elementwise, reduction):
    """The reduced loss of a per-element (or per-row) loss array."""
    if reduction == "none":
        return elementwise
    return elementwise.mean() if reduction == "mean" else elementwise.sum()


# -- softmax cross-entropy ---------------------------------------------------------------
def softmax_cross_entropy(logits, labels, label_smoothing=0.0, ignore_index=None, reduction="mean",
                          grad_scale=1.0):
    """Fused softmax + cross-entropy: ``(loss, dlogits)``.

    Row loss ``l_n = logsumexp(z_n) - Σ_c t_nc z_nc``, where the target ``t`` is the one-hot
    of an integer label (or the given probability row), smoothed as ``(1-ε)·t + ε/C``.
    Rows whose label is ``ignore_index`` have ``l_n = 0`` and a zero gradient.
    ``reduction`` (PyTorch's meanings): ``"mean"``: ``Σ l_n / N_valid`` (``N_valid`` counts the
    rows not ignored; all of them for probability targets), gradient
    ``(softmax(z) - t) / N_valid``; ``"sum"``: ``Σ l_n``, gradient ``softmax(z) - t``;
    ``"none"``: the ``(N,)`` vector of ``l_n`` (0 on ignored rows, as PyTorch), and the
    gradient of its sum, ``softmax(z) - t``. With every row ignored the loss and gradient
    are zero (PyTorch gives NaN for ``"mean"``). An empty batch raises ``ValueError``.
    The row max is subtracted first, so logits of ±1e4 stay finite. On CuPy arrays, one
    fused kernel (``kernels/softmax_xent.cu``) does both.

    A label outside ``[0, C)`` (other than ``ignore_index``) raises ``ValueError`` naming
    it. NumPy raises at once. On a GPU (CuPy, the sim) the check runs on the device, with
    no host sync: the error is delayed, like CUDA's asynchronous errors but named, until
    the loss is read on the host (``float(loss)``, ``loss.item()``, printing it) — that
    loss is NaN, and so is every softmax-CE loss computed until the error is raised — or
    until ``Trainer`` checks, at its progress refreshes and at the latest at the end of the
    epoch (``from gpunet.cuda.softmax_xent import raise_label_error``; ``raise_label_error(x)``
    checks the device of array ``x`` explicitly, one sync).

    float16 logits (mixed precision) are computed in float32: the loss is float32 and
    ``dlogits`` float16, each element rounded once (on a device, one kernel reads the half
    logits). ``grad_scale`` (a finite float > 0, default 1) multiplies the gradient before
    that rounding, for loss scaling (pass ``GradScaler.get_scale()``; the loss is not
    scaled): unscaled, gradients below float16's 6e-8 would be flushed to zero first.
    """
    name = "softmax_cross_entropy"
    _check_logits(name, logits)
    check_nonempty(name, "logits", logits)
    check_reduction(name, reduction)
    xp = _module(name, "logits", logits, "labels", labels)
    if ignore_index is not None and ignore_index.__class__ is not int:   # "1" was compared, never equal
        ignore_index = _args.integer(name, "ignore_index", ignore_index, none=True)
    check_labels(name, logits, labels, ignore_index, check_values=xp is numpy)
    eps = check_label_smoothing(name, label_smoothing)
    if grad_scale.__class__ is not float or not 0.0 < grad_scale < math.inf:
        grad_scale = _args.real(name, "grad_scale", grad_scale, low=0, low_open=True)
    if xp is not numpy:
        from .. import cuda
        return cuda.softmax_xent(logits, labels, eps, ignore_index, reduction, grad_scale)
    if logits.dtype == numpy.float16:   # float32 inside, the gradient rounded once
        loss, dz = softmax_cross_entropy(logits.astype(numpy.float32), labels, eps,
                                         ignore_index, reduction, grad_scale)
        return loss, dz.astype(numpy.float16)

    n, c = logits.shape
    # Shift by the row max (exp never overflows), gather what the loss needs from the
    # shifted logits, then exponentiate in place and scale by 1/row sum (and 1/N_valid for
    # the mean) in one multiply: the one (N, C) buffer becomes dlogits.
    z = numpy.subtract(logits, logits.max(axis=1, keepdims=True))
    if labels.ndim == 1:
        w = None                                    # 1 on rows not ignored, 0 on ignored ones
        idx, n_valid = labels, n
        if ignore_index is not None:
            valid = labels != ignore_index
            n_valid = int(numpy.count_nonzero(valid))
            if n_valid == 0:
                return _all_ignored(logits, reduction)
            idx = numpy.where(valid, labels, 0)
            w = valid.astype(logits.dtype)
        rows = numpy.arange(n)
        tz = (1.0 - eps) * z[rows, idx]             # Σ_c t_c z_c, t = (1-ε) onehot + ε/C
        if eps:
            tz += (eps / c) * z.sum(axis=1)
    else:
        t = labels.astype(logits.dtype, copy=False)
        if eps:
            t = (1.0 - eps) * t + eps / c
        t_sum = t.sum(axis=1)
        tz = numpy.einsum("ij,ij->i", t, z)
        n_valid = n
    scale = 1.0 / n_valid if reduction == "mean" else 1.0
    g = scale * grad_scale                          # the gradient's scale
    p = numpy.exp(z, out=z)
    s = p.sum(axis=1, keepdims=True)
    log_s = numpy.log(s[:, 0])                      # logsumexp of the shifted row
    if labels.ndim == 1:                            # Σ t = 1
        row = log_s - tz
        f = numpy.divide(g, s)
        if w is not None:
            row *= w
            f *= w[:, None]
        p *= f                                      # softmax · scale
        p[rows, idx] -= (1.0 - eps) * g if w is None else w * ((1.0 - eps) * g)
        if eps:
            p -= (eps / c * g) if w is None else (eps / c * g) * w[:, None]
    else:
        row = log_s * t_sum - tz
        p *= numpy.divide(t_sum[:, None], s)
        p -= t
        p *= g
    loss = row if reduction == "none" else row.sum() * scale
    return numpy.asarray(loss, dtype=logits.dtype), p


def _all_ignored(logits, reduction):
    # every row ignored: PyTorch's mean is NaN (0/0); gpunet returns 0 loss and 0 gradient,
    # so a batch of padding cannot poison training
    shape = (logits.shape[0],) if reduction == "none" else ()
    return numpy.zeros(shape, dtype=logits.dtype), numpy.zeros_like(logits)


def _check_pair(name, what, x, y):
    """An elementwise loss takes a non-empty floating-point ``x`` and targets ``y`` of its shape."""
    _check_array(name, what, x)
    _check_array(name, "targets", y)
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: expected floating-point {what}, got {x.dtype}")
    if tuple(y.shape) != tuple(x.shape):
        # one output per sample against 1-D targets (or the reverse): the usual regression
        # slip, which PyTorch broadcasts to (N, N) with a warning
        xs, ys = tuple(x.shape), tuple(y.shape)
        hint = ("; one target per sample goes as a column: targets.reshape(-1, 1)" if xs == ys + (1,)
                else "; one target per sample goes as a 1-D array: targets.ravel()" if ys == xs + (1,) else "")
        raise ValueError(f"{name}: expected targets of shape {xs}, got {ys}{hint}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real-valued (floating, integer or bool) targets, got {y.dtype.name}")
    check_nonempty(name, what, x)


# -- binary cross-entropy with logits ----------------------------------------------------------
def bce_with_logits(z, y, reduction="mean"):
    """Elementwise ``l = max(z,0) - z·y + log1p(e^-|z|)``, finite for any finite z, reduced
    by ``reduction`` (``"mean"`` over all elements, ``"sum"``, or ``"none"``: ``l`` itself,
    shaped like ``z``). Gradient: ``(σ(z) - y) / numel`` for the mean, ``σ(z) - y`` for
    ``"sum"`` and ``"none"`` (the gradient of ``Σ l``)."""
    name = "bce_with_logits"
    _check_pair(name, "logits", z, y)
    check_reduction(name, reduction)
    xp = _module(name, "logits", z, "targets", y)
    if z.ndim == 0 and xp is numpy:
        # one logit (PyTorch takes 0-d too): NumPy's ufuncs return scalars for 0-d arrays,
        # which the out= passes below cannot write into; computed as shape (1,)
        loss, dz = bce_with_logits(z.reshape(1), y.reshape(1), reduction)
        return loss.reshape(()), dz.reshape(())
    y = y.astype(z.dtype, copy=False)
    e = xp.abs(z)
    xp.negative(e, out=e)
    xp.exp(e, out=e)                                # e^-|z| <= 1
    t = xp.log1p(e)
    t += xp.maximum(z, 0)
    t -= z * y
    loss = _reduce(t, reduction)
    # σ(z) = 1/(1+e) for z >= 0, e/(1+e) below: the numerator is max(e, [z >= 0]) since
    # e <= 1 (no xp.where, which is slow on mixed signs)
    dz = (z >= 0).astype(z.dtype)
    xp.maximum(dz, e, out=dz)
    e += 1.0
    dz /= e
    dz -= y
    if reduction == "mean":
        dz *= 1.0 / z.size
    return xp.asarray(loss, dtype=z.dtype), dz


# -- mean squared error -----------------------------------------------------------------------
def mse(x, y, reduction="mean"):
    """Elementwise ``l = (x - y)²`` reduced by ``reduction`` (``"mean"`` over all elements,
    ``"sum"``, or ``"none"``: ``l`` shaped like ``x``). Gradient ``2 (x - y) / numel`` for the
    mean, ``2 (x - y)`` for ``"sum"`` and ``"none"`` (the gradient of ``Σ l``)."""
    name = "mse"
    _check_pair(name, "input", x, y)
    check_reduction(name, reduction)
    xp = _module(name, "input", x, "targets", y)
    # into an array even for a 0-d x (x - y would be a NumPy scalar there, and the gradient too)
    d = xp.subtract(x, y.astype(x.dtype, copy=False), out=xp.empty_like(x))
    loss = xp.asarray(_reduce(d * d, reduction), dtype=x.dtype)
    d *= 2.0 / x.size if reduction == "mean" else 2.0
    return loss, d
