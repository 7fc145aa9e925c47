"""Launchers of the training-mode batch-norm kernels (``kernels/batchnorm.cu``).

float16 activations (mixed precision): ``x``, ``y``, ``dy`` and ``dx`` are float16, the
statistics, ``gamma``/``beta`` and ``dgamma``/``dbeta`` float32, all arithmetic float32
(each output element rounded once)."""
from __future__ import annotations

import numpy

from .loader import (_CTYPE, _HALF_CTYPE, _acc_dtype, _cupy_for, _device, _divmod_args,
                     _float_array, _grid, _same_dtype, _sm_count, kernel)


def _bn_layout(name, x):
    if x.ndim not in (2, 4):
        raise ValueError(f"gpunet.cuda.{name}: x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    N, C = x.shape[:2]
    HW = 1 if x.ndim == 2 else x.shape[2] * x.shape[3]
    if N * HW == 0 or C == 0:
        raise ValueError(f"gpunet.cuda.{name}: empty input of shape {x.shape}")
    if x.size >= 2**31:
        raise ValueError(f"gpunet.cuda.{name}: at most 2**31 - 1 elements, got {x.size}")
    if C > 65535:  # the reductions put channels on gridDim.y
        raise ValueError(f"gpunet.cuda.{name}: at most 65535 channels, got {C}")
    return N, C, HW


def _bn_chunks(N, C, HW, dtype, dev):
    """How many blocks share one channel's reduction: enough blocks to fill the GPU,
    at least 2048 values per block, and (float32) fewer than 2**24 values per block so
    the Welford counts stay exact."""
    M = N * HW
    want = -(-4 * _sm_count(dev) // C)
    chunks = max(1, min(want, M // 2048))
    if dtype != numpy.float64:          # float counts (float32 and float16 activations)
        chunks = max(chunks, -(-M // (2**24 - 1)))
    return chunks


def _bn_types(x):
    """``(dev, T, acc, A)``: ``x``'s device and C type (the kernels' storage type), and the
    dtype and C type of the statistics and the arithmetic."""
    acc = _acc_dtype(x.dtype)
    return _device(x), _HALF_CTYPE[x.dtype], acc, _CTYPE[acc]


def _apply_grid(x, HW, dev):
    """The apply kernels' grid: a thread per 16-byte pack of ``x`` when ``HW`` is a multiple of
    the pack's length (the kernel then loads packs), else a thread per element."""
    pack = 16 // x.dtype.itemsize
    return _grid(x.size // pack if HW % pack == 0 else x.size, 256, dev)


def _affine(name, p, default, C, dtype, cp):
    if p is None:
        return cp.full((C,), default, dtype=dtype)
    if not isinstance(p, cp.ndarray):
        raise TypeError(f"gpunet.cuda.{name}: expected a cupy.ndarray, got {type(p).__name__}")
    _same_dtype(name, "gamma/beta", p, dtype, (C,))
    return cp.ascontiguousarray(p)


def batchnorm_forward(x, gamma, beta, eps, running=None):
    """Training-mode batch norm: ``(y, mean, var, inv_std)``.

    ``x`` (N, C) or (N, C, H, W); per channel over N (and H, W):
    ``mean``, biased ``var``, ``inv_std = 1/sqrt(var + eps)`` (each shape (C,)) and
    ``y = (x - mean) * inv_std * gamma + beta``. ``gamma``/``beta`` are (C,) of x's dtype
    (float32 for float16 ``x``, whose statistics are float32 too), or None for 1 / 0
    (affine=False). ``running``: None, or ``(running_mean, running_var, momentum)``,
    contiguous (C,) arrays of the statistics' dtype, which the statistics kernel then
    updates in place (``running*(1-momentum) + batch*momentum``, the variance unbiased by
    ``M/(M-1)``, each operation rounded as NumPy rounds it): no extra launch.
    """
    cp = _cupy_for(x)
    x = _float_array("batchnorm_forward", x, cp, half=True)
    N, C, HW = _bn_layout("batchnorm_forward", x)
    dev, T, acc, A = _bn_types(x)
    with x.device:
        gamma = _affine("batchnorm_forward", gamma, 1.0, C, acc, cp)
        beta = _affine("batchnorm_forward", beta, 0.0, C, acc, cp)
        chunks = _bn_chunks(N, C, HW, acc, dev)
        part = cp.empty((C, chunks, 4), dtype=acc)   # (n, mean hi, mean lo, m2)
        mean = cp.empty((C,), dtype=acc)
        var = cp.empty((C,), dtype=acc)
        inv_std = cp.empty((C,), dtype=acc)
        i32 = numpy.int32
        if running is None:
            upd = (i32(0), mean, var, acc.type(0), acc.type(0), acc.type(0))
        else:
            rm, rv, mom = running
            for what, a in (("running_mean", rm), ("running_var", rv)):
                if not isinstance(a, cp.ndarray):
                    raise TypeError(f"gpunet.cuda.batchnorm_forward: expected {what} to be a "
                                    f"cupy.ndarray, got {type(a).__name__}")
                _same_dtype("batchnorm_forward", what, a, acc, (C,))
                if not a.flags.c_contiguous or _device(a) != dev:
                    raise ValueError(f"gpunet.cuda.batchnorm_forward: {what} must be contiguous "
                                     f"and on the input's device")
            M = N * HW
            if M < 2:
                raise ValueError("gpunet.cuda.batchnorm_forward: updating running statistics "
                                 f"needs more than one value per channel, got shape {x.shape}")
            upd = (i32(1), rm, rv, acc.type(M / (M - 1.0)), acc.type(1.0 - mom), acc.type(mom))
        y = cp.empty_like(x)
        kernel("batchnorm.cu", f"bn_stats_partial<{T}>", dev)(
            (chunks, C), (256,), (x, i32(N), i32(C), i32(HW), i32(chunks), part))
        kernel("batchnorm.cu", f"bn_stats_finalize<{A}>", dev)(
            (-(-C // 128),), (128,),
            (part, i32(C), i32(chunks), acc.type(eps), mean, var, inv_std, *upd))
        kernel("batchnorm.cu", f"bn_forward_apply<{T}>", dev)(
            (_apply_grid(x, HW, dev),), (256,),
            (x, mean, inv_std, gamma, beta, y, i32(x.size), *_divmod_args(HW), *_divmod_args(C)))
    return y, mean, var, inv_std


def batchnorm_backward(dy, x, gamma, mean, inv_std):
    """Training-mode batch-norm backward: ``(dx, dgamma, dbeta)``.

    ``dbeta = sum dy``, ``dgamma = sum dy * xhat`` with ``xhat = (x - mean) * inv_std``
    (sums per channel over N, H, W; shape (C,)), and
    ``dx = gamma * inv_std * (dy - dbeta/M - xhat * dgamma/M)``, ``M = N*H*W``.
    ``mean`` and ``inv_std`` are what ``batchnorm_forward`` returned; ``gamma`` None = 1.
    float16 ``dy``/``x``: ``gamma``, ``mean``, ``inv_std``, ``dgamma``, ``dbeta`` float32.
    """
    cp = _cupy_for(x)
    x = _float_array("batchnorm_backward", x, cp, half=True)
    dy = _float_array("batchnorm_backward", dy, cp, half=True)
    _same_dtype("batchnorm_backward", "dy", dy, x.dtype, x.shape)
    N, C, HW = _bn_layout("batchnorm_backward", x)
    dev, T, acc, A = _bn_types(x)
    with x.device:
        gamma = _affine("batchnorm_backward", gamma, 1.0, C, acc, cp)
        for what, a in (("mean", mean), ("inv_std", inv_std)):
            _same_dtype("batchnorm_backward", what, a, acc, (C,))
        mean = cp.ascontiguousarray(mean)
        inv_std = cp.ascontiguousarray(inv_std)
        chunks = _bn_chunks(N, C, HW, acc, dev)
        part = cp.empty((C, chunks, 2), dtype=acc)
        dgamma = cp.empty((C,), dtype=acc)
        dbeta = cp.empty((C,), dtype=acc)
        dx = cp.empty_like(x)
        i32 = numpy.int32
        kernel("batchnorm.cu", f"bn_backward_reduce_partial<{T}>", dev)(
            (chunks, C), (256,), (dy, x, mean, i32(N), i32(C), i32(HW), i32(chunks), part))
        kernel("batchnorm.cu", f"bn_backward_finalize<{A}>", dev)(
            (-(-C // 128),), (128,), (part, i32(C), i32(chunks), inv_std, dgamma, dbeta))
        kernel("batchnorm.cu", f"bn_backward_apply<{T}>", dev)(
            (_apply_grid(x, HW, dev),), (256,),
            (dy, x, mean, inv_std, gamma, dgamma, dbeta, dx, i32(x.size), acc.type(1.0 / (N * HW)),
             *_divmod_args(HW), *_divmod_args(C)))
    return dx, dgamma, dbeta
