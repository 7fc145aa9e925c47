"""Activation functions: each forward directly above its backward.

Convention: ``f(x, inplace=False) -> y`` and ``f_backward(dy, x, y) -> dx`` where ``x`` is
the forward input and ``y`` its output; a backward uses whichever of the two makes the
derivative cheapest (ReLU reads ``y``, GELU reads ``x``). ``NEEDS_INPUT[name]`` says
whether the backward reads ``x``; when it does not, the forward may overwrite its input
(``inplace=True``), which the fused Dense/Conv paths use to save a pass over memory.

Every body is written once against ``xp`` and runs on NumPy and CuPy, in the input's
dtype (Python-float constants never promote float32).

Hyper-parameters (``inplace``, ``negative_slope``, ``alpha``, ``axis``) are checked on
every call, as ``gpunet._args`` checks a constructor's: ``inplace="no"`` would overwrite the
input, a NaN slope would fill the output with NaN. The layers call these per step with
values their constructors checked, so each check is one type test (and a range test) on
that path and calls ``gpunet._args`` only for anything else: a bool, a finite Python
float, an int axis of the input.
"""
from __future__ import annotations

import math

import numpy

from .. import _args
from ..backend import get_array_module


def _out(x, inplace):
    return x if inplace else None


def _axis(who, axis, ndim) -> int:
    """The slow path of ``axis``: not an int, or not an axis of an ``ndim``-D input."""
    axis = _args.integer(who, "axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{who}: expected axis in [{-ndim}, {ndim}) for an input of {ndim} "
                         f"dimension{'s' * (ndim != 1)}, got {axis}")
    return axis


# -- sigmoid: y = 1 / (1 + e^-x)
def sigmoid(x, inplace=False):
    """``σ(x) = 1/(1+e^-x)`` for ``x >= 0`` and ``e^x/(1+e^x)`` below. Both forms read
    ``e = e^-|x| <= 1``, so nothing overflows, and small outputs keep their relative
    precision (``σ(-20) = 2.06e-9``, where ``(1 + tanh(x/2))/2`` rounds to 0 in float32).
    The numerator is ``max(e, [x >= 0])``, which avoids ``xp.where`` (slow on mixed signs)."""
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


def sigmoid_backward(dy, x, y):
    # dσ/dx = σ(1 - σ): the largest slope is 1/4, which is why deep sigmoid nets vanish.
    xp = get_array_module(dy)
    t = xp.subtract(1.0, y)
    t *= y
    t *= dy
    return t


# -- tanh
def tanh(x, inplace=False):
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
    if inplace.__class__ is not bool:
        inplace = _args.flag("relu", "inplace", inplace)
    xp = get_array_module(x)
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
    (16, 64, 28, 28) float32 array (0.70 -> 0.59 ms, one thread)."""
    out = numpy.empty(numpy.broadcast_shapes(dy.shape, y.shape), dtype=dy.dtype)
    numpy.greater(y, 0, out=out)
    out *= dy
    return out


# -- Leaky ReLU: y = x for x > 0, slope*x otherwise
#    Written without xp.where/masked assignment: on random signs those run ~10x slower
#    than plain passes. max(x, slope*x) picks the right branch for any slope <= 1
#    (negative ones included), min(x, slope*x) for slope > 1; both are exact.
def leaky_relu(x, negative_slope=0.01, inplace=False):
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
def elu(x, alpha=1.0, inplace=False):
    if alpha.__class__ is not float or alpha - alpha != 0.0:
        alpha = _args.real("elu", "alpha", alpha)
    xp = get_array_module(x)
    y = xp.minimum(x, 0)
    xp.expm1(y, out=y)
    if alpha != 1.0:
        y *= alpha
    y += xp.maximum(x, 0)
    return y


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


# -- GELU, tanh approximation: y = x/2 * (1 + tanh(√(2/π)(x + 0.044715x³)))
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x, inplace=False):
    """GELU in the tanh form (PyTorch's ``GELU(approximate="tanh")``, GPT-2's): NumPy
    has no ``erf``, and the tanh form has an exact closed-form derivative. Computed as
    ``x·σ(2u)``, ``u = √(2/π)(x + 0.044715x³)`` (``(1 + tanh u)/2 = σ(2u)``), which keeps
    relative precision where ``1 + tanh u`` would cancel (large negative x)."""
    xp = get_array_module(x)
    s = _gelu_sigmoid(xp, x, x * x)
    s *= x
    return s


def _gelu_sigmoid(xp, x, x2):
    """``σ(2u)`` with ``u = √(2/π)(x + 0.044715x³)``, in one new array."""
    t = xp.multiply(x2, x)
    t *= 0.044715
    t += x
    t *= 2.0 * _GELU_C
    return sigmoid(t, inplace=True)


def gelu_backward(dy, x, y):
    # y = x·s with s = σ(v), v = 2u:  dy/dx = s + x·s(1 - s)·v',  v' = 2√(2/π)(1 + 3·0.044715x²)
    xp = get_array_module(dy)
    x2 = x * x
    s = _gelu_sigmoid(xp, x, x2)
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
    d *= dy
    return d


# -- SiLU (swish): y = x σ(x)
def silu(x, inplace=False):
    y = sigmoid(x)
    y *= x
    return y


def silu_backward(dy, x, y):
    # dy/dx = σ(1 + x(1 - σ))
    xp = get_array_module(dy)
    s = sigmoid(x)
    t = xp.subtract(1.0, s)
    t *= x
    t += 1.0
    t *= s
    t *= dy
    return t


# -- Softplus: y = log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for any finite x
def softplus(x, inplace=False):
    xp = get_array_module(x)
    t = xp.abs(x)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)
    t += xp.maximum(x, 0)
    return t


def softplus_backward(dy, x, y):
    s = sigmoid(x)
    s *= dy
    return s


# -- Softmax along an axis, with the row max subtracted: e^(x-m) never overflows and the
#    result is unchanged, since softmax(x - m) = softmax(x).
def softmax(x, axis=-1, inplace=False):
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
