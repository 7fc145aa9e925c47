"""Parameter, Layer, Sequential and Residual: the containers every model is made of.

Conventions, stated once for every layer in gpunet:

* ``forward(x)`` computes the output and, only in training mode, caches what
  ``backward`` needs. ``backward(dy)`` returns ``dx`` and **adds** into each
  ``Parameter.grad`` (it assigns when ``grad`` is None), like PyTorch: gradients
  accumulate over several backward calls until ``zero_grad()``.
* A new layer is in training mode. ``eval()`` switches it (and its children) off.
* Parameters are created on the host with the seeded host generator
  (``gpunet.manual_seed``), in construction order, then moved with ``to(device)``.
* ``state_dict()`` maps ``"<name>"`` (``"<index>.<name>"`` inside a Sequential) to NumPy
  arrays: parameters, buffers (BatchNorm's running statistics) and counters (dropout's
  draw count), everything a training step reads.
"""
from __future__ import annotations

import numpy

from ..backend import get_array_module, resolve_device, to_device, to_numpy, device_of


class Parameter:
    """A trainable array: ``data``, its gradient ``grad`` (None until a backward),
    a ``name`` and ``decay`` (True: L1/L2 weight decay applies; False for biases and
    batch-norm's gamma/beta)."""

    __slots__ = ("data", "grad", "name", "decay")

    def __init__(self, data, name: str = "", decay: bool = True):
        self.data = data
        self.grad = None
        self.name = name
        self.decay = decay

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g):
        """Add ``g`` into ``grad`` (assign when there is none yet)."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype}, decay={self.decay})"


def check_input(layer, x, ndim=None, dtype=None, features=None, axis=1):
    """Validate ``x`` before any computation; raise ``ValueError``/``TypeError`` naming the layer.

    ``ndim``: an int or a tuple of allowed ranks. ``dtype``: the parameters' dtype (None:
    any floating dtype). ``features``: required size along ``axis``.
    """
    name = type(layer).__name__
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{r}-D" for r in allowed)
            raise ValueError(f"{name}: expected a {want} input, got shape {tuple(x.shape)} ({x.ndim}-D)")
    if dtype is not None:
        if x.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {numpy.dtype(dtype).name} (the parameters' dtype), "
                             f"got {x.dtype.name}; cast the input or the model")
    elif x.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating-point input (float32 or float64), got {x.dtype.name}")
    if features is not None and x.shape[axis] != features:
        raise ValueError(f"{name}: expected {features} features along axis {axis}, "
                         f"got shape {tuple(x.shape)}")


class Layer:
    """Base class: parameters are found among the instance attributes (in assignment
    order), child layers likewise. Subclasses list buffer and counter attribute names in
    ``_buffers``; they travel in ``state_dict`` and move with ``to(device)``."""

    _buffers: tuple = ()

    def __init__(self):
        self.training = True

    # -- the step ---------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # -- structure ----------------------------------------------------------------------
    def children(self) -> list["Layer"]:
        return [v for v in vars(self).values() if isinstance(v, Layer)]

    def named_parameters(self, prefix: str = ""):
        """Yield ``(state_dict_name, Parameter)`` for this layer and its children."""
        for k, v in vars(self).items():
            if isinstance(v, Parameter):
                yield prefix + k, v
            elif isinstance(v, Layer):
                yield from v.named_parameters(prefix + k + ".")

    def named_buffers(self, prefix: str = ""):
        for k in self._buffers:
            yield prefix + k, self, k
        for k, v in vars(self).items():
            if isinstance(v, Layer):
                yield from v.named_buffers(prefix + k + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for c in self.children():
            c.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def device(self) -> str:
        """Device of the first parameter (``"cpu"`` for a layer without parameters)."""
        for p in self.parameters():
            return device_of(p.data)
        return "cpu"

    def to(self, device):
        """Move every parameter, gradient and array buffer to ``device``; returns self."""
        device = resolve_device(device)
        for p in self.parameters():
            p.data = to_device(p.data, device)
            if p.grad is not None:
                p.grad = to_device(p.grad, device)
        for _, owner, k in self.named_buffers():
            v = getattr(owner, k)
            if hasattr(v, "shape"):
                setattr(owner, k, to_device(v, device))
        return self

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = {}
        for k, p in self.named_parameters():
            d[k] = to_numpy(p.data).copy()
        for k, owner, attr in self.named_buffers():
            v = getattr(owner, attr)
            d[k] = to_numpy(v).copy() if hasattr(v, "shape") else numpy.asarray(v)
        return d

    def load_state_dict(self, d: dict):
        """Restore from ``state_dict()`` output; every key must be present with its shape.

        Raises ``ValueError`` naming each missing key and each shape mismatch.
        """
        problems = []
        params = dict(self.named_parameters())
        buffers = {k: (owner, attr) for k, owner, attr in self.named_buffers()}
        for k, p in params.items():
            if k not in d:
                problems.append(f"missing key {k!r}")
            elif tuple(numpy.shape(d[k])) != tuple(p.data.shape):
                problems.append(f"{k!r}: expected shape {tuple(p.data.shape)}, got {tuple(numpy.shape(d[k]))}")
        for k, (owner, attr) in buffers.items():
            cur = getattr(owner, attr)
            if k not in d:
                problems.append(f"missing key {k!r}")
            elif tuple(numpy.shape(d[k])) != tuple(numpy.shape(cur)):
                problems.append(f"{k!r}: expected shape {tuple(numpy.shape(cur))}, got {tuple(numpy.shape(d[k]))}")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for k, p in params.items():
            xp = get_array_module(p.data)
            p.data = to_device(numpy.asarray(d[k], dtype=p.data.dtype), device_of(p.data)) if xp is not numpy \
                else numpy.array(d[k], dtype=p.data.dtype)
        for k, (owner, attr) in buffers.items():
            cur = getattr(owner, attr)
            v = numpy.asarray(d[k])
            if hasattr(cur, "shape"):
                arr = numpy.array(v, dtype=cur.dtype)
                setattr(owner, attr, to_device(arr, device_of(cur)) if device_of(cur) != "cpu" else arr)
            elif isinstance(cur, bool):
                setattr(owner, attr, bool(v))
            elif isinstance(cur, int):
                setattr(owner, attr, int(v))
            else:  # Python float: never let a NumPy float64 scalar promote float32 arithmetic
                setattr(owner, attr, float(v))
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse (the chain rule).

    Indexable and iterable; ``state_dict`` keys are ``"<index>.<name>"``.
    """

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, l in enumerate(layers):
            if not isinstance(l, Layer):
                raise TypeError(f"Sequential: argument {i} must be a Layer, got {type(l).__name__}")
        self.layers = list(layers)

    def children(self):
        return list(self.layers)

    def named_parameters(self, prefix: str = ""):
        for i, l in enumerate(self.layers):
            yield from l.named_parameters(f"{prefix}{i}.")

    def named_buffers(self, prefix: str = ""):
        for i, l in enumerate(self.layers):
            yield from l.named_buffers(f"{prefix}{i}.")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self.layers[i])
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for l in self.layers:
            x = l.forward(x)
        return x

    def backward(self, dy):
        for l in reversed(self.layers):
            dy = l.backward(dy)
        return dy

    def summary(self, input_shape=None, file=None) -> str:
        """Print (and return) a table: layer, output shape, parameter count.

        ``input_shape`` (without the batch axis) lets output shapes be computed by running
        a zero batch of one sample through the model in eval mode.
        """
        import sys
        rows = []
        shape = None
        x = None
        if input_shape is not None:
            p0 = next(iter(self.parameters()), None)
            dtype = p0.data.dtype if p0 is not None else numpy.float32
            xp = get_array_module(p0.data) if p0 is not None else numpy
            x = xp.zeros((1,) + tuple(input_shape), dtype=dtype)
        was = self.training
        self.eval()
        try:
            for i, l in enumerate(self.layers):
                if x is not None:
                    x = l.forward(x)
                    shape = "(N, " + ", ".join(str(s) for s in x.shape[1:]) + ")"
                n = sum(int(numpy.prod(p.shape)) for p in l.parameters())
                rows.append((f"{i}: {l!r}", shape or "?", n))
        finally:
            self.train(was)
        w0 = max(len(r[0]) for r in rows) if rows else 5
        w1 = max([len(r[1]) for r in rows] + [12])
        lines = [f"{'layer':<{w0}}  {'output shape':<{w1}}  {'params':>10}", "-" * (w0 + w1 + 14)]
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>10,}" for a, b, c in rows]
        total = sum(r[2] for r in rows)
        lines += ["-" * (w0 + w1 + 14), f"total parameters: {total:,}"]
        text = "\n".join(lines)
        print(text, file=file or sys.stdout)
        return text

    def extra_repr(self):
        return ", ".join(repr(l) for l in self.layers)
