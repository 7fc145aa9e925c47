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
import numbers as _numbers

import numpy as _np

from . import _counters as _C
from . import _cuda as cuda

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

# A GPU does not warn about overflow or 0/0 (CuPy never does); neither does the sim.
def _quiet():
    return _np.errstate(all="ignore")

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")


# ---------------------------------------------------------------------------------------
# Host <-> sim helpers
# ---------------------------------------------------------------------------------------

def _wrap(a, base=None):
    """A sim ndarray around the NumPy array ``a`` (no copy, nothing counted)."""
    if not isinstance(a, _np.ndarray):
        a = _np.asarray(a)
    x = ndarray.__new__(ndarray)
    x._a = a
    x._base = base
    return x


def _new(a):
    """A freshly allocated result: counted as one allocation."""
    x = _wrap(a)
    _C.alloc(x._a.nbytes)
    return x


def _view(a, of):
    """``a`` is a NumPy view of ``of``'s buffer: a sim view (free)."""
    return _wrap(a, of if of._base is None else of._base)


def _result(r, of, name):
    """``r`` came from an op on ``of`` that NumPy may have done as a view or a copy."""
    if isinstance(r, _np.ndarray) and _np.may_share_memory(r, of._a):
        return _view(r, of)
    _C.launch(name)
    return _new(_np.ascontiguousarray(r) if isinstance(r, _np.ndarray) else r)


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _operand(x):
    """The NumPy value of an operand of an op: sim arrays and scalars only, as in CuPy."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (_np.generic, _numbers.Number)):
        return x
    raise _unsupported(x)


def _arr(x, what="a"):
    """A sim ndarray argument (CuPy functions refuse NumPy arrays and lists)."""
    if isinstance(x, ndarray):
        return x
    raise _unsupported(x)


def _out(out, r, name):
    """Write ``r`` into ``out`` (one launch) or return it as a new array."""
    _C.launch(name)
    if out is None:
        return _new(r)
    if not isinstance(out, ndarray):
        raise TypeError(f"out must be a cupy.ndarray, got {type(out).__name__}")
    _np.copyto(out._a, r, casting="same_kind")
    return out


# ---------------------------------------------------------------------------------------
# ndarray
# ---------------------------------------------------------------------------------------

class ndarray:
    """A multi-dimensional array on the sim device (``cupy.ndarray``'s interface).

    ``ndarray(shape, dtype=float, memptr=None, strides=None, order='C')`` allocates an
    uninitialized array; other arrays come from the module's functions and ops.
    """
    __slots__ = ("_a", "_base", "__weakref__")   # CuPy arrays can be weakly referenced
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("sim ndarray: memptr= and strides= are not supported")
        self._a = _np.empty(shape, dtype=dtype, order=order)
        self._base = None
        _C.alloc(self._a.nbytes)

    # -- attributes -----------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    base = property(lambda self: self._base)

    @property
    def data(self):
        return cuda.MemoryPointer(self._a.ctypes.data, 0)

    @property
    def device(self):
        return cuda.Device(0)

    @property
    def T(self):
        return _view(self._a.T, self)

    @property
    def mT(self):
        return _view(self._a.mT, self)

    @property
    def real(self):
        return _view(self._a.real, self) if self.dtype.kind == "c" else self

    # -- host syncs -------------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """Copy to the host: a NumPy array (one sync, ``nbytes`` device-to-host)."""
        _C.sync()
        _C.d2h(self._a.nbytes)
        if out is not None:
            if not isinstance(out, _np.ndarray):
                raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
            _np.copyto(out, self._a)
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy the host array ``arr`` (same shape and dtype) into this array."""
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"set: shape/dtype mismatch: {arr.shape} {arr.dtype} into "
                             f"{self.shape} {self.dtype}")
        _C.h2d(arr.nbytes)
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        _C.sync()
        _C.d2h(self.itemsize)
        return self._a.item()

    def tolist(self):
        return self.get().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __complex__(self):
        return complex(self.item())

    def __bool__(self):
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return bool(self.item())

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    def __format__(self, spec):
        return format(self.get() if self.ndim else self.get()[()], spec)

    # -- NumPy interop: refused, as in CuPy ---------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        f = globals().get(ufunc.__name__)
        if method != "__call__" or not isinstance(f, _Ufunc):
            return NotImplemented
        return f(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        f = globals().get(func.__name__)
        if f is None or func.__module__ not in ("numpy", "numpy.core.fromnumeric"):
            return NotImplemented
        return f(*args, **kwargs)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        raise TypeError(_IMPLICIT)

    # -- shape and layout -------------------------------------------------------------------
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def reshape(self, *shape, order="C", copy=None):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _result(self._a.reshape(shape, order=order), self, "copy")

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        return _view(self._a.transpose(axes) if axes else self._a.T, self)

    def swapaxes(self, axis1, axis2):
        return _view(self._a.swapaxes(axis1, axis2), self)

    def squeeze(self, axis=None):
        return _view(self._a.squeeze(axis), self)

    def ravel(self, order="C"):
        return _result(self._a.ravel(order), self, "copy")

    def flatten(self, order="C"):
        _C.launch("copy")
        return _new(self._a.flatten(order))

    def view(self, dtype=None, type=None):
        if type is not None:
            raise NotImplementedError("sim ndarray.view: type= is not supported")
        return _view(self._a if dtype is None else self._a.view(dtype), self)

    def copy(self, order="C"):
        _C.launch("copy")
        return _new(self._a.copy(order))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        dtype = _np.dtype(dtype)
        if not copy and dtype == self.dtype:
            return self
        _C.launch("astype")
        return _new(self._a.astype(dtype, order=order,
                                   **({} if casting is None else {"casting": casting})))

    def fill(self, value):
        _C.launch("fill")
        self._a.fill(_operand(value))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (array, (self.get(),))

    # -- indexing -----------------------------------------------------------------------------
    def __getitem__(self, key):
        k, kind = _index(key)
        if kind == "basic":
            r = self._a[k]
            if not isinstance(r, _np.ndarray):    # NumPy gives a scalar, CuPy a 0-d view
                r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
            return _view(r, self)
        if kind == "mask":       # CuPy counts the selected elements first: a host sync
            _C.launch("scan")
            _C.sync()
            _C.d2h(8)
        _C.launch("take")
        return _new(self._a[k])

    def __setitem__(self, key, value):
        k, _ = _index(key)
        v = _operand(value)
        _C.launch("setitem")
        self._a[k] = v

    # -- reductions and other methods ------------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return sum(self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return mean(self, axis, dtype, out, keepdims)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return var(self, axis, dtype, out, ddof, keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return std(self, axis, dtype, out, ddof, keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=None):
        return prod(self, axis, dtype, out, bool(keepdims))

    def max(self, axis=None, out=None, keepdims=False):
        return amax(self, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return amin(self, axis, out, keepdims)

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        return argmax(self, axis, dtype, out, keepdims)

    def argmin(self, axis=None, out=None, dtype=None, keepdims=False):
        return argmin(self, axis, dtype, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return any(self, axis, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return all(self, axis, out, keepdims)

    def cumsum(self, axis=None, dtype=None, out=None):
        return cumsum(self, axis, dtype, out)

    def clip(self, min=None, max=None, out=None):
        return clip(self, min, max, out)

    def dot(self, b, out=None):
        return dot(self, b, out)

    def nonzero(self):
        return nonzero(self)

    def take(self, indices, axis=None, out=None):
        return take(self, indices, axis, out)

    def round(self, decimals=0, out=None):
        return around(self, decimals, out)

    def repeat(self, repeats, axis=None):
        return repeat(self, repeats, axis)

    # -- operators --------------------------------------------------------------------------------
    def __neg__(self):
        return negative(self)

    def __pos__(self):
        return positive(self)

    def __abs__(self):
        return absolute(self)

    def __invert__(self):
        return invert(self)

    __hash__ = None


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


def _index(key):
    """``key`` with sim arrays replaced by their buffers, and its kind:
    ``basic`` (a view), ``mask`` (boolean array) or ``advanced`` (integer arrays)."""
    parts = key if isinstance(key, tuple) else (key,)
    kind, out = "basic", []
    for k in parts:
        if isinstance(k, ndarray):
            kind = "mask" if k.dtype == _np.bool_ else (kind if kind == "mask" else "advanced")
            out.append(k._a)
        elif isinstance(k, _np.ndarray):
            raise _unsupported(k)
        elif isinstance(k, list):       # CuPy copies a list index to the device first
            kind = "advanced" if kind == "basic" else kind
            k = _np.asarray(k)
            _C.h2d(k.nbytes)
            out.append(k)
        else:
            out.append(k)
    return (tuple(out) if isinstance(key, tuple) else out[0]), kind


# ---------------------------------------------------------------------------------------
# ufuncs: one launch each
# ---------------------------------------------------------------------------------------

class _Ufunc:
    """An elementwise op as CuPy runs it: one kernel launch, a new array unless ``out``."""

    def __init__(self, f):
        self._f = f
        self.__name__ = f.__name__
        self.nin, self.nout = f.nin, f.nout
        self.__doc__ = f"{f.__name__}: elementwise, as numpy.{f.__name__} (one launch)."

    def __call__(self, *args, out=None, casting="same_kind", dtype=None):
        if len(args) != self.nin:
            raise TypeError(f"{self.__name__} takes {self.nin} arguments, got {len(args)}")
        ins = [_operand(a) for a in args]
        kw = {"casting": casting}
        if dtype is not None:
            kw["dtype"] = dtype
        if out is not None:
            if isinstance(out, tuple):
                if len(out) != 1:
                    raise ValueError("sim ufuncs have one output")
                out = out[0]
            if not isinstance(out, ndarray):
                raise TypeError(f"output must be a cupy.ndarray, got {type(out).__name__}")
            with _quiet():
                self._f(*ins, out=out._a, **kw)
            _C.launch(self.__name__)
            return out
        with _quiet():
            r = self._f(*ins, **kw)
        _C.launch(self.__name__)
        return _new(r)

    def __repr__(self):
        return f"<ufunc '{self.__name__}'>"


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


def _host(obj, dtype, order):
    """``obj`` (host data) as a new sim array: one allocation and its bytes host-to-device."""
    if isinstance(obj, (list, tuple)) and _builtins.any(isinstance(v, ndarray) for v in obj):
        return stack([asarray(v) for v in obj]).astype(dtype or result_type(
            *[v.dtype if isinstance(v, ndarray) else _np.asarray(v).dtype for v in obj]),
            copy=False)
    h = _np.array(obj, dtype=dtype, order="C" if order in (None, "K", "A") else order, copy=True)
    if h.dtype == object:
        raise ValueError(f"Unsupported dtype object (from {type(obj).__name__})")
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
    dst = _arr(dst)
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
