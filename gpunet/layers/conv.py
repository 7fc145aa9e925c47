"""Conv2D: a 2-D convolution over NCHW inputs with an optional fused activation."""
from __future__ import annotations

import numpy

from .. import _args, init as _init
from ..functional import conv as FC
from .activations import activation_property, apply_fused, fused_backward
from ..data import is_data
from .base import (Layer, Parameter, ParameterSlot, channels_last_hint, check_array, check_device, check_dtype,
                   check_grad, check_same_device, check_shapes)
from .dense import default_init



def _channel_softmax(who, act):
    """A fused softmax (or log-softmax) of a Conv2D must normalize over the channels (axis 1
    of the NCHW output): ``activation="softmax"`` would take ``Softmax()``'s default axis -1,
    the image width, silently (Keras' ``Conv2D(activation="softmax")`` normalizes over its
    last axis, which is the channels in its NHWC layout)."""
    axis = getattr(act, "axis", None)
    if axis is not None and act.name in ("softmax", "log_softmax") and axis not in (1, -3):
        cls = "Softmax" if act.name == "softmax" else "LogSoftmax"
        raise ValueError(f"{who}: a fused {act.name} over axis {axis} would normalize over the image "
                         f"width of the (N, C, H, W) output, not the channels; for probabilities per "
                         f"pixel, pass activation={cls}(axis=1)")
    return act


class Conv2D(Layer):
    """``y = act(conv2d(x, weight) + bias)`` (cross-correlation, as in PyTorch).

    ``x (N, in_channels, H, W)`` → ``y (N, out_channels, OH, OW)`` with
    ``OH = (H + 2*ph - kh) // sh + 1`` (likewise ``OW``); ``weight (out, in, kh, kw)``,
    ``bias (out,)`` initialised to zeros. ``kernel_size``, ``stride`` and ``padding`` (zeros)
    take an int or an ``(h, w)`` pair. A 1-D convolution over sequences of length ``L`` is
    a ``(1, k)`` kernel on ``(N, C, 1, L)`` inputs (with ``padding=(0, p)``).

    ``activation`` and ``init`` as for :class:`Dense`: the activation is applied in place when
    its derivative needs only its output; ``init=None`` picks He normal for ReLU-family
    activations and Xavier uniform otherwise, with ``fan_in = in*kh*kw`` and
    ``fan_out = out*kh*kw`` (``gpunet.init.fans`` of the 4-D weight). A fused softmax or
    log-softmax must be over the channels, ``activation=Softmax(axis=1)``: the name
    ``"softmax"`` (axis -1, the image width) raises ``ValueError``.

    Computed by im2col and one GEMM over the whole batch (on the CPU the output is then an
    NCHW view of batch-last CHWN memory, per-image GEMMs for small images; on a GPU it is
    NCHW-contiguous, with the bias and a ReLU fused into the kernel that writes it); see
    ``gpunet.functional.conv``.

    The data needs no gradient (as for Dense): for a batch yielded by ``gpunet.DataLoader``,
    or with ``input_grad = False`` (an attribute, default True), ``backward`` skips the input
    gradient (``W.T @ dy`` and col2im) and returns None, as PyTorch computes nothing for an
    input that does not require grad.

    An empty batch (``N = 0``) raises ``ValueError``.

    ``weight`` and ``bias`` take a ``Parameter`` (``bias`` also None, which removes it);
    any other value raises ``TypeError`` (``layer.weight.data = array`` changes the values).
    ``stride``, ``padding``, ``activation`` and ``input_grad`` may be assigned afterwards
    (checked as the arguments are; an int stride or padding is stored as a pair; the next
    forward uses them). ``in_channels``, ``out_channels`` and ``kernel_size`` are fixed (the
    weight's shape): assigning one raises ``AttributeError``.
    """

    _dy_masked = None   # a dy already through the ReLU's mask (set by pooling._conv_relu_backward)
    _relu_pending = None    # an output left before its ReLU (see pooling._arm_conv_relu_forward)
    input_grad = _args.flag_property(None, "input_grad", "False: ``backward`` computes no input gradient and "
                                       "returns None (default True).")
    activation = activation_property("Conv2D", _channel_softmax)
    weight = ParameterSlot()
    bias = ParameterSlot(optional=lambda layer: True)
    stride = _args.checked_property("Conv2D", "stride", "The (h, w) stride (assign an int or a pair of "
                                    "ints >= 1).", lambda who, name, value: FC.pair(value, who, name, 1))
    padding = _args.checked_property("Conv2D", "padding", "The (h, w) zero padding (assign an int or a pair "
                                     "of ints >= 0).", lambda who, name, value: FC.pair(value, who, name, 0))
    _new_sizes = "the weight has shape (out_channels, in_channels, kh, kw); create a new Conv2D for other sizes"
    in_channels = _args.read_only("Conv2D", "in_channels", "Input channels (fixed at construction).", _new_sizes)
    out_channels = _args.read_only("Conv2D", "out_channels", "Output channels (fixed at construction).",
                                   _new_sizes)
    kernel_size = _args.read_only("Conv2D", "kernel_size", "The (kh, kw) kernel (fixed at construction).",
                                  _new_sizes)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 activation=None, init=None):
        super().__init__()
        self._in_channels = _args.integer("Conv2D", "in_channels", in_channels, low=1)
        self._out_channels = _args.integer("Conv2D", "out_channels", out_channels, low=1)
        self._kernel_size = FC.pair(kernel_size, "Conv2D", "kernel_size", 1)
        self.stride = stride
        self.padding = padding
        self.activation = activation
        init = default_init(self.activation) if init is None else init
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(_init.make(init, shape, layer_name="Conv2D"), "weight", decay=True)
        self.bias = (Parameter(numpy.zeros(self.out_channels, numpy.float32), "bias", decay=False)
                     if _args.flag("Conv2D", "bias", bias) else None)
        self.input_grad = True
        self._x = self._cols = self._z = self._y = None
        self._x_is_data = False

    def _check(self, x):
        name = "Conv2D"
        check_array(self, x)
        c = self.in_channels
        if x.ndim != 4:
            # flat images (N, C*H*W), as MNIST loaders give them, or single-channel (N, H, W):
            # say how to make them NCHW
            hint = ""
            if x.ndim == 2 and x.shape[1] % c == 0 and round((x.shape[1] // c) ** 0.5) ** 2 == x.shape[1] // c:
                s = round((x.shape[1] // c) ** 0.5)
                hint = f"; flat square images become NCHW with x.reshape(-1, {c}, {s}, {s})"
            elif x.ndim == 3 and c == 1:
                hint = "; single-channel images (N, H, W) become NCHW with x[:, None]"
            raise ValueError(f"{name}: expected a 4-D input (N, {c}, H, W), "
                             f"got shape {tuple(x.shape)} ({x.ndim}-D){hint}")
        if x.shape[1] != c:
            # channels-last (NHWC) images, Keras' and TensorFlow's default layout
            raise ValueError(f"{name}: expected {c} input channels (axis 1 of NCHW), "
                             f"got shape {tuple(x.shape)}{channels_last_hint(x, c)}")
        w = self.weight.data
        ws, bs = (self.out_channels, self.in_channels) + self.kernel_size, (self.out_channels,)
        if w.shape != ws or (self.bias is not None and self.bias.data.shape != bs):
            check_shapes(self, ("weight", w, ws), ("bias", self.bias.data if self.bias is not None else None, bs))
        check_dtype(self, x, w.dtype)
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}")
        FC.output_size(name, x.shape, self.kernel_size, self.stride, self.padding)
        if self.bias is not None and not type(self.bias.data) is type(w) is numpy.ndarray:
            check_same_device(self, ("weight", w), ("bias", self.bias.data))
        check_device(self, x, w)

    def forward(self, x):
        # armed by pooling._arm_conv_relu_forward (a Sequential whose next layer is a
        # MaxPool2D): the output is left before the ReLU, which the pooling applies as it
        # reads (taken before the checks, so that a refused input disarms it)
        defer = self.__dict__.pop("_defer_relu", None) is not None
        self._check(x)
        w = self.weight.data
        b = self.bias.data if self.bias is not None else None
        # ReLU rides in the op (on a GPU, in the kernel that writes y); others apply here.
        # In training, the previous step's cols is done with (this forward replaces it): let
        # the op overwrite it rather than allocate a new one
        relu = self._relu()
        defer = defer and relu and self.training
        z, cols = FC.conv2d(x, w, b, self.stride, self.padding, return_cols=True,
                            cols_buffer=self._cols if self.training else None,
                            activation="relu" if relu and not defer else None)
        y, z_saved = (z, None) if relu else apply_fused(self.activation, z, self.training)
        if self.training:
            self._x, self._cols, self._y, self._z = x, cols, y, z_saved
            self._x_is_data = is_data(x)
        if defer:
            self._relu_pending = y      # for the pooling's forward to take (or to apply here)
        return y

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("Conv2D.backward called before a training-mode forward")
        check_grad(self, dy, self._y.shape, self._y.dtype)
        act, relu = self.activation, self._relu()
        if act is not None and not relu:
            dy = fused_backward(act, dy, self._z, self._y)
        if relu and self._dy_masked is dy:
            relu = False    # the next MaxPool2D applied the ReLU's mask (pooling._conv_relu_backward)
        dx, dw, db = FC.conv2d_backward(dy, self._x, self.weight.data, self.stride, self.padding,
                                        cols=self._cols,
                                        need_dx=self.input_grad and not self._x_is_data,
                                        need_bias=self.bias is not None,
                                        y=self._y, activation="relu" if relu else None)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def _relu(self):
        return self.activation is not None and self.activation.name == "relu"

    def extra_repr(self):
        k, s, p = self.kernel_size, self.stride, self.padding
        one = lambda t: t[0] if t[0] == t[1] else t  # noqa: E731
        out = f"{self.in_channels}, {self.out_channels}, kernel_size={one(k)}"
        if s != (1, 1):
            out += f", stride={one(s)}"
        if p != (0, 0):
            out += f", padding={one(p)}"
        if self.bias is None:
            out += ", bias=False"
        if self.activation is not None:
            out += f", activation={self.activation.as_argument()}"
        if not self.input_grad:
            out += ", input_grad=False"
        return out
