"""2-D convolution (cross-correlation, as in every DL framework), forward above backward.

Layout NCHW: input ``x (N, C, H, W)``, weight ``w (O, C, kh, kw)``, bias ``b (O,)``, output
``y (N, O, OH, OW)`` with ``OH = (H + 2*ph - kh) // sh + 1`` (likewise ``OW``)::

    y[n, o, p, q] = b[o] + Σ_{c,i,j} w[o, c, i, j] · xpad[n, c, p*sh + i, q*sw + j]

where ``xpad`` is ``x`` with ``ph`` zero rows above and below and ``pw`` zero columns left and
right. A 1-D convolution is the case ``kh = 1`` on ``(N, C, 1, L)``.

How (one body for NumPy and CuPy, cuBLAS on the GPU — CuPy 14 has no cuDNN):

* **images above** ``IM2COL_GEMM_MAX_PIXELS`` **pixels: one GEMM per layer over the whole
  batch.** :func:`im2col_rows` builds ``cols (C*kh*kw, OH*OW*N)`` (every image's patches side
  by side; on the CPU batch-last: column ``(p*OW + q)*N + n``) with ``kh*kw`` strided copies
  straight from ``x``; ``W (O, C*kh*kw) @ cols`` is one large GEMM (BLAS threads it;
  per-image GEMMs are too small to thread) and gives ``(O, OH*OW*N)``, i.e. CHWN memory,
  which the op returns as its ``(N, O, OH, OW)`` view — no transpose copy. Pooling keeps
  that layout and this op's backward takes it as is (any other layout works, at the cost of
  a copy). Batch-last because NumPy pays per contiguous row of an elementwise pass: in
  CHWN a 2×2 pooling window's four members are runs of ``N`` images, and an im2col shift
  one run of ``H*W*N`` (CNHW: runs of ``W`` and ``H*W``); measured on (64, 16, 28, 28),
  max pooling forward 1.19 -> 0.99 ms and backward 1.25 -> 0.90 ms::

      dy2 = dy as (O, OH*OW*N)     dW = dy2 @ cols.T     db = row sums of dy2
      dcols = W.T @ dy2            dx = col2im_rows(dcols)   (CHWN memory, NCHW view)

  **col2im** adds ``kh*kw`` strided slices (one per kernel offset, never a loop over output
  positions) into ``dx``; each offset's slice is clipped to the outputs whose input lies
  inside the image, so no padded buffer is built. For a stride-1 "same" convolution
  (``k = 2p + 1``) each offset is a shift of the flattened ``H*W`` plane, so the copies and
  adds run over whole planes rather than ``W``-element rows (entries whose column would
  wrap into the next row are the ones the padding drops: they are zeroed).
* **small images** (a few dozen pixels per plane: 1-D signals, 6×6 feature maps): NumPy's
  cost there is per row of a strided copy or add, and rows are a handful of elements, so
  :func:`im2col` and :func:`col2im` become GEMMs with a constant 0/1 gather matrix
  ``G (H*W, kh*kw*OH*OW)`` (built once per geometry): ``cols = x.reshape(N*C, H*W) @ G``
  ``(N, C*kh*kw, OH*OW)`` and ``dx = dcols.reshape(N*C, kh*kw*OH*OW) @ G.T``, with one batched
  GEMM ``y[n] = W @ cols[n]`` (NCHW already). Padding is folded into ``G`` (its padded
  positions have no row). Same results; measured 2-10× faster below the thresholds
  ``IM2COL_GEMM_MAX_PIXELS`` and ``COL2IM_GEMM_MAX_PIXELS`` (slower above them: a GEMM spends
  ``H*W`` multiply-adds per element moved). :func:`im2col`/:func:`col2im` (public) keep the
  per-image ``(N, C*kh*kw, OH*OW)`` layout at every size.
* **on a GPU** (CuPy, or the sim device), at every size: the whole-batch rows again, with
  ``kernels/conv.cu`` doing what is not a GEMM in one launch each (``gpunet.cuda.conv``):
  im2col reads ``x`` in any layout; an epilogue adds the bias, applies a fused ReLU and
  writes ``y`` **NCHW-contiguous** (so batch norm, dropout and flatten take it without a
  copy); in the backward one kernel turns ``dy`` (times ``y > 0`` for a fused ReLU) into
  ``d2 (O, N*OH*OW)``, so ``dW = d2 @ cols.T`` and ``dcols = W.T @ d2`` are plain 2-D GEMMs
  whose operands cuBLAS takes as they are (C-contiguous or transposed views: no copies), and
  col2im gathers (each input element sums its contributions in kernel-offset order: no
  atomics, deterministic). A conv layer costs 3 launches forward and at most 5 backward.

float16 (mixed precision): on a GPU the kernels above have ``__half`` variants and the
GEMMs are cuBLAS's float16 GEMMs (float32 accumulation). NumPy has no float16 GEMM, so
its path upcasts ``x``, ``W``, ``b`` (and ``dy``, ``y``) to float32, runs the float32 path
and rounds each output once; ``cols`` is then float32.
"""
from __future__ import annotations

import numbers

import numpy

from .. import _args, hostkernels
from ..backend import device_of, get_array_module
from .activations import relu_backward, relu_mask_times
from .linear import device_matmul

IM2COL_GEMM_MAX_PIXELS = 48   # H*W at or below which im2col is a GEMM with the gather matrix
COL2IM_GEMM_MAX_PIXELS = 64   # likewise for col2im (the strided adds cost more than the copy)


def pair(value, layer_name, what, minimum):
    """``value`` (an int or an ``(h, w)`` pair of ints, NumPy integers included) as a tuple of
    two ints ``>= minimum``; a float, even ``3.0``, or a bool raises ``TypeError``."""
    if isinstance(value, (bool, numpy.bool_)):
        raise TypeError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        if type(v) is not int and (isinstance(v, (bool, numpy.bool_)) or not isinstance(v, numbers.Integral)):
            raise TypeError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
        iv = int(v)
        if iv < minimum:
            raise ValueError(f"{layer_name}: {what} must be >= {minimum}, got {value!r}")
        out.append(iv)
    return tuple(out)


def output_size(layer_name, shape, kernel, stride, padding):
    """``(OH, OW)`` for an input of spatial size ``shape[-2:]``; ``ValueError`` naming the
    layer when the kernel is larger than the padded input."""
    h, w = shape[-2], shape[-1]
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    if kernel[0] > hp or kernel[1] > wp:
        raise ValueError(f"{layer_name}: kernel {kernel[0]}x{kernel[1]} is larger than the padded input "
                         f"{hp}x{wp} (input {h}x{w}, padding {padding}); expected a kernel that fits")
    return (hp - kernel[0]) // stride[0] + 1, (wp - kernel[1]) // stride[1] + 1


def pad2d(x, padding, value=0.0):
    """``x (N, C, H, W)`` with ``padding = (ph, pw)`` rows/columns of ``value`` on each side
    (``x`` itself when there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def windows(xpad, kernel, stride, out_hw):
    """A view ``(N, C, kh, kw, OH, OW)`` of ``xpad``: element ``[n, c, i, j, p, q]`` is
    ``xpad[n, c, p*sh + i, q*sw + j]``. No copy; never write through it."""
    xp = get_array_module(xpad)
    n, c = xpad.shape[:2]
    s = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, c, kernel[0], kernel[1], out_hw[0], out_hw[1]),
        strides=(s[0], s[1], s[2], s[3], s[2] * stride[0], s[3] * stride[1]))


_GATHER = {}


def gather_matrix(xp, device, in_hw, kernel, stride, padding, dtype):
    """The 0/1 matrix ``G (H*W, kh*kw*OH*OW)`` with ``G[h*W + w, ((i*kw + j)*OH + p)*OW + q] = 1``
    where ``(h, w) = (p*sh + i - ph, q*sw + j - pw)`` lies inside the input: ``x_plane @ G`` is
    the im2col of one plane. Memoized per geometry, dtype and device."""
    key = (device, tuple(in_hw), kernel, stride, padding, numpy.dtype(dtype).str)
    g = _GATHER.get(key)
    if g is None:
        (h, w), (kh, kw), (sh, sw), (ph, pw) = in_hw, kernel, stride, padding
        oh, ow = output_size("gather_matrix", in_hw, kernel, stride, padding)
        i, j, p, q = numpy.meshgrid(numpy.arange(kh), numpy.arange(kw), numpy.arange(oh), numpy.arange(ow),
                                    indexing="ij")
        hh, ww = p * sh + i - ph, q * sw + j - pw
        inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
        host = numpy.zeros((h * w, kh * kw * oh * ow), dtype=dtype)
        host[(hh * w + ww)[inside], numpy.arange(host.shape[1]).reshape(i.shape)[inside]] = 1
        g = host if xp is numpy else xp.asarray(host)
        if len(_GATHER) > 256:      # bound the cache; geometries in one model are few
            _GATHER.clear()
        _GATHER[key] = g
    return g


def im2col(x, kernel, stride=(1, 1), padding=(0, 0)):
    """``cols (N, C*kh*kw, OH*OW)``: column ``p*OW + q`` of ``cols[n]`` holds the patch that
    output position ``(p, q)`` sees, in ``(c, i, j)`` order (the weight's layout).
    ``kernel``, ``stride``, ``padding``: an int or an ``(h, w)`` pair, as for ``conv2d``."""
    return _im2col(x, pair(kernel, "im2col", "kernel", 1), pair(stride, "im2col", "stride", 1),
                   pair(padding, "im2col", "padding", 0))


def _im2col(x, kernel, stride, padding):
    """:func:`im2col` of checked ``(h, w)`` tuples (conv2d's per-step call)."""
    out_hw = output_size("im2col", x.shape, kernel, stride, padding)
    n, c, h, w = x.shape
    if h * w <= IM2COL_GEMM_MAX_PIXELS:
        xp = get_array_module(x)
        g = gather_matrix(xp, device_of(x), (h, w), kernel, stride, padding, x.dtype)
        cols = device_matmul(xp, x.reshape(n * c, h * w), g)
        return cols.reshape(n, c * kernel[0] * kernel[1], -1)
    v = windows(pad2d(x, padding), kernel, stride, out_hw)
    # reshape copies the strided view once (or not at all for a 1x1, stride-1 kernel)
    return v.reshape(n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])


def col2im(dcols, x_shape, kernel, stride=(1, 1), padding=(0, 0)):
    """The adjoint of :func:`im2col`: ``dcols (N, C*kh*kw, OH*OW) -> dx (N, C, H, W)``,
    summing the contributions of overlapping patches; a loop over the ``kh*kw`` kernel
    offsets, each adding one strided slice."""
    return _col2im(dcols, x_shape, pair(kernel, "col2im", "kernel", 1), pair(stride, "col2im", "stride", 1),
                   pair(padding, "col2im", "padding", 0))


def _col2im(dcols, x_shape, kernel, stride, padding):
    """:func:`col2im` of checked ``(h, w)`` tuples (conv2d_backward's per-step call)."""
    xp = get_array_module(dcols)
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = output_size("col2im", x_shape, kernel, stride, padding)
    if h * w <= COL2IM_GEMM_MAX_PIXELS:
        g = gather_matrix(xp, device_of(dcols), (h, w), kernel, stride, padding, dcols.dtype)
        return device_matmul(xp, dcols.reshape(n * c, -1), g.T).reshape(x_shape)
    d6 = dcols.reshape(n, c, kh, kw, oh, ow)
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0:
        return d6.reshape(x_shape)
    # Add straight into an unpadded dx (contributions that fall in the padding are dropped),
    # so dx comes out contiguous: a cropped padded buffer would slow every later op on it.
    dx = xp.zeros(x_shape, dtype=dcols.dtype)
    for i in range(kh):
        p0, p1, h0 = _valid(i, ph, sh, oh, h)
        for j in range(kw):
            q0, q1, w0 = _valid(j, pw, sw, ow, w)
            if p1 > p0 and q1 > q0:
                dx[:, :, h0:h0 + sh * (p1 - p0 - 1) + 1:sh, w0:w0 + sw * (q1 - q0 - 1) + 1:sw] += \
                    d6[:, :, i, j, p0:p1, q0:q1]
    return dx


def _offsets(kernel, stride, padding, out_hw, in_hw):
    """``(i, j, rows_out, cols_out, rows_in, cols_in)`` for each kernel offset whose outputs
    see the image: ``rows_out``/``cols_out`` slice the outputs ``p0 <= p < p1`` whose input
    lies inside, ``rows_in``/``cols_in`` the input rows and columns they see."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow), (h, w) = kernel, stride, padding, out_hw, in_hw
    for i in range(kh):
        p0, p1, h0 = _valid(i, ph, sh, oh, h)
        for j in range(kw):
            q0, q1, w0 = _valid(j, pw, sw, ow, w)
            if p1 > p0 and q1 > q0:
                yield (i, j, slice(p0, p1), slice(q0, q1),
                       slice(h0, h0 + sh * (p1 - p0 - 1) + 1, sh), slice(w0, w0 + sw * (q1 - q0 - 1) + 1, sw))


def im2col_rows(x, kernel, stride=(1, 1), padding=(0, 0), out=None, ones_row=False,
                batch_last=False):
    """``cols (C*kh*kw, N*OH*OW)``: row ``(c*kh + i)*kw + j`` holds, for every image ``n`` and
    output position ``(p, q)``, ``xpad[n, c, p*sh + i, q*sw + j]`` in column
    ``(n*OH + p)*OW + q`` (the default, the layout the GPU kernels share), or in column
    ``(p*OW + q)*N + n`` with ``batch_last=True`` (the NumPy path's: see
    :func:`_planes`).

    The whole batch's patches side by side, so a convolution is one GEMM
    ``W (O, C*kh*kw) @ cols`` giving ``(O, N*OH*OW)``: CNHW memory, or CHWN with
    ``batch_last``. Built by ``kh*kw`` strided copies straight from ``x`` (any layout;
    padding never materialised: the entries that fall in it are zeroed). ``out``: a
    C-contiguous array of that shape and dtype to fill instead of a new one.
    ``ones_row=True`` appends a row of ones (row ``C*kh*kw``), so that ``[W | b] @ cols``
    adds the bias inside the GEMM and ``dy @ cols.T`` yields ``db`` as its last column."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    kh, kw = kernel
    oh, ow = output_size("im2col_rows", x.shape, kernel, stride, padding)
    shape = (c * kh * kw + bool(ones_row), n * oh * ow)
    if out is None or tuple(out.shape) != shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        out = xp.empty(shape, dtype=x.dtype)
    if ones_row:
        out[-1] = 1
    full, out = out, out[:c * kh * kw]
    x5 = _planes(x, batch_last)                         # (C, A, H, W, B)
    a, b = x5.shape[1], x5.shape[4]
    if _same_plane(kernel, stride, padding):
        # one plane per (c, a): a view for memory in this order (else one copy)
        x3 = x5.reshape(c, a, h * w * b)
        _im2col_planes(x3, out.reshape(c, kh, kw, a, h * w * b),
                       _shifts(kernel, padding, w, h * w, b), h, w, b)
        return full
    c7 = out.reshape(c, kh, kw, a, oh, ow, b)
    offs = list(_offsets(kernel, stride, padding, (oh, ow), (h, w)))
    seen = {(i, j) for i, j, *_ in offs}
    for i, j, po, qo, hi_, wi in offs:
        d = c7[:, i, j]                                 # (C, A, OH, OW, B)
        d[:, :, po, qo] = x5[:, :, hi_, wi]
        # zero what lies in the padding (a reused buffer may hold anything there)
        if po.start > 0:
            d[:, :, :po.start] = 0
        if po.stop < oh:
            d[:, :, po.stop:] = 0
        if qo.start > 0:
            d[:, :, po, :qo.start] = 0
        if qo.stop < ow:
            d[:, :, po, qo.stop:] = 0
    for i in range(kh):
        for j in range(kw):
            if (i, j) not in seen:                      # an offset that sees only padding
                c7[:, i, j] = 0
    return full


def col2im_rows(dcols, x_shape, kernel, stride=(1, 1), padding=(0, 0), overwrite=False,
                batch_last=False):
    """The adjoint of :func:`im2col_rows` (same ``batch_last``): ``dcols (C*kh*kw, N*OH*OW)
    -> dx (N, C, H, W)``, a view of CNHW memory ``(C, N, H, W)``, or of CHWN memory
    ``(C, H, W, N)`` with ``batch_last``; ``kh*kw`` strided adds (padding contributions
    dropped). ``overwrite=True`` lets it use ``dcols`` as scratch (the "same" fast path
    zeroes the entries it drops)."""
    xp = get_array_module(dcols)
    n, c, h, w = x_shape
    kh, kw = kernel
    oh, ow = output_size("col2im_rows", x_shape, kernel, stride, padding)
    a, b = (1, n) if batch_last else (n, 1)
    dxt = xp.empty((c, a, h, w, b), dtype=dcols.dtype)
    if _same_plane(kernel, stride, padding):
        _col2im_planes(dcols.reshape(c, kh, kw, a, h * w * b), dxt.reshape(c, a, h * w * b),
                       _shifts(kernel, padding, w, h * w, b), h, w, b, overwrite)
        return _from_planes(dxt, batch_last)
    d7 = dcols.reshape(c, kh, kw, a, oh, ow, b)
    dxt[...] = 0
    for i, j, po, qo, hi_, wi in _offsets(kernel, stride, padding, (oh, ow), (h, w)):
        dxt[:, :, hi_, wi] += d7[:, i, j, :, po, qo]
    return _from_planes(dxt, batch_last)


def _planes(x, batch_last):
    """``x (N, C, H, W)`` as a ``(C, A, H, W, B)`` view: ``(C, N, H, W, 1)`` by default,
    ``(C, 1, H, W, N)`` with ``batch_last``. im2col/col2im act on the ``(H, W, B)`` block of
    each ``(c, a)``; the whole-batch GEMM's output ``(O, N*OH*OW)`` is then this memory
    order. The NumPy path keeps its convolution outputs batch-last (CHWN memory, an NCHW
    view): pooling and the flattened-plane shifts then run over rows of ``N`` or
    ``H*W*N`` contiguous elements rather than ``W`` or ``H*W`` (NumPy pays per row)."""
    if batch_last:
        return x.transpose(1, 2, 3, 0)[:, None]
    return x.transpose(1, 0, 2, 3)[..., None]


def _from_planes(t5, batch_last):
    """The inverse of :func:`_planes` for ``t5 (C, A, H, W, B)``: an ``(N, C, H, W)`` view."""
    if batch_last:
        return t5[:, 0].transpose(3, 0, 1, 2)
    return t5[..., 0].transpose(1, 0, 2, 3)


def _same_plane(kernel, stride, padding):
    """A stride-1 "same" convolution (``k = 2p + 1`` both ways): output planes have the input's
    size, so each kernel offset ``(i, j)`` is a shift of the flattened ``H*W`` plane by
    ``(i - ph)*W + (j - pw)``: long contiguous runs instead of ``W``-element rows. The
    entries whose column wraps into the neighbouring row (``w + j - pw`` outside ``[0, W)``)
    are the ones that the padding drops: they are zeroed."""
    return stride == (1, 1) and kernel[0] == 2 * padding[0] + 1 and kernel[1] == 2 * padding[1] + 1


def _shifts(kernel, padding, w, hw, b=1):
    """``(i, j, dj, dst, src)``: the flattened-plane slices of each kernel offset
    (``out[dst] <-> in[src]``) for planes ``(H, W, B)`` of ``hw*b`` elements (``B`` images
    side by side in each pixel), centre offset first (it covers the whole plane)."""
    (kh, kw), (ph, pw) = kernel, padding
    order = [(ph, pw)] + [(i, j) for i in range(kh) for j in range(kw) if (i, j) != (ph, pw)]
    size = hw * b
    for i, j in order:
        off = ((i - ph) * w + (j - pw)) * b
        if off >= 0:
            yield i, j, j - pw, slice(0, size - off), slice(off, size)
        else:
            yield i, j, j - pw, slice(-off, size), slice(0, size + off)


def _zero_wrapped(d4, dj, h, w, b=1):
    """Zero, in ``d4 (..., H*W*B)``, the entries of output columns ``q`` with ``q + dj``
    outside ``[0, W)`` (they read or write a neighbouring row after a flattened shift)."""
    d6 = d4.reshape(d4.shape[:-1] + (h, w, b))
    if dj > 0:
        d6[..., w - dj:, :] = 0
    elif dj < 0:
        d6[..., :-dj, :] = 0


def _im2col_planes(x3, c5, shifts, h, w, b=1):
    """im2col of a stride-1 "same" convolution by flattened-plane shifts:
    ``x3 (C, A, H*W*B)`` -> ``c5 (C, kh, kw, A, H*W*B)``. Only indexing that NumPy, CuPy and
    PyTorch share, so ``gpunet.bench``'s BLAS floor runs these very passes on tensors."""
    size = h * w * b
    for i, j, dj, dst, src in shifts:
        d = c5[:, i, j]
        d[..., dst] = x3[..., src]
        if dst.start > 0:
            d[..., :dst.start] = 0
        if dst.stop < size:
            d[..., dst.stop:] = 0
        _zero_wrapped(d, dj, h, w, b)


def _col2im_planes(d5, dx3, shifts, h, w, b=1, overwrite=True):
    """The adjoint of ``_im2col_planes``: ``d5 (C, kh, kw, A, H*W*B)`` summed into
    ``dx3 (C, A, H*W*B)``; the wrapped entries of ``d5`` are zeroed in place
    (``overwrite=True``) or in copies of the offsets that have them."""
    size = h * w * b
    for i, j, dj, dst, src in shifts:
        d = d5[:, i, j]
        if dj != 0:
            if not overwrite:
                d = d.copy()
            _zero_wrapped(d, dj, h, w, b)
        if dst.start == 0 and dst.stop == size:         # the centre offset: a plain copy
            dx3[...] = d
        else:
            dx3[..., src] += d[..., dst]


def _valid(i, pad, stride, out, size):
    """For kernel offset ``i``: the outputs ``p0 <= p < p1`` whose input row
    ``p*stride + i - pad`` lies inside ``[0, size)``, and the first such row ``h0``."""
    p0 = max(0, -((i - pad) // stride))                 # ceil((pad - i) / stride)
    p1 = min(out, (size - 1 + pad - i) // stride + 1)
    return p0, p1, p0 * stride + i - pad


def _check(name, x, weight, bias):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D weight (O, C, kh, kw), got shape {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{name}: expected {weight.shape[1]} input channels (the weight's axis 1), "
                         f"got input shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"{name}: input dtype {x.dtype.name} differs from the weight dtype {weight.dtype.name}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: expected a bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _rows_layout(x):
    """Whether a convolution over ``x`` runs on whole-batch rows (:func:`im2col_rows`, one
    GEMM per layer) rather than per image with the gather matrix (small images)."""
    return x.shape[2] * x.shape[3] > IM2COL_GEMM_MAX_PIXELS


def whole_batch_rows(y):
    """``y (N, O, OH, OW)`` as its ``(O, OH*OW*N)`` memory when ``y`` is a view of
    C-contiguous CHWN memory ``(O, OH, OW, N)`` (a whole-batch convolution's output on the
    NumPy path), else None."""
    yt = y.transpose(1, 2, 3, 0)
    return yt.reshape(yt.shape[0], -1) if yt.flags.c_contiguous else None


def relu_grad(dy, y):
    """``dy * (y > 0)`` (ReLU's backward through its output ``y``) for a whole-batch
    convolution's ``y``, in CHWN memory like ``y``'s whatever ``dy``'s layout (mixed layouts
    make NumPy's elementwise passes several times slower). NumPy only (the CPU path)."""
    get_array_module(dy, y)                             # a TypeError for mixed devices
    dt = dy.transpose(1, 2, 3, 0)
    return relu_mask_times(dt, whole_batch_rows(y).reshape(dt.shape)).transpose(3, 0, 1, 2)


DW_CHUNK_COLUMNS = 4096   # dW's GEMM runs over column chunks of at most this many


def _weight_grad(xp, d2, cols, n):
    """``dW = d2 (O, L) @ cols.T (L, K)`` with ``L = N*OH*OW``, as ``Σ_b cols_b @ d2_b.T``
    over ``B`` column chunks (a batched GEMM, then a sum over the small ``(B, K, O)``
    result). OpenBLAS runs this long-and-thin product badly in one call, and a thin chunk
    (``K*O*L/B`` below about a million) runs best on one thread, which it then picks:
    measured on 2 threads, (16, 50176) x (50176, 10) 0.65 -> 0.19 ms, and
    (32, 12544) x (12544, 145) 1.31 -> 0.91 ms, with chunks of at most ``DW_CHUNK_COLUMNS``."""
    o, l = d2.shape
    k = cols.shape[0]
    b = _chunks(n, l)
    if b == 1:
        return device_matmul(xp, cols, d2.T).T
    c3 = cols.reshape(k, b, l // b).transpose(1, 0, 2)
    d3 = d2.reshape(o, b, l // b).transpose(1, 0, 2)
    return device_matmul(xp, c3, d3.transpose(0, 2, 1)).sum(axis=0).T


FWD_CHUNK_MAX_K = 16      # forward GEMMs with at most this many rows of cols run in column chunks


def _chunks(n, length):
    """The fewest equal column chunks (a divisor of ``n``, so of ``length``) of at most
    ``DW_CHUNK_COLUMNS`` columns each (``n`` when none is that small)."""
    return next((b for b in range(1, n + 1) if n % b == 0 and length // b <= DW_CHUNK_COLUMNS), n)


def _forward_gemm(xp, w2, cols, n):
    """``w2 (O, K) @ cols (K, L)`` into a C-contiguous ``(O, L)``. For a thin ``K`` (a first
    layer: ``C*kh*kw + 1 <= FWD_CHUNK_MAX_K``) one batched GEMM over equal column chunks,
    written straight into the ``(O, L)`` result through a strided view (the same
    products, element for element): OpenBLAS runs a K = 10, 50176-column product badly in
    one call; measured on one thread, (16, 10) x (10, 50176) 0.64 -> 0.29 ms in chunks of
    3136 columns (no gain for K = 145, so wider K stays one call)."""
    o, k = w2.shape
    length = cols.shape[1]
    b = _chunks(n, length)
    if k > FWD_CHUNK_MAX_K or b == 1:
        return device_matmul(xp, w2, cols)
    y = xp.empty((o, length), dtype=cols.dtype)
    device_matmul(xp, w2, cols.reshape(k, b, length // b).transpose(1, 0, 2),
              out=y.reshape(o, b, length // b).transpose(1, 0, 2))
    return y


def conv2d(x, weight, bias=None, stride=1, padding=0, return_cols=False, cols_buffer=None,
           activation=None):
    """``y = conv2d(x, w) + b`` (see the module docstring): ``(N, C, H, W) -> (N, O, OH, OW)``;
    ``activation="relu"``: ``y = max(conv2d(x, w) + b, 0)`` (fused; the default None: none).

    ``stride``, ``padding``: an int or an ``(h, w)`` pair. With ``return_cols=True`` returns
    ``(y, cols)`` so that a layer can hand ``cols`` to :func:`conv2d_backward` instead of
    rebuilding it; ``cols_buffer``: a ``cols`` from an earlier call that is no longer needed,
    overwritten when its shape fits (saves allocating it again).

    Images above ``IM2COL_GEMM_MAX_PIXELS`` pixels: ``cols = im2col_rows(x, batch_last=True)
    (C*kh*kw, OH*OW*N)`` and one GEMM ``W @ cols (O, OH*OW*N)``; ``y`` is then its
    ``(N, O, OH, OW)`` view (CHWN memory, which later elementwise ops, pooling and this
    layer's backward take as is). Smaller images: ``cols = im2col(x) (N, C*kh*kw, OH*OW)``
    and a batched GEMM; ``y`` is C-contiguous.

    On a GPU (CuPy or the sim), at every size: ``cols (C*kh*kw, N*OH*OW)`` by one im2col
    kernel (``x`` read in place, any layout), the one GEMM ``W @ cols``, and one epilogue
    kernel that adds the bias, applies the fused ReLU and writes ``y`` NCHW-contiguous (so
    batch norm, dropout and flatten take it without a copy): three launches.
    """
    _check("conv2d", x, weight, bias)
    if return_cols.__class__ is not bool:       # "no" returned a tuple
        return_cols = _args.flag("conv2d", "return_cols", return_cols)
    xp = get_array_module(x, weight, bias)
    stride = pair(stride, "conv2d", "stride", 1)
    padding = pair(padding, "conv2d", "padding", 0)
    relu = _fused_relu("conv2d", activation)
    o, _, kh, kw = weight.shape
    n = x.shape[0]
    oh, ow = output_size("conv2d", x.shape, (kh, kw), stride, padding)
    if xp is not numpy:
        from ..cuda import conv as cuda_conv
        cols = cuda_conv.im2col_rows(x, (kh, kw), stride, padding, (oh, ow), out=cols_buffer)
        z = device_matmul(xp, weight.reshape(o, -1), cols)   # (O, N*OH*OW): one GEMM
        y = cuda_conv.conv_bias_act(z, bias, n, (oh, ow), relu)
        return (y, cols) if return_cols else y
    if x.dtype == numpy.float16:
        # NumPy has no float16 GEMM (its own loop is ~100x slower): float16 storage,
        # float32 arithmetic (the policy's float32 accumulation), y rounded once; cols is
        # the float32 copy the backward then reuses
        y, cols = conv2d(*_f32(x, weight, bias), stride, padding, True, cols_buffer, activation)
        y = y.astype(numpy.float16)      # keeps y's memory layout (CHWN for whole-batch rows)
        return (y, cols) if return_cols else y
    y, cols = _conv2d_numpy(xp, x, weight, bias, stride, padding, (oh, ow), cols_buffer)
    if relu and hostkernels.relu(y, inplace=True) is None:   # compiled where built: same bits
        xp.maximum(y, 0, out=y)
    return (y, cols) if return_cols else y


def _f32(*arrays):
    """float16 NumPy arrays as float32 (None stays None; views keep their layout)."""
    return [None if a is None else a.astype(numpy.float32) for a in arrays]


def _fused_relu(name, activation):
    if activation not in (None, "relu"):
        raise ValueError(f"{name}: activation must be None or 'relu' (the one fused here), "
                         f"got {activation!r}")
    return activation == "relu"


def _conv2d_numpy(xp, x, weight, bias, stride, padding, out_hw, cols_buffer):
    o, _, kh, kw = weight.shape
    n = x.shape[0]
    oh, ow = out_hw
    if _rows_layout(x):
        # the bias rides in the GEMM as a last column of W against a row of ones in cols
        # (saves a pass over y here and one over dy for db in the backward)
        cols = im2col_rows(x, (kh, kw), stride, padding, out=cols_buffer, ones_row=bias is not None,
                           batch_last=True)
        w2 = weight.reshape(o, -1) if bias is None else xp.concatenate(
            (weight.reshape(o, -1), bias.reshape(o, 1)), axis=1)
        # (O, OH*OW*N): one GEMM, threaded by BLAS; CHWN memory, returned as its NCHW view
        y = _forward_gemm(xp, w2, cols, n)
        return y.reshape(o, oh, ow, n).transpose(3, 0, 1, 2), cols
    cols = _im2col(x, (kh, kw), stride, padding)
    y = device_matmul(xp, weight.reshape(o, -1), cols)   # (N, O, OH*OW): NCHW already
    if bias is not None:
        y += bias.reshape(o, 1)
    return y.reshape(n, o, oh, ow), cols


def conv2d_backward(dy, x, weight, stride=1, padding=0, cols=None, need_dx=True, need_bias=True,
                    y=None, activation=None):
    """Return ``(dx, dweight, dbias)`` for ``dy = dL/dy (N, O, OH, OW)``.

    ``cols``: the ``cols`` of ``x`` from the forward (rebuilt when None). ``dx`` is None
    when ``need_dx`` is False (the first layer of a network), ``dbias`` None when
    ``need_bias`` is False. ``activation="relu"`` with ``y``, the forward's output: ``dy``
    is the gradient of that output, and ``dy * (y > 0)`` flows into the convolution.

    Whole-batch rows (2-D ``cols``) on the CPU: ``dy`` as ``(O, OH*OW*N)`` (a view when it
    is CHWN memory, as the forward's output is), ``dW = dy @ cols.T`` and
    ``dcols = W.T @ dy`` as one GEMM each, ``db`` row sums, ``dx = col2im_rows(dcols)``
    (CHWN memory).

    On a GPU: one kernel gives ``d2 = dy * (y > 0)`` (or ``dy``) as ``(O, N*OH*OW)``
    (CNHW memory, from ``dy`` of any layout), then ``dW = d2 @ cols.T`` and
    ``dcols = W.T @ d2`` are plain 2-D GEMMs on C-contiguous operands and their transposed
    views (no operand copies), ``db`` one row-sum reduction, and one col2im kernel gives
    ``dx`` NCHW-contiguous: at most five launches.
    """
    if need_dx.__class__ is not bool or need_bias.__class__ is not bool:
        need_dx = _args.flag("conv2d_backward", "need_dx", need_dx)
        need_bias = _args.flag("conv2d_backward", "need_bias", need_bias)
    xp = get_array_module(dy, x, weight)
    stride = pair(stride, "conv2d_backward", "stride", 1)
    padding = pair(padding, "conv2d_backward", "padding", 0)
    relu = _fused_relu("conv2d_backward", activation)
    if relu and y is None:
        raise ValueError("conv2d_backward: activation='relu' needs y, the forward's output")
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    if xp is not numpy:
        from ..cuda import conv as cuda_conv
        out_hw = output_size("conv2d_backward", x.shape, (kh, kw), stride, padding)
        d2 = cuda_conv.conv_act_grad(dy, y if relu else None)    # (O, N*OH*OW)
        if cols is None:
            cols = cuda_conv.im2col_rows(x, (kh, kw), stride, padding, out_hw)
        k = weight[0].size
        dw = device_matmul(xp, d2, cols[:k].T).reshape(weight.shape)
        db = d2.sum(axis=1) if need_bias else None
        dx = None
        if need_dx:
            dcols = device_matmul(xp, weight.reshape(o, -1).T, d2)
            dx = cuda_conv.col2im_rows(dcols, x.shape, (kh, kw), stride, padding, out_hw)
        return dx, dw, db
    if x.dtype == numpy.float16:
        # as the forward: float32 arithmetic on float16 storage (cols, from the forward, is
        # float32 already), each gradient rounded once to float16
        if dy.dtype != numpy.float16:
            raise ValueError(f"conv2d_backward: expected float16 dy for float16 x, got {dy.dtype}")
        dy32, x32, w32, y32 = _f32(dy, x, weight, y)
        grads = conv2d_backward(dy32, x32, w32, stride, padding,
                                cols if cols is None or cols.dtype == numpy.float32 else None,
                                need_dx, need_bias, y32, activation)
        return tuple(None if g is None else g.astype(numpy.float16) for g in grads)
    if relu:
        dy = relu_grad(dy, y) if whole_batch_rows(y) is not None else relu_backward(dy, None, y)
    if cols is None:
        cols = im2col_rows(x, (kh, kw), stride, padding, ones_row=need_bias, batch_last=True) \
            if _rows_layout(x) else \
            _im2col(x, (kh, kw), stride, padding)
    if cols.ndim == 2:
        d2 = dy.transpose(1, 2, 3, 0).reshape(o, -1)   # (O, OH*OW*N); a copy unless CHWN dy
        k = weight[0].size
        dwb = _weight_grad(xp, d2, cols, n)            # (O, K), or (O, K+1) with the ones row
        # dW C-contiguous (a copy of O*K values when dwb has the bias column): the optimizers'
        # compiled update takes contiguous gradients, and NumPy's passes run slower on views
        dw = (numpy.ascontiguousarray(dwb[:, :k]) if dwb.shape[1] > k else dwb).reshape(weight.shape)
        db = None
        if need_bias:
            db = dwb[:, k].copy() if cols.shape[0] > k else d2.sum(axis=1)
        dx = None
        if need_dx:
            w2 = weight.reshape(o, -1)
            dcols = device_matmul(xp, w2.T, d2)
            dx = col2im_rows(dcols, x.shape, (kh, kw), stride, padding, overwrite=True, batch_last=True)
        return dx, dw, db
    dy3 = dy.reshape(n, o, -1)
    # Σ_n dy[n] @ cols[n].T as one GEMM would need (O, N*P) and (N*P, K) operands, i.e. two
    # transpose copies of large arrays; the batched GEMM dW.T = Σ_n cols[n] @ dy[n].T plus a
    # sum over a small (N, K, O) array is cheaper (and measured faster than dy[n] @ cols[n].T).
    dw = device_matmul(xp, cols, dy3.transpose(0, 2, 1)).sum(axis=0).T.reshape(weight.shape)
    # summing over N first (whole contiguous planes) is several times faster than axis=(0, 2)
    db = dy3.sum(axis=0).sum(axis=1) if need_bias else None
    dx = None
    if need_dx:
        dcols = device_matmul(xp, weight.reshape(o, -1).T, dy3)  # (N, C*kh*kw, OH*OW)
        dx = _col2im(dcols, x.shape, (kh, kw), stride, padding)
    return dx, dw, db
