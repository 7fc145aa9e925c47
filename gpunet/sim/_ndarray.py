"""The sim device's ``ndarray`` and ufunc type (``gpunet.sim.array`` exports them).

An ``ndarray`` owns a private NumPy buffer ``_a`` (a view keeps its base in ``_base``);
every op that CuPy would run on the GPU is counted in ``gpunet.sim._counters`` where it
happens. Methods that CuPy implements as module functions (reductions, ``clip``, ``dot``,
...) call those of ``gpunet.sim.array``.
"""
import numbers as _numbers

import numpy as _np

from . import _counters as _C
from . import _cuda as cuda


def _quiet():
    """A GPU does not warn about overflow or 0/0 (CuPy never does); neither does the sim."""
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
    """A freshly allocated result: counted as one allocation. While a CUDA graph is
    replayed, the result goes into the buffer its capture allocated (the graph's memory)."""
    if _C._mode is not None:
        if not isinstance(a, _np.ndarray):
            a = _np.asarray(a)
        buf = _C.pool_buffer(a.shape, a.dtype)
        if buf is not None:
            _np.copyto(buf, a)
            return _wrap(buf)
        x = _wrap(a)
        _C.alloc(x._a.nbytes)
        _C.pool_keep(x._a)
        return x
    x = _wrap(a)
    _C.alloc(x._a.nbytes)
    return x


def _pinned(arr):
    """Whether the NumPy array ``arr`` views memory from ``cuda.alloc_pinned_memory``."""
    b = arr
    for _ in range(8):
        b = getattr(b, "base", None) if not isinstance(b, cuda.PinnedMemoryPointer) else b
        if b is None:
            return False
        if isinstance(b, cuda.PinnedMemoryPointer):
            return True
        if isinstance(b, memoryview):
            b = b.obj
    return False


def _touch(x):
    """Note an array operand's address (CUDA-graph capture/replay; nothing otherwise)."""
    _C.event("operand", (x._a.ctypes.data, x._a.nbytes))


def _view(a, of):
    """``a`` is a NumPy view of ``of``'s buffer: a sim view (free)."""
    return _wrap(a, of if of._base is None else of._base)


def _result(r, of, name):
    """``r`` came from an op on ``of`` that NumPy may have done as a view or a copy."""
    if isinstance(r, _np.ndarray) and (r.size == 0 or _np.may_share_memory(r, of._a)):
        return _view(r, of)
    _C.launch(name)
    return _new(_np.ascontiguousarray(r) if isinstance(r, _np.ndarray) else r)


def _unsupported(x):
    return TypeError(f"Unsupported type {type(x)}")


def _read(x):
    """Sim array ``x`` is about to be read by an op: a graph capture records it, and work a
    stream still has pending on it is waited for."""
    if _C._mode is not None:
        _touch(x)
    if _C._pending:
        _C.check_ready(x._a)


def _operand(x):
    """The NumPy value of an operand of an op: sim arrays and scalars only, as in CuPy."""
    if isinstance(x, ndarray):
        _read(x)
        return x._a
    if isinstance(x, (_np.generic, _numbers.Number)):
        if _C._mode is not None:
            _C.event("scalar", (type(x).__name__, repr(x)))
        return x
    raise _unsupported(x)


def _fill_value(v):
    """A value CuPy fills with (``fill``, ``x[...] = v``): a scalar or a 0-d NumPy array.
    A host array is refused with CuPy's own error (``cupy/cupy#593``), a list with
    ``TypeError``: writing host data into a device array is an explicit ``set``/``asarray``."""
    if isinstance(v, _np.ndarray):
        if v.shape != ():
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        return v[()]
    return _operand(v)


def _arr(x):
    """A sim ndarray argument (CuPy functions refuse NumPy arrays and lists)."""
    if isinstance(x, ndarray):
        _read(x)
        return x
    raise _unsupported(x)


def _out(out, r, name):
    """Write ``r`` into ``out`` (one launch) or return it as a new array."""
    _C.launch(name)
    if out is None:
        return _new(r)
    if not isinstance(out, ndarray):
        raise TypeError(f"out must be a cupy.ndarray, got {type(out).__name__}")
    if _C._mode is not None:
        _touch(out)
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
        if _C._mode is not None:
            buf = _C.pool_buffer(self._a.shape, self._a.dtype)
            if buf is not None:
                self._a = buf
                return
            _C.pool_keep(self._a)
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
        if _C._pending:
            _C.check_ready(self._a)
        _C.sync()
        _C.d2h(self._a.nbytes)
        if out is not None:
            if not isinstance(out, _np.ndarray):
                raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
            _np.copyto(out, self._a)
            return out
        return _np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Copy the host array ``arr`` (same shape and dtype) into this array. From pinned
        memory (``cuda.alloc_pinned_memory``) on a ``stream``, the copy is asynchronous:
        no sync, counted in ``h2d_async_bytes`` too, and reading this array from another
        stream before waiting for an event recorded on ``stream`` after it raises."""
        if not isinstance(arr, _np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"set: shape/dtype mismatch: {arr.shape} {arr.dtype} into "
                             f"{self.shape} {self.dtype}")
        if stream is not None and _pinned(arr):
            _C.h2d_async(arr.nbytes)
            self._a[...] = arr
            if stream is not cuda.get_current_stream():
                _C.copy_on_stream(self._a, stream)
            return
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
        f = getattr(_m, ufunc.__name__, None)
        if method != "__call__" or not isinstance(f, _Ufunc):
            return NotImplemented
        return f(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        f = getattr(_m, func.__name__, None)
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
        self._a.fill(_fill_value(value))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (_m.array, (self.get(),))

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
        v = value._a if isinstance(value, ndarray) else _fill_value(value)
        _C.launch("setitem")
        self._a[k] = v

    # -- reductions and other methods ------------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return _m.sum(self, axis, dtype, out, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return _m.mean(self, axis, dtype, out, keepdims)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _m.var(self, axis, dtype, out, ddof, keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return _m.std(self, axis, dtype, out, ddof, keepdims)

    def prod(self, axis=None, dtype=None, out=None, keepdims=None):
        return _m.prod(self, axis, dtype, out, bool(keepdims))

    def max(self, axis=None, out=None, keepdims=False):
        return _m.amax(self, axis, out, keepdims)

    def min(self, axis=None, out=None, keepdims=False):
        return _m.amin(self, axis, out, keepdims)

    def argmax(self, axis=None, out=None, dtype=None, keepdims=False):
        return _m.argmax(self, axis, dtype, out, keepdims)

    def argmin(self, axis=None, out=None, dtype=None, keepdims=False):
        return _m.argmin(self, axis, dtype, out, keepdims)

    def any(self, axis=None, out=None, keepdims=False):
        return _m.any(self, axis, out, keepdims)

    def all(self, axis=None, out=None, keepdims=False):
        return _m.all(self, axis, out, keepdims)

    def cumsum(self, axis=None, dtype=None, out=None):
        return _m.cumsum(self, axis, dtype, out)

    def clip(self, min=None, max=None, out=None):
        return _m.clip(self, min, max, out)

    def dot(self, b, out=None):
        return _m.dot(self, b, out)

    def nonzero(self):
        return _m.nonzero(self)

    def take(self, indices, axis=None, out=None):
        return _m.take(self, indices, axis, out)

    def round(self, decimals=0, out=None):
        return _m.around(self, decimals, out)

    def repeat(self, repeats, axis=None):
        return _m.repeat(self, repeats, axis)

    # -- operators --------------------------------------------------------------------------------
    def __neg__(self):
        return _m.negative(self)

    def __pos__(self):
        return _m.positive(self)

    def __abs__(self):
        return _m.absolute(self)

    def __invert__(self):
        return _m.invert(self)

    __hash__ = None


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
            if _C._mode is not None:
                _touch(out)
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


from . import array as _m  # noqa: E402  (circular: the methods above look it up when called)
