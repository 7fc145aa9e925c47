"""Residual: a skip connection around a block."""
from __future__ import annotations

from .. import _args
from ..backend import array_hint, is_array
from .base import Layer, check_grad


def _block(block):
    if not isinstance(block, Layer):
        raise TypeError(f"Residual: block must be a Layer, got {type(block).__name__}")
    return block


class Residual(Layer):
    """``y = x + block(x)``; backward ``dx = dy + block.backward(dy)`` (the identity path
    carries the gradient unchanged, which is why deep residual nets do not vanish).

    ``block`` must map its input to an output of the same shape. Its parameters appear in
    ``state_dict`` as ``"block.<name>"`` (e.g. ``"block.0.weight"`` for a Sequential block).
    ``block`` may be assigned another layer afterwards (checked as the argument is).
    """

    block = _args.checked_property("Residual", "block", "The layer the skip connection runs around "
                                   "(a Layer; checked on assignment).",
                                   lambda who, name, value: _block(value), child=True)

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        if not is_array(x):
            raise TypeError(f"Residual: expected a NumPy or CuPy array, got {type(x).__name__}{array_hint(x)}")
        y = self.block.forward(x)
        if y.shape != x.shape:
            raise ValueError(f"Residual: the block must keep the input shape; expected output shape "
                             f"{tuple(x.shape)}, got {tuple(y.shape)}")
        if self.training:
            self._shape, self._dtype = x.shape, x.dtype
        return x + y          # not in place: the block may have cached y for its backward

    def backward(self, dy):
        shape = self.__dict__.get("_shape")
        if shape is None:
            raise RuntimeError("Residual.backward called before a training-mode forward")
        check_grad(self, dy, shape, self._dtype)
        g = self.block.backward(dy)
        return None if g is None else dy + g     # None: the input was data (no gradient)

    _container = True
