"""Pooling over NCHW inputs, forward above backward.

A window of ``kernel = (kh, kw)`` moves by ``stride = (sh, sw)`` over the input padded by
``padding = (ph, pw)`` on each side; output size ``OH = (H + 2*ph - kh) // sh + 1`` (floor,
PyTorch's ``ceil_mode=False``). Every op loops over the ``kh*kw`` kernel offsets, each a
strided slice of the whole batch — never over output positions (max pooling first copies
the windows once into one contiguous plane per offset, since NumPy's elementwise ops run
several times faster on contiguous memory).

* max pooling pads with ``-inf`` (padding never wins); its gradient goes to the maximal
  element of each window — the **first** one in row-major window order on ties (PyTorch's
  and ``argmax``'s rule).
* average pooling pads with zeros and **counts them**: every window divides by ``kh*kw``
  (PyTorch's ``count_include_pad=True``, its default).
* global average pooling: ``(N, C, H, W) -> (N, C)``, the mean over ``H, W``.

On a GPU (CuPy or the sim) max and average pooling are one kernel launch each way
(``kernels/pooling.cu``: the same operations in the same order, so the same results); they
read their input in any layout and return NCHW-contiguous arrays.

Padding larger than half the kernel is rejected (as PyTorch does): a window could then
lie entirely in the padding.
"""
from __future__ import annotations

import numpy

from .conv import output_size, pad2d, pair, windows
from ..backend import get_array_module


def pool_args(layer_name, kernel_size, stride, padding):
    """Normalize ``(kernel_size, stride=None -> kernel_size, padding)`` to int pairs."""
    kernel = pair(kernel_size, layer_name, "kernel_size", 1)
    stride = kernel if stride is None else pair(stride, layer_name, "stride", 1)
    padding = pair(padding, layer_name, "padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{layer_name}: padding must be at most half the kernel size "
                         f"(kernel {kernel}), got padding {padding}")
    return kernel, stride, padding


def _slices(kernel, stride, out_hw):
    """``(k, slice_h, slice_w)`` for each kernel offset ``(i, j)``, ``k = i*kw + j``: the
    (padded) input rows and columns that the offset reads for all output positions at once."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)


def _check(name, x):
    if not hasattr(x, "ndim") or x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")


def _cnhw(a):
    """Whether ``a (N, C, H, W)`` is a transposed view of C-contiguous ``(C, N, H, W)`` memory
    (what a whole-batch convolution returns). Pooling acts on each ``(H, W)`` plane alone,
    so it runs on the ``(C, N, H, W)`` view and keeps that layout."""
    return a.shape[0] > 1 and a.shape[1] > 1 and not a.flags.c_contiguous and \
        a.transpose(1, 0, 2, 3).flags.c_contiguous


def _swap(a):
    return a.transpose(1, 0, 2, 3)


# -- max pooling: y = max over the window; arg = the offset k = i*kw + j of the first max
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Return ``(y (N, C, OH, OW), arg)``; ``arg`` (same shape, uint8 for windows of up to
    256 elements, else int32) is the window offset ``i*kw + j`` of the first maximum, which
    the backward needs. ``y`` and ``arg`` have ``x``'s memory layout when ``x`` is CNHW
    memory (a whole-batch convolution's output), else they are C-contiguous."""
    _check("max_pool2d", x)
    xp = get_array_module(x)
    kernel, stride, padding = pool_args("max_pool2d", kernel_size, stride, padding)
    out_hw = output_size("max_pool2d", x.shape, kernel, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.max_pool2d(x, kernel, stride, padding, out_hw)
    if x.dtype == numpy.float16:    # NumPy's float16 loops are slow: float32 inside (exact here)
        y, arg = max_pool2d(x.astype(numpy.float32), kernel, stride, padding)
        return y.astype(numpy.float16), arg
    if _cnhw(x):
        y, arg = _max_pool(xp, _swap(x), kernel, stride, padding, out_hw)
        return _swap(y), _swap(arg)
    return _max_pool(xp, x, kernel, stride, padding, out_hw)


def _max_pool(xp, x, kernel, stride, padding, out_hw):
    kk = kernel[0] * kernel[1]
    n, c = x.shape[:2]
    y = xp.empty((n, c) + out_hw, dtype=x.dtype)
    itype = xp.uint8 if kk <= 256 else xp.int32
    arg = xp.empty(y.shape, dtype=itype)
    # One strided copy puts each kernel offset's values in a contiguous plane
    # cs[k] (N, C, OH, OW); every later pass then runs on contiguous memory
    # (elementwise ops on strided views are several times slower in NumPy).
    v = windows(pad2d(x, padding, value=float("-inf")), kernel, stride, out_hw)
    cs = xp.empty(kernel + (n, c) + out_hw, dtype=x.dtype)
    xp.copyto(cs, v.transpose(2, 3, 0, 1, 4, 5))
    cs = cs.reshape((kk, n, c) + out_hw)
    y[...] = cs[0]
    arg[...] = 0
    for k in range(1, kk):
        better = cs[k] > y                 # strict: an equal later element does not take over
        # arg <= k-1 so far, so max(arg, better*k) sets k exactly where better (much faster
        # than copyto(..., where=) or where())
        xp.maximum(arg, better * itype(k), out=arg)
        xp.maximum(y, cs[k], out=y)
    return y, arg


def max_pool2d_backward(dy, arg, x_shape, kernel_size, stride=None, padding=0):
    """``dx (N, C, H, W)``: each ``dy`` element is routed to the input that won its window;
    overlapping windows (stride < kernel) add. ``dx`` has ``arg``'s memory layout (that of
    the forward's input)."""
    xp = get_array_module(dy)
    kernel, stride, padding = pool_args("max_pool2d_backward", kernel_size, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.max_pool2d_backward(dy, arg, x_shape, kernel, stride, padding)
    if dy.dtype == numpy.float16:   # float32 sums of overlapping windows, rounded once
        return max_pool2d_backward(dy.astype(numpy.float32), arg, x_shape, kernel, stride,
                                   padding).astype(numpy.float16)
    if _cnhw(arg):
        n, c, h, w = x_shape
        # dy in arg's layout first (one small copy when it comes C-contiguous, e.g. through
        # Flatten): the per-offset passes below are several times slower on mixed layouts
        dyt = xp.ascontiguousarray(_swap(dy))
        return _swap(_max_pool_backward(xp, dyt, _swap(arg), (c, n, h, w), kernel, stride, padding))
    return _max_pool_backward(xp, dy, arg, x_shape, kernel, stride, padding)


def _max_pool_backward(xp, dy, arg, x_shape, kernel, stride, padding):
    n, c, h, w = x_shape
    (ph, pw) = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    out_hw = dy.shape[2:]
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    # windows that tile the padded input exactly write every element: no zero fill needed
    tiled = stride == kernel and hp == out_hw[0] * kernel[0] and wp == out_hw[1] * kernel[1]
    dxpad = xp.empty((n, c, hp, wp), dtype=dy.dtype)
    if not tiled:
        dxpad[...] = 0
    for k, sh, sw in _slices(kernel, stride, out_hw):
        if disjoint:
            xp.multiply(dy, arg == k, out=dxpad[:, :, sh, sw])
        else:
            dxpad[:, :, sh, sw] += dy * (arg == k)
    return dxpad[:, :, ph:ph + h, pw:pw + w] if ph or pw else dxpad


# -- average pooling: y = (1/(kh*kw)) Σ_window xpad (zero padding counted)
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """``y (N, C, OH, OW)``: the window sum divided by ``kh*kw`` (padding counted)."""
    _check("avg_pool2d", x)
    xp = get_array_module(x)
    kernel, stride, padding = pool_args("avg_pool2d", kernel_size, stride, padding)
    out_hw = output_size("avg_pool2d", x.shape, kernel, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.avg_pool2d(x, kernel, stride, padding, out_hw)
    if x.dtype == numpy.float16:    # float32 sums, rounded once (as the device kernel)
        return avg_pool2d(x.astype(numpy.float32), kernel, stride, padding).astype(numpy.float16)
    xpad = pad2d(x, padding)
    y = None
    for k, sh, sw in _slices(kernel, stride, out_hw):
        if y is None:
            y = xpad[:, :, sh, sw].copy()
        else:
            y += xpad[:, :, sh, sw]
    y *= 1.0 / (kernel[0] * kernel[1])
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """``dx``: every input of a window receives ``dy / (kh*kw)``; overlaps add."""
    xp = get_array_module(dy)
    kernel, stride, padding = pool_args("avg_pool2d_backward", kernel_size, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.avg_pool2d_backward(dy, x_shape, kernel, stride, padding)
    if dy.dtype == numpy.float16:   # float32 sums, rounded once (as the device kernel)
        return avg_pool2d_backward(dy.astype(numpy.float32), x_shape, kernel, stride,
                                   padding).astype(numpy.float16)
    n, c, h, w = x_shape
    (ph, pw) = padding
    g = dy * (1.0 / (kernel[0] * kernel[1]))
    dxpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    for k, sh, sw in _slices(kernel, stride, dy.shape[2:]):
        dxpad[:, :, sh, sw] += g
    return dxpad[:, :, ph:ph + h, pw:pw + w] if ph or pw else dxpad


# -- global average pooling: y[n, c] = mean_{h,w} x[n, c, h, w]
def global_avg_pool2d(x):
    _check("global_avg_pool2d", x)
    return x.mean(axis=(2, 3))


def global_avg_pool2d_backward(dy, x_shape):
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    g = dy * (1.0 / (h * w))
    return xp.broadcast_to(g[:, :, None, None], x_shape).copy()
