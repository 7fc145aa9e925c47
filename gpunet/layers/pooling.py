"""Pooling layers over NCHW inputs: MaxPool2D, AvgPool2D, GlobalAvgPool2D.

Conventions (see ``gpunet.functional.pooling``): ``stride=None`` means ``kernel_size``;
``kernel_size``, ``stride`` and ``padding`` take an int or an ``(h, w)`` pair; output size
``OH = (H + 2*ph - kh) // sh + 1`` (floor). Max pooling pads with ``-inf`` and sends the
gradient to the first maximal element of each window; average pooling counts the zero
padding (PyTorch's ``count_include_pad=True``). Padding may be at most half the kernel.
``kernel_size``, ``stride`` and ``padding`` may be assigned afterwards: each assignment is
checked with the other two as the constructor checks them (``stride = None`` is the kernel
size again; a stride given or derived stays when ``kernel_size`` changes, as in PyTorch).
"""
from __future__ import annotations

import operator

import numpy

from .. import hostkernels
from ..functional import activations as FA, pooling as FP
from ..functional.layout import memory_order
from ..functional.conv import output_size
from .base import PAIRED_BACKWARD, PAIRED_FORWARD, Layer, check_array, check_dtype, check_grad
from .conv import Conv2D


def _check4d(layer, x):
    name = type(layer).__name__
    check_array(layer, x)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)} ({x.ndim}-D)")
    check_dtype(layer, x)


def _window(name):
    """``kernel_size``, ``stride`` or ``padding`` of a pooling layer as a property: an
    assignment reruns the constructor's check of the three with the new value."""
    key, names = "_" + name, ("kernel_size", "stride", "padding")

    def set_value(self, value):
        args = {n: getattr(self, "_" + n) for n in names}
        args[name] = value
        self.__dict__[key] = dict(zip(names, FP.pool_args(type(self).__name__, **args)))[name]

    return property(operator.attrgetter(key), set_value,
                    doc=f"The (h, w) {name} (assign an int or a pair; checked as in the constructor).")


class _Pool2D(Layer):
    kernel_size, stride, padding = _window("kernel_size"), _window("stride"), _window("padding")

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self._kernel_size, self._stride, self._padding = FP.pool_args(type(self).__name__, kernel_size,
                                                                      stride, padding)
        self._shape = None

    def _check(self, x):
        _check4d(self, x)
        output_size(type(self).__name__, x.shape, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        one = lambda t: t[0] if t[0] == t[1] else t  # noqa: E731
        out = f"kernel_size={one(self.kernel_size)}"
        if self.stride != self.kernel_size:
            out += f", stride={one(self.stride)}"
        if self.padding != (0, 0):
            out += f", padding={one(self.padding)}"
        return out


class MaxPool2D(_Pool2D):
    """``y[n, c, p, q] = max`` of the window at ``(p*sh - ph, q*sw - pw)``; ``dx`` routes each
    ``dy`` to the window's first maximal element (ties: first in row-major order).

    In a ``Sequential``, right after a ``Conv2D(..., activation="relu")`` whose output is
    its input, on the CPU where gpunet's compiled kernels run (training mode):

    * forward (:func:`_arm_conv_relu_forward`): the convolution leaves its output before the
      ReLU and this layer pools it through the ReLU in the same pass (the pass that would
      write the ReLU's output is saved; the convolution's output array keeps the
      pre-activation values, whose sign is all that the backwards read);
    * backward (:func:`_conv_relu_backward`): this layer hands the convolution
      ``dx * (x > 0)``, the gradient through the ReLU, made in the same pass, and the
      convolution's backward skips its own ReLU mask.

    The model's outputs and gradients are the same bits as without either; what differs is
    only what passes between the two layers (``MaxPool2D.backward`` called on its own
    returns ``dx``)."""

    _x = _pos = None           # the training forward's input and pos (see _conv_relu_backward)
    _mask_relu = False         # set by _conv_relu_backward around its call of backward
    _masked = None             # the masked gradient backward returned for it, if it did

    def forward(self, x):
        # an input that the Conv2D before it left before its ReLU (_arm_conv_relu_forward):
        # pooled through the ReLU in the same pass, or the ReLU applied here if this raises
        pending = self.__dict__.pop("_relu_input_of", None)
        relu_input = pending is not None and pending._relu_pending is x
        if pending is not None:
            pending._relu_pending = None
        try:
            self._check(x)
            if relu_input:      # armed only in training, on NumPy (_arm_conv_relu_forward)
                # pos: whether x at each window's maximum is > 0, the ReLU mask the fused
                # backward reads (see _conv_relu_backward); None where the kernel did not run
                y, arg, pos = FP.max_pool2d_positive(x, self.kernel_size, self.stride, self.padding,
                                                     relu_input=True)
            else:
                (y, arg), pos = FP.max_pool2d(x, self.kernel_size, self.stride, self.padding), None
        except BaseException:
            if relu_input:              # the convolution's output as it would have been
                FA.relu(x, inplace=True)
            raise
        if self.training:
            self._shape, self._arg, self._out_shape, self._dtype = x.shape, arg, y.shape, y.dtype
            self._x, self._pos = x, pos
        return y

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("MaxPool2D.backward called before a training-mode forward")
        check_grad(self, dy, self._out_shape, self._dtype)
        if self._mask_relu:
            dx = FP.max_pool2d_relu_backward(dy, self._arg, self._x, self.kernel_size, self.stride,
                                             self.padding, positive=self._pos)
            if dx is not None:
                self._masked = dx
                return dx
        return FP.max_pool2d_backward(dy, self._arg, self._shape, self.kernel_size, self.stride, self.padding)


def _arm_conv_relu_forward(conv, pool, x):
    """``Sequential.forward``, before it runs ``Conv2D(..., activation="relu")`` then
    ``MaxPool2D`` (exactly these classes) on the CPU in training: the convolution leaves
    its output before the ReLU, and the pooling reads it through the ReLU in its own pass
    (:func:`gpunet.functional.pooling.max_pool2d_positive` with ``relu_input``), which saves
    the pass that writes the ReLU's output. Both forwards run, with their checks; the
    pooling's output, ``arg`` and the gradients are the same bits. What differs: the
    convolution's output array, which in a Sequential only the pooling reads, keeps the
    pre-activation values (the convolution's and the pooling's backward read only their
    sign, ``> 0``, which the ReLU does not change). Not armed where that array could be
    seen or the pooling's own forward might not run: an instance-level ``forward`` on
    either layer (a wrapper recording activations; the profiler's timers are marked as
    passing outputs through), float16
    (the ReLU there acts before the rounding), eval mode, a GPU or the sim, or the kernels
    off. If the pooling raises, it applies the ReLU first."""
    for layer in (conv, pool):          # an instance-level forward: not armed (see above)
        own = layer.__dict__.get("forward")
        if own is not None and not getattr(own, "_gpunet_passes_output", False):
            return
    if not (conv.training and pool.training) or x.__class__ is not numpy.ndarray \
            or x.dtype not in (numpy.float32, numpy.float64) or not conv._relu() \
            or hostkernels.library() is None:
        return
    conv._defer_relu = True
    pool._relu_input_of = conv


def _conv_relu_backward(conv, pool, dy):
    """``Sequential.backward`` through ``Conv2D(..., activation="relu")`` then ``MaxPool2D``
    (both of exactly these classes, so a subclass's own backward always runs): both layers'
    ``backward`` run, in order, with their checks, but the pooling's returns its gradient
    already multiplied by the ReLU's mask ``(x > 0)`` (one compiled pass,
    :func:`gpunet.functional.pooling.max_pool2d_relu_backward`; for disjoint windows the mask
    comes from the byte per window the training forward kept, whether ``x`` at the window's
    maximum is > 0, instead of from ``x``), which the convolution then takes as the
    gradient of its pre-activation. The same bits as the two backwards one
    after the other (a product by 1 or 0 either way); it saves a full pass over the
    convolution's output, and the pass that writes, then rereads the pooling's ``dx``.
    Only where the pooling's forward input is the convolution's cached output (the mask is
    the ReLU's own); else, or where the kernel does not cover the case (a GPU, float16,
    padding, the kernels off), the usual two backwards. Returns the convolution's ``dx``,
    or ``NotImplemented`` when it did not run them."""
    if not conv._relu() or pool._x is None or pool._x is not conv.__dict__.get("_y"):
        return NotImplemented
    pool._mask_relu = True
    try:
        d = pool.backward(dy)
    finally:
        pool._mask_relu = False
        masked, pool._masked = pool._masked, None
    if masked is not d:                 # the kernel did not run: dx as usual
        return conv.backward(d)
    conv._dy_masked = d
    try:
        return conv.backward(d)
    finally:
        conv._dy_masked = None


class AvgPool2D(_Pool2D):
    """``y[n, c, p, q] = (1/(kh*kw)) Σ`` of the zero-padded window (padding counted, as
    PyTorch's ``count_include_pad=True``); ``dx`` spreads ``dy/(kh*kw)`` over each window."""

    def forward(self, x):
        self._check(x)
        y = FP.avg_pool2d(x, self.kernel_size, self.stride, self.padding)
        if self.training:
            self._shape, self._out_shape, self._dtype = x.shape, y.shape, y.dtype
            self._order = (memory_order(x) or "nchw") if isinstance(x, numpy.ndarray) else None
        return y

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("AvgPool2D.backward called before a training-mode forward")
        check_grad(self, dy, self._out_shape, self._dtype)
        return FP.avg_pool2d_backward(dy, self._shape, self.kernel_size, self.stride, self.padding,
                                      order=self._order)


class GlobalAvgPool2D(Layer):
    """``(N, C, H, W) -> (N, C)``: ``y[n, c] = mean_{h,w} x[n, c, h, w]``."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        _check4d(self, x)
        if self.training:
            self._shape, self._dtype = x.shape, x.dtype
            self._order = (memory_order(x) or "nchw") if isinstance(x, numpy.ndarray) else None
        return FP.global_avg_pool2d(x)

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("GlobalAvgPool2D.backward called before a training-mode forward")
        check_grad(self, dy, self._shape[:2], self._dtype)
        return FP.global_avg_pool2d_backward(dy, self._shape, order=self._order)


PAIRED_FORWARD[(Conv2D, MaxPool2D)] = _arm_conv_relu_forward
PAIRED_BACKWARD[(Conv2D, MaxPool2D)] = _conv_relu_backward
