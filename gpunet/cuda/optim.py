"""Launchers of the multi-tensor optimizer and clipping kernels (``kernels/optim.cu``).

A launch covers a *tensor list* of at most ``MAX_TENSORS`` same-dtype tensors on one
device: a device table (``tensor_table``, one ``MtEntry`` row of 8 int64 words per tensor:
data and state addresses, size, first chunk, step offset, decay flag) and the gradients,
passed as kernel arguments (a gradient is a new array after every ``zero_grad()`` and
backward; arguments travel with the launch, so a step copies nothing host-to-device). The
caller (``gpunet.optim``) builds a table once and reuses it for as long as the addresses,
sizes, step offsets and decay flags it holds stay the same; keep the arrays whose addresses
it holds alive while it is in use.

A tensor's step count in a launch is ``step0 + k``: ``step0`` in the table, ``k`` (the
caller's launch counter) an argument, so that the table survives steps. Hyper-parameters
are Python floats computed as ``gpunet/optim.py`` computes them; the kernels round them to
the tensors' dtype as NumPy rounds a Python scalar.
"""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _cupy_for, _device, _sm_count, kernel

MAX_TENSORS = 64      # gradient pointers per launch (kernels/optim.cu MT_MAX)
CHUNK = 2048          # elements per chunk (MT_CHUNK)
THREADS = 256
_BLOCKS_PER_SM = 4

# flags (kernels/optim.cu)
WD, L1, MOMENTUM, NESTEROV, DECOUPLED, UNIFORM = 1, 2, 4, 8, 16, 32

_ENTRY_WORDS = 8


def address(a) -> int:
    """The device address of array ``a``'s first element (0 for None)."""
    return 0 if a is None else int(a.data.ptr)


def table_rows(rows):
    """``rows`` -> ``(host table (n, 8) int64, number of chunks)``.

    Each row is ``(data, state1, state2, size, step0, decay)``: arrays (or None) for the
    first three. Tensors of size 0 take no chunk (their row is kept, so that a tensor's
    index is its gradient's argument position).
    """
    host = numpy.zeros((len(rows), _ENTRY_WORDS), dtype=numpy.int64)
    chunk0 = 0
    for j, (w, s1, s2, n, step0, decay) in enumerate(rows):
        host[j, 0:3] = [_signed(address(w)), _signed(address(s1)), _signed(address(s2))]
        host[j, 3:7] = [n, chunk0, step0, 1 if decay else 0]
        chunk0 += -(-n // CHUNK)
    return host, chunk0


def _signed(p: int) -> int:
    return p - 2**64 if p >= 2**63 else p


def tensor_table(xp, rows):
    """A device table for ``rows`` (see ``table_rows``): ``(table, ntensors, nchunks)``.
    Its one host-to-device copy is ``64 * len(rows)`` bytes."""
    if not 1 <= len(rows) <= MAX_TENSORS:
        raise ValueError(f"gpunet.cuda.optim: a tensor list holds 1 to {MAX_TENSORS} tensors, "
                         f"got {len(rows)}")
    host, nchunks = table_rows(rows)
    return xp.asarray(host), len(rows), nchunks


def _launch(name, table, grads, scalars):
    """Launch ``name<T>`` over ``table = (device table, ntensors, nchunks)`` with the
    gradient pointers ``grads`` (C-contiguous arrays of one dtype). The unused pointer
    arguments repeat the first gradient (the kernels never read them): CuPy 13 turns a
    ``None`` argument into 0xffffffff rather than a null pointer (cupy/cupy#9046). A list
    without elements still launches one block (the norm reduction must write its result)."""
    t, ntensors, nchunks = table
    if len(grads) != ntensors:
        raise ValueError(f"gpunet.cuda.optim.{name}: {ntensors} tensors in the table, "
                         f"{len(grads)} gradients")
    g0 = grads[0]
    dev = _device(g0)
    blocks = max(1, min(nchunks, _sm_count(dev) * _BLOCKS_PER_SM))
    with g0.device:
        kernel("optim.cu", f"{name}<{_CTYPE[g0.dtype]}>", dev)(
            (blocks,), (THREADS,),
            (t, numpy.int32(ntensors), numpy.int64(nchunks), *scalars,
             *grads, *([g0] * (MAX_TENSORS - len(grads)))))


def sgd_step(table, grads, *, lr, momentum, weight_decay, l1, flags, k):
    """One SGD step of every tensor in ``table`` (state1: momentum buffer)."""
    _launch("mt_sgd", table, grads,
            (float(lr), float(momentum), float(weight_decay), float(l1),
             numpy.int32(flags), numpy.int64(k)))


def adam_step(table, grads, *, lr, beta1, beta2, eps, weight_decay, l1, decay_factor,
              step_size, bias2, flags, k):
    """One Adam/AdamW step (state1: exp_avg, state2: exp_avg_sq). With ``UNIFORM`` in
    ``flags``, ``step_size = lr/(1-beta1**n)`` and ``bias2 = sqrt(1-beta2**n)`` hold for
    every tensor; otherwise each tensor's are computed on the device from its step count."""
    _launch("mt_adam", table, grads,
            (float(lr), float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2),
             float(eps), float(weight_decay), float(l1), float(decay_factor),
             float(step_size), float(bias2), numpy.int32(flags), numpy.int64(k)))


def rmsprop_step(table, grads, *, lr, alpha, eps, momentum, flags):
    """One RMSProp step (state1: square_avg, state2: momentum_buffer)."""
    _launch("mt_rmsprop", table, grads,
            (float(lr), float(alpha), 1.0 - float(alpha), float(eps), float(momentum),
             numpy.int32(flags)))


def adagrad_step(table, grads, *, lr, eps):
    """One AdaGrad step (state1: sum)."""
    _launch("mt_adagrad", table, grads, (float(lr), float(eps)))


# -- clipping -------------------------------------------------------------------------------

class _ClipScratch:
    """Per-device scratch of the norm reduction: block partials, the last-block ticket
    (zero between launches), the running sum across dtype groups and the scale factor."""

    def __init__(self, cp, dev):
        self.partials = cp.empty((_sm_count(dev) * _BLOCKS_PER_SM,), dtype=numpy.float64)
        self.ticket = cp.zeros((1,), dtype=numpy.uint32)
        self.acc = cp.empty((1,), dtype=numpy.float64)
        self.coef = cp.empty((1,), dtype=numpy.float64)


_scratch: dict = {}


def clip_scratch(x):
    dev = _device(x)
    s = _scratch.get(dev)
    if s is None:
        cp = _cupy_for(x)
        with x.device:
            s = _scratch[dev] = _ClipScratch(cp, dev)
    return s


def grad_norm_and_scale(tables, grad_lists, max_norm):
    """The global L2 norm of every gradient, and ``g *= max_norm/(norm + 1e-6)`` on every
    gradient when that factor is below 1 (a non-finite norm scales nothing), without a
    host sync: one reduction launch and one scaling launch per tensor list. Returns the
    norm as a new 0-d float64 device array."""
    g0 = grad_lists[0][0]
    cp = _cupy_for(g0)
    s = clip_scratch(g0)
    with g0.device:
        total = cp.empty((), dtype=numpy.float64)
    last = len(tables) - 1
    for i, (table, grads) in enumerate(zip(tables, grad_lists)):
        _launch("mt_grad_sumsq", table, grads,
                (s.partials, s.ticket, s.acc, numpy.int32(i > 0), numpy.int32(i == last),
                 float(max_norm), total, s.coef))
    for table, grads in zip(tables, grad_lists):
        _launch("mt_grad_scale", table, grads, (s.coef,))
    return total


def grad_clamp(table, grads, clip):
    """``g = clip(g, -clip, clip)`` for every gradient of the list, in place."""
    _launch("mt_grad_clamp", table, grads, (float(clip),))
