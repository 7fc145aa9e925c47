"""Dropout, forward above backward, with a mask that is regenerated instead of stored.

The mask of a draw is a pure function of ``(seed, counter, element)`` through the
counter-based hash of ``gpunet.random``: element ``i`` is kept iff

    random_bits(seed, counter, shape)[i] >> 8  >=  keep_threshold(p)

i.e. ``uniform[i] >= p`` computed exactly on integers, so each element survives with
probability ``1 - p`` and the same ``(seed, counter)`` gives the same mask on NumPy and on
CuPy. For ``p`` in ``(1 - 2**-24, 1)`` the threshold is ``2**24``, above every 24-bit draw:
both paths drop every element. The backward regenerates the mask from the same pair, so no mask is kept in memory.

Two conventions (``mode``), with the same expected activation at train and at eval:

* ``"inverted"`` (PyTorch, Keras): train ``y = x·m / (1-p)``, eval ``y = x``;
* ``"classic"`` (the course's, Srivastava et al. 2014): train ``y = x·m``, eval
  ``y = x·(1-p)``.

``dropout_forward``/``dropout_backward`` are the training-mode op; ``dropout_eval`` is the
eval-mode map. ``m`` is 0 or 1, so the backward is the same map as the forward:
``dx = dy·m·scale``.
"""
from __future__ import annotations

import numbers

import numpy

from .. import _args
from ..backend import get_array_module
from ..random import keep_threshold, keys, random_bits

MODES = ("inverted", "classic")


def check_p(p, owner="dropout"):
    """Return ``p`` as a Python float, or raise ``ValueError`` unless ``0 <= p < 1``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{owner}: p must be a number in [0, 1), got {type(p).__name__} {p!r}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{owner}: p (the drop probability) must lie in [0, 1), got {p!r}")
    return p


def check_mode(mode, owner="dropout"):
    if mode not in MODES:
        raise ValueError(f"{owner}: mode must be 'inverted' or 'classic', got {mode!r}")
    return mode


def _draw(who, seed, counter, start):
    """The slow path of a draw's ``(seed, counter, start)``: each an int >= 0 (a float start
    was truncated by ``int()``, a string seed failed in ``int()``, a negative counter named
    ``random``)."""
    return (_args.integer(who, "seed", seed, low=0), _args.integer(who, "counter", counter, low=0),
            _args.integer(who, "start", start, low=0))


def train_scale(p, mode="inverted") -> float:
    """The factor applied to kept elements in training: ``1/(1-p)`` (inverted) or 1."""
    return 1.0 / (1.0 - p) if check_mode(mode) == "inverted" else 1.0


def keep_mask(shape, p, seed, counter, xp=numpy, start=0):
    """Boolean array of ``shape``: True where draw ``(seed, counter)`` keeps the element
    (elements ``start, start + 1, ...`` of the draw's stream)."""
    t = keep_threshold(check_p(p))
    bits = random_bits(seed, counter, shape, xp, start)
    if t >= 2**24:
        # p in (1 - 2**-24, 1): no 24-bit draw reaches t, every element is dropped (as the
        # kernel does); t * 256 = 2**32 would not fit the uint32 compare below.
        return xp.zeros(bits.shape, dtype=bool)
    # bits >> 8 >= t  <=>  bits >= t * 256 (integers, t < 2**24 here): saves a pass.
    return bits >= xp.uint32(t << 8)


def _keys(seed, counter, start):
    """The kernel's ``(k1, k2)`` for elements ``start, start + 1, ...`` of the draw: the
    element offset folds into ``k1`` (``bits[i] = mix32(mix32(i + k1) ^ k2)``)."""
    k1, k2 = keys(seed, counter)
    return (k1 + int(start)) & 0xFFFFFFFF, k2


def _masked_scale(a, p, seed, counter, scale, start):
    """NumPy body of forward and backward, which are one map: ``a · m(seed, counter) · scale``."""
    if p == 0.0:
        return a.copy()
    keep = keep_mask(a.shape, p, seed, counter, numpy, start)
    y = a * keep                                                   # one compare, one multiply
    if scale != 1.0:
        with numpy.errstate(over="ignore"):
            s = a.dtype.type(scale)   # the scale in a's dtype, as y *= scale rounds it
        if numpy.isinf(s):
            # float16 with p > 1 - 1/65520: the scale rounds to inf. A dropped element stays
            # x*0 (the kernel's), not 0*inf = NaN; a kept one is x*inf, as in the kernel
            numpy.multiply(a, s, out=y, where=keep)
        else:
            y *= scale            # a Python float: stays in a's dtype
    return y


def _train_map(who, a, p, seed, counter, mode, start):
    """``a · m · scale`` for ``dropout_forward`` (``a = x``) and ``dropout_backward``
    (``a = dy``): the same map, with the device op of the same name."""
    if (seed.__class__ is not int or counter.__class__ is not int or start.__class__ is not int
            or (seed | counter | start) < 0):       # the OR of ints >= 0 is >= 0
        seed, counter, start = _draw(who, seed, counter, start)
    p = check_p(p)
    scale = train_scale(p, mode)
    if get_array_module(a) is not numpy:
        from .. import cuda
        k1, k2 = _keys(seed, counter, start)
        return getattr(cuda, who)(a, k1, k2, keep_threshold(p), scale)
    return _masked_scale(a, p, seed, counter, scale, start)


def dropout_forward(x, p, seed, counter, mode="inverted", start=0):
    """Training-mode dropout: ``y = x · m · scale``, ``scale = 1/(1-p)`` (inverted) or 1
    (classic); ``m`` is the mask of draw ``(seed, counter)`` (its elements ``start, start + 1, ...``:
    a data-parallel process draws its share of the global batch's mask, see
    ``gpunet.layers.Dropout``). Any shape; ``y`` has ``x``'s shape and dtype."""
    return _train_map("dropout_forward", x, p, seed, counter, mode, start)


def dropout_backward(dy, p, seed, counter, mode="inverted", start=0):
    """``dx = dy · m · scale`` with the mask regenerated from the forward's ``(seed, counter)``."""
    return _train_map("dropout_backward", dy, p, seed, counter, mode, start)


def dropout_forward_state(x, p, state, mode="inverted", start=0):
    """``dropout_forward`` of a device array with the draw ``(seed, counter)`` held on the
    device (``state``, see ``gpunet.cuda.draw_state``; its last ``next_draw``): the same
    mask, without the counter passing through the host (a CUDA graph replays it).
    ``start``: an int >= 0, as in ``dropout_forward``."""
    if start.__class__ is not int or start < 0:
        start = _args.integer("dropout_forward_state", "start", start, low=0)
    from .. import cuda
    p = check_p(p)
    return cuda.dropout_forward_state(x, state, start, keep_threshold(p), train_scale(p, mode))


def dropout_backward_state(dy, p, state, mode="inverted", start=0):
    """``dropout_backward`` with the mask of ``state``'s last draw (``dropout_forward_state``)."""
    if start.__class__ is not int or start < 0:
        start = _args.integer("dropout_backward_state", "start", start, low=0)
    from .. import cuda
    p = check_p(p)
    return cuda.dropout_backward_state(dy, state, start, keep_threshold(p), train_scale(p, mode))


def dropout_eval(x, p, mode="inverted"):
    """Eval-mode dropout: ``x`` itself (inverted) or ``x · (1-p)`` (classic), which is the
    expectation of the training output over masks in both modes."""
    p = check_p(p)
    if check_mode(mode) == "inverted":
        return x
    return x * (1.0 - p)
