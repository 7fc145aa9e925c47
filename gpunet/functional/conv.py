"""2-D convolution (cross-correlation, as in every DL framework), forward above backward.

Layout NCHW: input ``x (N, C, H, W)``, weight ``w (O, C, kh, kw)``, bias ``b (O,)``, output
``y (N, O, OH, OW)`` with ``OH = (H + 2*ph - kh) // sh + 1`` (likewise ``OW``)::

    y[n, o, p, q] = b[o] + Σ_{c,i,j} w[o, c, i, j] · xpad[n, c, p*sh + i, q*sw + j]

where ``xpad`` is ``x`` with ``ph`` zero rows above and below and ``pw`` zero columns left and
right. A 1-D convolution is the case ``kh = 1`` on ``(N, C, 1, L)``.

How (one body for NumPy and CuPy, cuBLAS on the GPU — CuPy 14 has no cuDNN):

* **im2col** through stride tricks: ``xp.lib.stride_tricks.as_strided`` gives a view
  ``(N, C, kh, kw, OH, OW)`` of ``xpad`` without copying; one reshape copies it into
  ``cols (N, C*kh*kw, OH*OW)``.
* **one batched GEMM**: ``y[n] = W (O, C*kh*kw) @ cols[n]`` gives ``(N, O, OH*OW)``, which is
  already NCHW: no transpose copy on the way out, nor for ``dy`` on the way back.
* backward, for ``dy (N, O, OH, OW)``::

      dW = Σ_n dy[n] @ cols[n].T        db = Σ_{n,p,q} dy
      dcols[n] = W.T @ dy[n]            dx = col2im(dcols)

  **col2im** adds ``kh*kw`` strided slices (one per kernel offset, never a loop over output
  positions) into a zero ``dx``; each offset's slice is clipped to the outputs whose input
  lies inside the image, so no padded buffer is built and ``dx`` comes out contiguous.
* **small images** (a few dozen pixels per plane: 1-D signals, 6×6 feature maps): NumPy's
  cost there is per row of a strided copy or add, and rows are a handful of elements, so
  im2col and col2im become GEMMs with a constant 0/1 gather matrix ``G (H*W, kh*kw*OH*OW)``
  (built once per geometry): ``cols = x.reshape(N*C, H*W) @ G`` and
  ``dx = dcols.reshape(N*C, kh*kw*OH*OW) @ G.T``. Padding is folded into ``G`` (its padded
  positions have no row). Same results; measured 2-10× faster below the thresholds
  ``IM2COL_GEMM_MAX_PIXELS`` and ``COL2IM_GEMM_MAX_PIXELS`` (slower above them: a GEMM spends
  ``H*W`` multiply-adds per element moved).
"""
from __future__ import annotations

import numpy

from ..backend import device_of, get_array_module

IM2COL_GEMM_MAX_PIXELS = 48   # H*W at or below which im2col is a GEMM with the gather matrix
COL2IM_GEMM_MAX_PIXELS = 64   # likewise for col2im (the strided adds cost more than the copy)


def pair(value, layer_name, what, minimum):
    """``value`` (an int or an ``(h, w)`` pair of ints) as a tuple of two ints ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    out = []
    for v in items:
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise TypeError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, "
                            f"got {value!r}") from None
        if isinstance(v, bool) or iv != v:
            raise TypeError(f"{layer_name}: {what} must be an int or an (h, w) pair of ints, got {value!r}")
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
    output position ``(p, q)`` sees, in ``(c, i, j)`` order (the weight's layout)."""
    out_hw = output_size("im2col", x.shape, kernel, stride, padding)
    n, c, h, w = x.shape
    if h * w <= IM2COL_GEMM_MAX_PIXELS:
        xp = get_array_module(x)
        g = gather_matrix(xp, device_of(x), (h, w), kernel, stride, padding, x.dtype)
        return xp.matmul(x.reshape(n * c, h * w), g).reshape(n, c * kernel[0] * kernel[1], -1)
    v = windows(pad2d(x, padding), kernel, stride, out_hw)
    # reshape copies the strided view once (or not at all for a 1x1, stride-1 kernel)
    return v.reshape(n, c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])


def col2im(dcols, x_shape, kernel, stride=(1, 1), padding=(0, 0)):
    """The adjoint of :func:`im2col`: ``dcols (N, C*kh*kw, OH*OW) -> dx (N, C, H, W)``,
    summing the contributions of overlapping patches; a loop over the ``kh*kw`` kernel
    offsets, each adding one strided slice."""
    xp = get_array_module(dcols)
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    oh, ow = output_size("col2im", x_shape, kernel, stride, padding)
    if h * w <= COL2IM_GEMM_MAX_PIXELS:
        g = gather_matrix(xp, device_of(dcols), (h, w), kernel, stride, padding, dcols.dtype)
        return xp.matmul(dcols.reshape(n * c, -1), g.T).reshape(x_shape)
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


def conv2d(x, weight, bias=None, stride=1, padding=0, return_cols=False):
    """``y = conv2d(x, w) + b`` (see the module docstring): ``(N, C, H, W) -> (N, O, OH, OW)``.

    ``stride``, ``padding``: an int or an ``(h, w)`` pair. With ``return_cols=True`` returns
    ``(y, cols)`` so that a layer can hand ``cols`` to :func:`conv2d_backward` instead of
    rebuilding it.
    """
    _check("conv2d", x, weight, bias)
    xp = get_array_module(x, weight, bias)
    stride = pair(stride, "conv2d", "stride", 1)
    padding = pair(padding, "conv2d", "padding", 0)
    o, _, kh, kw = weight.shape
    oh, ow = output_size("conv2d", x.shape, (kh, kw), stride, padding)
    cols = im2col(x, (kh, kw), stride, padding)
    y = xp.matmul(weight.reshape(o, -1), cols)          # (N, O, OH*OW): NCHW already
    if bias is not None:
        y += bias.reshape(o, 1)
    y = y.reshape(x.shape[0], o, oh, ow)
    return (y, cols) if return_cols else y


def conv2d_backward(dy, x, weight, stride=1, padding=0, cols=None, need_dx=True, need_bias=True):
    """Return ``(dx, dweight, dbias)`` for ``dy = dL/dy (N, O, OH, OW)``.

    ``cols``: the ``im2col`` of ``x`` from the forward (rebuilt when None). ``dx`` is None
    when ``need_dx`` is False (the first layer of a network), ``dbias`` None when
    ``need_bias`` is False.
    """
    xp = get_array_module(dy, x, weight)
    stride = pair(stride, "conv2d_backward", "stride", 1)
    padding = pair(padding, "conv2d_backward", "padding", 0)
    n = x.shape[0]
    o, _, kh, kw = weight.shape
    dy3 = dy.reshape(n, o, -1)
    if cols is None:
        cols = im2col(x, (kh, kw), stride, padding)
    # Σ_n dy[n] @ cols[n].T as one GEMM would need (O, N*P) and (N*P, K) operands, i.e. two
    # transpose copies of large arrays; the batched GEMM dW.T = Σ_n cols[n] @ dy[n].T plus a
    # sum over a small (N, K, O) array is cheaper (and measured faster than dy[n] @ cols[n].T).
    dw = xp.matmul(cols, dy3.transpose(0, 2, 1)).sum(axis=0).T.reshape(weight.shape)
    # summing over N first (whole contiguous planes) is several times faster than axis=(0, 2)
    db = dy3.sum(axis=0).sum(axis=1) if need_bias else None
    dx = None
    if need_dx:
        dcols = xp.matmul(weight.reshape(o, -1).T, dy3)  # (N, C*kh*kw, OH*OW)
        dx = col2im(dcols, x.shape, (kh, kw), stride, padding)
    return dx, dw, db
