"""Pooling over NCHW inputs, forward above backward.

A window of ``kernel = (kh, kw)`` moves by ``stride = (sh, sw)`` over the input padded by
``padding = (ph, pw)`` on each side; output size ``OH = (H + 2*ph - kh) // sh + 1`` (floor,
PyTorch's ``ceil_mode=False``). Every op loops over the ``kh*kw`` kernel offsets, each a
strided slice of the whole batch — never over output positions (max pooling first copies
the windows once into one contiguous plane per offset, since NumPy's elementwise ops run
several times faster on contiguous memory). On the CPU max pooling runs in its input's
memory order when that is CHWN (a whole-batch convolution's output: each window member a
run of ``N`` images, so NumPy's per-row cost is paid 4.5x less often than on 14-element
rows of NCHW), CNHW or NCHW, and returns ``y``, ``arg`` and ``dx`` in that same order.

* max pooling pads with ``-inf`` (padding never wins); its gradient goes to the maximal
  element of each window — the **first** one in row-major window order on ties (PyTorch's
  and ``argmax``'s rule).
* average pooling pads with zeros and **counts them**: every window divides by ``kh*kw``
  (PyTorch's ``count_include_pad=True``, its default).
* global average pooling: ``(N, C, H, W) -> (N, C)``, the mean over ``H, W``.

Where the host C++ compiler is found, max pooling on NumPy runs in compiled kernels
(:mod:`gpunet.hostkernels`: one pass each way, the same bits); the NumPy code here is the
reference they are tested against, and the fallback (``GPUNET_HOST_KERNELS=0``).

On a GPU (CuPy or the sim) max and average pooling are one kernel launch each way
(``kernels/pooling.cu``: the same operations in the same order, so the same results); they
read their input in any layout and return NCHW-contiguous arrays.

Padding larger than half the kernel is rejected (as PyTorch does): a window could then
lie entirely in the padding.
"""
from __future__ import annotations

import numpy

from .activations import relu
from .conv import output_size, pair
from .layout import ORDERS, as_order, empty_in, memory_order
from .. import hostkernels
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


def _forward_args(name, x, kernel_size, stride, padding):
    """A forward's ``(xp, kernel, stride, padding, out_hw)``, its input and arguments checked."""
    _check(name, x)
    xp = get_array_module(x)
    kernel, stride, padding = pool_args(name, kernel_size, stride, padding)
    return xp, kernel, stride, padding, output_size(name, x.shape, kernel, stride, padding)


def _to_planes(a, layout):
    """``a (N, C, H, W)`` as the C-contiguous ``(A, H, W, B)`` view of its memory that pooling
    runs on: each ``(H, W)`` plane holds ``B`` interleaved images (``B = N`` for CHWN, else 1)."""
    n, c, h, w = a.shape
    if layout == "chwn":
        return a.transpose(1, 2, 3, 0)
    if layout == "cnhw":
        return a.transpose(1, 0, 2, 3).reshape(c * n, h, w, 1)
    return a.reshape(n * c, h, w, 1)


def _from_planes(t, layout, n, c):
    """The inverse of :func:`_to_planes`: ``t (A, OH, OW, B)`` as an ``(N, C, OH, OW)`` view."""
    oh, ow = t.shape[1:3]
    if layout == "chwn":
        return t.transpose(3, 0, 1, 2)
    if layout == "cnhw":
        return t.reshape(c, n, oh, ow).transpose(1, 0, 2, 3)
    return t.reshape(n, c, oh, ow)


# -- max pooling: y = max over the window; arg = the offset k = i*kw + j of the first max
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Return ``(y (N, C, OH, OW), arg)``; ``arg`` (same shape, uint8 for windows of up to
    256 elements, else int32) is the window offset ``i*kw + j`` of the first maximum, which
    the backward needs. ``y`` and ``arg`` keep ``x``'s memory layout when it is CHWN (a
    whole-batch convolution's output on the CPU), CNHW or NCHW (any other: NCHW)."""
    xp, kernel, stride, padding, out_hw = _forward_args("max_pool2d", x, kernel_size, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.max_pool2d(x, kernel, stride, padding, out_hw)
    if x.dtype == numpy.float16:    # NumPy's float16 loops are slow: float32 inside (exact here)
        y, arg = max_pool2d(x.astype(numpy.float32), kernel, stride, padding)
        return y.astype(numpy.float16), arg
    layout = memory_order(x)
    if layout is None:          # any other memory: pooled from a C-contiguous copy
        x, layout = numpy.ascontiguousarray(x), "nchw"
    n, c = x.shape[:2]
    y, arg = _max_pool(xp, _to_planes(x, layout), kernel, stride, padding, out_hw)
    return _from_planes(y, layout, n, c), _from_planes(arg, layout, n, c)


def max_pool2d_positive(x, kernel_size, stride=None, padding=0, relu_input=False):
    """``(y, arg, pos)``: :func:`max_pool2d`'s ``y`` and ``arg`` (the same bits), and ``pos``
    (uint8, ``arg``'s shape and layout) 1 where ``x`` at ``arg`` is > 0: what
    :func:`max_pool2d_relu_backward` takes in place of ``x`` for a ReLU's mask when ``x`` is
    a ReLU's output (one byte per window instead of the whole input in the backward).
    ``pos`` is None where the compiled kernel does not run (a GPU, float16, the kernels off
    or not built, ``x`` in none of CHWN, CNHW and NCHW memory).

    ``relu_input=True``: the pooling of ``maximum(x, 0)`` (a ReLU's output, the same bits),
    ``x`` read through it in the same pass and left holding its pre-activation values
    where the compiled kernel runs; where it does not, ``x`` is first replaced by
    ``maximum(x, 0)`` in place (so the results are the same either way)."""
    xp, kernel, stride, padding, out_hw = _forward_args("max_pool2d", x, kernel_size, stride, padding)
    if xp is numpy and x.dtype in (numpy.float32, numpy.float64):
        layout = memory_order(x)
        if layout is not None:
            done = hostkernels.max_pool(_to_planes(x, layout), kernel, stride, padding, out_hw,
                                        positive=True, relu=relu_input)
            if done is not None:
                n, c = x.shape[:2]
                return tuple(_from_planes(t, layout, n, c) for t in done)
    if relu_input:
        relu(x, inplace=True)
    return max_pool2d(x, kernel, stride, padding) + (None,)


def _pad_planes(t, padding, value):
    """``t (A, H, W, B)`` with ``padding = (ph, pw)`` rows/columns of ``value`` around each
    plane (``t`` itself when there is none)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return t
    a, h, w, b = t.shape
    out = numpy.full((a, h + 2 * ph, w + 2 * pw, b), value, dtype=t.dtype)
    out[:, ph:ph + h, pw:pw + w] = t
    return out


def _max_pool(xp, t, kernel, stride, padding, out_hw):
    """Max pooling of the planes ``t (A, H, W, B)``: ``(y, arg)`` as ``(A, OH, OW, B)``.
    The compiled kernel (:mod:`gpunet.hostkernels`) gives the same bits in one pass where it
    is built; the NumPy code below is the reference and the fallback."""
    done = hostkernels.max_pool(t, kernel, stride, padding, out_hw)
    if done is not None:
        return done
    kk = kernel[0] * kernel[1]
    a, b = t.shape[0], t.shape[3]
    y = xp.empty((a,) + out_hw + (b,), dtype=t.dtype)
    itype = xp.uint8 if kk <= 256 else xp.int32
    arg = xp.empty(y.shape, dtype=itype)
    # One strided copy puts each kernel offset's values in a contiguous block
    # cs[k] (A, OH, OW, B); every later pass then runs on contiguous memory
    # (elementwise ops on strided views are several times slower in NumPy).
    tp = _pad_planes(t, padding, float("-inf"))
    s = tp.strides
    v = xp.lib.stride_tricks.as_strided(
        tp, shape=kernel + (a,) + out_hw + (b,),
        strides=(s[1], s[2], s[0], s[1] * stride[0], s[2] * stride[1], s[3]))
    cs = xp.empty(kernel + (a,) + out_hw + (b,), dtype=t.dtype)
    xp.copyto(cs, v)
    cs = cs.reshape((kk,) + y.shape)
    if kk == 1:
        y[...] = cs[0]
        arg[...] = 0
    else:                                  # the loop's first step, without the copy and fill
        xp.maximum(cs[0], cs[1], out=y)
        if itype == xp.uint8:
            xp.greater(cs[1], cs[0], out=arg.view(xp.bool_))
        else:
            arg[...] = cs[1] > cs[0]
    for k in range(2, kk):
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
    if dy.shape != arg.shape or len(x_shape) != 4:
        raise ValueError(f"max_pool2d_backward: expected dy of arg's shape {tuple(arg.shape)} (the "
                         f"forward's output) and a 4-D x_shape, got dy {tuple(dy.shape)}, x_shape "
                         f"{tuple(x_shape)}")
    if ((dy.shape[2] - 1) * stride[0] + kernel[0] > x_shape[2] + 2 * padding[0]
            or (dy.shape[3] - 1) * stride[1] + kernel[1] > x_shape[3] + 2 * padding[1]):
        raise ValueError(f"max_pool2d_backward: x_shape {tuple(x_shape)} (padding {padding}) is too "
                         f"small for the {dy.shape[2]}x{dy.shape[3]} windows of kernel {kernel}, "
                         f"stride {stride}; expected the forward's input shape")
    if dy.dtype == numpy.float16:   # float32 sums of overlapping windows, rounded once
        return max_pool2d_backward(dy.astype(numpy.float32), arg, x_shape, kernel, stride,
                                   padding).astype(numpy.float16)
    layout = memory_order(arg)
    if layout is None:
        arg, layout = numpy.ascontiguousarray(arg), "nchw"
    n, c = x_shape[:2]
    argt = _to_planes(arg, layout)
    if argt.dtype == numpy.uint8 and hostkernels.library() is not None:
        # the compiled kernel takes dy's planes at any strides (copying them itself only
        # where the images are not adjacent, e.g. NCHW through Flatten)
        dyt = _to_planes(dy, layout)
    else:
        # dy in arg's layout first (one small copy when it comes otherwise): the per-offset
        # passes below are several times slower on mixed layouts
        dyt = _to_planes(as_order(dy, layout), layout)
    planes = (argt.shape[0],) + tuple(x_shape[2:]) + (argt.shape[3],)
    return _from_planes(_max_pool_backward(xp, dyt, argt, planes, kernel, stride, padding),
                        layout, n, c)


def max_pool2d_relu_backward(dy, arg, y, kernel_size, stride=None, padding=0, positive=None):
    """``relu_mask_times(max_pool2d_backward(dy, arg, y.shape, ...), y)`` in one compiled pass:
    the gradient of a ReLU's input when ``y``, its output, is the pooling's input (a
    ``Conv2D(..., activation="relu")`` followed by ``MaxPool2D`` in a ``Sequential``). The
    same bits as the two ops (``dy * (arg == k)`` then ``* (y > 0)``: products by 1 and 0),
    in ``y``'s memory layout (as ``relu_mask_times`` gives). None where the compiled kernel
    does not cover the case (then the caller runs the two ops): not NumPy, dtypes other
    than float32/float64 or not all one, ``y`` in none of CHWN, CNHW and NCHW memory,
    padding, or the kernels off or not built. It
    saves a full pass over the pooling's input (``dx`` written once, not written, read and
    rewritten). ``positive``: :func:`max_pool2d_positive`'s ``pos`` for this ``arg``; for
    disjoint windows the mask is then read from it (one byte per window) instead of ``y``,
    with the same bits. Only the sign of ``y`` is read, so the ReLU's input serves as well
    (what a fused Sequential forward leaves, see ``gpunet.layers.pooling``)."""
    if not (dy.__class__ is arg.__class__ is y.__class__ is numpy.ndarray) or y.ndim != 4:
        return None
    kernel, stride, padding = pool_args("max_pool2d_relu_backward", kernel_size, stride, padding)
    if padding != (0, 0) or dy.dtype != y.dtype or dy.shape != arg.shape or arg.dtype != numpy.uint8:
        return None
    layout = memory_order(y)
    if layout is None:
        return None
    arg = as_order(arg, layout)     # a copy only where they differ (a 1x1 output is "nchw")
    n, c, h, w = y.shape
    argt, yt = _to_planes(arg, layout), _to_planes(y, layout)
    out_hw = arg.shape[2:]
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    tiled = stride == kernel and h == out_hw[0] * kernel[0] and w == out_hw[1] * kernel[1]
    # the mask from the forward's byte per window where it stands for y > 0, else from y
    if positive is not None and disjoint and positive.shape == arg.shape:
        mask, positive = None, _to_planes(as_order(positive, layout), layout)
    else:
        mask, positive = yt, None
    dx = hostkernels.max_pool_backward(_to_planes(dy, layout), argt, yt.shape, kernel, stride,
                                       disjoint, tiled, mask=mask, positive=positive)
    return None if dx is None else _from_planes(dx, layout, n, c)


def _max_pool_backward(xp, dy, arg, planes, kernel, stride, padding):
    """``dx`` planes ``(A, H, W, B)`` from ``dy`` and ``arg`` planes ``(A, OH, OW, B)``."""
    a, h, w, b = planes
    (ph, pw) = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    out_hw = dy.shape[1:3]
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    # windows that tile the padded input exactly write every element: no zero fill needed
    tiled = stride == kernel and hp == out_hw[0] * kernel[0] and wp == out_hw[1] * kernel[1]
    dxpad = hostkernels.max_pool_backward(dy, arg, (a, hp, wp, b), kernel, stride, disjoint, tiled)
    if dxpad is not None:            # the compiled kernel: the same bits as the loop below
        return dxpad[:, ph:ph + h, pw:pw + w] if ph or pw else dxpad
    dxpad = xp.empty((a, hp, wp, b), dtype=dy.dtype)
    if not tiled:
        dxpad[...] = 0
    for k, sh, sw in _slices(kernel, stride, out_hw):
        if disjoint:
            xp.multiply(dy, arg == k, out=dxpad[:, sh, sw])
        else:
            dxpad[:, sh, sw] += dy * (arg == k)
    return dxpad[:, ph:ph + h, pw:pw + w] if ph or pw else dxpad


# -- average pooling: y = (1/(kh*kw)) Σ_window xpad (zero padding counted)
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """``y (N, C, OH, OW)``: the window sum divided by ``kh*kw`` (padding counted). On NumPy
    ``y`` keeps ``x``'s memory order when it is CHWN, CNHW or NCHW (any other: NCHW), as max
    pooling's does: the window sums run over ``(A, H, W, B)`` planes of that memory."""
    xp, kernel, stride, padding, out_hw = _forward_args("avg_pool2d", x, kernel_size, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.avg_pool2d(x, kernel, stride, padding, out_hw)
    if x.dtype == numpy.float16:    # float32 sums, rounded once (as the device kernel)
        return avg_pool2d(x.astype(numpy.float32), kernel, stride, padding).astype(numpy.float16)
    layout = memory_order(x)
    if layout is None:
        x, layout = numpy.ascontiguousarray(x), "nchw"
    n, c = x.shape[:2]
    t = _pad_planes(_to_planes(x, layout), padding, 0.0)
    y = None
    for k, sh, sw in _slices(kernel, stride, out_hw):
        if y is None:
            y = t[:, sh, sw].copy()
        else:
            y += t[:, sh, sw]
    y *= 1.0 / (kernel[0] * kernel[1])
    return _from_planes(y, layout, n, c)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, order=None):
    """``dx``: every input of a window receives ``dy / (kh*kw)``; overlaps add.

    ``order`` (NumPy only; ignored on a GPU, whose kernel returns NCHW): the memory order
    ``dx`` is made in, ``"chwn"``, ``"cnhw"`` or ``"nchw"`` (``AvgPool2D`` passes its forward
    input's, so the layer before it gets ``dx`` in the order it gave); ``dy`` is copied into
    it first when it comes in another (e.g. NCHW through ``Flatten``). None: ``dy``'s own
    order (NCHW when it is none of the three)."""
    xp = get_array_module(dy)
    kernel, stride, padding = pool_args("avg_pool2d_backward", kernel_size, stride, padding)
    if xp is not numpy:
        from ..cuda import pooling as cuda_pool
        return cuda_pool.avg_pool2d_backward(dy, x_shape, kernel, stride, padding)
    _check_order("avg_pool2d_backward", order)
    if dy.dtype == numpy.float16:   # float32 sums, rounded once (as the device kernel)
        return avg_pool2d_backward(dy.astype(numpy.float32), x_shape, kernel, stride,
                                   padding, order).astype(numpy.float16)
    layout = order or memory_order(dy) or "nchw"
    dy = as_order(dy, layout)
    n, c, h, w = x_shape
    (ph, pw) = padding
    g = _to_planes(dy, layout) * (1.0 / (kernel[0] * kernel[1]))
    dxpad = xp.zeros((g.shape[0], h + 2 * ph, w + 2 * pw, g.shape[3]), dtype=dy.dtype)
    for k, sh, sw in _slices(kernel, stride, dy.shape[2:]):
        dxpad[:, sh, sw] += g
    dx = _from_planes(dxpad, layout, n, c)
    return dx[:, :, ph:ph + h, pw:pw + w] if ph or pw else dx


# -- global average pooling: y[n, c] = mean_{h,w} x[n, c, h, w]
def global_avg_pool2d(x):
    _check("global_avg_pool2d", x)
    return x.mean(axis=(2, 3))


def global_avg_pool2d_backward(dy, x_shape, order=None):
    """``dx (N, C, H, W)``: every input of a plane receives ``dy[n, c] / (H*W)``. ``order``
    (NumPy only): ``dx``'s memory order, ``"chwn"``, ``"cnhw"`` or ``"nchw"`` (None:
    NCHW); ``GlobalAvgPool2D`` passes its forward input's, so a convolution's CHWN output
    gets its gradient in CHWN."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    g = dy * (1.0 / (h * w))
    if xp is not numpy:
        return xp.broadcast_to(g[:, :, None, None], x_shape).copy()
    _check_order("global_avg_pool2d_backward", order)
    dx = empty_in(x_shape, g.dtype, order or "nchw")
    dx[...] = g[:, :, None, None]
    return dx


def _check_order(who, order):
    """A backward's ``order=``: None or one of the memory orders of ``layout.ORDERS``."""
    if order is not None and order not in ORDERS:
        raise ValueError(f"{who}: expected order in {sorted(ORDERS)} or None, got {order!r}")
