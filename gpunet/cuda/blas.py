"""Matrix products on a CUDA device through cuBLAS, callable while a stream captures a graph.

Why gpunet calls cuBLAS itself: CuPy 14 refuses every cuBLAS call made while the current
stream captures a CUDA graph (``NotImplementedError: calling cuBLAS API during stream capture
is currently unsupported``, raised by its ``cublas.setStream``), so a training step with a
Dense or Conv2D layer could not be captured through CuPy's ``matmul``. That was found on the
first run on a real GPU (an H200); the sim device, which models capture but not CuPy's
cuBLAS wrapper, did not show it. cuBLAS itself supports capture: its kernels are recorded
like any other, ``alpha``/``beta`` passed by host pointer are read at capture time, and a
workspace the caller owns (``cublasSetWorkspace``) keeps cuBLAS from allocating during capture.

So on CUDA every GEMM of gpunet (:func:`gpunet.functional.linear.device_matmul`) goes through
:func:`matmul` here, eager and captured alike, so that a graph replays exactly the products
an eager step computes. It makes the call CuPy's own ``matmul`` makes for the same operands
(``cublasGemmEx``: float32/float16 data with float32 accumulation, ``CUBLAS_COMPUTE_32F_FAST_TF32``
only under ``CUPY_TF32=1`` as CuPy, float64 with float64; the tensor-op algorithm from
compute capability 8.0), on CuPy's cuBLAS handle for the current device, on the current
stream, and a batched product as one ``cublasGemmStridedBatchedEx``. Unlike CuPy it takes
transposed and row-strided views as they are (cuBLAS's ``op`` and leading dimension) and
writes into a strided ``out`` directly; an operand that is neither gets one contiguous copy.

:func:`gemm_plan` works out the cuBLAS arguments from shapes and strides alone; it is pure
Python, so its layout logic is tested on any machine against a NumPy model of column-major
GEMM (``tests/test_cuda_blas.py``); the calls themselves run only on a GPU
(``benchmarks/gpu_check.py`` compares them with CuPy's ``matmul``).
"""
from __future__ import annotations

import collections
import ctypes
import os
import threading

import numpy

OP_N, OP_T = 0, 1                        # cublasOperation_t
CUDA_R = {numpy.dtype(numpy.float32): 0, numpy.dtype(numpy.float64): 1,
          numpy.dtype(numpy.float16): 2}  # cudaDataType
COMPUTE_32F, COMPUTE_64F, COMPUTE_32F_FAST_TF32 = 68, 70, 77   # cublasComputeType_t
GEMM_DEFAULT, GEMM_DEFAULT_TENSOR_OP = -1, 99                  # cublasGemmAlgo_t
WORKSPACE_BYTES = 32 << 20   # cuBLAS's recommended workspace on Hopper (4 MiB suffices before)


GemmPlan = collections.namedtuple(
    "GemmPlan", "transb transa m n k ldb lda ldc stride_b stride_a stride_c batch")
GemmPlan.__doc__ = """The arguments of one column-major cuBLAS call computing a row-major
``C[b] = A[b] @ B[b]`` as ``C[b]^T = B[b]^T @ A[b]^T``; strides and leading dimensions in
elements (a batch stride of 0 broadcasts a matrix over the batch)."""


def operand(rows, cols, s_row, s_col):
    """``(op, ld)`` handing a row-major ``rows x cols`` matrix with element strides
    ``(s_row, s_col)`` to cuBLAS as its transpose (column-major ``cols x rows``): ``OP_N`` when
    rows are contiguous (``s_col == 1``, ``ld = s_row``), ``OP_T`` when columns are
    (``s_row == 1``, ``ld = s_col``), or None when neither (the caller copies it). The stride
    of a dimension of length 1 is never used."""
    if cols == 1 or s_col == 1:
        ld = s_row if rows > 1 else max(cols, 1)
        if ld >= max(cols, 1):
            return OP_N, ld
    if rows == 1 or s_row == 1:
        ld = s_col if cols > 1 else max(rows, 1)
        if ld >= max(rows, 1):
            return OP_T, ld
    return None


def gemm_plan(a_shape, a_strides, b_shape, b_strides, c_strides=None):
    """The :class:`GemmPlan` for ``A @ B`` with A ``(M, K)`` or ``(batch, M, K)`` and B
    ``(K, N)`` or ``(batch, K, N)`` (a 2-D operand, or a batch of 1, broadcasts), strides in
    elements; ``c_strides`` those of the ``(batch, M, N)`` output (default C-contiguous).
    Returns ``(plan, None)``, or ``(None, why)`` when the operands need a copy or the shapes do
    not multiply; ``why`` names ``"a"``, ``"b"``, ``"c"`` or ``"shape"``."""
    if len(a_shape) not in (2, 3) or len(b_shape) not in (2, 3):
        return None, "shape"
    ba, m, k = (1, *a_shape) if len(a_shape) == 2 else a_shape
    bb, k2, n = (1, *b_shape) if len(b_shape) == 2 else b_shape
    if k != k2 or (ba != bb and 1 not in (ba, bb)):
        return None, "shape"
    batch = max(ba, bb)
    sa = (0, *a_strides) if len(a_strides) == 2 else (a_strides[0] if ba > 1 else 0, *a_strides[1:])
    sb = (0, *b_strides) if len(b_strides) == 2 else (b_strides[0] if bb > 1 else 0, *b_strides[1:])
    pa, pb = operand(m, k, sa[1], sa[2]), operand(k, n, sb[1], sb[2])
    if pa is None:
        return None, "a"
    if pb is None:
        return None, "b"
    if c_strides is None:
        c_strides = (m * n, n, 1)
    sc_b, sc_r, sc_c = c_strides
    ldc = sc_r if m > 1 else max(n, 1)
    if (n > 1 and sc_c != 1) or ldc < max(n, 1) or (batch > 1 and sc_b <= 0):
        return None, "c"
    if min(sa[0], sb[0]) < 0:
        return None, "a" if sa[0] < 0 else "b"
    return GemmPlan(pb[0], pa[0], n, m, k, pb[1], pa[1], ldc, sb[0], sa[0],
                    sc_b if batch > 1 else m * n, batch), None


def _element_strides(x):
    item = x.itemsize
    if any(s % item for s in x.strides):
        return None
    return tuple(s // item for s in x.strides)


# -- the library ----------------------------------------------------------------------------

_lock = threading.Lock()
_lib = None
_local = threading.local()        # per thread (CuPy's cuBLAS handles are per thread too)

# How the workspace is handled, "set" (default): cublasSetWorkspace with gpunet's own buffer
# before every call, as PyTorch does, so that cuBLAS never allocates during a capture;
# "default": the library's default pool (what CuPy's calls use). GPUNET_CUBLAS_WORKSPACE.
WORKSPACE = os.environ.get("GPUNET_CUBLAS_WORKSPACE", "set")
# GPUNET_CUBLAS=cupy sends gpunet's GEMMs back to cupy.matmul (eager steps only: CuPy refuses
# cuBLAS during a graph capture).
ENABLED = os.environ.get("GPUNET_CUBLAS", "gpunet") != "cupy"


class _DeviceState:
    """What each call needs of a device, looked up once per thread: CuPy's cuBLAS handle,
    the workspace, the tensor-op algorithm choice."""
    __slots__ = ("handle", "workspace", "ws_ptr", "cc")

    def __init__(self, cp, dev_id):
        with cp.cuda.Device(dev_id):
            self.handle = cp.cuda.device.get_cublas_handle()
            self.workspace = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
            self.ws_ptr = self.workspace.data.ptr
            self.cc = int(cp.cuda.Device(dev_id).compute_capability)


def _state(cp):
    states = getattr(_local, "states", None)
    if states is None:
        states = _local.states = {}
    dev_id = cp.cuda.runtime.getDevice()
    st = states.get(dev_id)
    if st is None:
        st = states[dev_id] = _DeviceState(cp, dev_id)
    return st


def _library(cp):
    """CuPy's own ``libcublas`` (found among the process's loaded objects once CuPy made its
    handle), opened through ctypes: the same library, hence the same handle semantics."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                cp.cuda.device.get_cublas_handle()
                path = None
                with open("/proc/self/maps") as f:
                    for line in f:
                        p = line.split()[-1] if "/" in line else ""
                        if os.path.basename(p).startswith("libcublas.so"):
                            path = p
                            break
                lib = ctypes.CDLL(path or "libcublas.so.13")
                v, i, z, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_longlong
                lib.cublasSetStream_v2.argtypes = [v, v]
                lib.cublasSetWorkspace_v2.argtypes = [v, v, z]
                lib.cublasGemmEx.argtypes = [v, i, i, i, i, i, v, v, i, i, v, i, i, v, v, i, i,
                                             i, i]
                lib.cublasGemmStridedBatchedEx.argtypes = [v, i, i, i, i, i, v, v, i, i, ll, v,
                                                           i, i, ll, v, v, i, i, ll, i, i, i]
                for fn in (lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2, lib.cublasGemmEx,
                           lib.cublasGemmStridedBatchedEx):
                    fn.restype = ctypes.c_int
                _lib = lib
    return _lib


def _check(status, fn):
    if status != 0:
        raise RuntimeError(f"gpunet.cuda.blas: {fn} returned cuBLAS status {status}")


_ONE32, _ZERO32 = ctypes.c_float(1.0), ctypes.c_float(0.0)
_ONE64, _ZERO64 = ctypes.c_double(1.0), ctypes.c_double(0.0)


def compute_type(dtype):
    """cuBLAS's compute type for ``dtype``, as CuPy's matmul picks it (TF32 only under
    ``CUPY_TF32=1``)."""
    if dtype == numpy.float64:
        return COMPUTE_64F
    if dtype == numpy.float32 and os.environ.get("CUPY_TF32", "0") == "1":
        return COMPUTE_32F_FAST_TF32
    return COMPUTE_32F


# (a.shape, a.strides, b.shape, b.strides, dtype, out's shape and strides or None) -> (plan,
# product shape) for operand layouts that need no copy: a training step repeats the same few
# layouts, so after the first step a GEMM costs a dict lookup instead of working out its
# plan (the first GPU runs measured 35 us of host time per small GEMM here against 22 us for
# cupy.matmul, which made eager steps 10-20% slower).
_plans = {}
_PLANS_MAX = 4096


def _key(a, b, out):
    return (a.shape, a.strides, b.shape, b.strides, a.dtype, b.dtype,
            None if out is None else (out.shape, out.strides, out.dtype))


def matmul(a, b, out=None):
    """``a @ b`` for CuPy arrays of one floating dtype (float16, float32, float64), 2-D or a
    3-D batch (a 2-D operand broadcasts), into ``out`` when given (any strides with
    contiguous rows; else a copy into it); other cases go to ``cupy.matmul``."""
    import cupy as cp
    key = _key(a, b, out)
    hit = _plans.get(key)
    if hit is not None:
        plan, shape = hit
        c = out if out is not None else cp.empty(shape, dtype=a.dtype)
        _gemm(cp, plan, b.data.ptr, a.data.ptr, c.data.ptr, a.dtype)
        return c
    return _matmul(cp, a, b, out, key)


def _matmul(cp, a, b, out, key):
    dtype = a.dtype
    if (dtype not in CUDA_R or b.dtype != dtype or a.ndim not in (2, 3) or b.ndim not in (2, 3)
            or (out is not None and (out.dtype != dtype))):
        return cp.matmul(a, b) if out is None else cp.matmul(a, b, out=out)
    ba = a.shape[0] if a.ndim == 3 else 1
    bb = b.shape[0] if b.ndim == 3 else 1
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if b.shape[-2] != k or (ba != bb and 1 not in (ba, bb)):
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not multiply")
    shape = ((max(ba, bb),) if 3 in (a.ndim, b.ndim) else ()) + (m, n)
    if out is not None and out.shape != shape:
        raise ValueError(f"matmul: out has shape {out.shape}, the product {shape}")
    target = out
    c = out if out is not None else cp.empty(shape, dtype=dtype)
    if c.size == 0:
        return c
    if k == 0:
        c.fill(0)
        return c
    c3 = c if c.ndim == 3 else c.reshape((1, m, n))
    sa, sb, sc = _element_strides(a), _element_strides(b), _element_strides(c3)
    plan, why = (gemm_plan(a.shape, sa, b.shape, sb, sc) if None not in (sa, sb, sc)
                 else (None, "a" if sa is None else "b" if sb is None else "c"))
    if plan is not None:          # no copy needed: the next call with this layout skips all this
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()
        _plans[key] = (plan, shape)
    while plan is None:
        if why == "a":
            a = cp.ascontiguousarray(a)
        elif why == "b":
            b = cp.ascontiguousarray(b)
        elif why == "c":
            c = cp.empty(shape, dtype=dtype)
            c3 = c if c.ndim == 3 else c.reshape((1, m, n))
        else:   # pragma: no cover - shapes were checked above
            raise ValueError(f"matmul: cannot multiply {a.shape} and {b.shape}")
        sa, sb, sc = _element_strides(a), _element_strides(b), _element_strides(c3)
        plan, why = gemm_plan(a.shape, sa, b.shape, sb, sc)
    _gemm(cp, plan, b.data.ptr, a.data.ptr, c.data.ptr, dtype)
    if target is not None and c is not target:
        target[...] = c
        return target
    return c


_DTYPE_ARGS = {}


def _dtype_args(dtype):
    """(cudaDataType, compute type, alpha pointer, beta pointer) of ``dtype``, worked out once
    (``CUPY_TF32`` is read at the first float32 product, as CuPy reads it once)."""
    args = _DTYPE_ARGS.get(dtype)
    if args is None:
        ct = compute_type(dtype)
        one, zero = (_ONE64, _ZERO64) if ct == COMPUTE_64F else (_ONE32, _ZERO32)
        args = _DTYPE_ARGS[dtype] = (CUDA_R[dtype], ct, ctypes.addressof(one),
                                     ctypes.addressof(zero))
    return args


def _gemm(cp, plan, b_ptr, a_ptr, c_ptr, dtype):
    lib = _lib or _library(cp)
    st = _state(cp)
    handle = st.handle
    _check(lib.cublasSetStream_v2(handle, cp.cuda.get_current_stream().ptr), "cublasSetStream")
    if WORKSPACE == "set":
        _check(lib.cublasSetWorkspace_v2(handle, st.ws_ptr, WORKSPACE_BYTES), "cublasSetWorkspace")
    t, ct, one, zero = _dtype_args(dtype)
    algo = GEMM_DEFAULT_TENSOR_OP if st.cc >= 80 or (st.cc >= 70 and dtype == numpy.float16) \
        else GEMM_DEFAULT
    p = plan
    if p.batch == 1:
        _check(lib.cublasGemmEx(handle, p.transb, p.transa, p.m, p.n, p.k, one, b_ptr, t, p.ldb,
                                a_ptr, t, p.lda, zero, c_ptr, t, p.ldc, ct, algo), "cublasGemmEx")
    else:
        _check(lib.cublasGemmStridedBatchedEx(
            handle, p.transb, p.transa, p.m, p.n, p.k, one, b_ptr, t, p.ldb, p.stride_b, a_ptr,
            t, p.lda, p.stride_a, zero, c_ptr, t, p.ldc, p.stride_c, p.batch, ct, algo),
            "cublasGemmStridedBatchedEx")
