"""Plain-NumPy references for the benchmarks: the same math as gpunet's ops, written the
way a careful NumPy user would (float32 throughout, in-place where it is free), with no
framework around it. Each benchmark checks gpunet's result against its reference once
before timing, so a faster number can never come from different arithmetic.
"""
from __future__ import annotations

import math

import numpy

F32 = numpy.float32


# -- Dense --------------------------------------------------------------------------------
def dense_forward(x, w, b, relu=True):
    z = x @ w.T
    z += b
    if relu:
        numpy.maximum(z, 0, out=z)
    return z


def dense_backward(dy, x, w, y, relu=True, need_dx=True):
    g = dy * (y > 0) if relu else dy
    return (g @ w if need_dx else None), g.T @ x, g.sum(axis=0)


# -- activations: name -> (forward, backward(dy, x, y)) ----------------------------------------
def _sig(x):
    return 0.5 * (1.0 + numpy.tanh(0.5 * x))


_GC = math.sqrt(2.0 / math.pi)


def _gelu(x):
    return 0.5 * x * (1.0 + numpy.tanh(_GC * (x + 0.044715 * x * x * x)))


def _gelu_b(dy, x, y):
    t = numpy.tanh(_GC * (x + 0.044715 * x * x * x))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GC * (1 + 3 * 0.044715 * x * x))


# NumPy has no erf: the exact GELU's reference calls math.erf per element (slow; it is the
# correctness reference, and the "numpy" row of the exact form measures that loop)
_erf = numpy.frompyfunc(math.erf, 1, 1)


def _gelu_exact(x):
    return (0.5 * x * (1.0 + _erf(x * (1 / math.sqrt(2))).astype(x.dtype))).astype(x.dtype)


def _gelu_exact_b(dy, x, y):
    cdf = 0.5 * (1.0 + _erf(x * (1 / math.sqrt(2))).astype(x.dtype))
    return (dy * (cdf + x * numpy.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))).astype(x.dtype)


def _softmax(x):
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - numpy.log(numpy.exp(z).sum(axis=1, keepdims=True))


ACTIVATIONS = {
    "sigmoid": (_sig, lambda dy, x, y: dy * y * (1 - y)),
    "tanh": (numpy.tanh, lambda dy, x, y: dy * (1 - y * y)),
    "relu": (lambda x: numpy.maximum(x, 0), lambda dy, x, y: dy * (y > 0)),
    "leaky_relu": (lambda x: numpy.where(x > 0, x, x * F32(0.01)),
                   lambda dy, x, y: dy * numpy.where(x > 0, F32(1), F32(0.01))),
    "elu": (lambda x: numpy.where(x > 0, x, numpy.expm1(numpy.minimum(x, 0))),
            lambda dy, x, y: dy * numpy.where(x > 0, F32(1), y + 1)),
    "gelu": (_gelu_exact, _gelu_exact_b),
    "gelu_tanh": (_gelu, _gelu_b),
    "silu": (lambda x: x * _sig(x), lambda dy, x, y: dy * (_sig(x) * (1 + x * (1 - _sig(x))))),
    "softplus": (lambda x: numpy.maximum(x, 0) + numpy.log1p(numpy.exp(-numpy.abs(x))),
                 lambda dy, x, y: dy * _sig(x)),
    "softmax": (_softmax, lambda dy, x, y: y * (dy - (dy * y).sum(axis=1, keepdims=True))),
    "log_softmax": (_log_softmax, lambda dy, x, y: dy - numpy.exp(y) * dy.sum(axis=1, keepdims=True)),
}


# -- softmax cross-entropy --------------------------------------------------------------------
def softmax_xent(z, y):
    n = z.shape[0]
    s = z - z.max(axis=1, keepdims=True)
    e = numpy.exp(s)
    tot = e.sum(axis=1, keepdims=True)
    loss = (numpy.log(tot[:, 0]) - s[numpy.arange(n), y]).mean()
    e /= tot
    e[numpy.arange(n), y] -= 1.0
    e *= 1.0 / n
    return loss, e


# -- batch norm, training mode ---------------------------------------------------------------
def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bc(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    a, s = _axes(x), _bc(x)
    mean = x.mean(axis=a)
    xc = x - mean.reshape(s)
    var = (xc * xc).mean(axis=a)
    inv = 1.0 / numpy.sqrt(var + eps)
    return xc * inv.reshape(s) * gamma.reshape(s) + beta.reshape(s), mean, inv


def batchnorm_backward(dy, x, gamma, mean, inv):
    a, s = _axes(x), _bc(x)
    m = x.size // x.shape[1]
    xhat = (x - mean.reshape(s)) * inv.reshape(s)
    db = dy.sum(axis=a)
    dg = (dy * xhat).sum(axis=a)
    dx = (gamma * inv / m).reshape(s) * (m * dy - db.reshape(s) - xhat * dg.reshape(s))
    return dx, dg, db


# -- dropout: x · m / (1-p) with a mask drawn once (the cheapest possible mask source) ------------
def dropout(x, mask, p):
    return x * mask * (1.0 / (1.0 - p))


# -- Conv2D by im2col + GEMM (stride 1) ----------------------------------------------------
def conv2d_forward(x, w, b, pad):
    kh, kw = w.shape[2:]
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = numpy.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))  # N C H W kh kw
    y = numpy.einsum("nchwij,ocij->nohw", cols, w, optimize=True)
    y += b.reshape(1, -1, 1, 1)
    return y, cols


def conv2d_backward(dy, x, w, cols, pad):
    dw = numpy.einsum("nohw,nchwij->ocij", dy, cols, optimize=True)
    db = dy.sum(axis=(0, 2, 3))
    kh, kw = w.shape[2:]
    dyp = numpy.pad(dy, ((0, 0), (0, 0), (kh - 1 - pad, kh - 1 - pad), (kw - 1 - pad, kw - 1 - pad)))
    win = numpy.lib.stride_tricks.sliding_window_view(dyp, (kh, kw), axis=(2, 3))
    dx = numpy.einsum("nohwij,ocij->nchw", win, w[:, :, ::-1, ::-1], optimize=True)
    return dx, dw, db


# -- optimizers ---------------------------------------------------------------------------
class SGDMomentum:
    """PyTorch's SGD with momentum (dampening 0): b = m·b + g (b = g at first), w -= lr·b."""

    def __init__(self, params, lr=0.01, momentum=0.9):
        self.params, self.lr, self.m = params, lr, momentum
        self.bufs = [None] * len(params)
        self.tmp = [numpy.empty_like(p) for p in params]

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            b = self.bufs[i]
            if b is None:
                b = self.bufs[i] = g.copy()
            else:
                b *= self.m
                b += g
            numpy.multiply(b, self.lr, out=self.tmp[i])
            p -= self.tmp[i]


class Adam:
    """PyTorch's Adam: m, v moments with bias correction, w -= lr·m̂/(sqrt(v̂)+eps)."""

    def __init__(self, params, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
        self.m = [numpy.zeros_like(p) for p in params]
        self.v = [numpy.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            d = numpy.sqrt(v / c2)
            d += self.eps
            p -= (self.lr / c1) * m / d


# -- a whole MLP training step ---------------------------------------------------------------
class NumpyMLP:
    """Hand-written MLP training step (ReLU hidden layers, softmax-CE, SGD momentum): the
    floor a framework's own overhead is measured against. Weights ``(out, in)``."""

    def __init__(self, sizes, lr=0.01, momentum=0.9, seed=0):
        rng = numpy.random.default_rng(seed)
        self.W = [(rng.standard_normal((b, a)) * math.sqrt(2.0 / a)).astype(F32)
                  for a, b in zip(sizes[:-1], sizes[1:])]
        self.b = [numpy.zeros(b, F32) for b in sizes[1:]]
        self.opt = SGDMomentum(self.W + self.b, lr, momentum)

    def step(self, x, y):
        hs = [x]
        last = len(self.W) - 1
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            hs.append(dense_forward(hs[-1], w, b, relu=i < last))
        loss, d = softmax_xent(hs[-1], y)
        gw, gb = [None] * len(self.W), [None] * len(self.W)
        for i in range(last, -1, -1):
            d, gw[i], gb[i] = dense_backward(d, hs[i], self.W[i], hs[i + 1], relu=i < last, need_dx=i > 0)
        self.opt.step(gw + gb)
        return loss
