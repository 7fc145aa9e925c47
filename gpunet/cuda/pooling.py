"""Launchers of the pooling kernels (``kernels/pooling.cu``): max and average pooling,
forward and backward, one launch each.

Inputs ``x``/``dy`` are read in place whatever their strides (a whole-batch convolution's
transposed view included); outputs are NCHW-contiguous. Semantics, and the order of the
floating-point operations, are those of ``gpunet.functional.pooling``.
"""
from __future__ import annotations

import numpy

from .conv import _check_float, _check_sizes, _launch_rows, _rows_grid, _strides
from .loader import _HALF_CTYPE, _cupy_for, _device, _divmod_args, kernel


def _arg_ctype(kk):
    return "unsigned char" if kk <= 256 else "int"


def max_pool2d(x, kernel_hw, stride, padding, out_hw):
    """``(y, arg)``, both ``(N, C, OH, OW)``: the window maximum (padding ``-inf``) and the
    offset ``i*kw + j`` of its first maximal element (uint8 for windows of up to 256
    elements, else int32)."""
    cp = _cupy_for(x)
    _check_float("max_pool2d", x, cp)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_hw, stride, padding, out_hw
    kk = kh * kw
    _check_sizes("max_pool2d", planes=n * c, plane=max(h * w, oh * ow))
    dtype, dev = x.dtype, _device(x)
    with x.device:
        y = cp.empty((n, c, oh, ow), dtype=dtype)
        arg = cp.empty((n, c, oh, ow), dtype=numpy.uint8 if kk <= 256 else numpy.int32)
        if y.size:
            grid, block = _rows_grid(n * c, oh * ow, dev)
            i32 = numpy.int32
            kernel("pooling.cu", f"max_pool_forward<{_HALF_CTYPE[dtype]}, {_arg_ctype(kk)}>", dev)(
                grid, block,
                (x, y, arg, i32(n * c), i32(c), i32(h), i32(w), *_strides("max_pool2d", x),
                 i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), *_divmod_args(ow),
                 i32(oh * ow)))
    return y, arg


def max_pool2d_backward(dy, arg, x_shape, kernel_hw, stride, padding):
    """``dx (N, C, H, W)``: each ``dy`` routed to its window's ``arg``; overlaps add."""
    cp = _cupy_for(dy)
    _check_float("max_pool2d_backward", dy, cp)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_hw, stride, padding
    oh, ow = dy.shape[2:]
    kk = kh * kw
    want = numpy.uint8 if kk <= 256 else numpy.int32
    if arg.shape != dy.shape or arg.dtype != want:
        raise ValueError(f"gpunet.cuda.max_pool2d_backward: arg must be {dy.shape} {numpy.dtype(want)}, "
                         f"got {arg.shape} {arg.dtype}")
    arg = cp.ascontiguousarray(arg)
    _check_sizes("max_pool2d_backward", planes=n * c, plane=max(h * w, oh * ow))
    i32 = numpy.int32
    return _launch_rows(cp, dy, (n, c, h, w), n * c, h * w, "pooling.cu",
                        f"max_pool_backward<{{T}}, {_arg_ctype(kk)}>", lambda dx: (
        dy, arg, dx, i32(n * c), i32(c), i32(h), i32(kh), i32(kw), i32(sh), i32(sw),
        i32(ph), i32(pw), i32(oh), i32(ow), *_strides("max_pool2d_backward", dy),
        *_divmod_args(w)))


def _scale(dtype, kk):
    """``1/(kh*kw)`` as the kernel's scalar: in ``dtype``, float32 for float16 (float inside)."""
    return (numpy.float32 if dtype == numpy.float16 else dtype.type)(1.0 / kk)


def avg_pool2d(x, kernel_hw, stride, padding, out_hw):
    """``y (N, C, OH, OW)``: the window sum (zero padding counted) times ``1/(kh*kw)``."""
    cp = _cupy_for(x)
    _check_float("avg_pool2d", x, cp)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_hw, stride, padding, out_hw
    _check_sizes("avg_pool2d", planes=n * c, plane=max(h * w, oh * ow))
    i32 = numpy.int32
    return _launch_rows(cp, x, (n, c, oh, ow), n * c, oh * ow, "pooling.cu", "avg_pool_forward<{T}>",
                        lambda y: (
        x, y, i32(n * c), i32(c), i32(h), i32(w), *_strides("avg_pool2d", x),
        i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), *_divmod_args(ow),
        i32(oh * ow), _scale(x.dtype, kh * kw)))


def avg_pool2d_backward(dy, x_shape, kernel_hw, stride, padding):
    """``dx (N, C, H, W)``: every input of a window receives ``dy * (1/(kh*kw))``; overlaps add."""
    cp = _cupy_for(dy)
    _check_float("avg_pool2d_backward", dy, cp)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_hw, stride, padding
    oh, ow = dy.shape[2:]
    _check_sizes("avg_pool2d_backward", planes=n * c, plane=max(h * w, oh * ow))
    i32 = numpy.int32
    return _launch_rows(cp, dy, (n, c, h, w), n * c, h * w, "pooling.cu", "avg_pool_backward<{T}>",
                        lambda dx: (
        dy, dx, i32(n * c), i32(c), i32(h), i32(kh), i32(kw), i32(sh), i32(sw),
        i32(ph), i32(pw), i32(oh), i32(ow), *_strides("avg_pool2d_backward", dy),
        *_divmod_args(w), _scale(dy.dtype, kh * kw)))
