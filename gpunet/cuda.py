"""gpunet's CUDA kernels: where they live, how they are compiled, and their launchers.

The kernels are CUDA C++ sources in ``kernels/`` (a source checkout's top-level folder,
or ``gpunet/kernels/`` inside an installed wheel), compiled at run time by CuPy through
NVRTC::

    cupy.RawModule(code=<file>, options=compile_options(), name_expressions=KERNELS[file])

memoized per (file, device): a CUDA device id, or ``"sim"``, the simulated device, whose
``RawModule`` (``gpunet.sim.runtime``) compiles the same sources for the CPU and runs
them with CUDA semantics. ``compile_options()`` carries ``-I<kernels dir>`` so that
``#include "common.cuh"`` resolves, and ``-DGPUNET_KERNELS_HASH=<sha256 of every file in
kernels/>``: CuPy's on-disk cache key covers the source and the options but not the
included headers, so the hash makes an edit of ``common.cuh`` recompile every module.
CuPy appends ``-ftz=true`` and the device's ``-arch`` itself; ``compile_options(arch)``
adds both to give the exact NVRTC command line CuPy runs on a GPU of that architecture,
which ``tools/check_kernels.py`` compiles on machines without a GPU.

``KERNELS`` (file -> name expressions) and ``compile_options`` are the single source
that both this loader and the compile check use.

Launchers (inputs are CuPy arrays on one device, or sim arrays; outputs are new arrays of
that module, of the input's dtype, float32 or float64; each mirrors a NumPy reference in
gpunet.functional):

* ``softmax_xent(logits, labels, label_smoothing=0.0, ignore_index=None) -> (loss, dlogits)``
* ``batchnorm_forward(x, gamma, beta, eps) -> (y, mean, var, inv_std)``
* ``batchnorm_backward(dy, x, gamma, mean, inv_std) -> (dx, dgamma, dbeta)``
* ``dropout_forward(x, k1, k2, threshold, scale) -> y``
* ``dropout_backward(dy, k1, k2, threshold, scale) -> dx``

CuPy is imported lazily, through ``gpunet.backend.require_cuda``; importing this module
never needs a GPU. The launchers are written once, against the array module of their
input (``cupy``, or ``gpunet.sim.array`` on the sim), and run unchanged on both.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy

from .backend import device_of, require_cuda, require_sim

_TYPES = ("float", "double")
_CTYPE = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}

# Rows of at most 32 * ITEMS classes take the warp-per-row kernels.
_WARP_ITEMS = (8, 32)

KERNELS: dict[str, list[str]] = {
    "softmax_xent.cu": [
        *(f"softmax_xent_hard_warp<{t}, {i}>" for t in _TYPES for i in _WARP_ITEMS),
        *(f"softmax_xent_hard_block<{t}>" for t in _TYPES),
        *(f"softmax_xent_soft_warp<{t}, {i}>" for t in _TYPES for i in _WARP_ITEMS),
        *(f"softmax_xent_soft_block<{t}>" for t in _TYPES),
    ],
    "batchnorm.cu": [
        f"{k}<{t}>" for k in ("bn_stats_partial", "bn_stats_finalize", "bn_forward_apply",
                              "bn_backward_reduce_partial", "bn_backward_finalize",
                              "bn_backward_apply")
        for t in _TYPES
    ],
    "dropout.cu": [f"dropout_apply<{t}>" for t in _TYPES],
}

# What CuPy appends to the options of every RawModule it compiles with NVRTC.
CUPY_ADDED_OPTIONS = ("-ftz=true",)


# ---------------------------------------------------------------------------------------
# Finding and compiling the sources
# ---------------------------------------------------------------------------------------

def kernels_dir() -> Path:
    """The folder holding the ``*.cu`` / ``*.cuh`` sources.

    An installed wheel carries them as ``gpunet/kernels/``; a source checkout has them in
    the top-level ``kernels/`` beside the ``gpunet/`` package (``gpunet/kernels`` is a
    symlink to it there, which is how the wheel build picks them up).
    """
    here = Path(__file__).resolve().parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "common.cuh").is_file():
            return d.resolve()
    raise FileNotFoundError(
        f"gpunet: CUDA kernel sources not found in {here / 'kernels'} (installed wheel) "
        f"or {here.parent / 'kernels'} (source checkout)")


def kernels_hash(directory=None) -> str:
    """sha256 (hex) over the names and bytes of every ``*.cu`` and ``*.cuh`` file."""
    d = Path(directory) if directory is not None else kernels_dir()
    h = hashlib.sha256()
    for p in sorted([*d.glob("*.cu"), *d.glob("*.cuh")]):
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def compile_options(arch=None, directory=None) -> tuple[str, ...]:
    """NVRTC options for the kernels.

    ``arch=None``: the options gpunet hands to ``cupy.RawModule`` (CuPy adds ``-arch`` for
    the current device and ``-ftz=true``). ``arch=80`` (an int or ``"sm_80"``): the full
    command line CuPy would run on such a device, ``CUPY_ADDED_OPTIONS`` and
    ``-arch=sm_80`` included, as the compile check uses it.
    """
    d = Path(directory) if directory is not None else kernels_dir()
    opts = ("--std=c++17", f"-I{d}", f"-DGPUNET_KERNELS_HASH={kernels_hash(d)[:16]}")
    if arch is not None:
        sm = str(arch).removeprefix("sm_")
        opts += CUPY_ADDED_OPTIONS + (f"-arch=sm_{sm}",)
    return opts


def kernel_source(file: str, directory=None) -> str:
    d = Path(directory) if directory is not None else kernels_dir()
    return (d / file).read_text()


_modules: dict = {}     # (file, device) -> cupy.RawModule
_functions: dict = {}   # (file, name expression, device) -> cupy.RawKernel
_sm_counts: dict = {}   # device -> multiprocessor count


def _xp_of_device(device_id):
    """``(array module, its device index)`` for a CUDA device id or ``"sim"``."""
    if device_id == "sim":
        return require_sim(), 0
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        raise TypeError(f"gpunet.cuda: device must be a CUDA device id (int) or 'sim', "
                        f"got {device_id!r}")
    return require_cuda(device_id), device_id


def module(file: str, device_id=0):
    """The compiled ``RawModule`` of ``kernels/<file>`` on ``device_id`` (memoized):
    a CUDA device id (``cupy.RawModule``), or ``"sim"`` (the sim runtime's)."""
    key = (file, device_id)
    mod = _modules.get(key)
    if mod is None:
        if file not in KERNELS:
            raise ValueError(f"gpunet.cuda.module: unknown kernel file {file!r}; "
                             f"known: {sorted(KERNELS)}")
        cp, index = _xp_of_device(device_id)
        with cp.cuda.Device(index):
            mod = cp.RawModule(code=kernel_source(file), options=compile_options(),
                               name_expressions=KERNELS[file])
            mod.compile()
        _modules[key] = mod
    return mod


def kernel(file: str, name: str, device_id=0):
    """The ``cupy.RawKernel`` for name expression ``name`` (e.g. ``"dropout_apply<float>"``)."""
    key = (file, name, device_id)
    fn = _functions.get(key)
    if fn is None:
        fn = module(file, device_id).get_function(name)
        _functions[key] = fn
    return fn


def _sm_count(device_id) -> int:
    n = _sm_counts.get(device_id)
    if n is None:
        cp, index = _xp_of_device(device_id)
        n = int(cp.cuda.Device(index).attributes["MultiProcessorCount"])
        _sm_counts[device_id] = n
    return n


def fast_divmod_constants(d: int) -> tuple[int, int, int]:
    """``(d, mul, shr)`` with ``n // d == (n * mul) >> (32 + shr)`` for ``0 <= n < 2**31``.

    The device side is ``gpunet::FastDivmod`` in ``kernels/common.cuh``
    (``__umulhi(n, mul) >> shr``); ``d == 1`` is passed through with ``mul = 0``.
    ``mul = ceil(2**(31 + l) / d)`` and ``shr = l - 1`` with ``l = ceil(log2 d)``.
    """
    d = int(d)
    if not 1 <= d < 2**31:
        raise ValueError(f"fast_divmod_constants: divisor must lie in [1, 2**31), got {d}")
    if d == 1:
        return 1, 0, 0
    l = (d - 1).bit_length()
    mul = -(-(1 << (31 + l)) // d)
    return d, mul, l - 1


# ---------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------

def _cupy_for(x):
    """The array module of x's device: the sim's for a sim array, else require_cuda for
    the device of x (device 0 for anything that is not a CuPy array)."""
    if device_of(x) == "sim":
        return require_sim()
    dev = getattr(getattr(x, "device", None), "id", 0)
    return require_cuda(dev if isinstance(dev, int) else 0)


def _device(x):
    """The memoization key of x's device: its CUDA device id, or ``"sim"``."""
    return "sim" if device_of(x) == "sim" else x.device.id


def _float_array(name, x, cp):
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"gpunet.cuda.{name}: expected a cupy.ndarray, got {type(x).__name__}")
    if x.dtype not in _CTYPE:
        raise TypeError(f"gpunet.cuda.{name}: expected float32 or float64, got {x.dtype}")
    return cp.ascontiguousarray(x)


def _same_dtype(name, what, a, dtype, shape):
    if a.dtype != dtype:
        raise ValueError(f"gpunet.cuda.{name}: {what} must have dtype {dtype}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"gpunet.cuda.{name}: {what} must have shape {shape}, got {a.shape}")


def _grid(work: int, threads: int, device_id: int, per_sm: int = 16) -> int:
    return max(1, min(-(-work // threads), _sm_count(device_id) * per_sm))


# ---------------------------------------------------------------------------------------
# Softmax cross-entropy (kernels/softmax_xent.cu)
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# Batch normalization, training mode (kernels/batchnorm.cu)
# ---------------------------------------------------------------------------------------

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
    if dtype == numpy.float32:
        chunks = max(chunks, -(-M // (2**24 - 1)))
    return chunks


def _affine(name, p, default, C, dtype, cp):
    if p is None:
        return cp.full((C,), default, dtype=dtype)
    if not isinstance(p, cp.ndarray):
        raise TypeError(f"gpunet.cuda.{name}: expected a cupy.ndarray, got {type(p).__name__}")
    _same_dtype(name, "gamma/beta", p, dtype, (C,))
    return cp.ascontiguousarray(p)


def batchnorm_forward(x, gamma, beta, eps):
    """Training-mode batch norm: ``(y, mean, var, inv_std)``.

    ``x`` (N, C) or (N, C, H, W); per channel over N (and H, W):
    ``mean``, biased ``var``, ``inv_std = 1/sqrt(var + eps)`` (each shape (C,)) and
    ``y = (x - mean) * inv_std * gamma + beta``. ``gamma``/``beta`` are (C,) of x's dtype,
    or None for 1 / 0 (affine=False). Running statistics are the caller's business.
    """
    cp = _cupy_for(x)
    x = _float_array("batchnorm_forward", x, cp)
    N, C, HW = _bn_layout("batchnorm_forward", x)
    dtype, dev, T = x.dtype, _device(x), _CTYPE[x.dtype]
    with x.device:
        gamma = _affine("batchnorm_forward", gamma, 1.0, C, dtype, cp)
        beta = _affine("batchnorm_forward", beta, 0.0, C, dtype, cp)
        chunks = _bn_chunks(N, C, HW, dtype, dev)
        part = cp.empty((C, chunks, 3), dtype=dtype)
        mean = cp.empty((C,), dtype=dtype)
        var = cp.empty((C,), dtype=dtype)
        inv_std = cp.empty((C,), dtype=dtype)
        y = cp.empty_like(x)
        i32 = numpy.int32
        kernel("batchnorm.cu", f"bn_stats_partial<{T}>", dev)(
            (chunks, C), (256,), (x, i32(N), i32(C), i32(HW), i32(chunks), part))
        kernel("batchnorm.cu", f"bn_stats_finalize<{T}>", dev)(
            (-(-C // 128),), (128,),
            (part, x, i32(C), i32(HW), i32(chunks), dtype.type(eps), mean, var, inv_std))
        total = x.size
        pack = 16 // dtype.itemsize
        work = total // pack if HW % pack == 0 else total
        kernel("batchnorm.cu", f"bn_forward_apply<{T}>", dev)(
            (_grid(work, 256, dev),), (256,),
            (x, mean, inv_std, gamma, beta, y, i32(total),
             *(numpy.uint32(v) for v in fast_divmod_constants(HW)),
             *(numpy.uint32(v) for v in fast_divmod_constants(C))))
    return y, mean, var, inv_std


def batchnorm_backward(dy, x, gamma, mean, inv_std):
    """Training-mode batch-norm backward: ``(dx, dgamma, dbeta)``.

    ``dbeta = sum dy``, ``dgamma = sum dy * xhat`` with ``xhat = (x - mean) * inv_std``
    (sums per channel over N, H, W; shape (C,)), and
    ``dx = gamma * inv_std * (dy - dbeta/M - xhat * dgamma/M)``, ``M = N*H*W``.
    ``mean`` and ``inv_std`` are what ``batchnorm_forward`` returned; ``gamma`` None = 1.
    """
    cp = _cupy_for(x)
    x = _float_array("batchnorm_backward", x, cp)
    dy = _float_array("batchnorm_backward", dy, cp)
    _same_dtype("batchnorm_backward", "dy", dy, x.dtype, x.shape)
    N, C, HW = _bn_layout("batchnorm_backward", x)
    dtype, dev, T = x.dtype, _device(x), _CTYPE[x.dtype]
    with x.device:
        gamma = _affine("batchnorm_backward", gamma, 1.0, C, dtype, cp)
        for what, a in (("mean", mean), ("inv_std", inv_std)):
            _same_dtype("batchnorm_backward", what, a, dtype, (C,))
        mean = cp.ascontiguousarray(mean)
        inv_std = cp.ascontiguousarray(inv_std)
        chunks = _bn_chunks(N, C, HW, dtype, dev)
        part = cp.empty((C, chunks, 2), dtype=dtype)
        dgamma = cp.empty((C,), dtype=dtype)
        dbeta = cp.empty((C,), dtype=dtype)
        dx = cp.empty_like(x)
        i32 = numpy.int32
        kernel("batchnorm.cu", f"bn_backward_reduce_partial<{T}>", dev)(
            (chunks, C), (256,), (dy, x, mean, i32(N), i32(C), i32(HW), i32(chunks), part))
        kernel("batchnorm.cu", f"bn_backward_finalize<{T}>", dev)(
            (-(-C // 128),), (128,), (part, i32(C), i32(chunks), inv_std, dgamma, dbeta))
        total = x.size
        pack = 16 // dtype.itemsize
        work = total // pack if HW % pack == 0 else total
        kernel("batchnorm.cu", f"bn_backward_apply<{T}>", dev)(
            (_grid(work, 256, dev),), (256,),
            (dy, x, mean, inv_std, gamma, dgamma, dbeta, dx, i32(total),
             dtype.type(1.0 / (N * HW)),
             *(numpy.uint32(v) for v in fast_divmod_constants(HW)),
             *(numpy.uint32(v) for v in fast_divmod_constants(C))))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------------------
# Dropout (kernels/dropout.cu)
# ---------------------------------------------------------------------------------------

def _dropout(name, x, k1, k2, threshold, scale):
    cp = _cupy_for(x)
    x = _float_array(name, x, cp)
    for what, v, hi in (("k1", k1, 2**32), ("k2", k2, 2**32), ("threshold", threshold, 2**24 + 1)):
        if not 0 <= int(v) < hi:
            raise ValueError(f"gpunet.cuda.{name}: {what} must lie in [0, {hi}), got {v}")
    n = x.size
    if n >= 2**32:
        raise ValueError(f"gpunet.cuda.{name}: at most 2**32 - 1 elements, got {n}")
    dtype, dev = x.dtype, _device(x)
    with x.device:
        y = cp.empty_like(x)
        if n:
            pack = 16 // dtype.itemsize
            kernel("dropout.cu", f"dropout_apply<{_CTYPE[dtype]}>", dev)(
                (_grid(-(-n // pack), 256, dev),), (256,),
                (x, y, numpy.int64(n), numpy.uint32(int(k1)), numpy.uint32(int(k2)),
                 numpy.uint32(int(threshold)), dtype.type(scale)))
    return y


def dropout_forward(x, k1, k2, threshold, scale):
    """``y = x * keep * scale``, ``keep[i] = (bits[i] >> 8) >= threshold``.

    ``bits`` is gpunet.random's counter hash with keys ``(k1, k2) = gpunet.random.keys(seed,
    offset)`` over the flat C-ordered index; ``threshold = gpunet.random.keep_threshold(p)``;
    ``scale`` is ``1/(1-p)`` (inverted dropout) or 1 (classic). No mask is stored.
    """
    return _dropout("dropout_forward", x, k1, k2, threshold, scale)


def dropout_backward(dy, k1, k2, threshold, scale):
    """``dx = dy * keep * scale`` with the mask regenerated from the same ``(k1, k2)``."""
    return _dropout("dropout_backward", dy, k1, k2, threshold, scale)


__all__ = ["KERNELS", "CUPY_ADDED_OPTIONS", "kernels_dir", "kernels_hash", "compile_options",
           "kernel_source", "module", "kernel", "fast_divmod_constants", "softmax_xent",
           "batchnorm_forward", "batchnorm_backward", "dropout_forward", "dropout_backward"]
