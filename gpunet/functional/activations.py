"""Activation functions: each forward directly above its backward.

Convention: ``f(x, inplace=False) -> y`` and ``f_backward(dy, x, y) -> dx`` where ``x`` is
the forward input and ``y`` its output; a backward uses whichever of the two makes the
derivative cheapest (ReLU reads ``y``, GELU reads ``x``). ``NEEDS_INPUT[name]`` says
whether the backward reads ``x``; when it does not, the forward may overwrite its input
(``inplace=True``), which the fused Dense/Conv paths use to save a pass over memory.

Every body is written once against ``xp`` and runs on NumPy and CuPy, in the input's
dtype (Python-float constants never promote float32).

The input must be a floating-point array (an integer one raises ``ValueError``, anything
else ``TypeError``, naming the function). Hyper-parameters (``inplace``, ``negative_slope``,
``alpha``, ``axis``) are checked on every call, as ``gpunet._args`` checks a constructor's:
``inplace="no"`` would overwrite the input, a NaN slope would fill the output with NaN.
The layers call these per step with values their constructors checked, so each check is
one type test (and a range test) on that path and calls ``gpunet._args`` only for anything
else: a bool, a finite Python float, an int axis of the input.
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy

from .. import _args, hostkernels
from ..backend import array_hint, get_array_module, is_array


def _out(x, inplace):
    return x if inplace else None


def _axis(who, axis, ndim) -> int:
    """The slow path of ``axis``: not an int, or not an axis of an ``ndim``-D input."""
    axis = _args.integer(who, "axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{who}: expected axis in [{-ndim}, {ndim}) for an input of {ndim} "
                         f"dimension{'s' * (ndim != 1)}, got {axis}")
    return axis


def _floating(who, x):
    """Each forward's input: a floating-point NumPy/CuPy array, else ``TypeError`` (not an
    array) or ``ValueError`` (integer dtype) naming the function and the cast; before, an
    integer array failed inside NumPy (``exp`` cannot write floats into it) or came back
    as integers, and a list failed on a missing ``ndim``. One attribute test when it is."""
    try:
        if x.dtype.kind == "f":
            return
    except AttributeError:
        pass
    if not is_array(x):
        hint = array_hint(x) or ("; a list becomes one with numpy.asarray(x, dtype=numpy.float32)"
                                 if isinstance(x, (list, tuple)) else "")
        raise TypeError(f"{who}: expected a NumPy or CuPy array, got {type(x).__name__}{hint}")
    raise ValueError(f"{who}: expected a floating-point input (float32 or float64), got "
                     f"{x.dtype.name}; cast the input: x.astype(numpy.float32)")


# -- Cache-sized blocks. An activation of several elementwise passes (sigmoid 6 forward,
#    SiLU 9 and 13, the exact GELU about 25 each way) streams a large array through memory
#    once per pass; on NumPy, arrays of more than ELEMENTWISE_BLOCK elements run a block at a
#    time in memory order instead, each block's temporaries in cache. Every element gets the
#    same operations, so the results are those of the whole-array call, bit for bit.
#    Forward + backward of the layer on (64, 16, 28, 28) float32, one thread (Intel Xeon of
#    benchmarks/RESULTS.md, busy host, two alternating runs): exact GELU 28.5-30.1 -> 11.5-13.0
#    ms, tanh GELU 17.1-17.6 -> 7.0-8.6, SiLU 5.9-7.1 -> 3.9-5.8, sigmoid 3.9-4.8 -> 2.6-3.7,
#    ELU 3.4-5.0 -> 2.7-3.0, softplus 6.5-8.8 -> 3.7-6.3 (tanh, ReLU, leaky ReLU: a pass or
#    three, left whole).
ELEMENTWISE_BLOCK = 32768


def _memory_flat(a):
    """``a``'s elements in memory order as a 1-D view, or None when they are not one
    contiguous block (a strided slice, a broadcast)."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    t = a.transpose(numpy.argsort(a.strides, kind="stable")[::-1])
    return t.reshape(-1) if t.flags.c_contiguous else None


def _forward_in_blocks(fn):
    """``fn(x, ..., inplace=False)`` (elementwise, ``y`` of ``x``'s dtype) on a NumPy ``x`` of
    more than ``ELEMENTWISE_BLOCK`` elements: a block at a time. ``y`` is a new array of
    ``x``'s memory order, or ``x`` itself where ``fn`` writes in place (``inplace=True`` and
    an activation whose backward needs only ``y``; the others ignore ``inplace``, and keep
    ``x``, which their backward reads)."""
    at = list(inspect.signature(fn).parameters).index("inplace")

    @functools.wraps(fn)
    def run(x, *args, **kw):
        if type(x) is numpy.ndarray and x.size > ELEMENTWISE_BLOCK and x.dtype.kind == "f":
            inplace = kw.get("inplace", args[at - 1] if len(args) >= at else False)
            fx = _memory_flat(x)
            if fx is not None and (inplace is True or inplace is False):
                y = fy = None
                for i in range(0, x.size, ELEMENTWISE_BLOCK):
                    blk = slice(i, i + ELEMENTWISE_BLOCK)
                    r = fn(fx[blk], *args, **kw)
                    if fy is None:                  # the first block: did fn write into x?
                        if inplace and numpy.may_share_memory(r, fx):
                            y, fy = x, fx
                        else:
                            y = numpy.empty_like(x)
                            fy = _memory_flat(y)
                    if fy is not fx:
                        fy[blk] = r
                return y
        return fn(x, *args, **kw)
    return run


def _backward_in_blocks(fn):
    """``fn(dy, x, y, ...)`` (elementwise, ``dx`` of ``dy``'s dtype) on NumPy arrays of more
    than ``ELEMENTWISE_BLOCK`` elements, of one shape, dtype and memory order (``x`` or ``y``
    may be None): a block at a time, into a new array of that order."""
    @functools.wraps(fn)
    def run(dy, x, y, *args, **kw):
        if type(dy) is numpy.ndarray and dy.size > ELEMENTWISE_BLOCK and dy.dtype.kind == "f":
            given = [a for a in (x, y) if a is not None]
            if all(type(a) is numpy.ndarray and a.dtype == dy.dtype and a.shape == dy.shape
                   and a.strides == dy.strides for a in given):
                flats = [None if a is None else _memory_flat(a) for a in (dy, x, y)]
                if flats[0] is not None:
                    dx = numpy.empty_like(dy)
                    fd = _memory_flat(dx)
                    for i in range(0, dy.size, ELEMENTWISE_BLOCK):
                        blk = slice(i, i + ELEMENTWISE_BLOCK)
                        fd[blk] = fn(*[None if a is None else a[blk] for a in flats], *args, **kw)
                    return dx
        return fn(dy, x, y, *args, **kw)
    return run


def _pair_in_blocks(fn):
    """``fn(x, ...) -> (y, d)`` (elementwise, a :data:`FORWARD_AND_DERIVATIVE` function) on a
    NumPy ``x`` of more than ``ELEMENTWISE_BLOCK`` elements: a block at a time, into two
    new arrays of ``x``'s memory order."""
    @functools.wraps(fn)
    def run(x, *args, **kw):
        if type(x) is numpy.ndarray and x.size > ELEMENTWISE_BLOCK and x.dtype.kind == "f":
            fx = _memory_flat(x)
            if fx is not None:
                y = d = fy = fd = None
                for i in range(0, x.size, ELEMENTWISE_BLOCK):
                    blk = slice(i, i + ELEMENTWISE_BLOCK)
                    ry, rd = fn(fx[blk], *args, **kw)
                    if fy is None:
                        y, d = numpy.empty_like(x, dtype=ry.dtype), numpy.empty_like(x, dtype=rd.dtype)
                        fy, fd = _memory_flat(y), _memory_flat(d)
                    fy[blk] = ry
                    fd[blk] = rd
                return y, d
        return fn(x, *args, **kw)
    return run


# -- sigmoid: y = 1 / (1 + e^-x)
@_forward_in_blocks
def sigmoid(x, inplace=False):
    """``σ(x) = 1/(1+e^-x)`` for ``x >= 0`` and ``e^x/(1+e^x)`` below. Both forms read
    ``e = e^-|x| <= 1``, so nothing overflows, and small outputs keep their relative
    precision (``σ(-20) = 2.06e-9``, where ``(1 + tanh(x/2))/2`` rounds to 0 in float32).
    The numerator is ``max(e, [x >= 0])``, which avoids ``xp.where`` (slow on mixed signs)."""
    _floating("sigmoid", x)
    if inplace.__class__ is not bool:
        inplace = _args.flag("sigmoid", "inplace", inplace)
    xp = get_array_module(x)
    e = xp.abs(x)
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    num = (x >= 0).astype(x.dtype)
    xp.maximum(num, e, out=num)
    e += 1.0
    return xp.divide(num, e, out=x if inplace else num)


@_backward_in_blocks
def sigmoid_backward(dy, x, y):
    # dσ/dx = σ(1 - σ): the largest slope is 1/4, which is why deep sigmoid nets vanish.
    xp = get_array_module(dy)
    t = xp.subtract(1.0, y)
    t *= y
    t *= dy
    return t


# -- tanh
def tanh(x, inplace=False):
    _floating("tanh", x)
    if inplace.__class__ is not bool:
        inplace = _args.flag("tanh", "inplace", inplace)
    xp = get_array_module(x)
    return xp.tanh(x, out=_out(x, inplace))


def tanh_backward(dy, x, y):
    xp = get_array_module(dy)
    t = xp.multiply(y, y)
    xp.subtract(1.0, t, out=t)
    t *= dy
    return t


# -- ReLU: y = max(x, 0)
def relu(x, inplace=False):
    _floating("relu", x)
    if inplace.__class__ is not bool:
        inplace = _args.flag("relu", "inplace", inplace)
    xp = get_array_module(x)
    if xp is numpy:
        y = hostkernels.relu(x, inplace)     # one compiled pass, the same values and zeros
        if y is not None:
            return y
    return xp.maximum(x, 0, out=_out(x, inplace))


def relu_backward(dy, x, y):
    # A unit whose output is 0 passes no gradient: a "dead" ReLU stays dead.
    xp = get_array_module(dy, y)
    if xp is numpy:
        return relu_mask_times(dy, y)
    return dy * (y > 0)


def relu_mask_times(dy, y):
    """``dy * (y > 0)`` on NumPy, the same products (``dy * 1.0`` or ``dy * 0.0``): the mask
    is written as floats into the result, which is then multiplied in place. NumPy's
    float-by-bool multiply casts the mask through a buffer; this is 16% faster on a
    (16, 64, 28, 28) float32 array (0.70 -> 0.59 ms, one thread).

    The result takes ``y``'s memory order (``numpy.empty_like``), so a channel-major
    ``y`` (CHWN, as a CPU convolution or batch norm leaves it) gets a channel-major
    ``dx``: a C-order result made both passes cross the layout, which took the ReLU
    backward between a BatchNorm and a MaxPool2D on (64, 16, 28, 28) from 0.5 to 10.6 ms
    (one thread), and made the BatchNorm backward copy ``dx`` back into its order."""
    if dy.shape == y.shape:
        out = hostkernels.relu_mask_times(dy, y)    # one compiled pass, the same products
        if out is not None:
            return out
        out = numpy.empty_like(y, dtype=dy.dtype)
    else:
        out = numpy.empty(numpy.broadcast_shapes(dy.shape, y.shape), dtype=dy.dtype)
    numpy.greater(y, 0, out=out)
    out *= dy
    return out


# -- Leaky ReLU: y = x for x > 0, slope*x otherwise
#    Written without xp.where/masked assignment: on random signs those run ~10x slower
#    than plain passes. max(x, slope*x) picks the right branch for any slope <= 1
#    (negative ones included), min(x, slope*x) for slope > 1; both are exact.
def leaky_relu(x, negative_slope=0.01, inplace=False):
    _floating("leaky_relu", x)
    if inplace.__class__ is not bool:
        inplace = _args.flag("leaky_relu", "inplace", inplace)
    s = negative_slope
    if s.__class__ is not float or s - s != 0.0:         # s - s: NaN for NaN and ±inf
        s = _args.real("leaky_relu", "negative_slope", s)
    xp = get_array_module(x)
    t = xp.multiply(x, s)
    pick = xp.maximum if s <= 1.0 else xp.minimum
    return pick(x, t, out=x if inplace else t)


def leaky_relu_backward(dy, x, y, negative_slope=0.01):
    # dx = dy·c with c = 1 where x > 0, slope elsewhere, built exactly from the 0/1 mask m
    s = negative_slope
    if s.__class__ is not float or s - s != 0.0:
        s = _args.real("leaky_relu_backward", "negative_slope", s)
    xp = get_array_module(dy)
    m = (x > 0).astype(dy.dtype)
    if 0.0 <= s <= 1.0:
        xp.maximum(m, s, out=m)                 # 1 or s
        m *= dy
        return m
    dx = xp.multiply(dy, m)                     # dy·m + s·dy·(1-m): one of the terms is 0
    m -= 1.0
    m *= dy
    m *= -s
    dx += m
    return dx


# -- ELU: y = x for x > 0, alpha*(e^x - 1) otherwise
#    = alpha*expm1(min(x, 0)) + max(x, 0): one of the two terms is 0, so this is exact.
@_forward_in_blocks
def elu(x, alpha=1.0, inplace=False):
    _floating("elu", x)
    if alpha.__class__ is not float or alpha - alpha != 0.0:
        alpha = _args.real("elu", "alpha", alpha)
    xp = get_array_module(x)
    y = xp.minimum(x, 0)
    xp.expm1(y, out=y)
    if alpha != 1.0:
        y *= alpha
    y += xp.maximum(x, 0)
    return y


@_backward_in_blocks
def elu_backward(dy, x, y, alpha=1.0):
    # dy/dx = 1 for x > 0, alpha*e^x = y + alpha otherwise; for alpha >= 0, y <= 0 there
    # and y > 0 above, so min(y, 0) + alpha is the derivative except where x > 0.
    if alpha.__class__ is not float or alpha - alpha != 0.0:
        alpha = _args.real("elu_backward", "alpha", alpha)
    xp = get_array_module(dy)
    if alpha < 0.0:
        return dy * xp.where(x > 0, 1.0, y + alpha).astype(dy.dtype, copy=False)
    d = xp.minimum(y, 0)
    d += alpha
    if alpha != 1.0:                            # set 1 where x > 0: d·(1-m) + m, exact
        m = (x > 0).astype(dy.dtype)
        d *= 1.0 - m
        d += m
    d *= dy
    return d


# -- GELU: y = x·Φ(x), Φ the standard normal CDF (approximate="none", PyTorch's default),
#    or its tanh approximation y = x/2 · (1 + tanh(√(2/π)(x + 0.044715x³))) ("tanh")
GELU_FORMS = ("none", "tanh")


def _gelu_form(who, approximate):
    """``approximate`` checked: ``"none"`` (exact) or ``"tanh"``; the fast path is one
    comparison per call."""
    if approximate.__class__ is str and (approximate == "none" or approximate == "tanh"):
        return approximate
    return _args.choice(who, "approximate", approximate, GELU_FORMS)


@_forward_in_blocks
def gelu(x, approximate="none", inplace=False):
    """GELU, ``x·Φ(x)`` with ``Φ(x) = (1 + erf(x/√2))/2``, PyTorch's ``F.gelu`` and Keras'
    ``gelu`` defaults; ``approximate="tanh"`` gives the tanh form (PyTorch's
    ``F.gelu(x, approximate="tanh")``, GPT-2's), which differs from it by up to 4.73e-4.
    ``inplace`` is accepted as every activation's is; GELU's backward reads ``x``, so the
    output is always a new array.

    Exact form: NumPy has no ``erf``, so gpunet computes the normal tail ``q = Φ(-|x|)``
    itself (:func:`_normal_tail`) and ``y = max(x, 0) - |x|·q``, which is ``x·Φ(x)`` for
    either sign (``Φ(x) = 1 - q`` above 0, ``q`` below) and keeps relative precision at
    large negative x, where PyTorch's ``x/2·(1 + erf(x/√2))`` cancels to 0 (it gives 0
    below x = -5.55 in float32, -8.37 in float64). Measured against mpmath (relative error,
    in units of the dtype's eps): float64 (degree-22 polynomial) within 4 eps for
    |x| <= 3; below that the error grows with the rounding of ``x²`` in ``e^(-x²/2)``:
    10 eps at x = -8, 250 eps at x = -38 (the function's own condition number there is
    ``x²``: ``math.erfc`` of the rounded ``x/√2`` errs as much). float32 is evaluated in
    float32 (degree 8): within 5 eps for |x| <= 3, 11 eps at x = -8, 32 eps below.
    float16 is evaluated in float32 and rounded once (within half a float16 ulp).
    ``±inf`` gives ``inf``/``0`` (PyTorch: NaN), NaN gives NaN. Cost on NumPy: about 25
    elementwise passes each way, run a cache-sized block at a time on large arrays
    (``ELEMENTWISE_BLOCK``); PyTorch's vectorized ``erf`` is still several times faster.
    The GELU layers' training forward calls :func:`gelu_and_derivative` instead (about 8
    passes more), which makes their backward a single multiply.

    Tanh form: ``x·σ(2u)``, ``u = √(2/π)(x + 0.044715x³)`` (``(1 + tanh u)/2 = σ(2u)``),
    which keeps relative precision where ``1 + tanh u`` would cancel (large negative x);
    computed in the input's dtype."""
    _floating("gelu", x)
    approximate = _gelu_form("gelu", approximate)
    if inplace.__class__ is not bool:
        inplace = _args.flag("gelu", "inplace", inplace)
    xp = get_array_module(x)
    if approximate == "tanh":
        s = _gelu_sigmoid(xp, x, x * x)
        s *= x
        return s
    xe = _erf_dtype(x)
    y = _gelu_from_tail(xp, xe, *_normal_tail(xp, xe)[:2])
    return y if xe is x else y.astype(x.dtype)


@_backward_in_blocks
def gelu_backward(dy, x, y, approximate="none"):
    """``dy·(Φ(x) + x·φ(x))`` (exact) or the tanh form's derivative, from ``x``."""
    approximate = _gelu_form("gelu_backward", approximate)
    xp = get_array_module(dy)
    if approximate == "tanh":
        x2 = x * x
        d = _gelu_tanh_derivative(xp, x, x2, _gelu_sigmoid(xp, x, x2))
        d *= dy
        return d
    xe = _erf_dtype(x)
    d = _gelu_derivative(xp, xe, *_normal_tail(xp, xe))
    d *= dy
    return d if d.dtype == dy.dtype else d.astype(dy.dtype)


@_pair_in_blocks
def gelu_and_derivative(x, approximate="none"):
    """``(y, d)``: ``y = gelu(x, approximate)`` and the factor ``d = dy/dx`` elementwise, so
    that ``dy·d`` (rounded to ``dy``'s dtype) is ``gelu_backward(dy, x, y, approximate)``,
    both bit for bit: the same operations, shared between the forward and the backward.
    ``d`` is float32 for a float16 ``x`` in the exact form (the dtype it is evaluated in)."""
    _floating("gelu_and_derivative", x)
    approximate = _gelu_form("gelu_and_derivative", approximate)
    xp = get_array_module(x)
    if approximate == "tanh":
        x2 = x * x
        s = _gelu_sigmoid(xp, x, x2)
        return xp.multiply(s, x), _gelu_tanh_derivative(xp, x, x2, s)
    xe = _erf_dtype(x)
    q, a, e, wp = _normal_tail(xp, xe)
    y = _gelu_from_tail(xp, xe, q, a)
    d = _gelu_derivative(xp, xe, q, a, e, wp)
    return (y if xe is x else y.astype(x.dtype)), d


def _gelu_from_tail(xp, xe, q, a):
    """``y = max(x, 0) - |x|·q`` from :func:`_normal_tail`'s ``q`` and ``a`` (``q`` is
    overwritten)."""
    q *= a                                      # |x|·Φ(-|x|)
    y = xp.maximum(xe, 0)
    y -= q
    return y


def _gelu_derivative(xp, xe, q, a, e, wp):
    """``Φ(x) + x·φ(x)`` from :func:`_normal_tail`'s arrays; ``q``'s memory is reused, its
    value not read (:func:`_gelu_from_tail` may have overwritten it)."""
    # Φ(x) + x·φ(x) = H + s·e·(|x|/√(2π) - w·P) with s = ±1 the sign of x (of -0 too),
    # H = (1 + s)/2 and e·w·P = q = Φ(-|x|) (_normal_tail): q - |x|φ below 0 and
    # 1 - q + xφ above, each without cancelling a rounded 1.
    d = xp.multiply(a, _INV_SQRT_2PI)
    d -= wp
    d *= e                                      # |x|·φ(x) - q
    s = xp.copysign(1.0, xe, out=q)             # ±1, in q's memory
    d *= s
    s += 1.0
    s *= 0.5                                    # H: 1 from +0 on, 0 from -0 down
    d += s
    return d


def _erf_dtype(x):
    """``x``, or a float32 copy of it for a float16 (or other narrower) input: the exact
    form is evaluated in float64 or float32 and rounded once."""
    return x if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else x.astype("float32")


# The normal tail q(a) = Φ(-a) for a >= 0 as e^(-a²/2)·w·P(w - w0) with w = K/(a + K):
# (K, w0, coefficients of P) per evaluation dtype, made and checked against mpmath by
# tools/fit_gelu_erfc.py (its docstring says how; rerun it to reproduce these numbers).
_ERFC_F64 = (4.0, 0.5454545454545454, (
    0.2034730626815634, 0.3415468577675687, 0.44105474527558586,
    0.4181025535818517, 0.2534020006864865, 0.042933818634998636,
    -0.07155475514971488, -0.04691329116693455, 0.020315243286533325,
    0.027364162821717417, -0.009075369780396149, -0.015772999362961344,
    0.007095556494274228, 0.00895003236626925, -0.006931897901904384,
    -0.004196703030621268, 0.0065492504556734195, 0.0006708267444659748,
    -0.005276902128148964, 0.0012398269002799058, 0.003167863719798244,
    -0.001045645634770128, -0.0010465319381810472,
))
_ERFC_F32 = (3.0, 0.5789473684210527, (
    0.2718059804765195, 0.3902125045958895, 0.3341015117666023,
    0.10403025665404263, -0.0823254096415398, -0.05847808311087878,
    0.04050942205900922, 0.023851548279480026, -0.02334597650497211,
))
# |x| is clamped where e^(-x²/2) is already 0 in the dtype (38.6 in float64, 14.4 in
# float32), so that ±inf gives inf·0 nowhere; no finite result changes.
_ERFC_CLAMP = {8: 40.0, 4: 16.0}
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_tail(xp, x):
    """``(q, a, e, wp)`` for a float32/float64 ``x``: ``a = min(|x|, clamp)``, the normal
    tail ``q = Φ(-a) = erfc(a/√2)/2``, ``e = e^(-a²/2)`` and ``wp = q/e`` (four new arrays).
    NaN propagates through every one."""
    K, w0, c = _ERFC_F64 if x.dtype.itemsize == 8 else _ERFC_F32
    a = xp.abs(x)
    xp.minimum(a, _ERFC_CLAMP[x.dtype.itemsize], out=a)
    w = xp.add(a, K)
    xp.divide(K, w, out=w)                      # w = K/(a + K) in (0, 1]
    v = xp.subtract(w, w0)
    p = xp.multiply(v, c[-1])
    for ck in c[-2:0:-1]:
        p += ck
        p *= v
    p += c[0]
    p *= w                                      # wp = q·e^(a²/2)
    e = xp.multiply(a, a)
    e *= -0.5
    xp.exp(e, out=e)
    q = xp.multiply(e, p)
    return q, a, e, p


def _gelu_sigmoid(xp, x, x2):
    """``σ(2u)`` with ``u = √(2/π)(x + 0.044715x³)``, in one new array."""
    t = xp.multiply(x2, x)
    t *= 0.044715
    t += x
    t *= 2.0 * _GELU_C
    return sigmoid(t, inplace=True)


_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh_derivative(xp, x, x2, s):
    """The tanh form's ``dy/dx`` from ``x``, ``x2 = x·x`` (overwritten) and ``s`` of
    :func:`_gelu_sigmoid`."""
    # y = x·s with s = σ(v), v = 2u:  dy/dx = s + x·s(1 - s)·v',  v' = 2√(2/π)(1 + 3·0.044715x²)
    d = xp.subtract(1.0, s)
    d *= s
    # s(1 - s) is exactly 0 in every dtype from |x| ~ 22 on (float64; sooner below), so
    # capping x² at 1e4 (|x| = 100) changes no result, and keeps x² and v' finite where
    # they would overflow (float16 from |x| = 256: inf·0 = NaN)
    xp.minimum(x2, 1e4, out=x2)
    x2 *= 3 * 0.044715
    x2 += 1.0
    x2 *= 2.0 * _GELU_C
    d *= x2
    d *= x
    d += s
    return d


# -- SiLU (swish): y = x σ(x)
@_forward_in_blocks
def silu(x, inplace=False):
    _floating("silu", x)
    y = sigmoid(x)
    y *= x
    return y


@_backward_in_blocks
def silu_backward(dy, x, y):
    t = _silu_derivative(get_array_module(dy), x, sigmoid(x))
    t *= dy
    return t


@_pair_in_blocks
def silu_and_derivative(x):
    """``(silu(x), d)`` with ``dy·d`` = ``silu_backward(dy, x, y)``, both bit for bit (see
    :func:`gelu_and_derivative`)."""
    _floating("silu_and_derivative", x)
    xp = get_array_module(x)
    s = sigmoid(x)
    return xp.multiply(s, x), _silu_derivative(xp, x, s)


def _silu_derivative(xp, x, s):
    """``dy/dx = σ(1 + x(1 - σ))`` from ``x`` and ``s = σ(x)``."""
    t = xp.subtract(1.0, s)
    t *= x
    t += 1.0
    t *= s
    return t


# -- Softplus: y = log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for any finite x
@_forward_in_blocks
def softplus(x, inplace=False):
    _floating("softplus", x)
    xp = get_array_module(x)
    t = xp.abs(x)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)
    t += xp.maximum(x, 0)
    return t


@_backward_in_blocks
def softplus_backward(dy, x, y):
    s = sigmoid(x)
    s *= dy
    return s


# -- Softmax along an axis, with the row max subtracted: e^(x-m) never overflows and the
#    result is unchanged, since softmax(x - m) = softmax(x).
def softmax(x, axis=-1, inplace=False):
    _floating("softmax", x)
    if axis.__class__ is not int or not -x.ndim <= axis < x.ndim:
        axis = _axis("softmax", axis, x.ndim)
    if inplace.__class__ is not bool:
        inplace = _args.flag("softmax", "inplace", inplace)
    xp = get_array_module(x)
    y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=_out(x, inplace))
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_backward(dy, x, y, axis=-1):
    if axis.__class__ is not int or not -dy.ndim <= axis < dy.ndim:
        axis = _axis("softmax_backward", axis, dy.ndim)
    # Jacobian-vector product: dx = y * (dy - Σ dy·y)
    xp = get_array_module(dy)
    t = xp.multiply(dy, y)
    xp.subtract(dy, t.sum(axis=axis, keepdims=True), out=t)
    t *= y
    return t


# -- LogSoftmax: y = x - m - log Σ e^(x-m)
def log_softmax(x, axis=-1, inplace=False):
    _floating("log_softmax", x)
    if axis.__class__ is not int or not -x.ndim <= axis < x.ndim:
        axis = _axis("log_softmax", axis, x.ndim)
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return xp.subtract(z, xp.log(xp.exp(z).sum(axis=axis, keepdims=True)), out=z)


def log_softmax_backward(dy, x, y, axis=-1):
    if axis.__class__ is not int or not -dy.ndim <= axis < dy.ndim:
        axis = _axis("log_softmax_backward", axis, dy.ndim)
    # dx = dy - softmax · Σ dy, with softmax = e^y
    xp = get_array_module(dy)
    t = xp.exp(y)
    t *= dy.sum(axis=axis, keepdims=True)
    xp.subtract(dy, t, out=t)
    return t


# -- Identity
def identity(x, inplace=False):
    return x


def identity_backward(dy, x, y):
    return dy


FORWARD = {
    "sigmoid": sigmoid, "tanh": tanh, "relu": relu, "leaky_relu": leaky_relu, "elu": elu,
    "gelu": gelu, "silu": silu, "softplus": softplus, "softmax": softmax,
    "log_softmax": log_softmax, "identity": identity,
}
BACKWARD = {
    "sigmoid": sigmoid_backward, "tanh": tanh_backward, "relu": relu_backward,
    "leaky_relu": leaky_relu_backward, "elu": elu_backward, "gelu": gelu_backward,
    "silu": silu_backward, "softplus": softplus_backward, "softmax": softmax_backward,
    "log_softmax": log_softmax_backward, "identity": identity_backward,
}
# Whether the backward reads the forward input x (else it needs only y, and the forward may
# run in place).
NEEDS_INPUT = {
    "sigmoid": False, "tanh": False, "relu": False, "leaky_relu": True, "elu": True,
    "gelu": True, "silu": True, "softplus": True, "softmax": False, "log_softmax": False,
    "identity": False,
}
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "silu")
# The forward together with the factor its backward multiplies ``dy`` by, ``(y, d)``, for the
# activations whose backward would redo most of the forward from ``x``: the layers use these
# in training mode on NumPy, keep ``d`` instead of ``x``, and their backward is one multiply
# (:func:`times_derivative`). The results are those of FORWARD and BACKWARD, bit for bit.
# Forward + backward of the layer on (64, 16, 28, 28) float32, one thread (the Intel Xeon of
# benchmarks/RESULTS.md): exact GELU 14.2 -> 7.0 ms (forward alone 4.2 -> 6.1 ms).
FORWARD_AND_DERIVATIVE = {"gelu": gelu_and_derivative, "silu": silu_and_derivative}


def times_derivative(dy, d):
    """``dy·d``, rounded to ``dy``'s dtype, in a new array of ``d``'s memory order: the
    backward of an activation whose forward came from :data:`FORWARD_AND_DERIVATIVE`."""
    out = numpy.multiply(d, dy, out=numpy.empty_like(d))
    return out if out.dtype == dy.dtype else out.astype(dy.dtype)
