"""Activation layers, thin wrappers over ``gpunet.functional.activations``.

Each caches its input and output in training mode (whichever the backward needs) and
exposes the function by name, so ``Dense(..., activation="relu")`` and ``ReLU()`` run the
same code. ``get(name_or_layer)`` resolves the ``activation=`` argument of Dense/Conv2D.
"""
from __future__ import annotations

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
        y = self.fn(x)
        if self.training:
            self._x = x if self.needs_input else None
            self._y = y
        return y

    def backward(self, dy):
        if self._y is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a training-mode forward")
        check_grad(self, dy, self._y.shape, self._y.dtype)
        return self.grad_fn(dy, self._x, self._y)


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


def apply_fused(activation, z):
    """Apply a layer's fused ``activation`` to its own pre-activation ``z``.

    Returns ``(y, z_saved)``: when the derivative needs only the output (ReLU, sigmoid,
    tanh) ``z`` is overwritten in place and ``z_saved`` is None; otherwise ``z`` is kept
    for the backward. Dense and Conv2D share this.
    """
    if activation is None:
        return z, None
    if activation.needs_input:
        return activation.fn(z), z
    return activation.fn(z, inplace=True), None


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
