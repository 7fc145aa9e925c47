"""The sim device's array module: a CuPy-compatible ``xp`` backed by NumPy.

``gpunet.backend.get_array_module`` returns this module for sim arrays, so every
``xp.<op>`` in gpunet takes the branch it takes under CuPy, and the launchers of
``gpunet.cuda`` run unchanged (``RawModule``/``RawKernel`` come from
``gpunet.sim.runtime``, which compiles ``kernels/*.cu`` for the host).

Faithful to CuPy where a difference would hide a bug of the CUDA branch:

* an ``ndarray`` holds a private NumPy buffer; ``.data.ptr`` is its address, ``.device``
  is ``cuda.Device(0)`` (a context manager), ``.get()`` copies it to the host;
* implicit conversion to NumPy raises ``TypeError`` (``numpy.asarray(x)``,
  ``numpy_array + x``, ``x + numpy_array``), as CuPy does; Python and NumPy *scalars*
  mix freely, with NumPy 2's promotion (a ``numpy.float64`` scalar promotes float32);
* ``.get()``, ``.item()``, ``float()``, ``int()``, ``bool()``, ``.tolist()``, ``repr``
  and ``str`` are host syncs;
* results of ops are new sim arrays (0-d arrays where NumPy would give a scalar);
* only names and keyword arguments that the real ``cupy`` has exist here
  (``tests/test_sim_array_api.py`` checks them against the installed package).

Every op is counted in ``gpunet.sim._counters`` as CuPy would run it: an elementwise op
or a reduction is one launch, a matmul one launch (cuBLAS), a new array one allocation,
``asarray(host data)`` host-to-device bytes, ``.get()`` device-to-host bytes and a sync.
Views (basic slicing, ``reshape`` of contiguous data, ``transpose``, ``broadcast_to``)
cost nothing. A few composite functions (``linalg.norm``, ``eye``, boolean-mask
indexing) are counted as the kernels CuPy composes them of.
"""
import builtins as _builtins

import numpy as _np

from . import _counters as _C
from . import _cuda as cuda
from ._ndarray import _arr, _new, _operand, _out, _quiet, _Ufunc, _view, ndarray

# ---------------------------------------------------------------------------------------
# dtypes and constants (CuPy re-exports NumPy's)
# ---------------------------------------------------------------------------------------
bool_ = _np.bool_
int8, int16, int32, int64 = _np.int8, _np.int16, _np.int32, _np.int64
uint8, uint16, uint32, uint64 = _np.uint8, _np.uint16, _np.uint32, _np.uint64
float16, float32, float64 = _np.float16, _np.float32, _np.float64
complex64, complex128 = _np.complex64, _np.complex128
intp = _np.intp
dtype = _np.dtype
finfo, iinfo = _np.finfo, _np.iinfo
result_type, can_cast, promote_types, issubdtype = (_np.result_type, _np.can_cast,
                                                    _np.promote_types, _np.issubdtype)
newaxis = None
inf, nan, pi, e = _np.inf, _np.nan, _np.pi, _np.e


def _binary(f, name):
    def op(self, other):
        return f(self, other)

    def rop(self, other):
        return f(other, self)

    def iop(self, other):
        return f(self, other, out=self)
    op.__name__, rop.__name__, iop.__name__ = f"__{name}__", f"__r{name}__", f"__i{name}__"
    return op, rop, iop


def _compare(f, name):
    def op(self, other):
        if other is None:
            return NotImplemented
        return f(self, other)
    op.__name__ = f"__{name}__"
    return op


# ---------------------------------------------------------------------------------------
# ufuncs: one launch each
# ---------------------------------------------------------------------------------------

_UFUNCS = (
    "add subtract multiply divide true_divide floor_divide remainder mod fmod power "
    "negative positive absolute fabs sign reciprocal square sqrt cbrt exp exp2 expm1 "
    "log log2 log10 log1p logaddexp sin cos tan arcsin arccos arctan arctan2 sinh cosh "
    "tanh arcsinh arccosh arctanh floor ceil trunc rint signbit copysign heaviside "
    "maximum minimum fmax fmin equal not_equal less less_equal greater greater_equal "
    "logical_and logical_or logical_xor logical_not isfinite isinf isnan "
    "bitwise_and bitwise_or bitwise_xor invert left_shift right_shift"
).split()
for _n in _UFUNCS:
    globals()[_n] = _Ufunc(getattr(_np, _n))
abs = absolute
bitwise_not = invert
del _n

for _name, _f in (("add", add), ("sub", subtract), ("mul", multiply), ("truediv", true_divide),
                  ("floordiv", floor_divide), ("mod", remainder), ("pow", power),
                  ("and", bitwise_and), ("or", bitwise_or), ("xor", bitwise_xor),
                  ("lshift", left_shift), ("rshift", right_shift)):
    for _m in _binary(_f, _name):
        setattr(ndarray, _m.__name__, _m)
for _name, _f in (("eq", equal), ("ne", not_equal), ("lt", less), ("le", less_equal),
                  ("gt", greater), ("ge", greater_equal)):
    setattr(ndarray, f"__{_name}__", _compare(_f, _name))
del _name, _f, _m


def _matmul_op(self, other):
    return matmul(self, other)


def _rmatmul_op(self, other):
    return matmul(other, self)


ndarray.__matmul__, ndarray.__rmatmul__ = _matmul_op, _rmatmul_op


# ---------------------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------------------

def empty(shape, dtype=float, order="C"):
    return _new(_np.empty(shape, dtype=dtype, order=order))


def zeros(shape, dtype=float, order="C"):
    _C.launch("memset")
    return _new(_np.zeros(shape, dtype=dtype, order=order))


def ones(shape, dtype=float, order="C"):
    _C.launch("fill")
    return _new(_np.ones(shape, dtype=dtype, order=order))


def full(shape, fill_value, dtype=None, order="C"):
    _C.launch("fill")
    return _new(_np.full(shape, _operand(fill_value), dtype=dtype, order=order))


def _like(a, dtype, order, shape):
    a = _arr(a)
    return (a.shape if shape is None else shape), (a.dtype if dtype is None else dtype), \
        ("C" if order in ("K", "A") else order)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    s, d, o = _like(prototype, dtype, order, shape)
    return empty(s, d, o)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    s, d, o = _like(a, dtype, order, shape)
    return zeros(s, d, o)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):
    s, d, o = _like(a, dtype, order, shape)
    return ones(s, d, o)


def full_like(a, fill_value, dtype=None, order="K", subok=None, shape=None):
    s, d, o = _like(a, dtype, order, shape)
    return full(s, fill_value, d, o)


def arange(start, stop=None, step=1, dtype=None):
    _C.launch("arange")
    r = _np.arange(start, step=step, dtype=dtype) if stop is None else \
        _np.arange(start, stop, step, dtype=dtype)
    return _new(r)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    _C.launch("linspace")
    r = _np.linspace(start, stop, num, endpoint, retstep, dtype, axis)
    return (_new(r[0]), r[1]) if retstep else _new(r)


def eye(N, M=None, k=0, dtype=float, order="C"):
    _C.launch("memset")
    _C.launch("fill_diagonal")
    return _new(_np.eye(N, M, k, dtype=dtype, order=order))


def identity(n, dtype=float):
    return eye(n, dtype=dtype)


# the dtypes a CuPy array holds (cupy/_core/_dtype.pyx): bool, the integers, float16/32/64,
# complex64/128; structured dtypes too (as bytes)
_CUPY_TYPE_CHARS = "?bhilqBHILQefdFD"


def _check_supported(dt):
    """Refuse, as CuPy does when host data becomes a device array, a dtype no CUDA array
    holds: big-endian data ('Unsupported dtype >f4 with big-endian byte-order') and
    long double (float128), complex256, strings, datetimes ('Unsupported dtype float128')."""
    if dt.byteorder == ">":
        raise ValueError(f"Unsupported dtype {dt} with big-endian byte-order")
    if dt.char not in _CUPY_TYPE_CHARS and dt.fields is None:
        raise ValueError(f"Unsupported dtype {dt}")


def _host(obj, dtype, order):
    """``obj`` (host data) as a new sim array: one allocation and its bytes host-to-device."""
    if isinstance(obj, (list, tuple)) and _builtins.any(isinstance(v, ndarray) for v in obj):
        return stack([asarray(v) for v in obj]).astype(dtype or result_type(
            *[v.dtype if isinstance(v, ndarray) else _np.asarray(v).dtype for v in obj]),
            copy=False)
    h = _np.array(obj, dtype=dtype, order="C" if order in (None, "K", "A") else order, copy=True)
    if h.dtype == object:
        raise ValueError(f"Unsupported dtype object (from {type(obj).__name__})")
    _check_supported(h.dtype)
    _C.h2d(h.nbytes)
    return _new(h)


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        if copy:
            return array(a, dtype, True, order or "K")
        return a.astype(dtype, copy=False) if dtype is not None else a
    return _host(a, dtype, order)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        r = obj.astype(obj.dtype if dtype is None else dtype, copy=bool(copy))
    else:
        r = _host(obj, dtype, order)
    while r.ndim < ndmin:
        r = r[None]
    return r


def ascontiguousarray(a, dtype=None):
    a = _arr(a)
    if a.flags.c_contiguous and (dtype is None or _np.dtype(dtype) == a.dtype):
        return a
    _C.launch("copy")
    return _new(_np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream, order, out, blocking)
    if out is not None:
        out[...] = a
        return out
    return _np.asarray(a, order=order)


def copy(a, order="K"):
    return _arr(a).copy("C" if order in ("K", "A") else order)


def get_array_module(*args):
    import sys
    for x in args:
        if isinstance(x, ndarray):
            return sys.modules[__name__]
    return _np


# ---------------------------------------------------------------------------------------
# Shape manipulation (views are free)
# ---------------------------------------------------------------------------------------

def shape(a):
    return _arr(a).shape


def size(a, axis=None):
    a = _arr(a)
    return a.size if axis is None else a.shape[axis]


def ndim(a):
    return _arr(a).ndim


def reshape(a, newshape, order="C", *, copy=None):
    return _arr(a).reshape(newshape, order=order)


def transpose(a, axes=None):
    return _arr(a).transpose(axes)


def swapaxes(a, axis1, axis2):
    return _arr(a).swapaxes(axis1, axis2)


def moveaxis(a, source, destination):
    return _view(_np.moveaxis(_arr(a)._a, source, destination), a)


def squeeze(a, axis=None):
    return _arr(a).squeeze(axis)


def expand_dims(a, axis):
    return _view(_np.expand_dims(_arr(a)._a, axis), a)


def ravel(a, order="C"):
    return _arr(a).ravel(order)


def broadcast_to(array, shape):
    return _view(_np.broadcast_to(_arr(array)._a, shape), array)


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    r = _np.concatenate([_arr(t)._a for t in tup], axis=axis, dtype=dtype, casting=casting)
    return _out(out, r, "concatenate")


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    r = _np.stack([_arr(t)._a for t in tup], axis=axis, dtype=dtype, casting=casting)
    return _out(out, r, "concatenate")


def where(condition, x=None, y=None):
    if x is None and y is None:
        return nonzero(condition)
    if x is None or y is None:
        raise ValueError("Must provide both 'x' and 'y' or neither.")
    _C.launch("where")
    return _new(_np.where(_operand(condition), _operand(x), _operand(y)))


def copyto(dst, src, casting="same_kind", where=None):
    """As CuPy: ``src`` is a sim array or a scalar (a size-1 host array counts as one);
    a larger host array raises ``ValueError``: no silent host-to-device copy."""
    dst = _arr(dst)
    if isinstance(src, _np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        src = src.reshape(())[()]
    kw = {} if where is None else {"where": _operand(where)}
    _C.launch("copy")
    _np.copyto(dst._a, _operand(src), casting=casting, **kw)


def clip(a, a_min, a_max, out=None):
    r = _np.clip(_arr(a)._a, None if a_min is None else _operand(a_min),
                 None if a_max is None else _operand(a_max))
    return _out(out, r, "clip")


def around(a, decimals=0, out=None):
    return _out(out, _np.around(_arr(a)._a, decimals), "round")


round = around


def nonzero(a):
    """Indices of the non-zero elements: CuPy must learn their count first (a sync)."""
    a = _arr(a)
    _C.launch("scan")
    _C.sync()
    _C.d2h(8)
    _C.launch("nonzero")
    return tuple(_new(i) for i in _np.nonzero(a._a))


def take(a, indices, axis=None, out=None):
    return _out(out, _np.take(_arr(a)._a, _operand(indices), axis=axis), "take")


def repeat(a, repeats, axis=None):
    _C.launch("repeat")
    return _new(_np.repeat(_arr(a)._a, repeats, axis))


def tile(A, reps):
    _C.launch("tile")
    return _new(_np.tile(_arr(A)._a, reps))


# ---------------------------------------------------------------------------------------
# Reductions: one launch each
# ---------------------------------------------------------------------------------------

def _reduce(name, f, a, out, **kw):
    with _quiet():
        r = f(_arr(a)._a, **kw)
    return _out(out, r, name)


def sum(a, axis=None, dtype=None, out=None, keepdims=False):
    return _reduce("sum", _np.sum, a, out, axis=axis, dtype=dtype, keepdims=keepdims)


def prod(a, axis=None, dtype=None, out=None, keepdims=False):
    return _reduce("prod", _np.prod, a, out, axis=axis, dtype=dtype, keepdims=keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    return _reduce("mean", _np.mean, a, out, axis=axis, dtype=dtype, keepdims=keepdims)


def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return _reduce("var", _np.var, a, out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)


def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    return _reduce("std", _np.std, a, out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)


def amax(a, axis=None, out=None, keepdims=False):
    return _reduce("max", _np.amax, a, out, axis=axis, keepdims=keepdims)


def amin(a, axis=None, out=None, keepdims=False):
    return _reduce("min", _np.amin, a, out, axis=axis, keepdims=keepdims)


max, min = amax, amin


def argmax(a, axis=None, dtype=None, out=None, keepdims=False):
    r = _np.argmax(_arr(a)._a, axis=axis, keepdims=keepdims)
    return _out(out, r if dtype is None else r.astype(dtype), "argmax")


def argmin(a, axis=None, dtype=None, out=None, keepdims=False):
    r = _np.argmin(_arr(a)._a, axis=axis, keepdims=keepdims)
    return _out(out, r if dtype is None else r.astype(dtype), "argmin")


def any(a, axis=None, out=None, keepdims=False):
    return _reduce("any", _np.any, a, out, axis=axis, keepdims=keepdims)


def all(a, axis=None, out=None, keepdims=False):
    return _reduce("all", _np.all, a, out, axis=axis, keepdims=keepdims)


def count_nonzero(a, axis=None):
    return _reduce("count_nonzero", _np.count_nonzero, a, None, axis=axis)


def cumsum(a, axis=None, dtype=None, out=None):
    return _reduce("cumsum", _np.cumsum, a, out, axis=axis, dtype=dtype)


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """A bool (CuPy returns a 0-d array; reading it is the caller's sync)."""
    _C.launch("isclose")
    _C.launch("all")
    return _new(_np.asarray(_np.allclose(_operand(a), _operand(b), rtol, atol, equal_nan)))


def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    _C.launch("isclose")
    return _new(_np.isclose(_operand(a), _operand(b), rtol, atol, equal_nan))


def array_equal(a1, a2, equal_nan=False):
    _C.launch("equal")
    _C.launch("all")
    return _new(_np.asarray(_np.array_equal(_operand(a1), _operand(a2), equal_nan)))


# ---------------------------------------------------------------------------------------
# Linear algebra: one cuBLAS call each
# ---------------------------------------------------------------------------------------

def matmul(*args, out=None, casting="same_kind", dtype=None):
    if len(args) != 2:
        raise TypeError(f"matmul takes 2 arguments, got {len(args)}")
    a, b = (_arr(v) for v in args)
    with _quiet():
        r = _np.matmul(a._a, b._a, casting=casting, **({} if dtype is None else {"dtype": dtype}))
    return _out(out, r, "matmul")


def dot(a, b, out=None):
    return _out(out, _np.dot(_arr(a)._a, _arr(b)._a), "matmul")


def tensordot(a, b, axes=2):
    _C.launch("matmul")
    return _new(_np.tensordot(_arr(a)._a, _arr(b)._a, axes))


def outer(a, b, out=None):
    return _out(out, _np.outer(_arr(a)._a, _arr(b)._a), "outer")


class _Linalg:
    """``cupy.linalg``: the norms gpunet computes."""

    @staticmethod
    def norm(x, ord=None, axis=None, keepdims=False):
        """As CuPy: the 2-norm of a real array is ``sqrt(sum(x*x))`` (two launches)."""
        r = _np.linalg.norm(_arr(x)._a, ord=ord, axis=axis, keepdims=keepdims)
        _C.launch("norm_reduce")
        _C.launch("sqrt")
        return _new(_np.asarray(r, dtype=r.dtype if isinstance(r, _np.ndarray) else x.dtype))


linalg = _Linalg()


class _StrideTricks:
    @staticmethod
    def as_strided(x, shape=None, strides=None):
        return _view(_np.lib.stride_tricks.as_strided(_arr(x)._a, shape, strides), x)


class _Lib:
    stride_tricks = _StrideTricks()


lib = _Lib()


# ---------------------------------------------------------------------------------------
# Kernels: the sim runtime compiles kernels/*.cu for the host (imported when first used)
# ---------------------------------------------------------------------------------------

def __getattr__(name):
    if name in ("RawModule", "RawKernel"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(f"module 'cupy' (gpunet sim) has no attribute {name!r}")
