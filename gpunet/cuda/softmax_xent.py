"""Launcher of the fused softmax cross-entropy kernels (``kernels/softmax_xent.cu``)."""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _WARP_ITEMS, _cupy_for, _device, _float_array, kernel


def softmax_xent(logits, labels, label_smoothing=0.0, ignore_index=None, reduction="mean"):
    """Fused softmax cross-entropy: ``(loss, dlogits)``, by default of the mean loss over valid rows.

    ``logits`` (N, C) float32/float64; ``labels`` integer class indices (N,) or
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

    Hard labels are checked on the device before the launch: one outside ``[0, C)``
    (other than ``ignore_index``) raises ``ValueError``.
    """
    cp = _cupy_for(logits)
    z = _float_array("softmax_xent", logits, cp)
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
    dev = _device(z)
    T = _CTYPE[dtype]
    soft = labels.dtype.kind == "f"
    with z.device:
        row_loss = cp.empty((N,), dtype=dtype)
        dz = cp.empty_like(z)
        if soft:
            if labels.shape != (N, C):
                raise ValueError("gpunet.cuda.softmax_xent: probability targets must have the "
                                 f"logits' shape {(N, C)}, got {labels.shape}")
            q = cp.ascontiguousarray(labels.astype(dtype, copy=False))
            n_valid = N
        else:
            if labels.dtype.kind not in "iu":
                raise TypeError("gpunet.cuda.softmax_xent: labels must be integers (N,) or "
                                f"probabilities (N, C), got dtype {labels.dtype}")
            if labels.shape != (N,):
                raise ValueError(f"gpunet.cuda.softmax_xent: integer labels must have shape "
                                 f"{(N,)}, got {labels.shape}")
            y = cp.ascontiguousarray(labels.astype(cp.int64, copy=False))
            out_of_range = (y < 0) | (y >= C)
            # the one host sync; no host-to-device copy (N is known on the host)
            if ignore_index is not None:
                valid = y != int(ignore_index)
                out_of_range &= valid
                counts = cp.stack([cp.count_nonzero(out_of_range), cp.count_nonzero(valid)])
                bad, n_valid = (int(v) for v in counts.get())
            else:
                bad, n_valid = int(cp.count_nonzero(out_of_range)), N
            if bad:
                first = int(y[out_of_range][0].get())
                raise ValueError(f"softmax_cross_entropy (gpunet.cuda.softmax_xent): {bad} "
                                 f"label(s) outside [0, {C})"
                                 + ("" if ignore_index is None else
                                    f" and not ignore_index={int(ignore_index)}")
                                 + f", e.g. {first}")
        if n_valid == 0:
            return cp.zeros((N,) if reduction == "none" else (), dtype=dtype), cp.zeros_like(z)
        # the kernels write dlogits = (softmax * sum(t) - t) * scale and the unscaled row_loss
        scale = dtype.type(1.0 / n_valid if reduction == "mean" else 1.0)
        eps_t = dtype.type(eps)
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
                    numpy.int32(has_ignore), scale)
        fn((grid,), (threads,), args)
        if reduction == "none":
            loss = row_loss
        elif reduction == "sum":
            loss = row_loss.sum()
        else:
            loss = row_loss.sum() / dtype.type(n_valid)
    return loss, dz
