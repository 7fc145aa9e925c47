"""Activation layers, thin wrappers over ``gpunet.functional.activations``.

Each caches its input and output in training mode (whichever the backward needs) and
exposes the function by name, so ``Dense(..., activation="relu")`` and ``ReLU()`` run the
same code. ``get(name_or_layer)`` resolves the ``activation=`` argument of Dense/Conv2D.

GELU and SiLU on NumPy cache, in place of the input, the derivative their forward computes
along the way (``functional.activations.FORWARD_AND_DERIVATIVE``): the backward is then one
multiply instead of most of the forward again (the exact GELU's forward + backward on
(64, 16, 28, 28): 14.2 -> 7.0 ms, one thread). The same numbers, bit for bit. A standalone
layer then holds one more activation-sized array until the next forward (the input it would
have kept is usually the previous layer's output, held there anyway); fused into Dense or
Conv2D the derivative replaces the pre-activation, so nothing more is held. Eval-mode
forwards and other devices compute only ``y``.
"""
from __future__ import annotations

import numpy

from .. import _args
from ..functional import activations as F
from .base import Layer, check_grad, check_input


def _setting(name: str, doc: str, check, **limits) -> property:
    """An activation's setting (``negative_slope``, ``alpha``, ``approximate``, ``axis``) as a
    property checked on assignment as the constructor's argument is, that also rebuilds the
    keyword arguments ``fn``/``grad_fn`` pass (``_kwargs``), so ``layer.alpha = 2.0`` takes
    effect at the next forward instead of being stored and ignored."""
    def rebuild(self):
        self._kwargs = {**self._kwargs, name: getattr(self, name)}

    return _args.checked_property(None, name, doc, check, then=rebuild, **limits)


class Activation(Layer):
    """Base for elementwise activations: ``y = f(x)``, ``dx = dy · f'(x)``."""

    name = "identity"
    _kwargs: dict = {}

    def __init__(self):
        super().__init__()
        self._x = self._y = None

    def fn(self, x, inplace=False):
        return F.FORWARD[self.name](x, inplace=inplace, **self._kwargs)

    def grad_fn(self, dy, x, y):
        return F.BACKWARD[self.name](dy, x, y, **self._kwargs)

    @property
    def needs_input(self) -> bool:
        return F.NEEDS_INPUT[self.name]

    def as_argument(self) -> str:
        """How ``Dense``/``Conv2D`` print this activation in their ``repr``: the name
        (``'gelu'``) when its settings are its class's defaults, so ``activation="gelu"``
        reads back as written; else the layer itself (``GELU(approximate='tanh')``), so
        that two layers that compute different things never print alike."""
        try:
            default = type(self)()
        except TypeError:           # a subclass whose arguments have no defaults
            default = None
        if default is not None and default.extra_repr() == self.extra_repr():
            return repr(self.name)
        return repr(self)

    def _check(self, x):
        check_input(self, x)

    def forward(self, x):
        self._check(x)
        if not self.training:
            return self.fn(x)
        pair = _with_derivative(self, x)
        if pair is not None:
            self._y, self._x = pair[0], _Derivative(pair[1])    # the backward's factor, not x
        else:
            self._y = self.fn(x)
            self._x = x if self.needs_input else None
        return self._y

    def backward(self, dy):
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a training-mode forward")
        check_grad(self, dy, self._y.shape, self._y.dtype)
        return fused_backward(self, dy, self._x, self._y)


class Identity(Activation):
    name = "identity"


class Sigmoid(Activation):
    name = "sigmoid"


class Tanh(Activation):
    name = "tanh"


class ReLU(Activation):
    name = "relu"


class LeakyReLU(Activation):
    name = "leaky_relu"
    negative_slope = _setting("negative_slope", "The slope for x < 0 (a finite number).", _args.real)

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Activation):
    name = "elu"
    alpha = _setting("alpha", "ELU's alpha: the output tends to -alpha as x -> -inf (a finite number).",
                     _args.real)

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Activation):
    """GELU, ``y = x·Φ(x)`` with ``Φ`` the standard normal CDF, as PyTorch's ``nn.GELU()``;
    ``approximate="tanh"`` gives PyTorch's ``nn.GELU(approximate="tanh")``,
    ``x/2·(1 + tanh(√(2/π)(x + 0.044715x³)))``, within 4.74e-4 of it. ``activation="gelu"``
    (Dense, Conv2D) is the exact form, as ``F.gelu`` and Keras' ``"gelu"``; for the tanh
    form there, pass the layer: ``Dense(..., activation=GELU(approximate="tanh"))``.
    The exact form's precision and cost: ``gpunet.functional.activations.gelu``."""
    name = "gelu"
    approximate = _setting("approximate", "'none' (the exact form) or 'tanh'.", _args.choice,
                           choices=F.GELU_FORMS)

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Activation):
    name = "silu"


class Softplus(Activation):
    name = "softplus"


class Softmax(Activation):
    """Softmax along ``axis`` with the row max subtracted (no overflow)."""
    name = "softmax"
    axis = _setting("axis", "The axis normalized over (an int; checked against the input's rank at each "
                    "forward).", _args.integer)

    def __init__(self, axis=-1):
        super().__init__()
        self.axis = axis

    def _check(self, x):
        super()._check(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{type(self).__name__}: expected an input with axis {self.axis}, got "
                             f"shape {tuple(x.shape)} ({x.ndim}-D)")

    def extra_repr(self):
        return f"axis={self.axis}"


class LogSoftmax(Softmax):
    name = "log_softmax"


def _with_derivative(activation, x):
    """``(y, d)`` from ``FORWARD_AND_DERIVATIVE`` when ``activation`` has an entry there and
    computes what its class does (``fn``/``grad_fn`` not overridden) and ``x`` is a NumPy
    array; else None."""
    if type(x) is numpy.ndarray:
        f = F.FORWARD_AND_DERIVATIVE.get(activation.name)
        cls = type(activation)
        if f is not None and cls.fn is Activation.fn and cls.grad_fn is Activation.grad_fn:
            return f(x, **activation._kwargs)
    return None


class _Derivative:
    """What an activation's training forward keeps in place of its input (a layer's ``_x``,
    a fused one's ``z``) when it came from ``FORWARD_AND_DERIVATIVE``: the factor ``d``,
    ``dL/dx = dy·d``."""
    __slots__ = ("d",)

    def __init__(self, d):
        self.d = d


def apply_fused(activation, z, training=False):
    """Apply a layer's fused ``activation`` to its own pre-activation ``z``.

    Returns ``(y, z_saved)``: when the derivative needs only the output (ReLU, sigmoid,
    tanh) ``z`` is overwritten in place and ``z_saved`` is None; otherwise what
    :func:`fused_backward` needs, ``z`` or, in ``training`` mode on NumPy for GELU and SiLU,
    the derivative itself. Dense and Conv2D share this.
    """
    if activation is None:
        return z, None
    if activation.needs_input:
        if training:
            pair = _with_derivative(activation, z)
            if pair is not None:
                return pair[0], _Derivative(pair[1])
        return activation.fn(z), z
    return activation.fn(z, inplace=True), None


def fused_backward(activation, dy, z_saved, y):
    """``dL/dz`` of ``activation`` from what its training forward kept (``apply_fused``'s
    ``z_saved``, an activation layer's ``_x``): the input, or a :class:`_Derivative`."""
    if type(z_saved) is _Derivative:
        return F.times_derivative(dy, z_saved.d)
    return activation.grad_fn(dy, z_saved, y)


_BY_NAME = {
    "identity": Identity, "linear": Identity, "sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU,
    "leaky_relu": LeakyReLU, "elu": ELU, "gelu": GELU, "silu": SiLU, "swish": SiLU,
    "softplus": Softplus, "softmax": Softmax, "log_softmax": LogSoftmax,
}


def activation_property(who: str, check=None) -> property:
    """``Dense.activation``/``Conv2D.activation`` as a property: assigning it resolves the
    value as the constructor's argument (a name, an activation class or layer, or None), so
    ``layer.activation = "relu"`` applies ReLU from the next forward (the string was stored
    and the forward failed reading its ``needs_input``) and an unknown name raises
    ``ValueError`` then. ``init`` is not redone: the weights stay as they are.
    ``check(who, activation)``, when given, vets the resolved activation (and returns it)."""
    def resolve(who, name, value):
        act = get(value, who)
        return act if check is None else check(who, act)
    return _args.checked_property(who, "activation", "The fused activation (an Activation layer or None; "
                                  "assign a name, a class or a layer).", resolve, child=True)


def get(activation, layer_name="activation"):
    """Resolve ``activation=``: None, a snake-case name, an Activation class or instance."""
    if activation is None:
        return None
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, type) and issubclass(activation, Activation):
        return activation()
    if isinstance(activation, str) and activation.lower() in _BY_NAME:
        return _BY_NAME[activation.lower()]()
    raise ValueError(f"{layer_name}: unknown activation {activation!r}; known: "
                     f"{', '.join(sorted(_BY_NAME))} (or an activation layer)")
