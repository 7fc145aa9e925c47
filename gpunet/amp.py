"""Mixed precision: dynamic loss scaling (``GradScaler``), as ``torch.amp.GradScaler``.

The module is named after ``torch.amp`` (``torch.cuda.amp`` before PyTorch 2.3), where a
PyTorch user looks for it: ``gpunet.amp.GradScaler``.

Why scale: float16 holds magnitudes from about 6e-8 (subnormal) to 65504; small
gradients underflow to zero in half precision. Multiplying the loss gradient by a large
``S`` before backward keeps them representable; dividing the parameter gradients by ``S``
(in their own dtype) before the optimizer step undoes it. When ``S`` is too large the
gradients overflow to inf/NaN: that step is skipped and ``S`` halves. After
``growth_interval`` clean steps in a row ``S`` doubles.

gpunet's backward is explicit, so the scaler scales the loss *gradient* (the loss itself
stays float32 and unscaled, for logging)::

    scaler = gpunet.amp.GradScaler()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        model.backward(scaler.scale(loss_fn.backward()))   # dlogits * S
        scaler.step(optimizer)        # unscale the grads; skip the step on inf/NaN
        scaler.update()               # grow or back off S
        optimizer.zero_grad()

To clip gradients, call ``scaler.unscale_(optimizer)`` first, then
``gpunet.optim.clip_grad_norm(...)``, then ``scaler.step(optimizer)`` (as in PyTorch).

The float16 policy (``MixedPrecision``, what ``Trainer(..., precision="fp16")`` uses)
keeps the model's parameters and the optimizer's state in float32 and runs forward and
backward on float16 copies of the Dense and Conv2D parameters::

    mp = gpunet.amp.MixedPrecision(model)
    loss = loss_fn(mp.forward(x), y)                 # float32 logits and loss
    mp.backward(scaler.scale(loss_fn.backward()))    # float32 gradients on the masters
    scaler.step(optimizer); scaler.update()
"""
from __future__ import annotations

import math

import numpy

from . import _args
from .backend import get_array_module
from .layers.base import Layer, check_array, check_dtype
from .layers.conv import Conv2D
from .layers.dense import Dense

__all__ = ["GradScaler", "MixedPrecision", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16")


def _times(x, c: float):
    """``x * c`` in ``x``'s dtype. A half array is multiplied in float32 and rounded once:
    NumPy (and CuPy) would round ``c`` itself to float16 first, and 2**16 is inf there."""
    if x.dtype.itemsize < 4:
        return (x.astype(numpy.float32) * c).astype(x.dtype)
    return x * c


def _f32(v: float) -> float:
    """``v`` rounded to float32 (PyTorch keeps the scale in a float32 tensor); inf past
    float32's range."""
    with numpy.errstate(over="ignore"):
        return float(numpy.float32(v))


def _dead_scale(last, backoff) -> str:
    """The message for a loss scale that has backed off to 0 (``last``: the scale before,
    when known)."""
    was = f" (from {last:.3g}, times {backoff:g})" if last is not None else ""
    return (f"GradScaler: the loss scale fell to 0{was}: every step backed it off, so their gradients held "
            f"inf/NaN at every scale, and those steps were skipped; a scale of 0 stays 0, so no step "
            f"would be taken again (torch.amp.GradScaler goes on skipping in silence). Look for NaN/inf "
            f"in the parameters or the data, or a backward that overflows in float32 too")


class GradScaler:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s constants and update rule.

    ``GradScaler(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
    growth_interval=2000, enabled=True)``.

    * ``scale(x)``: ``x * S`` (a loss, or the loss gradient that ``model.backward`` takes),
      in ``x``'s dtype (a float16 ``x`` is multiplied in float32 and rounded once).
      Disabled: ``x`` itself.
    * ``unscale_(optimizer)``: ``grad *= 1/S`` in place for every parameter of
      ``optimizer`` with a gradient, and records whether any gradient held an inf or NaN
      (checked before the division). At most once per step (``RuntimeError`` otherwise).
    * ``step(optimizer)``: ``unscale_`` if not done yet, then ``optimizer.step()`` unless an
      inf/NaN was found (the step is *skipped*: parameters, optimizer state and step counts
      are unchanged). Returns True when the optimizer stepped.
    * ``update()``: after the step(s) of one iteration: an inf/NaN in any of them sets
      ``S *= backoff_factor`` and resets the count of clean steps (when that would make
      ``S`` 0 in float32, after about 165 such iterations in a row from 2**16,
      ``FloatingPointError`` says so instead: with ``S = 0`` no step is ever taken again; on
      a device, where ``S`` changes on the device, ``Trainer`` finds it at the end of the
      epoch); otherwise the count
      grows, and at ``growth_interval`` ``S *= growth_factor`` (if that stays finite in
      float32) and the count restarts. ``update(new_scale)`` sets ``S`` directly.
    * ``get_scale()``, ``state_dict()``/``load_state_dict()`` (keys ``scale``,
      ``growth_factor``, ``backoff_factor``, ``growth_interval``, ``growth_tracker``;
      NumPy arrays, saved by ``gpunet.save(..., scaler=)``). Disabled (``enabled=False``):
      ``state_dict()`` is ``{}`` and ``load_state_dict`` ignores its argument, as in PyTorch;
      an enabled scaler refuses that empty state with a ``ValueError`` saying where it came
      from.

    ``S`` is kept as PyTorch keeps it, rounded to float32, so the sequence of scales is
    ``torch.amp.GradScaler``'s for the same sequence of overflows.

    On a CUDA device (or the sim), with a gpunet optimizer and float32/float64 gradients,
    the whole iteration runs on the device without a host sync, as PyTorch's fused
    optimizers do: ``S``, ``1/S``, the count of clean steps and the found-inf flag live
    in device buffers (copied there once, from the host values, at the first ``scale`` or
    ``unscale_`` on a device); ``unscale_`` is one float64 sum-of-squares reduction over
    all gradients (finite exactly when every element is) and one scaling launch per
    dtype; ``step`` passes that sum to the optimizer's fused kernel, which skips the whole
    update (parameters, state, step counts) when it is not finite; ``update`` is one
    single-thread launch (``amp_update_scale`` in ``kernels/optim.cu``). ``step`` then
    returns a lazy truth value (reading it waits for the device), and ``get_scale()`` /
    ``state_dict()`` read the device (one sync each per buffer read). Other optimizers
    (any object with ``params`` and ``step()``) and float16 gradients take the host path:
    one sync per step, in ``step``.
    """

    # checked on assignment too, as the constructor's arguments are (read a few times a step)
    growth_factor = _args.real_property("GradScaler", "growth_factor", "S *= growth_factor after "
                                        "growth_interval clean steps (a finite number > 1).",
                                        low=1.0, low_open=True)
    backoff_factor = _args.real_property("GradScaler", "backoff_factor", "S *= backoff_factor after an "
                                         "inf/NaN (a number in (0, 1)).", low=0.0, high=1.0,
                                         low_open=True, high_open=True)
    growth_interval = _args.integer_property("GradScaler", "growth_interval", "Clean steps before S grows "
                                             "(a positive int).", low=1)
    enabled = _args.flag_property("GradScaler", "enabled", "Whether the scaler scales (a bool).")

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True):
        who = "GradScaler"
        self._scale = _f32(_args.real(who, "init_scale", init_scale, low=0.0, low_open=True))
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.enabled = enabled
        self._growth_tracker = 0
        self._pending = {}        # id(optimizer) -> found-inf flag of this iteration (bool, a
        #                           0-d device bool array, or _DeviceCheck on the fused path)
        self._dev = None          # _ScalerState on a device: S, 1/S, tracker and flag there

    # -- the iteration ---------------------------------------------------------------------
    def _check_alive(self, where=""):
        """Raise ``FloatingPointError`` when ``S`` is 0 (on a device it backs off there, out
        of sight of the host: one read, a host sync). ``Trainer`` calls it once per epoch on
        a device; the host path raises in ``update`` itself."""
        if self.enabled and self.get_scale() == 0.0:
            raise FloatingPointError(_dead_scale(None, self.backoff_factor) + where)

    def get_scale(self) -> float:
        """The current scale ``S`` (1.0 when disabled); on a device, a host sync."""
        if not self.enabled:
            return 1.0
        if self._dev is not None:
            self._scale = float(self._dev.scale.get())
        return self._scale

    def _host(self):
        """Bring ``S`` and the tracker back from the device (host syncs) and drop the
        device state: the host values rule again (re-copied at the next device use)."""
        if self._dev is not None:
            self._scale = float(self._dev.scale.get())
            self._growth_tracker = int(self._dev.tracker.get())
            self._dev = None

    def _device_state(self, like):
        """The device state on ``like``'s device, created from the host values."""
        from .backend import device_of
        if self._dev is None or device_of(self._dev.scale) != device_of(like):
            from .cuda import graphs
            if graphs.capturing() is not None:
                raise RuntimeError("GradScaler: the first scaled step on a device copies the "
                                   "scale to it; run one step before capturing a CUDA graph")
            self._host()
            self._dev = _ScalerState(get_array_module(like), self._scale, self._growth_tracker)
        else:
            from .cuda import graphs
            cap = graphs.capturing()
            if cap is not None:
                cap.keep(self._dev)      # a graph reads these buffers at every replay
        return self._dev

    def scale(self, x):
        """``x * S`` in ``x``'s dtype (``x`` itself when disabled); on a device, ``S`` is
        read there (one launch, no sync)."""
        if not self.enabled:
            return x
        if isinstance(x, numpy.ndarray) or numpy.isscalar(x):
            self._host()
            return _times(x, self._scale)
        s = self._device_state(x).scale
        if x.dtype.itemsize < 4:
            return (x.astype(numpy.float32) * s).astype(x.dtype)
        return x * s

    def _fused(self, optimizer, grads):
        """Whether ``unscale_``/``step`` run on the device without a sync: a gpunet
        optimizer, device gradients, all float32/float64."""
        from .optim import Optimizer
        return (isinstance(optimizer, Optimizer) and grads
                and not isinstance(grads[0], numpy.ndarray)
                and all(g.dtype in (numpy.float32, numpy.float64) for g in grads))

    def unscale_(self, optimizer):
        """Divide ``optimizer``'s gradients by ``S`` in place and note whether any was inf/NaN."""
        if not self.enabled:
            return
        if id(optimizer) in self._pending:
            raise RuntimeError("GradScaler.unscale_: already called for this optimizer since "
                               "the last update()")
        grads = [p.grad for p in optimizer.params if p.grad is not None]
        if self._fused(optimizer, grads):
            from .optim import _unscale_on_device
            d = self._device_state(grads[0])
            try:
                total = _unscale_on_device(grads, d.inv, d.found)
            except TypeError:
                self._one_device(optimizer, grads)      # names gradients on two devices
                raise
            self._pending[id(optimizer)] = _DeviceCheck(total)
            return
        found = False
        if grads:
            try:
                xp = get_array_module(*grads)
            except TypeError:
                self._one_device(optimizer, grads)
                raise
            if self._dev is not None and xp is not numpy:
                self._scale = float(self._dev.scale.get())
            else:
                self._host()
            inv = 1.0 / self._scale
            if xp is numpy:
                found = not all(bool(numpy.isfinite(g).all()) for g in grads)
            elif any(g.dtype not in (numpy.float32, numpy.float64) for g in grads):
                # float16 gradients (a model cast to float16): the fused reduction has no
                # half kernel; one isfinite-all per gradient, combined on the device
                found = ~xp.isfinite(grads[0]).all()
                for g in grads[1:]:
                    found |= ~xp.isfinite(g).all()
            else:
                from .optim import clip_grad_norm
                # a float64 sum of squares of every element: finite iff all of them are
                # (max float32**2 * 2**40 elements < float64 max); max_norm=inf scales nothing
                found = ~xp.isfinite(clip_grad_norm([p for p in optimizer.params
                                                     if p.grad is not None], math.inf))
            for g in grads:
                if g.dtype.itemsize < 4:
                    g[...] = _times(g, inv)
                else:
                    g *= inv
        self._pending[id(optimizer)] = found

    @staticmethod
    def _one_device(optimizer, grads):
        """Raise ``TypeError`` naming ``GradScaler.unscale_`` and two parameters when
        ``grads`` are on more than one device (called only once a call has failed, so the
        step itself pays nothing)."""
        from .optim import _grads_module
        _grads_module("GradScaler.unscale_", optimizer.params, grads)

    def step(self, optimizer) -> bool:
        """``unscale_`` (if not called yet), then ``optimizer.step()`` unless a gradient was
        inf/NaN. Returns whether the optimizer stepped: a bool, or on the device path a
        lazy truth value (``bool()`` of it waits for the device; the step itself does not)."""
        if not self.enabled:
            optimizer.step()
            return True
        if id(optimizer) not in self._pending:
            self.unscale_(optimizer)
        check = self._pending[id(optimizer)]
        if isinstance(check, _DeviceCheck):
            optimizer._step(found=check.total)     # the kernel skips on a non-finite sum
            return check
        if bool(check):
            self._pending[id(optimizer)] = True
            return False
        self._pending[id(optimizer)] = False
        optimizer.step()
        return True

    def update(self, new_scale=None):
        """Back off, grow or keep ``S`` from this iteration's steps (see the class doc)."""
        if not self.enabled:
            return
        if new_scale is not None:
            new_scale = _args.real("GradScaler.update", "new_scale", new_scale, low=0.0, low_open=True)
            self._host()
            self._scale = _f32(new_scale)
        elif self._dev is not None:
            if not self._pending:
                raise RuntimeError("GradScaler.update: no step() or unscale_() since the last update()")
            from .cuda import optim as _mt
            d = self._dev
            if any(bool(f) for f in self._pending.values() if not isinstance(f, _DeviceCheck)):
                d.found.fill(1.0)      # a host-path optimizer of this iteration overflowed
            _mt.amp_update(d.found, d.scale, d.inv, d.tracker, growth_factor=self.growth_factor,
                           backoff_factor=self.backoff_factor,
                           growth_interval=self.growth_interval)
        else:
            if not self._pending:
                raise RuntimeError("GradScaler.update: no step() or unscale_() since the last update()")
            found = any(bool(f) for f in self._pending.values())
            if found:
                backed = _f32(self._scale * self.backoff_factor)
                if backed == 0.0:           # 0 stays 0: no step would ever be taken again
                    self._pending = {}
                    raise FloatingPointError(_dead_scale(self._scale, self.backoff_factor))
                self._scale = backed
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker >= self.growth_interval:   # >=: the interval may have been lowered
                    grown = _f32(self._scale * self.growth_factor)
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._pending = {}

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The scale, the factors, the interval and the count of clean steps, as NumPy
        arrays (read from the device when they live there: host syncs). A disabled scaler
        has no state: ``{}``, as ``torch.amp.GradScaler(enabled=False).state_dict()``."""
        if not self.enabled:
            return {}
        if self._dev is not None:
            self._scale = float(self._dev.scale.get())
            self._growth_tracker = int(self._dev.tracker.get())
        return {"scale": numpy.asarray(self._scale, dtype=numpy.float64),
                "growth_factor": numpy.asarray(self.growth_factor, dtype=numpy.float64),
                "backoff_factor": numpy.asarray(self.backoff_factor, dtype=numpy.float64),
                "growth_interval": numpy.asarray(self.growth_interval, dtype=numpy.int64),
                "growth_tracker": numpy.asarray(self._growth_tracker, dtype=numpy.int64)}

    def load_state_dict(self, d):
        """Restore from ``state_dict()`` output; a missing key raises ``ValueError`` naming it.
        As in PyTorch, a disabled scaler ignores ``d`` (it has no state to restore), and an
        enabled one refuses the empty state of a disabled one, saying so."""
        if not self.enabled:
            return self
        if hasattr(d, "keys") and len(d) == 0:
            raise ValueError("GradScaler.load_state_dict: the state is empty, as a disabled "
                             "GradScaler (enabled=False) saves it; an enabled scaler needs the "
                             "keys 'scale', 'growth_factor', 'backoff_factor', 'growth_interval', "
                             "'growth_tracker'")
        missing = [k for k in ("scale", "growth_factor", "backoff_factor", "growth_interval",
                               "growth_tracker") if k not in d]
        if missing:
            raise ValueError("GradScaler.load_state_dict: missing key(s) " + ", ".join(map(repr, missing)))
        from .optim import _state_value
        try:
            v = {k: _state_value(k, t, d[k]) for k, t in (
                ("scale", 1.0), ("growth_factor", 1.0), ("backoff_factor", 1.0),
                ("growth_interval", 1), ("growth_tracker", 0))}
        except ValueError as e:
            raise ValueError(f"GradScaler.load_state_dict: {e}") from None
        restored = GradScaler(v["scale"], v["growth_factor"], v["backoff_factor"], v["growth_interval"])
        tracker = v["growth_tracker"]
        if not 0 <= tracker < restored.growth_interval:
            raise ValueError(f"GradScaler.load_state_dict: growth_tracker {tracker} outside "
                             f"[0, {restored.growth_interval})")
        self._scale = restored._scale
        self.growth_factor, self.backoff_factor = restored.growth_factor, restored.backoff_factor
        self.growth_interval = restored.growth_interval
        self._growth_tracker = tracker
        self._pending = {}
        self._dev = None
        return self

    def __repr__(self):
        return (f"GradScaler(scale={self._scale!r}, growth_factor={self.growth_factor!r}, "
                f"backoff_factor={self.backoff_factor!r}, growth_interval={self.growth_interval}, "
                f"enabled={self.enabled})")


# Why there is no "bf16" (see the guide's mixed-precision section): checked for CuPy 14.
BF16_UNSUPPORTED = (
    "bfloat16 is not supported: NumPy has no bfloat16 dtype (so neither gpunet's CPU path "
    "nor the sim device can hold one), CuPy 14 holds bfloat16 arrays only when the optional "
    "ml_dtypes package is installed (experimental there), which gpunet does not depend on, "
    "and gpunet's kernels have float16 (__half) variants only; use precision='fp16'")


def _is_bf16(x) -> bool:
    return (isinstance(x, str) and x.lower() in ("bf16", "bfloat16")) or \
        getattr(x, "__name__", None) == "bfloat16" or str(getattr(x, "name", "")) == "bfloat16"


class _ScalerState:
    """A GradScaler's state on a device (0-d arrays): ``scale`` (float32, as PyTorch keeps
    it), ``inv`` (1/scale, float64), ``tracker`` (int64: clean steps in a row) and
    ``found`` (float64: nonzero when a gradient of this iteration was inf/NaN)."""

    def __init__(self, xp, scale, tracker):
        self.scale = xp.asarray(numpy.float32(scale))
        self.inv = xp.asarray(numpy.float64(1.0 / scale))
        self.tracker = xp.asarray(numpy.int64(tracker))
        self.found = xp.zeros((), dtype=numpy.float64)


class _DeviceCheck:
    """The device path's found-inf record of one optimizer and iteration: ``total``, the
    float64 sum of squares of its (scaled) gradients, finite exactly when every element
    is. Its truth value (reading it is a host sync) is whether the optimizer stepped."""

    __slots__ = ("total",)

    def __init__(self, total):
        self.total = total

    def __bool__(self):
        return math.isfinite(float(self.total))

    def __eq__(self, other):
        return bool(self) == other

    def __hash__(self):
        return hash(bool(self))

    def __repr__(self):
        return f"<GradScaler step on the device: stepped={bool(self)}>"


def _check_precision(precision, who):
    if _is_bf16(precision):
        raise ValueError(f"{who}: precision={precision!r}: {BF16_UNSUPPORTED}")
    if precision not in PRECISIONS:
        raise ValueError(f"{who}: expected precision 'fp32' or 'fp16', got {precision!r}")
    return precision


class MixedPrecision:
    """Run ``model`` in float16 with float32 master weights (Apex's O2, Keras'
    ``mixed_float16`` policy, for gpunet's explicit backward).

    * The model's Parameters keep float32 ``data`` (the *master* weights: the optimizer
      updates them, and its state is float32 with them). ``forward`` replaces the
      ``data`` of every Dense and Conv2D parameter by a float16 copy, casts the input to
      float16, runs the model and returns the output cast to float32 (so the loss, its
      softmax and its gradient are float32). In training mode the copies stay in place for
      ``backward``; in eval mode the masters are put back right away.
    * ``backward(dy)`` casts the (scaled) output gradient to float16, runs
      ``model.backward``, then puts the masters back with their gradients cast to
      float32 (added to a gradient they already held, so accumulation works as usual).
    * Every parameter of ``model`` must be float32 when the policy is made: one of another
      dtype (a float64 model, one cast to float16) raises ``ValueError`` naming it and the
      cast, ``model.to(dtype=numpy.float32)``.
    * BatchNorm keeps float32 parameters and normalizes a float16 input in float32
      (statistics and running buffers in float32, see ``gpunet.BatchNorm``); on a device
      its half kernels read and write the float16 activations directly. Activations,
      dropout and pooling run on the float16 activations.
    * Matmuls: Dense and Conv2D multiply float16 arrays. On a GPU that is a float16 GEMM
      (cuBLAS accumulates in float32). NumPy has no float16 BLAS: Dense's matmuls
      (``gpunet.functional.linear.matmul``) run as float32 GEMMs rounded once to float16,
      and Conv2D computes in float32 on upcast copies and rounds its outputs once (NumPy's
      own float16 loop was ~100x slower). fp16 on the CPU is for testing the policy, not
      for speed: the casts cost more than the halved memory saves.
      On a device, convolution (im2col, col2im, bias/ReLU epilogues), max and average
      pooling, batch norm, dropout and softmax cross-entropy have float16 kernels (float
      arithmetic, rounded once).
    * The output is returned in float32, so the loss runs on float32 logits. The fused
      softmax-CE also takes float16 logits (float32 loss, float16 gradient); in a
      hand-written loop pass it the loss scale, ``softmax_cross_entropy(logits16, y,
      grad_scale=scaler.get_scale())``, so the gradient is scaled before it is rounded.

    Pair it with a ``GradScaler``: without loss scaling, gradients below 6e-8 vanish in
    float16.

    float16 only: ``dtype="bfloat16"`` (and ``Trainer(precision="bf16")``) raises
    ``ValueError``. NumPy has no bfloat16 dtype, so neither the CPU path nor the sim can
    hold one; CuPy 14 can, but only with the optional ``ml_dtypes`` package (an
    experimental addition there), which gpunet does not depend on; and the kernels have
    no bfloat16 variants. The cost per step on a device: one cast launch per Dense/Conv2D parameter
    forward and one per gradient after backward.
    """

    HALF_LAYERS = (Dense, Conv2D)
    model = _args.read_only("MixedPrecision", "model", "The wrapped model (fixed at construction).",
                            "the float16 parameters were listed from it; create a new MixedPrecision(model)")
    dtype = _args.read_only("MixedPrecision", "dtype", "numpy.float16 (the only one).",
                            "float16 is the only precision offered")

    def __init__(self, model, dtype=numpy.float16):
        if not isinstance(model, Layer):
            raise TypeError(f"MixedPrecision: expected a gpunet Layer, got {type(model).__name__}")
        if _is_bf16(dtype):
            raise ValueError(f"MixedPrecision: dtype {dtype!r}: {BF16_UNSUPPORTED}")
        try:
            dtype = numpy.dtype(dtype)
        except TypeError:
            raise TypeError(f"MixedPrecision: expected dtype to be float16 (numpy.float16 or "
                            f"'float16'), got {dtype!r}") from None
        if dtype != numpy.float16:
            raise ValueError(f"MixedPrecision: dtype must be float16, got {dtype.name}")
        self._model, self._dtype = model, dtype
        self._half_params = [p for layer in model.modules()
                             if isinstance(layer, self.HALF_LAYERS) for p in layer.parameters()]
        for name, p in model.named_parameters():
            if p.data.dtype != numpy.float32:
                # a float64 model (a gradient check's) or one cast to float16: the policy
                # makes its own float16 copies from float32 masters
                raise ValueError(f"MixedPrecision: expected float32 (master) parameters, "
                                 f"{name} is {p.data.dtype.name}; mixed precision keeps float32 "
                                 f"weights and computes in float16 itself: cast the model with "
                                 f"model.to(dtype=numpy.float32) first")
        self._masters = None       # the float32 data while the float16 copies are in place

    def _to_half(self):
        if self._masters is None:
            self._masters = [p.data for p in self._half_params]
        for p, master in zip(self._half_params, self._masters):
            p.data = master.astype(self.dtype)

    def restore(self):
        """Put the float32 masters back now (``backward`` and an eval-mode ``forward`` do
        it; call it when a training-mode forward is not followed by ``backward``, e.g. the
        loss raised). Float16 gradients are cast to float32. Nothing happens when the
        masters are in place."""
        self._to_master()

    def _to_master(self):
        """Put the float32 masters back; a float16 gradient becomes float32 (a gradient the
        parameter held before the forward was float32 and had the float16 ones added in)."""
        if self._masters is None:
            return
        for p, master in zip(self._half_params, self._masters):
            p.data = master
            if p.grad is not None and p.grad.dtype != master.dtype:
                p.grad = p.grad.astype(master.dtype)
        self._masters = None

    def forward(self, x):
        """The model's output for ``x`` computed in float16, returned in float32.

        ``x``: float32 (the master weights' dtype) or float16, the inputs PyTorch's autocast
        takes (it casts float32 only): an integer, bool or float64 input raises
        ``ValueError`` naming the cast (uint8 images of 0..255: ``x.astype(numpy.float32) /
        255``), as a float32 model refuses it without mixed precision, instead of being
        rounded to float16 unscaled."""
        check_array(self, x)
        if x.dtype != numpy.float32 and x.dtype != numpy.float16:
            if x.dtype.kind == "f" and x.dtype.isnative:     # float64: no `or the model` here
                raise ValueError(f"MixedPrecision: expected a float32 input (or float16), got "
                                 f"{x.dtype.name}; cast the input: x.astype(numpy.float32) (mixed "
                                 f"precision computes in float16 from float32 data and weights)")
            check_dtype(self, x, numpy.float32)
        self._to_half()
        try:
            y = self.model.forward(x.astype(self.dtype))
        except BaseException:
            self._to_master()
            raise
        if not self.model.training:
            self._to_master()
        return y.astype(numpy.float32)

    def backward(self, dy):
        """``model.backward`` of the float16 copy of ``dy``; the float32 master parameters
        come back with float32 gradients. Returns ``dx`` (float16, or None).

        A scaled gradient that overflows float16 here is expected: the ``GradScaler`` finds
        the inf/NaN gradients and skips the step. So NumPy's overflow and invalid-value
        warnings are silenced for this backward (PyTorch prints none either); the inf/NaN
        values themselves are left for the scaler to see."""
        if self._masters is None:
            raise RuntimeError("MixedPrecision.backward called without a training-mode forward")
        try:
            with numpy.errstate(over="ignore", invalid="ignore"):
                dx = self.model.backward(dy.astype(self.dtype))
        except BaseException:
            self._to_master()
            raise
        self._to_master()
        return dx
