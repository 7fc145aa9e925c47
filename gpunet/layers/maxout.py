"""Maxout: the max over groups of channels, a learned piecewise-linear activation."""
from __future__ import annotations

from .. import _args
from ..functional import maxout as F
from .base import Layer, check_grad, check_input


class Maxout(Layer):
    """Maxout(pieces): ``(N, C·pieces, ...) → (N, C, ...)``; output ``j`` is the max of
    inputs ``j·pieces … j·pieces + pieces - 1``; the gradient goes to the first maximal
    input (argmax semantics).

    Used after a layer with ``out·pieces`` outputs, e.g.
    ``Sequential(Dense(64, 32 * 3), Maxout(3))``: each unit is then
    ``max_k (w_k·x + b_k)``, a max of ``pieces`` affine functions. Why that can learn any
    convex piecewise-linear activation: a max of affine pieces is convex and piecewise
    linear, and conversely every convex piecewise-linear function with ``k`` pieces is the
    max of its ``k`` affine pieces; so ReLU (``max(0, z)``), leaky ReLU and ``|z|`` are
    special cases with 2 pieces, and more pieces approximate any convex activation.

    Any rank ≥ 2 (channels on axis 1); a channel count not divisible by ``pieces`` raises
    ``ValueError``. ``pieces`` may be assigned afterwards (checked as the argument is).
    """

    pieces = _args.integer_property("Maxout", "pieces", "Inputs per output (a positive int).", low=1)

    def __init__(self, pieces):
        super().__init__()
        self.pieces = pieces
        self._idx = None

    def forward(self, x):
        check_input(self, x)
        if x.ndim < 2 or x.shape[1] % self.pieces != 0:
            raise ValueError(f"Maxout: expected an input (N, C*{self.pieces}, ...) whose axis 1 is a "
                             f"multiple of pieces={self.pieces}, got shape {tuple(x.shape)}")
        y, idx = F.maxout_forward(x, self.pieces)
        if self.training:
            self._idx, self._dtype = idx, y.dtype
        return y

    def backward(self, dy):
        if self._idx is None:
            raise RuntimeError("Maxout.backward called before a training-mode forward")
        check_grad(self, dy, self._idx.shape, self._dtype)
        return F.maxout_backward(dy, self._idx, self.pieces)

    def extra_repr(self):
        return f"pieces={self.pieces}"
