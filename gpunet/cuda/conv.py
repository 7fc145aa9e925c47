"""Launchers of the convolution kernels (``kernels/conv.cu``): im2col, col2im and the
epilogues around the GEMMs, one launch each per layer and direction.

Layouts (``K = C*kh*kw``, ``P = OH*OW``, ``L = N*P``): ``cols (K, L)`` as
``gpunet.functional.conv.im2col_rows`` builds it (without its ones row), ``z``/``d2``
``(O, L)`` (CNHW memory: what ``W @ cols`` gives and what ``dW = d2 @ cols.T`` and
``dcols = W.T @ d2`` take as plain 2-D GEMMs), ``y``/``dx`` NCHW-contiguous.
"""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _HALF_CTYPE, _cupy_for, _device, _divmod_args, _float_array, _sm_count, kernel

_I32_MAX = 2**31 - 1


def _rows_grid(rows: int, length: int, dev) -> tuple[tuple[int, int], tuple[int]]:
    """``(grid, block)`` for the kernels' layout: gridDim.y strides over ``rows``,
    gridDim.x * blockDim.x over the ``length`` elements of a row (both grid-stride loops),
    at most about 16 blocks per multiprocessor in all."""
    threads = min(256, max(32, -(-length // 32) * 32))
    cap = _sm_count(dev) * 16
    gx = max(1, min(-(-length // threads), cap))
    gy = max(1, min(rows, 65535, cap // gx))
    return (gx, gy), (threads,)


def _check_sizes(name, **sizes):
    for what, v in sizes.items():
        if v > _I32_MAX:
            raise ValueError(f"gpunet.cuda.{name}: {what} must be below 2**31, got {v}")


def _strides(name, a):
    s = tuple(st // a.itemsize for st in a.strides)
    if any(st * a.itemsize != b for st, b in zip(s, a.strides)):
        raise ValueError(f"gpunet.cuda.{name}: strides {a.strides} are not multiples of the itemsize")
    return tuple(numpy.int64(v) for v in s)


def _check_float(name, x, cp, half=True):
    """TypeError unless ``x`` is a float32/float64 array (or float16, when ``half``: the
    conv and max-pool kernels have a __half instantiation)."""
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"gpunet.cuda.{name}: expected a cupy.ndarray, got {type(x).__name__}")
    if x.dtype not in (_HALF_CTYPE if half else _CTYPE):
        raise TypeError(f"gpunet.cuda.{name}: expected {'float16, ' if half else ''}float32 or "
                        f"float64, got {x.dtype}")


def _launch_rows(cp, ref, out_shape, rows, length, source, name, args, out=None):
    """The launch the row-grid kernels share: ``out`` (``out_shape``, ``ref``'s dtype, on
    ``ref``'s device; a given ``out`` is filled instead when it is C-contiguous of that shape
    and dtype), then, unless it is empty, ``source``'s kernel ``name`` (``{T}`` replaced by
    the dtype's C type) over ``rows`` rows of ``length`` elements, with the arguments
    ``args(out)``. Returns ``out``."""
    dtype, dev = ref.dtype, _device(ref)
    with ref.device:
        if out is None or out.shape != out_shape or out.dtype != dtype or not out.flags.c_contiguous:
            out = cp.empty(out_shape, dtype=dtype)
        if out.size:
            grid, block = _rows_grid(rows, length, dev)
            kernel(source, name.format(T=_HALF_CTYPE[dtype]), dev)(grid, block, args(out))
    return out


def im2col_rows(x, kernel_hw, stride, padding, out_hw, out=None):
    """``cols (C*kh*kw, N*OH*OW)`` of ``x (N, C, H, W)`` (any strides, read in place):
    row ``(c*kh + i)*kw + j``, column ``(n*OH + p)*OW + q`` is ``xpad[n, c, p*sh + i, q*sw + j]``.
    ``out``: a C-contiguous array of that shape and dtype to fill instead of a new one."""
    cp = _cupy_for(x)
    _check_float("im2col_rows", x, cp)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_hw, stride, padding, out_hw
    k, p = c * kh * kw, oh * ow
    _check_sizes("im2col_rows", columns=n * p, rows=k)
    i32 = numpy.int32
    return _launch_rows(cp, x, (k, n * p), k, n * p, "conv.cu", "im2col<{T}>", lambda cols: (
        x, cols, i32(k), i32(h), i32(w), *_strides("im2col_rows", x),
        i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(n * p),
        *_divmod_args(p), *_divmod_args(ow)), out=out)


def col2im_rows(dcols, x_shape, kernel_hw, stride, padding, out_hw):
    """The adjoint of :func:`im2col_rows`: ``dcols (C*kh*kw, N*OH*OW) -> dx (N, C, H, W)``
    (C-contiguous); each input element sums, in kernel-offset order, the entries that
    read it (a gather: deterministic, no atomics)."""
    cp = _cupy_for(dcols)
    dcols = _float_array("col2im_rows", dcols, cp, half=True)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_hw, stride, padding, out_hw
    if dcols.shape != (c * kh * kw, n * oh * ow):
        raise ValueError(f"gpunet.cuda.col2im_rows: dcols must have shape {(c * kh * kw, n * oh * ow)}, "
                         f"got {dcols.shape}")
    _check_sizes("col2im_rows", planes=n * c, plane=h * w, columns=n * oh * ow)
    i32 = numpy.int32
    return _launch_rows(cp, dcols, (n, c, h, w), n * c, h * w, "conv.cu", "col2im<{T}>", lambda dx: (
        dcols, dx, i32(n * c), i32(c), i32(h), i32(kh), i32(kw), i32(sh), i32(sw),
        i32(ph), i32(pw), i32(oh), i32(ow), i32(n * oh * ow), *_divmod_args(w)))


def conv_bias_act(z, bias, n, out_hw, relu=False):
    """``y (N, O, OH, OW)``, NCHW-contiguous, from the GEMM's ``z (O, N*OH*OW)`` (CNHW
    memory): ``y[n, o] = z[o, n] + bias[o]`` (no bias: None), then ``max(y, 0)`` when ``relu``."""
    cp = _cupy_for(z)
    z = _float_array("conv_bias_act", z, cp, half=True)
    o = z.shape[0]
    oh, ow = out_hw
    p = oh * ow
    if z.shape != (o, n * p):
        raise ValueError(f"gpunet.cuda.conv_bias_act: z must have shape {(o, n * p)}, got {z.shape}")
    if bias is not None:
        if bias.dtype != z.dtype or bias.shape != (o,):
            raise ValueError(f"gpunet.cuda.conv_bias_act: bias must be ({o},) {z.dtype}, "
                             f"got {bias.shape} {bias.dtype}")
        bias = cp.ascontiguousarray(bias)
    _check_sizes("conv_bias_act", planes=n * o, plane=p)
    i32 = numpy.int32
    return _launch_rows(cp, z, (n, o, oh, ow), n * o, p, "conv.cu", "conv_bias_act<{T}>", lambda y: (
        z, z if bias is None else bias, y, i32(n * o), i32(o), i32(n), i32(p),
        i32(bias is not None), i32(bool(relu))))


def conv_act_grad(dy, y=None):
    """``d2 (O, N*OH*OW)`` (CNHW memory, C-contiguous) from ``dy (N, O, OH, OW)`` (any
    strides, read in place): ``dy`` transposed, times ``(y > 0)`` when ``y`` (the forward's
    output after its ReLU) is given."""
    cp = _cupy_for(dy)
    _check_float("conv_act_grad", dy, cp)
    if dy.ndim != 4:
        raise ValueError(f"gpunet.cuda.conv_act_grad: dy must be 4-D (N, O, OH, OW), got shape {dy.shape}")
    n, o, oh, ow = dy.shape
    p = oh * ow
    if y is not None:
        if y.dtype != dy.dtype or y.shape != dy.shape:
            raise ValueError(f"gpunet.cuda.conv_act_grad: y must be {dy.shape} {dy.dtype}, "
                             f"got {y.shape} {y.dtype}")
        y = cp.ascontiguousarray(y)
    _check_sizes("conv_act_grad", planes=n * o, plane=p)
    i32 = numpy.int32
    return _launch_rows(cp, dy, (o, n * p), o * n, p, "conv.cu", "conv_act_grad<{T}>", lambda d2: (
        dy, dy if y is None else y, d2, i32(o * n), i32(n), i32(o),
        *_strides("conv_act_grad", dy), i32(y is not None),
        numpy.uint32(p), *_divmod_args(ow)))
