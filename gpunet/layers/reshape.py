"""Flatten: ``(N, ...) -> (N, -1)``."""
from __future__ import annotations

import math

import numpy

from .base import Layer, check_grad, check_input


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)``; backward restores the input shape."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        check_input(self, x)
        if self.training:
            self._shape, self._dtype = x.shape, x.dtype
        # the size, not -1: an empty batch (0, ...) has no -1 to infer
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        if self._shape is None:
            raise RuntimeError("Flatten.backward called before a training-mode forward")
        n = self._shape[0]
        check_grad(self, dy, (n, int(numpy.prod(self._shape[1:], dtype=numpy.int64))), self._dtype)
        return dy.reshape(self._shape)
