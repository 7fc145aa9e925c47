"""Launchers of the multi-tensor optimizer, clipping and loss-scaler kernels
(``kernels/optim.cu``).

A launch covers a *tensor list* of same-dtype tensors on one device, of any length: a
device table (``tensor_table``, one ``MtEntry`` row of 8 int64 words per tensor: data and
state addresses, size, first chunk, the address of its step counter, decay flag, and the
gradient's address for a tensor past the first ``MAX_ARGS``) and the first ``MAX_ARGS``
gradients, passed as kernel arguments (a gradient is a new array after every
``zero_grad()`` and backward; arguments travel with the launch, so a step copies nothing
host-to-device however the gradients move). The caller (``gpunet.optim``) builds a table
once and reuses it for as long as the addresses, sizes and flags it holds stay the same;
keep the arrays whose addresses it holds alive while it is in use.

Scalars that change during training live on the device, so that a CUDA graph that
captured a step reads their current values when replayed: the learning rate (a float64
device buffer, ``DeviceScalars.lr``, rewritten by ``set_lr`` with a one-element fill when
a schedule changes it), each tensor's step count (int64 counters, ``DeviceScalars.steps``,
incremented by the kernel itself) and the loss scaler's check (``found``: a sum of squares
that, when not finite, skips the whole step). The other hyper-parameters are Python floats
computed as ``gpunet/optim.py`` computes them; the kernels round them to the tensors'
dtype as NumPy rounds a Python scalar.
"""
from __future__ import annotations

import numpy

from .loader import _CTYPE, _cupy_for, _device, _sm_count, kernel

MAX_ARGS = 64         # gradients passed as arguments (kernels/optim.cu MT_MAX); the rest: table
CHUNK = 2048          # elements per chunk (MT_CHUNK)
THREADS = 256
_BLOCKS_PER_SM = 4

# flags (kernels/optim.cu)
WD, L1, MOMENTUM, NESTEROV, DECOUPLED, FOUND, ALWAYS = 1, 2, 4, 8, 16, 32, 64

_ENTRY_WORDS = 8


def address(a) -> int:
    """The device address of array ``a``'s first element (0 for None)."""
    return 0 if a is None else int(a.data.ptr)


def table_rows(rows):
    """``rows`` -> ``(host table (n, 8) int64, number of chunks)``.

    Each row is ``(data, state1, state2, size, step, decay, grad)``: arrays (or None) for
    ``data``, ``state1``, ``state2`` and ``grad``, ``step`` the address (int, 0 for none)
    of the tensor's int64 step counter. The gradient's address is written only for rows
    ``MAX_ARGS`` and beyond (the first ones are kernel arguments). Tensors of size 0 take
    no chunk (their row is kept, so that a tensor's index is its gradient's position).
    """
    host = numpy.zeros((len(rows), _ENTRY_WORDS), dtype=numpy.int64)
    chunk0 = 0
    for j, (w, s1, s2, n, step, decay, g) in enumerate(rows):
        host[j, 0:3] = [_signed(address(w)), _signed(address(s1)), _signed(address(s2))]
        host[j, 3:8] = [n, chunk0, _signed(int(step)), 1 if decay else 0,
                        _signed(address(g)) if j >= MAX_ARGS else 0]
        chunk0 += -(-n // CHUNK)
    return host, chunk0


def table_key(rows):
    """What a table of ``rows`` depends on: reuse a table while its key is unchanged."""
    return tuple((address(w), address(s1), address(s2), n, int(step), bool(decay),
                  address(g) if j >= MAX_ARGS else 0)
                 for j, (w, s1, s2, n, step, decay, g) in enumerate(rows))


def captured_table(cap, owner, slot, hit, rows):
    """The table that a step being captured into the CUDA graph ``cap`` uses for ``rows``,
    given the eager table ``hit = (key, table)`` of ``(owner, slot)`` (or None):

    * the eager table itself when it holds ``rows`` (the graph keeps it alive);
    * when it differs only in gradients past ``MAX_ARGS`` (new arrays in the capture): a
      copy of it made in the graph, those rows' gradient addresses written by one
      single-element fill each, so that no host-to-device copy is captured and the eager
      table is left as it is (the graph keeps it too: it copies from it at every replay);
    * None when anything else differs (the step cannot be captured as it is).

    The choice made at capture is remembered in ``cap``: the sim re-runs the capture's
    Python at every replay and must take the same path with the same arrays."""
    memo = cap.__dict__.setdefault("_tables", {})
    choice = memo.get((id(owner), slot))
    if choice is None:
        if hit is None:
            return None
        cap.keep(hit[1][0])
        choice = memo[(id(owner), slot)] = (hit[0] == table_key(rows), hit)
    as_is, (old_key, (table, ntensors, nchunks)) = choice
    if as_is:
        return table, ntensors, nchunks
    new_key = table_key(rows)
    if len(new_key) != len(old_key):
        return None
    moved = []
    for j, (a, b) in enumerate(zip(old_key, new_key)):
        if a != b:
            if j < MAX_ARGS or a[:6] != b[:6]:
                return None
            moved.append((j, b[6]))
    t = table.copy()
    for j, ptr in moved:
        t[j, 7:8].fill(_signed(ptr))
    cap.keep(t)
    return t, ntensors, nchunks


def _signed(p: int) -> int:
    return p - 2**64 if p >= 2**63 else p


def tensor_table(xp, rows):
    """A device table for ``rows`` (see ``table_rows``): ``(table, ntensors, nchunks)``.
    Its one host-to-device copy is ``64 * len(rows)`` bytes."""
    if not rows:
        raise ValueError("gpunet.cuda.optim: a tensor list holds at least 1 tensor, got 0")
    host, nchunks = table_rows(rows)
    return xp.asarray(host), len(rows), nchunks


def _launch(name, table, grads, scalars):
    """Launch ``name<T>`` over ``table = (device table, ntensors, nchunks)`` with the
    first ``MAX_ARGS`` gradient pointers of ``grads`` (C-contiguous arrays of one dtype) as
    arguments. The unused pointer arguments repeat the first gradient (the kernels never
    read them): CuPy 13 turns a ``None`` argument into 0xffffffff rather than a null
    pointer (cupy/cupy#9046). A list without elements still launches one block (the norm
    reduction must write its result)."""
    t, ntensors, nchunks = table
    if len(grads) != ntensors:
        raise ValueError(f"gpunet.cuda.optim.{name}: {ntensors} tensors in the table, "
                         f"{len(grads)} gradients")
    g0 = grads[0]
    dev = _device(g0)
    blocks = max(1, min(nchunks, _sm_count(dev) * _BLOCKS_PER_SM))
    args = list(grads[:MAX_ARGS])
    with g0.device:
        kernel("optim.cu", f"{name}<{_CTYPE[g0.dtype]}>", dev)(
            (blocks,), (THREADS,),
            (t, numpy.int32(ntensors), numpy.int64(nchunks), *scalars,
             *args, *([g0] * (MAX_ARGS - len(args)))))


class DeviceScalars:
    """An optimizer's scalars on its device: ``lr`` (float64[1]), ``steps`` (int64, one
    counter per parameter of the optimizer: the table rows point into it) and the
    launches' last-block ``ticket`` (uint32, 0 between launches). ``lr_value`` is the
    value last written into ``lr`` (host bookkeeping: rewriting is needed only when the
    optimizer's ``lr`` differs from it)."""

    def __init__(self, xp, steps, lr):
        self.steps = xp.asarray(numpy.asarray(steps, dtype=numpy.int64))
        self.lr = xp.full((1,), lr, dtype=numpy.float64)
        self.ticket = xp.zeros((1,), dtype=numpy.uint32)
        self.lr_value = float(lr)

    def step_address(self, i: int) -> int:
        return address(self.steps) + 8 * i

    def set_lr(self, lr: float):
        """Write ``lr`` into the device buffer (one fill launch, no copy) if it changed."""
        if lr != self.lr_value:
            self.lr.fill(lr)
            self.lr_value = lr


def _found_args(found, scalars, flags):
    """The ``found``/``ticket`` arguments: without a check, ``lr`` stands in for the
    unread pointer."""
    if found is None:
        return flags & ~FOUND, scalars.lr
    return flags | FOUND, found


def sgd_step(table, grads, scalars, *, momentum, weight_decay, l1, flags, found=None):
    """One SGD step of every tensor in ``table`` (state1: momentum buffer)."""
    flags, f = _found_args(found, scalars, flags)
    _launch("mt_sgd", table, grads,
            (scalars.lr, float(momentum), float(weight_decay), float(l1),
             numpy.int32(flags), f, scalars.ticket))


def adam_step(table, grads, scalars, *, beta1, beta2, eps, weight_decay, l1, flags, found=None):
    """One Adam/AdamW step (state1: exp_avg, state2: exp_avg_sq); the bias corrections
    ``lr/(1-beta1**n)`` and ``sqrt(1-beta2**n)`` are computed on the device from each
    tensor's step count, AdamW's ``1 - lr*weight_decay`` from the device's lr."""
    flags, f = _found_args(found, scalars, flags)
    _launch("mt_adam", table, grads,
            (scalars.lr, float(beta1), 1.0 - float(beta1), float(beta2), 1.0 - float(beta2),
             float(eps), float(weight_decay), float(l1), numpy.int32(flags), f, scalars.ticket))


def rmsprop_step(table, grads, scalars, *, alpha, eps, momentum, flags, found=None):
    """One RMSProp step (state1: square_avg, state2: momentum_buffer)."""
    flags, f = _found_args(found, scalars, flags)
    _launch("mt_rmsprop", table, grads,
            (scalars.lr, float(alpha), 1.0 - float(alpha), float(eps), float(momentum),
             numpy.int32(flags), f, scalars.ticket))


def adagrad_step(table, grads, scalars, *, eps, flags=0, found=None):
    """One AdaGrad step (state1: sum)."""
    flags, f = _found_args(found, scalars, flags)
    _launch("mt_adagrad", table, grads,
            (scalars.lr, float(eps), numpy.int32(flags), f, scalars.ticket))


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
    return _sumsq_then_scale(tables, grad_lists, 1, float(max_norm),
                             lambda s: s.coef, lambda s: s.coef, 0)


def _sumsq_then_scale(tables, grad_lists, final_mode, max_norm, flag_of, factor_of, scale_mode):
    """The shared body of the two functions around it: ``mt_grad_sumsq`` over every tensor
    list (its last launch finishes the float64 total with ``final_mode``, writing
    ``flag_of(scratch)``), then ``mt_grad_scale`` by ``factor_of(scratch)`` with
    ``scale_mode``. Returns the total, a new 0-d float64 device array."""
    g0 = grad_lists[0][0]
    cp = _cupy_for(g0)
    s = clip_scratch(g0)
    with g0.device:
        total = cp.empty((), dtype=numpy.float64)
    last = len(tables) - 1
    for i, (table, grads) in enumerate(zip(tables, grad_lists)):
        _launch("mt_grad_sumsq", table, grads,
                (s.partials, s.ticket, s.acc, numpy.int32(i > 0),
                 numpy.int32(final_mode if i == last else 0), max_norm, total, flag_of(s)))
    for table, grads in zip(tables, grad_lists):
        _launch("mt_grad_scale", table, grads, (factor_of(s), numpy.int32(scale_mode)))
    return total


def unscale_and_check(tables, grad_lists, inv_scale, found_any):
    """The loss scaler's ``unscale_`` on the device: the float64 sum of squares of every
    gradient (returned as a new 0-d device array: finite exactly when every element is),
    ``found_any[0] = 1`` when it is not finite, then ``g *= inv_scale[0]`` on every
    gradient. One reduction launch and one scaling launch per tensor list; no host sync."""
    return _sumsq_then_scale(tables, grad_lists, 2, 0.0,
                             lambda s: found_any, lambda s: inv_scale, ALWAYS)


def amp_update(found_any, scale, inv_scale, tracker, *, growth_factor, backoff_factor,
               growth_interval):
    """The loss scaler's update on the device (one single-thread launch): back off, grow
    or keep ``scale[0]`` (float32) from ``found_any[0]``, count clean steps in
    ``tracker[0]`` (int64), set ``inv_scale[0] = 1/scale[0]`` (float64) and clear
    ``found_any``."""
    with scale.device:
        kernel("optim.cu", "amp_update_scale", _device(scale))(
            (1,), (1,), (found_any, scale, inv_scale, tracker, float(growth_factor),
                         float(backoff_factor), numpy.int64(growth_interval)))


def grad_clamp(table, grads, clip):
    """``g = clip(g, -clip, clip)`` for every gradient of the list, in place."""
    _launch("mt_grad_clamp", table, grads, (float(clip),))
