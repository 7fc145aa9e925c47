"""Dropout: zero each activation with probability ``p`` during training."""
from __future__ import annotations

import numbers

from .. import random as _random
from ..functional import dropout as F
from .base import Layer, check_input


class Dropout(Layer):
    """Dropout(p=0.5, mode="inverted", seed=None); any input shape.

    Training: each element is kept with probability ``1 - p`` (mask ``m`` of 0s and 1s) and

    * ``mode="inverted"``: ``y = x·m / (1-p)``; eval: ``y = x``;
    * ``mode="classic"`` (the course's form): ``y = x·m``; eval: ``y = x·(1-p)``.

    The two modes are the same regularizer: in both, the expected training output
    ``E_m[y]`` equals the eval output (``x`` for inverted, ``x·(1-p)`` for classic), so a
    unit downstream sees activations of the same expected size in training and at
    inference. They differ only in where the ``1-p`` factor sits: inverted dropout moves
    the scaling into training, so inference is free (dropout is the identity), which is
    why PyTorch and Keras use it; classic dropout scales at inference instead. Trained
    weights are interchangeable between the two up to that factor.

    Masks: the mask of a training forward is a function of ``(seed, counter, element)``
    through ``gpunet.random``'s counter-based hash (identical on NumPy and CuPy); each
    training forward uses the current ``counter`` and then increments it, so every step
    draws a fresh mask and the same seed gives the same sequence of masks. Backward
    regenerates the mask from the same ``(seed, counter)`` instead of storing it.
    ``seed`` and ``counter`` are buffers (in ``state_dict`` and checkpoints), so a resumed
    run continues bit for bit. ``seed=None`` draws a seed from the host generator at
    construction (``gpunet.manual_seed`` makes it reproducible). Eval-mode forwards draw
    nothing and leave the counter alone.

    Data parallelism: ``shard`` (a plain attribute, default 0; not saved) makes a training
    forward on an input of ``n`` elements draw elements ``[shard·n, (shard+1)·n)`` of the
    stream ``(seed, counter)`` instead of ``[0, n)``.
    ``gpunet.distributed.broadcast_parameters`` gives every process the root's ``seed``
    and ``counter`` and sets ``shard = comm.rank``: with equal per-process batches, the
    masks of the processes are the slices of the mask that one process would draw for the
    global batch (the processes' batches stacked in rank order), so the processes never
    share a mask and a run on S processes matches a run on one.

    ``p`` outside ``[0, 1)`` raises ``ValueError``.
    """

    _buffers = ("seed", "counter")

    def __init__(self, p=0.5, mode="inverted", seed=None):
        super().__init__()
        self.p = F.check_p(p, "Dropout")
        self.mode = F.check_mode(mode, "Dropout")
        if seed is None:
            seed = int(_random.host_rng().integers(2**63))
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise ValueError(f"Dropout: seed must be None or an int in [0, 2**63), got {seed!r}")
        self.seed = int(seed)
        self.counter = 0
        self.shard = 0
        self._draw = None          # (seed, counter, start) of the last training forward
        self._shape = None

    def forward(self, x):
        check_input(self, x)
        if not self.training:
            return F.dropout_eval(x, self.p, self.mode)
        self._draw = (self.seed, self.counter, int(self.shard) * int(x.size))
        self._shape = x.shape
        self.counter += 1
        return F.dropout_forward(x, self.p, *self._draw[:2], self.mode, self._draw[2])

    def backward(self, dy):
        if self._draw is None:
            raise RuntimeError("Dropout.backward called before a training-mode forward")
        if tuple(dy.shape) != tuple(self._shape):
            raise ValueError(f"Dropout.backward: expected dy of shape {tuple(self._shape)} (the forward's), "
                             f"got {tuple(dy.shape)}")
        return F.dropout_backward(dy, self.p, *self._draw[:2], self.mode, self._draw[2])

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode!r}"
