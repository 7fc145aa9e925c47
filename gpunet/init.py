"""Weight initializers: ``f(shape, rng=None, dtype=numpy.float32) -> numpy.ndarray``
(``dtype=None``, as in PyTorch, means the default: float32).

Every initializer draws on the host from ``rng`` (default: the seeded host generator of
``gpunet.random``), so the same seed gives the same weights on every device.

Fans (``fans(shape)``): a dense weight ``(out, in)`` has ``fan_in = in``,
``fan_out = out``; a convolution weight ``(out, in, kh, kw)`` has
``fan_in = in*kh*kw`` and ``fan_out = out*kh*kw``.

==================  =========================================
``xavier_normal``   N(0, std²), std = sqrt(2 / (fan_in + fan_out))
``xavier_uniform``  U(-a, a),   a = sqrt(6 / (fan_in + fan_out))
``he_normal``       N(0, std²), std = sqrt(2 / fan_in)
``he_uniform``      U(-a, a),   a = sqrt(6 / fan_in)
``lecun_normal``    N(0, std²), std = sqrt(1 / fan_in)
==================  =========================================

Xavier keeps the variance of activations and gradients constant through tanh/sigmoid-like
layers; He doubles it to compensate for ReLU zeroing half its inputs. All-zero weights
make every hidden unit of a layer identical forever (symmetry is never broken).
"""
from __future__ import annotations

import math
import numbers

import numpy

from . import random as _random


def _rng(rng):
    return _random.host_rng() if rng is None else rng


def _shape(shape, who="init"):
    """``shape`` (an int or a sequence of ints >= 0) as a tuple; TypeError/ValueError naming
    ``who`` otherwise (a float size used to be truncated, a negative one failed in NumPy)."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{who}: expected shape to be an int or a tuple of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{who}: expected shape to be an int or a tuple of ints, got {shape!r}")
        if d < 0:
            raise ValueError(f"{who}: expected sizes >= 0 in shape, got {shape!r}")
    return tuple(int(d) for d in dims)


#: the settings an initializer takes after the contract's (shape, rng, dtype), by keyword
_BY_KEYWORD = {"init.constant": ("the value", "value=0.5"),
               "init.normal": ("std and mean", "std=0.02, mean=0.0"),
               "init.uniform": ("low and high", "low=-0.1, high=0.1")}


def _check(who, shape, rng, dtype):
    """Validate the contract's ``(shape, rng, dtype)``; returns ``(shape, dtype)``."""
    shape = _shape(shape, who)
    if rng is not None and not (hasattr(rng, "normal") and hasattr(rng, "uniform")):
        # init.constant(shape, 0.5), init.normal(shape, 0.0, 0.02): PyTorch's nn.init order
        kw = _BY_KEYWORD.get(who) if isinstance(rng, numbers.Real) else None
        hint = (f"; the second argument is the rng: pass {kw[0]} by keyword, {who}(shape, {kw[1]})"
                if kw else "")
        raise TypeError(f"{who}: expected rng to be None or a numpy.random.Generator, "
                        f"got {type(rng).__name__}{hint}")
    if dtype is None:
        # the default, as torch's dtype=None is its default dtype (numpy.dtype(None) is float64)
        dtype = numpy.float32
    try:
        dt = numpy.dtype(dtype)
    except TypeError:
        raise TypeError(f"{who}: expected a floating-point dtype, got {dtype!r}") from None
    if dt.kind != "f":
        raise ValueError(f"{who}: expected a floating-point dtype (float32 or float64), got {dt.name}")
    return shape, dt


def _real(v) -> bool:
    """A finite real number (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)


def _fan(who, name, fan, shape):
    if fan <= 0:
        raise ValueError(f"{who}: {name} of shape {shape} is 0; expected a weight shape with no "
                         f"zero-sized axis")
    return fan


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` (see the module docstring)."""
    shape = _shape(shape, "init.fans")
    if len(shape) == 0:
        raise ValueError("init.fans: expected a weight shape with at least one axis, got ()")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(numpy.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def zeros(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.zeros", shape, rng, dtype)
    return numpy.zeros(shape, dtype=dtype)


def ones(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.ones", shape, rng, dtype)
    return numpy.ones(shape, dtype=dtype)


def constant(shape, rng=None, dtype=numpy.float32, value=0.0):
    """Every element ``value`` (keyword: the contract's ``f(shape, rng, dtype)`` comes first)."""
    shape, dtype = _check("init.constant", shape, rng, dtype)
    if not _real(value):
        raise ValueError(f"init.constant: expected value to be a finite number, got {value!r}")
    return numpy.full(shape, value, dtype=dtype)


def normal(shape, rng=None, dtype=numpy.float32, std=0.01, mean=0.0):
    """N(mean, std²) — the course's "small random numbers"."""
    shape, dtype = _check("init.normal", shape, rng, dtype)
    if not (_real(std) and _real(mean) and std >= 0):
        raise ValueError(f"init.normal: expected a finite std >= 0 and a finite mean, got std={std!r}, "
                         f"mean={mean!r}")
    return _rng(rng).normal(mean, std, size=shape).astype(dtype)


def uniform(shape, rng=None, dtype=numpy.float32, low=-0.05, high=0.05):
    shape, dtype = _check("init.uniform", shape, rng, dtype)
    if not (_real(low) and _real(high) and low <= high):
        raise ValueError(f"init.uniform: expected finite low <= high, got low={low!r}, high={high!r}")
    return _rng(rng).uniform(low, high, size=shape).astype(dtype)


def xavier_normal(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.xavier_normal", shape, rng, dtype)
    fi, fo = fans(shape)
    _fan("init.xavier_normal", "fan_in + fan_out", fi + fo, shape)
    return normal(shape, rng, dtype, std=math.sqrt(2.0 / (fi + fo)))


def xavier_uniform(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.xavier_uniform", shape, rng, dtype)
    fi, fo = fans(shape)
    _fan("init.xavier_uniform", "fan_in + fan_out", fi + fo, shape)
    a = math.sqrt(6.0 / (fi + fo))
    return uniform(shape, rng, dtype, low=-a, high=a)


def he_normal(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.he_normal", shape, rng, dtype)
    fi = _fan("init.he_normal", "fan_in", fans(shape)[0], shape)
    return normal(shape, rng, dtype, std=math.sqrt(2.0 / fi))


def he_uniform(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.he_uniform", shape, rng, dtype)
    fi = _fan("init.he_uniform", "fan_in", fans(shape)[0], shape)
    a = math.sqrt(6.0 / fi)
    return uniform(shape, rng, dtype, low=-a, high=a)


def lecun_normal(shape, rng=None, dtype=numpy.float32):
    shape, dtype = _check("init.lecun_normal", shape, rng, dtype)
    fi = _fan("init.lecun_normal", "fan_in", fans(shape)[0], shape)
    return normal(shape, rng, dtype, std=math.sqrt(1.0 / fi))


INITIALIZERS = {
    "zeros": zeros, "ones": ones, "constant": constant, "normal": normal, "uniform": uniform,
    "xavier_normal": xavier_normal, "xavier_uniform": xavier_uniform,
    "he_normal": he_normal, "he_uniform": he_uniform, "lecun_normal": lecun_normal,
    # the course's names
    "zero": zeros, "random": normal, "xavier": xavier_normal, "glorot_normal": xavier_normal,
    "glorot_uniform": xavier_uniform, "he": he_normal, "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
}


def get(init, layer_name: str = "init"):
    """Resolve ``init`` (a name above or a callable ``(shape, rng) -> array``) to a callable."""
    if callable(init):
        return init
    if isinstance(init, str) and init.lower() in INITIALIZERS:
        return INITIALIZERS[init.lower()]
    known = ", ".join(sorted(INITIALIZERS))
    raise ValueError(f"{layer_name}: unknown init {init!r}; known initializers: {known}")


def make(init, shape, dtype=numpy.float32, layer_name="init"):
    """Draw a weight with ``init`` from the host generator and check what comes back."""
    f = get(init, layer_name)
    w = f(_shape(shape), _random.host_rng())
    if not isinstance(w, numpy.ndarray):
        from .backend import device_of, is_array
        if is_array(w) and device_of(w) != "cpu":
            # weights are drawn on the host, the same on every device, then moved (as
            # PyTorch's nn.init fills a CPU tensor before module.to(device)); a device
            # array here would be copied back silently, or refuse conversion deep inside
            raise TypeError(f"{layer_name}: init returned an array on {device_of(w)}; an init "
                            f"returns a host (NumPy) array, drawn with the rng it is given, and "
                            f"the model moves it: model.to({device_of(w)!r})")
        w = numpy.asarray(w)
    if w.shape != _shape(shape):
        raise ValueError(f"{layer_name}: init returned shape {w.shape}, expected {_shape(shape)}")
    # once per weight, at construction: a weight that is not real numbers, or not finite,
    # would make every output NaN from the first step
    if w.dtype.kind not in "biuf":
        raise ValueError(f"{layer_name}: init returned an array of dtype {w.dtype}, expected real numbers")
    if not numpy.isfinite(w).all():
        raise ValueError(f"{layer_name}: init returned non-finite values (NaN or inf), expected finite weights")
    return w.astype(dtype, copy=False)
