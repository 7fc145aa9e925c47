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
  positions) into a zero ``xpad``, then crops the padding.
"""
from __future__ import annotations

from ..backend import get_array_module


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


def im2col(x, kernel, stride=(1, 1), padding=(0, 0)):
    """``cols (N, C*kh*kw, OH*OW)``: column ``p*OW + q`` of ``cols[n]`` holds the patch that
    output position ``(p, q)`` sees, in ``(c, i, j)`` order (the weight's layout)."""
    out_hw = output_size("im2col", x.shape, kernel, stride, padding)
    n, c = x.shape[:2]
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
    d6 = dcols.reshape(n, c, kh, kw, oh, ow)
    hp, wp = h + 2 * ph, w + 2 * pw
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0:
        return d6.reshape(x_shape)
    dxpad = xp.zeros((n, c, hp, wp), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += d6[:, :, i, j]
    if ph == 0 and pw == 0:
        return dxpad
    return dxpad[:, :, ph:ph + h, pw:pw + w]


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
    # transpose copies of large arrays; the batched GEMM plus a sum over a small
    # (N, O, K) array is cheaper.
    dw = xp.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    db = dy3.sum(axis=(0, 2)) if need_bias else None
    dx = None
    if need_dx:
        dcols = xp.matmul(weight.reshape(o, -1).T, dy3)  # (N, C*kh*kw, OH*OW)
        dx = col2im(dcols, x.shape, (kh, kw), stride, padding)
    return dx, dw, db
