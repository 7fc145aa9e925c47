"""Dense (fully connected) layer with an optional fused activation."""
from __future__ import annotations

import numpy

from .. import _args, hostkernels, init as _init
from ..functional import activations as FA
from ..functional.linear import linear_backward, matmul
from ..data import is_data
from .activations import ReLU, activation_property, apply_fused, fused_backward
from .base import (Layer, Parameter, ParameterSlot, check_device, check_grad, check_input, check_same_device,
                   check_shapes)


def default_init(activation) -> str:
    """He normal for the ReLU family (relu, leaky_relu, elu, gelu, silu), Xavier uniform
    otherwise (sigmoid, tanh, softmax, none) — PyTorch-free defaults from the course."""
    return "he_normal" if activation is not None and activation.name in FA.RELU_FAMILY else "xavier_uniform"


class Dense(Layer):
    """``y = act(x @ weight.T + bias)``; ``x (N, in_features)``, ``weight (out, in)``,
    ``bias (out,)`` initialised to zeros.

    ``activation``: None or a name/layer from ``gpunet.layers.activations``; applied in
    place on the pre-activation when its derivative needs only the output (ReLU,
    sigmoid, tanh), saving a pass over memory. ``init``: a name of ``gpunet.init`` or a
    callable ``(shape, rng) -> array``; None picks He normal for ReLU-family activations and
    Xavier uniform otherwise.

    The data needs no gradient: when ``x`` is a batch yielded by ``gpunet.DataLoader``
    (``gpunet.data.is_data``), ``backward`` skips ``dx = dy @ weight`` and returns None, as
    PyTorch skips an input that does not require grad; so does ``input_grad = False``
    (an attribute, default True). In ``784-1024-1024-10`` that GEMM is a seventh of a
    training step's arithmetic. Any other input (gradcheck's, a previous layer's output)
    gets its ``dx``.

    ``weight`` and ``bias`` take a ``Parameter`` (``bias`` also None, which removes it);
    any other value raises ``TypeError`` (``layer.weight.data = array`` changes the values).
    ``activation`` and ``input_grad`` may be assigned afterwards (checked as the arguments
    are; the next forward uses them). ``in_features`` and ``out_features`` are fixed (the
    weight's shape): assigning either raises ``AttributeError``.
    """

    input_grad = _args.flag_property(None, "input_grad", "False: ``backward`` computes no input gradient and "
                                       "returns None (default True).")
    activation = activation_property("Dense")
    weight = ParameterSlot()
    bias = ParameterSlot(optional=lambda layer: True)
    _new_sizes = ("the weight has shape (out_features, in_features); create a new "
                  "Dense(in_features, out_features) for other sizes")
    in_features = _args.read_only("Dense", "in_features", "Input features (fixed at construction).", _new_sizes)
    out_features = _args.read_only("Dense", "out_features", "Output features (fixed at construction).",
                                   _new_sizes)

    def __init__(self, in_features, out_features, bias=True, activation=None, init=None):
        super().__init__()
        self._in_features = _args.integer("Dense", "in_features", in_features, low=1)
        self._out_features = _args.integer("Dense", "out_features", out_features, low=1)
        self.activation = activation
        init = default_init(self.activation) if init is None else init
        self.weight = Parameter(_init.make(init, (self.out_features, self.in_features), layer_name="Dense"),
                                "weight", decay=True)
        self.bias = (Parameter(numpy.zeros(self.out_features, numpy.float32), "bias", decay=False)
                     if _args.flag("Dense", "bias", bias) else None)
        self.input_grad = True
        self._x = self._z = self._y = None
        self._x_is_data = False
        self._shapes = ((self.out_features, self.in_features), (self.out_features,))  # weight, bias

    def forward(self, x):
        w = self.weight.data
        check_input(self, x, ndim=2, dtype=w.dtype, features=self.in_features)
        if w.shape != self._shapes[0] or (self.bias is not None and self.bias.data.shape != self._shapes[1]):
            check_shapes(self, ("weight", w, self._shapes[0]),
                         ("bias", self.bias.data if self.bias is not None else None, self._shapes[1]))
        if self.bias is not None and not type(self.bias.data) is type(w) is numpy.ndarray:
            check_same_device(self, ("weight", w), ("bias", self.bias.data))
        check_device(self, x, w)
        z = matmul(x, w.T)
        if (self.bias is not None and type(self.activation) is ReLU and type(z) is numpy.ndarray
                and hostkernels.bias_relu(z, self.bias.data)):
            y, z_saved = z, None    # z + b and the ReLU in one compiled pass: the same bits
        else:
            if self.bias is not None:
                z += self.bias.data
            y, z_saved = apply_fused(self.activation, z, self.training)
        if self.training:
            self._x, self._y, self._z = x, y, z_saved
            self._x_is_data = is_data(x)
        return y

    def backward(self, dy):
        x, y = self._x, self._y
        if x is None:
            raise RuntimeError("Dense.backward called before a training-mode forward")
        check_grad(self, dy, y.shape, y.dtype)
        act = self.activation
        need_dx = self.input_grad and not self._x_is_data
        fused = None
        if type(act) is ReLU and self.bias is not None and type(dy) is numpy.ndarray:
            fused = hostkernels.relu_mask_colsum(dy, y)     # the mask and db in one pass
        if fused is not None:
            g, db = fused
            dx, dw, _ = linear_backward(g, x, self.weight.data, need_dx=need_dx, need_bias=False)
        else:
            g = dy if act is None else fused_backward(act, dy, self._z, y)   # dL/dz, z = x W^T + b
            dx, dw, db = linear_backward(g, x, self.weight.data, need_dx=need_dx,
                                         need_bias=self.bias is not None)
        self.weight.accumulate(dw)
        if db is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        a = f", activation={self.activation.as_argument()}" if self.activation is not None else ""
        b = "" if self.bias is not None else ", bias=False"
        g = "" if self.input_grad else ", input_grad=False"
        return f"{self.in_features}, {self.out_features}{b}{a}{g}"
