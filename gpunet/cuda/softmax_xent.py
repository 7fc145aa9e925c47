"""Launcher of the fused softmax cross-entropy kernels (``kernels/softmax_xent.cu``).

Labels are checked on the device, never with a host sync: the kernel flags a label outside
``[0, C)`` in a small per-device status buffer and makes its row loss NaN, and every loss
it computes stays NaN while such an error is pending. The ``ValueError`` naming the label
is raised when a loss is next read on the host (``float(loss)``, ``loss.item()``,
``loss.get()``, printing: the loss is a ``cupy.ndarray`` subclass whose reads check the
flag when the value read is not finite), or by ``raise_label_error`` (``Trainer`` calls
it at its progress refreshes and at the end of every epoch). Like CUDA's asynchronous
errors, it surfaces later than the call that caused it, but it is named; unlike them it
is cleared once raised.

The flag belongs to the device, not to a call: a bad call whose loss is never read leaves
it set, and the next read of any later loss on that device (NaN, as said) raises it. That
is what lets ``Trainer`` read only an accumulated loss record, never a step's loss; the
message says so. To tie the error to one call, read that call's loss (or call
``raise_label_error``) before the next.
"""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _HALF_CTYPE, _WARP_ITEMS, _acc_dtype, _cupy_for, _device, _float_array, kernel

# per device: long long[8], the kernels' label status (layout in kernels/softmax_xent.cu)
_status: dict = {}
# per (device, dtype, kind): the gradient's divisor the hard kernels read, "count" (the
# mean's N_valid, counted on the device with ignore_index) or "one" (a constant 1). Never
# None: CuPy 13 passes None as 0xffffffff, not a null pointer (cupy/cupy#9046).
_divisors: dict = {}
_checked: dict = {}     # array class -> its checked-read subclass


def _divisor(cp, dev, dtype, kind):
    d = _divisors.get((dev, dtype, kind))
    if d is None:
        with cp.cuda.Device(0 if dev == "sim" else dev):
            d = _divisors[(dev, dtype, kind)] = (cp.ones if kind == "one" else cp.empty)((1,), dtype)
    return d


def _status_buffer(cp, dev):
    st = _status.get(dev)
    if st is None:
        with cp.cuda.Device(0 if dev == "sim" else dev):
            st = _status[dev] = cp.zeros(8, dtype=cp.int64)
    return st


def raise_label_error(device=None):
    """Raise the ``ValueError`` of a bad label flagged on ``device`` (a CUDA device id,
    ``"sim"``, or an array on that device) since the last check, and clear the flag; a
    no-op when nothing is flagged or the device never ran the kernel. One host sync."""
    if device is not None and not isinstance(device, (int, str)):
        device = _device(device)
    st = _status.get(device)
    if st is None:
        return
    bad, _, label, row, C, has_ignore, ignore_index, _ = (int(v) for v in st.get())
    if bad == 0:
        return
    st.fill(0)
    if has_ignore & 2 and label < 0:    # uint64 labels: the int64 bits of 2**63 and more
        label += 2**64
    has_ignore &= 1
    from ..functional.losses import label_range_hint
    raise ValueError(f"softmax_cross_entropy (gpunet.cuda.softmax_xent): {bad} label(s) outside "
                     f"[0, {C})" + (f" and not ignore_index={ignore_index}" if has_ignore else "")
                     + f", e.g. {label} at row {row}{label_range_hint(label, C, ignore_index if has_ignore else None)}"
                     " (checked on the device and raised at a later "
                     "read: the bad labels were in this or an earlier softmax_xent call on the device, "
                     "and every loss computed while the error was pending is NaN)")


class _CheckedRead:
    """Host reads of a softmax-CE loss: when the value read is not finite, a pending bad
    label on its device raises its ``ValueError`` (``raise_label_error``)."""
    __slots__ = ()

    def _checked(self, value):
        if not numpy.all(numpy.isfinite(value)):
            raise_label_error(_device(self))
        return value

    def get(self, *args, **kwargs):
        return self._checked(super().get(*args, **kwargs))

    def item(self):
        return self._checked(super().item())

    def tolist(self):
        return self.get().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item()) if self.size == 1 else super().__bool__()

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __format__(self, spec):
        h = self.get()
        return format(h if h.ndim else h[()], spec)


def _checked_loss(cp, a):
    """``a`` as its class's checked-read subclass, sharing its memory (no copy, no launch)."""
    base = type(a)
    sub = _checked.get(base)
    if sub is None:
        sub = _checked[base] = type(base.__name__, (_CheckedRead, base),
                                    {"__slots__": (), "__module__": __name__})
    if cp.__name__ == "cupy":
        return sub(a.shape, a.dtype, a.data, a.strides)
    a.__class__ = sub        # the sim's ndarray: same layout, no memptr constructor
    return a


def softmax_xent(logits, labels, label_smoothing=0.0, ignore_index=None, reduction="mean",
                 grad_scale=1.0):
    """Fused softmax cross-entropy: ``(loss, dlogits)``, by default of the mean loss over valid rows.

    ``logits`` (N, C) float16/float32/float64; ``labels`` integer class indices (N,) or
    probabilities (N, C). With ``eps = label_smoothing`` the target of a row is
    ``(1-eps)*onehot(y) + eps/C`` (hard) or ``(1-eps)*q + eps/C`` (soft);
    ``row_loss = sum_j t_j * (logsumexp(z) - z_j)``. ``reduction="mean"``:
    ``loss = sum row_loss / N_valid`` (a 0-d array of logits.dtype) and
    ``dlogits = (softmax * sum(t) - t) / N_valid``; ``"sum"``: ``loss = sum row_loss``,
    ``dlogits = softmax * sum(t) - t``; ``"none"``: ``loss = row_loss`` (N,) with the
    gradient of its sum, as for ``"sum"``. Rows whose label equals ``ignore_index`` have
    ``row_loss = 0`` and a zero gradient; ``N_valid`` counts the others (all rows for soft
    targets). With no valid row the loss and the gradient are zero (gpunet's convention,
    where PyTorch's mean gives NaN), as in the NumPy reference
    ``gpunet.functional.softmax_cross_entropy``.

    Hard labels are checked on the device, without a host sync: a label outside
    ``[0, C)`` (other than ``ignore_index``) gets a zero gradient and a NaN loss, and the
    ``ValueError`` naming it is raised when the loss is read on the host (``float(loss)``)
    or by ``raise_label_error`` (see the module's docstring): a delayed error, as CUDA's
    asynchronous errors are. With ``ignore_index`` and ``reduction="mean"``, ``N_valid`` is
    counted on the device too (one small kernel) and the mean divides there.

    float16 logits: read as half, everything computed in float32; the loss (and the row
    losses) are float32, probability targets are read as float32, and ``dlogits`` is
    float16, each element rounded once. ``grad_scale`` (a positive float, default 1)
    multiplies ``dlogits`` before that rounding: pass the loss scale
    (``GradScaler.get_scale()``) so that small gradients are scaled before they are
    stored in half, not flushed (the loss itself is never scaled).
    """
    cp = _cupy_for(logits)
    z = _float_array("softmax_xent", logits, cp, half=True)
    if z.ndim != 2:
        raise ValueError(f"gpunet.cuda.softmax_xent: logits must be (N, C), got shape {z.shape}")
    N, C = z.shape
    dtype = z.dtype
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"gpunet.cuda.softmax_xent: label_smoothing must lie in [0, 1], got {eps}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError("gpunet.cuda.softmax_xent: reduction must be 'mean', 'sum' or 'none', "
                         f"got {reduction!r}")
    if C < 1:
        raise ValueError("gpunet.cuda.softmax_xent: logits must have at least one class")
    if C >= 2**31 or N >= 2**31:
        raise ValueError(f"gpunet.cuda.softmax_xent: shape {z.shape} too large (< 2**31 each)")
    if not isinstance(labels, cp.ndarray):
        raise TypeError("gpunet.cuda.softmax_xent: labels must be a cupy.ndarray, "
                        f"got {type(labels).__name__}")
    grad_scale = float(grad_scale)
    if not (grad_scale > 0.0 and grad_scale < float("inf")):
        raise ValueError(f"gpunet.cuda.softmax_xent: grad_scale must be a finite float > 0, got {grad_scale}")
    dev = _device(z)
    acc = _acc_dtype(dtype)                   # the arithmetic's, the loss's, the targets'
    T, A = _HALF_CTYPE[dtype], _CTYPE[acc]
    soft = labels.dtype.kind == "f"
    with z.device:
        row_loss = cp.empty((N,), dtype=acc)
        dz = cp.empty_like(z)
        if soft:
            if labels.shape != (N, C):
                raise ValueError("gpunet.cuda.softmax_xent: probability targets must have the "
                                 f"logits' shape {(N, C)}, got {labels.shape}")
            q = cp.ascontiguousarray(labels.astype(acc, copy=False))
            n_valid = N
        else:
            if labels.dtype.kind not in "iu":
                raise TypeError("gpunet.cuda.softmax_xent: labels must be integers (N,) or "
                                f"probabilities (N, C), got dtype {labels.dtype}")
            if labels.shape != (N,):
                raise ValueError(f"gpunet.cuda.softmax_xent: integer labels must have shape "
                                 f"{(N,)}, got {labels.shape}")
            y = cp.ascontiguousarray(labels.astype(cp.int64, copy=False))   # uint64: the same bits
            n_valid = N
            unsigned = labels.dtype == cp.uint64
            if unsigned and ignore_index is not None and int(ignore_index) < 0:
                ignore_index = None     # no uint64 label equals it (its bits may: 2**64 - 1 and -1)
            if ignore_index is not None and reduction == "mean":
                # N_valid = max(1, labels != ignore_index) stays on the device
                n_valid = _divisor(cp, dev, acc, "count")
                kernel("softmax_xent.cu", f"softmax_xent_count_valid<{A}>", dev)(
                    (1,), (256,), (y, numpy.int32(N), numpy.int64(int(ignore_index)), n_valid))
        # the kernels write dlogits = (softmax * sum(t) - t) * scale and the unscaled row_loss
        host_n = n_valid if isinstance(n_valid, int) else 1
        scale = acc.type((1.0 / host_n if reduction == "mean" else 1.0) * grad_scale)
        eps_t = acc.type(eps)
        items = next((i for i in _WARP_ITEMS if C <= 32 * i), None)
        kind = "soft" if soft else "hard"
        if items is not None:
            name = f"softmax_xent_{kind}_warp<{T}, {items}>"
            threads, grid = 256, -(-N // 8)
        else:
            name = f"softmax_xent_{kind}_block<{T}>"
            threads, grid = (512 if C > 8192 else 256), N
        fn = kernel("softmax_xent.cu", name, dev)
        if soft:
            args = (z, q, row_loss, dz, numpy.int32(N), numpy.int32(C), eps_t, scale)
        else:
            has_ignore = ignore_index is not None
            args = (z, y, row_loss, dz, numpy.int32(N), numpy.int32(C), eps_t,
                    numpy.int64(int(ignore_index) if has_ignore else -1),
                    numpy.int32(has_ignore | 2 * unsigned), scale,
                    _divisor(cp, dev, acc, "one") if isinstance(n_valid, int) else n_valid,
                    _status_buffer(cp, dev))
        fn((grid,), (threads,), args)
        if reduction == "none":
            loss = row_loss
        elif reduction == "sum":
            loss = row_loss.sum()
        elif isinstance(n_valid, int):      # n_valid == N: one reduction, sum then / N
            loss = row_loss.mean()
        else:
            loss = row_loss.sum() / n_valid[0]
    return (loss if soft else _checked_loss(cp, loss)), dz
