"""Activation functions: each forward directly above its backward.

Convention: ``f(x, inplace=False) -> y`` and ``f_backward(dy, x, y) -> dx`` where ``x`` is
the forward input and ``y`` its output; a backward uses whichever of the two makes the
derivative cheapest (ReLU reads ``y``, GELU reads ``x``). ``NEEDS_INPUT[name]`` says
whether the backward reads ``x``; when it does not, the forward may overwrite its input
(``inplace=True``), which the fused Dense/Conv paths use to save a pass over memory.

Every body is written once against ``xp`` and runs on NumPy and CuPy, in the input's
dtype (Python-float constants never promote float32).
"""
from __future__ import annotations

import math

from ..backend import get_array_module


def _out(x, inplace):
    return x if inplace else None


# -- sigmoid: y = 1 / (1 + e^-x), written as (1 + tanh(x/2)) / 2, which never overflows
def sigmoid(x, inplace=False):
    xp = get_array_module(x)
    y = xp.multiply(x, 0.5, out=_out(x, inplace))
    xp.tanh(y, out=y)
    y += 1.0
    y *= 0.5
    return y


def sigmoid_backward(dy, x, y):
    # dσ/dx = σ(1 - σ): the largest slope is 1/4, which is why deep sigmoid nets vanish.
    return dy * y * (1.0 - y)


# -- tanh
def tanh(x, inplace=False):
    xp = get_array_module(x)
    return xp.tanh(x, out=_out(x, inplace))


def tanh_backward(dy, x, y):
    return dy * (1.0 - y * y)


# -- ReLU: y = max(x, 0)
def relu(x, inplace=False):
    xp = get_array_module(x)
    return xp.maximum(x, 0, out=_out(x, inplace))


def relu_backward(dy, x, y):
    # A unit whose output is 0 passes no gradient: a "dead" ReLU stays dead.
    return dy * (y > 0)


# -- Leaky ReLU: y = x for x > 0, slope*x otherwise
def leaky_relu(x, negative_slope=0.01, inplace=False):
    xp = get_array_module(x)
    if inplace:
        neg = x < 0
        x[neg] *= negative_slope
        return x
    return xp.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(dy, x, y, negative_slope=0.01):
    xp = get_array_module(dy)
    return dy * xp.where(x > 0, 1.0, negative_slope).astype(dy.dtype, copy=False)


# -- ELU: y = x for x > 0, alpha*(e^x - 1) otherwise
def elu(x, alpha=1.0, inplace=False):
    xp = get_array_module(x)
    neg = xp.expm1(xp.minimum(x, 0)) * alpha
    return xp.where(x > 0, x, neg)


def elu_backward(dy, x, y, alpha=1.0):
    xp = get_array_module(dy)
    return dy * xp.where(x > 0, 1.0, y + alpha).astype(dy.dtype, copy=False)


# -- GELU, tanh approximation: y = x/2 * (1 + tanh(√(2/π)(x + 0.044715x³)))
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x, inplace=False):
    """GELU in the tanh form (PyTorch's ``GELU(approximate="tanh")``, GPT-2's): NumPy
    has no ``erf``, and the tanh form has an exact closed-form derivative."""
    xp = get_array_module(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t)


def gelu_backward(dy, x, y):
    xp = get_array_module(dy)
    x2 = x * x
    t = xp.tanh(_GELU_C * (x + 0.044715 * x2 * x))
    dt = _GELU_C * (1.0 + 3 * 0.044715 * x2) * (1.0 - t * t)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * dt)


# -- SiLU (swish): y = x σ(x)
def silu(x, inplace=False):
    return x * sigmoid(x)


def silu_backward(dy, x, y):
    s = sigmoid(x)
    return dy * (s * (1.0 + x * (1.0 - s)))


# -- Softplus: y = log(1 + e^x) = max(x, 0) + log1p(e^-|x|), finite for any finite x
def softplus(x, inplace=False):
    xp = get_array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_backward(dy, x, y):
    return dy * sigmoid(x)


# -- Softmax along an axis, with the row max subtracted: e^(x-m) never overflows and the
#    result is unchanged, since softmax(x - m) = softmax(x).
def softmax(x, axis=-1, inplace=False):
    xp = get_array_module(x)
    y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=_out(x, inplace))
    xp.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def softmax_backward(dy, x, y, axis=-1):
    # Jacobian-vector product: dx = y * (dy - Σ dy·y)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


# -- LogSoftmax: y = x - m - log Σ e^(x-m)
def log_softmax(x, axis=-1, inplace=False):
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return xp.subtract(z, xp.log(xp.exp(z).sum(axis=axis, keepdims=True)), out=z)


def log_softmax_backward(dy, x, y, axis=-1):
    xp = get_array_module(dy)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)


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
