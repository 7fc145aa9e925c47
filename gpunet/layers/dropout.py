"""Dropout: zero each activation with probability ``p`` during training."""
from __future__ import annotations

import numpy

from .. import _args, random as _random
from ..backend import get_array_module
from ..functional import dropout as F
from .base import Layer, check_grad, check_input


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

    That draw differs from PyTorch, whose dropout draws nothing when it is built: after the
    same ``gpunet.manual_seed``, every layer built after a ``Dropout(seed=None)`` gets other
    initial weights than in the same model without it. To compare a model with and
    without dropout from the same initial weights (the course's overfitting experiment),
    give each Dropout a ``seed``, which draws nothing from the host generator
    (``examples/overfitting.py`` does).

    On a device (``"cuda"``, ``"sim"``) the counter lives in a small device buffer (the
    draw state, ``gpunet.cuda.draw_state``, made from ``counter`` at the first training
    forward there): each training forward is one single-thread launch that takes the draw
    and advances the counter on the device, then the mask kernel reading the keys from it,
    so no host value changes from step to step and a CUDA graph replays fresh masks. The
    masks are the same as on the host for the same ``(seed, counter)``. Reading ``counter``
    (``state_dict``, checkpoints) copies it back, one host sync, only when read; setting it
    (or ``seed``) writes the device buffer in place. A forward on the host takes the counter
    back from the device.

    Data parallelism: ``shard`` (a plain attribute, default 0; not saved) makes a training
    forward on an input of ``n`` elements draw elements ``[shard·n, (shard+1)·n)`` of the
    stream ``(seed, counter)`` instead of ``[0, n)``.
    ``gpunet.distributed.broadcast_parameters`` gives every process the root's ``seed``
    and ``counter`` and sets ``shard = comm.rank``: with equal per-process batches, the
    masks of the processes are the slices of the mask that one process would draw for the
    global batch (the processes' batches stacked in rank order), so the processes never
    share a mask and a run on S processes matches a run on one.

    ``p`` outside ``[0, 1)`` raises ``ValueError``. ``p``, ``mode`` and ``shard`` may be
    assigned afterwards (the next training forward uses them); they are checked as the
    arguments are (``layer.p = 1.5`` raises at the assignment, not at the next forward).
    """

    _buffers = ("seed", "counter")
    _nonnegative_buffers = ("seed", "counter")   # checked by load_state_dict
    p = _args.checked_property(None, "p", "The drop probability (a number in [0, 1)).",
                               lambda who, name, value: F.check_p(value, who))
    mode = _args.checked_property(None, "mode", "'inverted' or 'classic' (see the class doc).",
                                  lambda who, name, value: F.check_mode(value, who))
    shard = _args.integer_property(None, "shard", "This process's slice of the draw (an int >= 0; "
                                   "set by gpunet.distributed.broadcast_parameters).", low=0)

    def __init__(self, p=0.5, mode="inverted", seed=None):
        super().__init__()
        self.p = p
        self.mode = mode
        seed = _draw_number("Dropout", "seed", seed, none=True)
        self._seed = int(_random.host_rng().integers(2**63)) if seed is None else seed
        self._counter = 0
        self._state = None         # on a device: the draw state (gpunet.cuda.draw_state)
        self._ahead = False        # the device's counter is ahead of _counter
        self.shard = 0
        self._draw = None          # (seed, counter, start) of the last training forward
        self._shape = None

    # seed and counter: on a device the counter lives in the draw state and advances there;
    # reading it waits for the device (once per batch of draws), setting it writes in place
    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = _draw_number("Dropout.seed", "seed", value)
        if self._state is not None:
            from ..random import keys
            self._state[1:2] = self._state.dtype.type(keys(self._seed, 0)[0])

    @property
    def counter(self) -> int:
        if self._ahead:
            self._counter = int(self._state[0:1].get()[0])
            self._ahead = False
        return self._counter

    @counter.setter
    def counter(self, value):
        self._counter = _draw_number("Dropout.counter", "counter", value)
        self._ahead = False
        if self._state is not None:
            self._state[0:1] = self._state.dtype.type(self._counter)

    def _device_state(self, x):
        """The draw state on ``x``'s device, made from the host counter the first time (and
        after a move to another device)."""
        from ..backend import device_of
        st = self._state
        if st is not None and device_of(st) == device_of(x):
            return st
        from ..cuda import draw_state
        from ..cuda.graphs import capturing
        if capturing() is not None:
            raise RuntimeError("Dropout: the first training forward on a device copies the draw "
                               "counter to it; run one step before capturing a CUDA graph")
        counter = self.counter              # the old device's, if any
        self._state = None
        with x.device:
            st = draw_state(get_array_module(x), self._seed, counter)
        self._state, self._counter, self._ahead = st, counter, False
        return st

    def forward(self, x):
        check_input(self, x)
        if not self.training:
            return F.dropout_eval(x, self.p, self.mode)
        start = int(self.shard) * int(x.size)
        self._shape, self._dtype = x.shape, x.dtype
        if get_array_module(x) is not numpy:
            # the counter stays on the device: one single-thread launch takes the draw
            from ..cuda import next_draw
            from ..cuda.graphs import capturing, updated_in_place
            st = self._device_state(x)
            next_draw(st)
            self._ahead = True
            updated_in_place(self, "_state")
            cap = capturing()
            if cap is not None:
                cap.before_replay(self._replayed)
            self._draw = (None, st, start)
            return F.dropout_forward_state(x, self.p, st, self.mode, start)
        if self._state is not None:         # back on the host: the counter comes along
            self._counter = self.counter
            self._state = None
        self._draw = (self.seed, self._counter, start)
        self._counter += 1
        return F.dropout_forward(x, self.p, *self._draw[:2], self.mode, self._draw[2])

    def _replayed(self):
        """Before each CUDA-graph replay: the replay advances the device counter without
        running ``forward`` (on CUDA; the sim re-runs it), so the next read of ``counter``
        (``state_dict``, a checkpoint) must come from the device."""
        self._ahead = True

    def backward(self, dy):
        if self._draw is None:
            raise RuntimeError("Dropout.backward called before a training-mode forward")
        check_grad(self, dy, self._shape, self._dtype)
        seed, counter, start = self._draw
        if seed is None:                    # a device draw: its keys are in the state
            return F.dropout_backward_state(dy, self.p, counter, self.mode, start)
        return F.dropout_backward(dy, self.p, seed, counter, self.mode, start)

    def extra_repr(self):
        return f"p={self.p}, mode={self.mode!r}"


def _draw_number(who, name, value, none=False):
    """A seed or a draw counter: an int in ``[0, 2**63)`` (None too when ``none``); a float
    (``int()`` would truncate it), a bool or a string raises, naming ``who``."""
    v = _args.integer(who, name, value, low=0, none=none)
    if v is not None and v >= 2**63:
        raise ValueError(f"{who}: expected {name} to be an int in [0, 2**63), got {value!r}")
    return v
