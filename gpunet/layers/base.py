"""Parameter, Layer and Sequential: the containers every model is made of.

Conventions, stated once for every layer in gpunet:

* ``forward(x)`` computes the output and, only in training mode, caches what
  ``backward`` needs. ``backward(dy)`` returns ``dx`` and **adds** into each
  ``Parameter.grad`` (it assigns when ``grad`` is None), like PyTorch: gradients
  accumulate over several backward calls until ``zero_grad()``.
* A backward uses exactly what the matching forward cached, or raises. Each training-mode
  forward replaces the caches and gets a call number; a loss remembers the output it was
  given, so ``model.backward(loss_fn.backward())`` raises ``RuntimeError`` when that
  output came from an eval-mode forward, or from an earlier forward whose caches a later
  one replaced, or when the last training-mode forward failed half-way or ``to()`` cast
  the model or ``load_state_dict`` replaced its state since (the message says which call
  invalidated the caches). A ``dy`` whose shape is not the forward output's raises
  ``ValueError``.
* The data needs no gradient. A first layer that computes a costly input gradient (Dense,
  Conv2D) skips it when its input is a batch yielded by ``gpunet.DataLoader`` — as PyTorch
  skips tensors that do not require grad — and ``backward`` then returns None. Any other
  input (gradcheck's, a nested layer's, your own array) gets its ``dx``.
* A new layer is in training mode. ``eval()`` switches it (and its children) off.
* Parameters are created on the host with the seeded host generator
  (``gpunet.manual_seed``), in construction order, then moved with ``to(device)``.
* ``state_dict()`` maps ``"<name>"`` (``"<index>.<name>"`` inside a Sequential) to NumPy
  arrays: parameters, buffers (BatchNorm's running statistics) and counters (dropout's
  draw count), everything a training step reads.
"""
from __future__ import annotations

import functools
import numbers
import sys
import weakref

import numpy

from .. import _args
from ..backend import (array_hint, get_array_module, is_array, resolve_device, to_device, to_numpy,
                       device_mismatch, device_of)


class _ArraySlot:
    """``Parameter.data``: a plain attribute that may be reassigned (``p.data =
    p.data.astype(numpy.float64)``), but only with an array (NumPy, CuPy, sim). Anything
    else raises ``TypeError`` at the assignment, naming the parameter, as PyTorch refuses
    ``p.data = [...]``; before, a list or a ``torch.Tensor`` was stored and the next forward
    failed inside NumPy (``'list' object has no attribute 'dtype'``, ``Cannot interpret
    'torch.float32' as a data type``). Only assignment is intercepted (no ``__get__``): a
    read is an instance-dict read, as fast as the slot it was."""

    def __set__(self, p, value):
        if not is_array(value):
            raise TypeError(f"Parameter.data: expected a NumPy or CuPy array for "
                            f"{getattr(p, 'name', '') or 'this parameter'}, "
                            f"got {type(value).__name__}{array_hint(value)}")
        p.__dict__["data"] = value


#: how to freeze parameters in gpunet (PyTorch's requires_grad = False, Keras' trainable = False)
_FREEZE = ("an optimizer updates exactly the parameters it was given: to freeze some, build it "
           "without them, e.g. optim.Adam(model[1:].parameters()) trains all but model[0]")


class Parameter:
    """A trainable array: ``data``, its gradient ``grad`` (None until a backward),
    a ``name`` and ``decay`` (True: L1/L2 weight decay applies; False for biases and
    batch-norm's gamma/beta). ``data`` may be reassigned with another array (``p.data =
    p.data.astype(numpy.float64)`` casts it); anything else raises ``TypeError``.
    Optimizers built over it register themselves in ``_optimizers`` (weak references), so
    that ``Layer.to(dtype=...)`` can cast their state with the parameter.

    ``register_post_accumulate_grad_hook(hook)`` (PyTorch's name) calls ``hook(param)``
    each time a layer's backward has added into ``grad`` through ``accumulate`` — the
    moment the gradient of that backward is complete (``gpunet.distributed`` starts its
    all-reduces there)."""

    __slots__ = ("grad", "name", "decay", "_optimizers", "_hooks", "__dict__")
    data = _ArraySlot()

    def __init__(self, data, name: str = "", decay: bool = True):
        self.name = name
        self.data = data
        self.grad = None
        self.decay = decay
        self._optimizers = []
        self._hooks = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(self.data.size)

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, g):
        """Add ``g`` into ``grad`` (assign when there is none yet)."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g
        if self._hooks:
            for hook in tuple(self._hooks.values()):
                hook(self)

    def __getstate__(self):
        """For pickle and ``copy.deepcopy``: everything but the links to optimizers (weak
        references, which pickle refuses: a model with an optimizer failed with "cannot
        pickle 'weakref.ReferenceType' object"). An optimizer pickled or copied together with
        its parameters links itself again (``Optimizer.__setstate__``); a copy of the model
        alone belongs to no optimizer, as a model loaded in a new process."""
        state = dict(self.__dict__)
        state.update(grad=self.grad, name=self.name, decay=self.decay, _hooks=self._hooks)
        return state

    def __setstate__(self, state):
        self._optimizers = []
        for k, v in state.items():
            setattr(self, k, v)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` after every ``accumulate``; returns a handle whose
        ``remove()`` unregisters it."""
        if not callable(hook):
            raise TypeError(f"Parameter.register_post_accumulate_grad_hook: expected a callable, "
                            f"got {type(hook).__name__}")
        if self._hooks is None:
            self._hooks = {}
        handle = _HookHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle

    @property
    def requires_grad(self) -> bool:
        """Always True: every backward computes every parameter's gradient. PyTorch freezes a
        parameter with ``requires_grad = False``; gpunet's optimizers update exactly the
        parameters they were given, so a frozen parameter is one left out of the
        optimizer's list. Assigning True changes nothing; assigning False raises
        ``AttributeError`` saying so (stored and ignored, it would freeze nothing)."""
        return True

    @requires_grad.setter
    def requires_grad(self, value):
        if not _args.flag("Parameter", "requires_grad", value):
            raise AttributeError(f"Parameter: requires_grad cannot be set to False ({self.name or 'unnamed'} "
                                 f"would still be trained); {_FREEZE}")

    def requires_grad_(self, requires_grad: bool = True):
        """PyTorch's in-place spelling of ``requires_grad = ...``; returns self (False raises,
        see ``requires_grad``)."""
        self.requires_grad = requires_grad
        return self

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={tuple(self.data.shape)}, dtype={self.data.dtype}, decay={self.decay})"


class ParameterSlot:
    """A layer attribute that holds a Parameter (``Dense.weight``/``bias``,
    ``Conv2D.weight``/``bias``, ``BatchNorm.gamma``/``beta``): assigning anything else
    raises ``TypeError`` naming the layer, the attribute, what it got and the two ways to
    do what was meant, as PyTorch refuses a tensor assigned to a parameter attribute.
    Before, ``layer.weight = array`` was stored, left the parameter list (and the
    optimizer's) without it, and the next forward failed on ``array.data``, a memoryview.

    ``optional(layer)``: whether None is allowed (a bias may be removed, as PyTorch's
    ``linear.bias = None``; BatchNorm's gamma and beta are None exactly when
    ``affine=False``). Only assignment is intercepted (the descriptor has no ``__get__``),
    so reading ``layer.weight`` stays a plain instance-dict read, and the Parameter stays in
    ``vars(layer)`` under its own name, where ``named_parameters`` finds it."""

    def __init__(self, optional=lambda layer: False, none_hint=""):
        self.optional = optional
        self.none_hint = none_hint

    def __set_name__(self, owner, name):
        self.name = name

    def __set__(self, layer, value):
        if not isinstance(value, Parameter):
            if value is None and self.optional(layer):
                layer.__dict__[self.name] = value
                return
            who, k = type(layer).__name__, self.name
            if value is None:
                raise TypeError(f"{who}: expected {k} to be a gpunet.Parameter, got None{self.none_hint}")
            raise TypeError(
                f"{who}: expected {k} to be a gpunet.Parameter, got {type(value).__name__}"
                f"{array_hint(value)}; to change its values assign layer.{k}.data = array (the "
                f"optimizer goes on updating the same Parameter), or make a new one, layer.{k} = "
                f"gpunet.Parameter(array, {k!r}) (an optimizer built before does not hold it)")
        layer.__dict__[self.name] = value


class _HookHandle:
    """What ``register_post_accumulate_grad_hook`` returns: ``remove()`` unregisters."""

    _next = 0

    def __init__(self, table):
        _HookHandle._next += 1
        self.id = _HookHandle._next
        self._table = table

    def remove(self):
        self._table.pop(self.id, None)


def check_input(layer, x, ndim=None, dtype=None, features=None, axis=1):
    """Validate ``x`` before any computation; raise ``ValueError``/``TypeError`` naming the layer.

    ``ndim``: an int or a tuple of allowed ranks (None: any rank but 0, since every layer
    takes a batch). ``dtype``: the parameters' dtype (None: any floating dtype).
    ``features``: required size along ``axis``.
    """
    name = type(layer).__name__
    check_array(layer, x)
    if ndim is None:
        if x.ndim == 0:
            raise ValueError(f"{name}: expected an input with at least one axis, got a 0-d array")
    else:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{r}-D" for r in allowed)
            # a 1-D array is one sample, or one feature per sample: say how to make either 2-D
            hint = ("; one sample: x[None], one feature per sample: x.reshape(-1, 1)"
                    if x.ndim == 1 and 2 in allowed else "")
            if x.ndim > 2 and allowed == (2,):
                # images (or a convolution's output) into a Dense: PyTorch's nn.Flatten goes between
                flat = (int(x.shape[0]), int(numpy.prod(x.shape[1:])))
                hint = (f"; a Flatten() layer before it makes each sample 1-D (shape {flat}"
                        + (f", {features} features as expected)" if features == flat[1] else
                           ")" if features is None else f", but this layer expects {features} features)"))
            raise ValueError(f"{name}: expected a {want} input, got shape {tuple(x.shape)} ({x.ndim}-D){hint}")
    check_dtype(layer, x, dtype)
    if features is not None and x.shape[axis] != features:
        hint = channels_last_hint(x, features) if axis == 1 else ""
        raise ValueError(f"{name}: expected {features} features along axis {axis}, "
                         f"got shape {tuple(x.shape)}{hint}")


def check_array(layer, x):
    """``x`` is a NumPy, CuPy or sim array, else ``TypeError`` naming the layer (and, for a
    torch tensor, its ``.numpy()``)."""
    if not is_array(x):
        raise TypeError(f"{type(layer).__name__}: expected a NumPy or CuPy array, got "
                        f"{type(x).__name__}{array_hint(x)}")


def channels_last_hint(x, channels):
    """For a 4-D ``x`` whose axis 1 is not ``channels`` but whose last axis is: images in
    Keras' channels-last (NHWC) layout, and the transpose that makes them NCHW; else ``""``."""
    if x.ndim == 4 and x.shape[3] == channels:
        return "; the input looks channels-last (NHWC, Keras' layout): x.transpose(0, 3, 1, 2) makes it NCHW"
    return ""


def check_dtype(layer, x, dtype=None):
    """``x`` of ``dtype`` (the parameters'; None: any floating dtype), else ``ValueError``
    naming the layer, both dtypes and the cast that fixes it: for uint8 data (images of
    0..255, which PyTorch's ToTensor and Keras' examples scale) the scaling too; gpunet, like
    PyTorch, never casts an input behind your back."""
    if dtype is not None:
        if x.dtype == dtype:
            return
        want = numpy.dtype(dtype).name
        expected = f"dtype {want} (the parameters' dtype)"
    elif x.dtype.kind == "f":
        return
    else:
        want, expected = "float32", "a floating-point input (float32 or float64)"
    if x.dtype == numpy.uint8:
        fix = f"pixels of 0..255 become floats in [0, 1] with x.astype(numpy.{want}) / 255"
    elif x.dtype == numpy.float16 and want == "float32":
        # a float16 model is not how gpunet trains in half precision: mixed precision is
        fix = ("cast the input (x.astype(numpy.float32)); half precision trains through "
               "Trainer(..., precision='fp16') (float32 weights, float16 compute)")
    elif x.dtype.kind == "f":
        fix = f"cast the input (x.astype(numpy.{want})) or the model (model.to(dtype=numpy.{x.dtype.name}))"
    else:
        fix = f"cast the input: x.astype(numpy.{want})"
    got = x.dtype.name
    if not x.dtype.isnative:        # '>f4' is named float32 too: say what differs
        got += (f" in {'big' if x.dtype.byteorder == '>' else 'little'}-endian byte order ({x.dtype.str}), "
                f"not this machine's")
        fix = (f"x.astype(numpy.{want}) makes it native" if x.dtype.name == want
               else f"cast the input: x.astype(numpy.{want})")
    raise ValueError(f"{type(layer).__name__}: expected {expected}, got {got}; {fix}")


def check_device(layer, x, p):
    """``x`` on the device of the layer's parameter array ``p``, else ``TypeError`` naming the
    layer, both devices and the two ways out (gpunet never copies behind your back)."""
    bad = device_mismatch(x, p)
    if bad is not None:
        dx, dp = bad
        raise TypeError(f"{type(layer).__name__}: expected an input on {dp} (the parameters' device), "
                        f"got one on {dx}; move it with gpunet.to_device(x, {dp!r}), or the model "
                        f"with model.to({dx!r})")


def check_same_device(layer, *named):
    """``named``: ``(name, array)`` pairs of the arrays a layer reads at every call (its
    parameters and buffers, plain attributes that may be reassigned; the first never None,
    the others skipped when None), all on one device, else ``TypeError`` naming the layer
    and two of them with their devices, as PyTorch refuses a module whose tensors are on
    two devices. Callers skip the call when every array is a NumPy one (a type comparison
    each: the CPU's every forward)."""
    n0, a0 = named[0]
    for n, a in named[1:]:
        if a is None or type(a) is type(a0) is numpy.ndarray:
            continue
        bad = device_mismatch(a, a0)
        if bad is not None:
            raise TypeError(f"{type(layer).__name__}: {n} is on {bad[0]} but {n0} on {bad[1]}; a "
                            f"layer's parameters and buffers must be on one device (was one "
                            f"reassigned?): move the model with model.to(device)")


def check_shapes(layer, *named):
    """``named``: ``(name, array, expected shape)`` triples for arrays a layer reads at every
    call (parameters and buffers are plain attributes that may be reassigned): a reassigned
    array of another shape raises ``ValueError`` naming the layer and the attribute."""
    for attr, arr, shape in named:
        if arr is not None and tuple(arr.shape) != shape:
            raise ValueError(f"{type(layer).__name__}: expected {attr} of shape {shape}, got "
                             f"{tuple(arr.shape)} (reassigned?)")


def check_grad(layer, dy, shape, dtype=None):
    """Validate ``dy`` of a backward against the forward output's ``shape`` and, when given,
    its ``dtype`` (without one: any floating dtype)."""
    name = type(layer).__name__
    if not is_array(dy):
        raise TypeError(f"{name}.backward: expected dy to be a NumPy or CuPy array, got "
                        f"{type(dy).__name__}{array_hint(dy)}")
    if tuple(dy.shape) != tuple(shape):
        # a 0-d dy is most often the loss itself, model.backward(loss): say what goes there
        hint = "; a 0-d dy is a loss value: pass its gradient, loss_fn.backward()" if dy.ndim == 0 else ""
        raise ValueError(f"{name}.backward: expected dy of shape {tuple(shape)} (the shape of the "
                         f"forward's output), got {tuple(dy.shape)}{hint}")
    if dtype is not None and dy.dtype != dtype:
        raise ValueError(f"{name}.backward: expected dy of dtype {numpy.dtype(dtype).name} (the "
                         f"forward's output's), got {dy.dtype.name}")
    if dy.dtype.kind != "f":
        raise ValueError(f"{name}.backward: expected a floating-point dy, got {dy.dtype.name}")


# ---------------------------------------------------------------------------------------
# Which forward call a gradient belongs to.
#
# Every Layer subclass has its forward and backward wrapped (Layer.__init_subclass__):
# a training-mode forward marks the layer's caches invalid while it runs and stamps them
# with a fresh call number when it returns; the outermost forward of a call also records
# its output (weakly: id -> (ref, layer, call number or None for eval)). A loss records
# the prediction it was given and registers the gradient it hands out, so the backward
# of the layer that produced that prediction can check that the gradient belongs to the
# forward whose caches it is about to use.
# ---------------------------------------------------------------------------------------

_depth = 0
_top_calls = 0               # outermost forward calls so far (a call number for each model forward)
_outputs: dict = {}          # id(output) -> (weakref(output), weakref(layer), call number, training)
_loss_grads: dict = {}       # id(grad) -> (weakref(grad), prediction, loss name)
_INVALID_FAILED = "failed"    # _cache_call values other than a call number
_INVALID_CAST = "cast"
_INVALID_LOADED = "loaded"
_INVALID_REUSED = "reused"    # the layer ran twice within one outermost forward


def _weak(x, table, key):
    """A weak reference to ``x`` that removes ``table[key]`` when ``x`` dies (None when
    ``x`` cannot be weakly referenced)."""
    try:
        return weakref.ref(x, lambda _r, t=table, k=key: t.pop(k, None))
    except TypeError:
        return None


def register_loss_gradient(grad, prediction, loss_name="the loss"):
    """Remember that ``grad`` is a loss's gradient with respect to ``prediction`` (called
    by ``gpunet.losses``; arrays that cannot be weakly referenced are not tracked)."""
    if grad is None:
        return
    k = id(grad)
    rg = _weak(grad, _loss_grads, k)
    if rg is None:
        return
    # the prediction is held (not weakly) for as long as the gradient lives: the output
    # of an eval forward that nobody else keeps must still be recognised at backward
    _loss_grads[k] = (rg, prediction, loss_name)


def output_activation(prediction):
    """The name of the activation that produced ``prediction`` (``"softmax"``, ``"sigmoid"``,
    ...) when it is the output of a model's forward whose last layer is an activation layer
    or has a fused ``activation``; else None. Looked up in the table of model outputs (one
    dict lookup), for the losses' check that they are given logits."""
    entry = _outputs.get(id(prediction))
    if entry is None or entry[0]() is not prediction:
        return None
    layer = entry[1]()
    while layer is not None and getattr(layer, "_container", False) and getattr(layer, "layers", None):
        layer = layer.layers[-1]          # Sequential: its last layer made the output
    if layer is None or getattr(layer, "_container", False):
        return None
    act = layer if hasattr(layer, "grad_fn") and hasattr(layer, "name") else getattr(layer, "activation", None)
    return getattr(act, "name", None)


def _wrap_forward(fn):
    @functools.wraps(fn)
    def forward(self, x):
        global _depth, _top_calls
        d = self.__dict__
        n = d["_nfwd"] = d.get("_nfwd", 0) + 1     # this layer's forward calls, 1, 2, ...
        training = self.training
        top = _depth == 0
        if top:
            _top_calls += 1
        # a layer object used twice inside one model forward (Sequential(d, act, d)) keeps
        # the caches of its last call only; its backwards would pair them with the gradient
        # of the other call, so they raise. A forward re-entering itself (a float16 input
        # redone in float32, a subclass calling super().forward) is one call, not two.
        reentrant = d.get("_fwd_active", 0) > 0
        reused = False
        if training:
            if not reentrant:
                reused = d.get("_fwd_top") == _top_calls
                d["_fwd_top"] = _top_calls
            d["_cache_call"] = _INVALID_FAILED     # until this forward returns
        d["_fwd_active"] = d.get("_fwd_active", 0) + 1
        _depth += 1
        try:
            y = fn(self, x)
        finally:
            _depth -= 1
            d["_fwd_active"] -= 1
        if training:
            d["_cache_call"] = _INVALID_REUSED if reused else n
            d["_out_type"] = type(y)               # the device kind a backward's dy must have
        if top:                                    # the output a user may hand to a loss
            k = id(y)
            r = _weak(y, _outputs, k)
            if r is not None:
                _outputs[k] = (r, weakref.ref(self), n, training)
        return y
    forward._gpunet_wrapped = True
    return forward


def _check_source(layer, dy, outermost=False):
    """Raise when ``dy`` is not the gradient of the forward whose caches ``layer`` holds.
    ``outermost``: the backward a user called (not one a container runs for its child)."""
    name = type(layer).__name__
    state = layer.__dict__.get("_cache_call")
    if state == _INVALID_FAILED:
        raise RuntimeError(f"{name}.backward: the last training-mode forward (call "
                           f"{layer.__dict__.get('_nfwd')}) raised before it finished, so the "
                           "caches are incomplete; run a training-mode forward again before backward")
    if state == _INVALID_REUSED:
        raise RuntimeError(f"{name}.backward: this {name} ran forward more than once within one "
                           "forward of the model (the same layer object used in two places); it "
                           "keeps the caches of its last call only, so a backward would pair them "
                           "with the gradient of another call. Use a separate layer for each place "
                           "(to tie weights, assign one layer's Parameter to the other: "
                           "b.weight = a.weight)")
    if state == _INVALID_CAST:
        raise RuntimeError(f"{name}.backward: the model was moved or cast with to() after the last "
                           "training-mode forward; run a training-mode forward again before backward")
    if state == _INVALID_LOADED:
        raise RuntimeError(f"{name}.backward: load_state_dict replaced the parameters and buffers "
                           "after the last training-mode forward, whose caches belong to the old "
                           "ones; run a training-mode forward again before backward")
    entry = _loss_grads.get(id(dy))
    if entry is None or entry[0]() is not dy:
        return
    pred = entry[1]
    rec = _outputs.get(id(pred))
    if rec is None or rec[0]() is not pred:
        return                       # the prediction did not come straight out of a layer
    source = rec[1]()
    if source is not layer:
        if outermost and source is not None and not _related(layer, source):
            raise RuntimeError(
                f"{name}.backward: dy is the gradient of {entry[2]} computed on the output of "
                f"another model (a {type(source).__name__} that neither is this {name} nor holds "
                f"it or is inside it); pass each model the gradient of its own output")
        return
    call, training = rec[2], rec[3]
    if not training:
        raise RuntimeError(
            f"{name}.backward: dy is the gradient of {entry[2]} computed on the output of "
            f"forward call {call} of this {name}, an eval-mode forward, which caches nothing; "
            f"the caches are those of training-mode forward call {state}. Compute the loss on "
            "a training-mode output (model.train()) before backward")
    if call != state:
        raise RuntimeError(
            f"{name}.backward: dy is the gradient of {entry[2]} computed on the output of "
            f"forward call {call} of this {name}, but training-mode forward call {state} has "
            "since replaced the caches; call the loss and backward right after the forward "
            "they belong to")


def _device_kind(array_type):
    """``"cpu"``, ``"sim"`` or ``"cuda"`` for an array type (from its class, not an array);
    None for anything else (a custom layer may return what it likes)."""
    if issubclass(array_type, (numpy.ndarray, numpy.generic)):
        return "cpu"
    module = getattr(array_type, "__module__", "") or ""
    if module.startswith("gpunet.sim"):
        return "sim"
    return "cuda" if module.startswith("cupy") else None


def _check_dy_device(layer, dy, out_type):
    """The ``dy`` a user hands to ``backward`` on the device of the training forward's
    output, else ``TypeError`` naming the layer and both devices (a host gradient for a
    model on the sim failed deep inside an op, naming neither; layers without parameters,
    Flatten say, would have returned a host ``dx`` silently). Layers inside a model get
    their ``dy`` from the next layer's backward, on the same device: checked once, here."""
    if not is_array(dy):
        return                       # check_grad names what is not an array
    got, want = _device_kind(type(dy)), _device_kind(out_type)
    if got is not None and want is not None and got != want:
        raise TypeError(f"{type(layer).__name__}.backward: expected dy on {want} (the device of the "
                        f"forward's output), got one on {got}; move it with gpunet.to_device(dy, "
                        f"{want!r})")


def _related(a, b) -> bool:
    """Whether one of the layers ``a`` and ``b`` is the other or inside it."""
    return any(m is b for m in a.modules()) or any(m is a for m in b.modules())


_bwd_depth = 0
_bwd_outer = None            # (layer name, its forward's outermost call) of the running backward


def _wrap_backward(fn):
    @functools.wraps(fn)
    def backward(self, dy):
        global _bwd_depth, _bwd_outer
        _check_source(self, dy, outermost=_bwd_depth == 0)
        mine = self.__dict__.get("_fwd_top")
        if _bwd_depth == 0:
            want = self.__dict__.get("_out_type")
            if want is not None and type(dy) is not want:
                _check_dy_device(self, dy, want)
            _bwd_outer = (type(self).__name__, mine)
        elif isinstance(mine, int) and isinstance(_bwd_outer[1], int) and mine != _bwd_outer[1]:
            # a layer inside the model ran a training-mode forward of its own (model[2](h),
            # or inside another model) after the model's forward: its caches are not the
            # ones this gradient belongs to
            name, outer = type(self).__name__, _bwd_outer[0]
            raise RuntimeError(f"{name}.backward: the caches of this {name} come from another "
                               f"training-mode forward than the {outer}'s being differentiated (the "
                               f"{name} ran on its own or inside another model since); run the "
                               f"{outer}'s forward again before backward")
        _bwd_depth += 1
        try:
            return fn(self, dy)
        finally:
            _bwd_depth -= 1
    backward._gpunet_wrapped = True
    return backward


def _short(layer) -> str:
    """One-line description of a layer (for summary tables)."""
    if layer._container:
        n = len(layer.children())
        return f"{type(layer).__name__}({n} layer{'s' if n != 1 else ''})"
    return f"{type(layer).__name__}({layer.extra_repr()})"


_TRAINER = "gpunet.Trainer(model, loss_fn, optimizer)"
_ELSEWHERE = {     # Keras' and PyTorch's model methods: what a gpunet model does instead
    "compile": f"a gpunet model holds no loss or optimizer: pass them to {_TRAINER}",
    "fit": f"train with {_TRAINER}.fit((X, y), epochs=...), or a loop (README: the layer API in 16 lines)",
    "evaluate": f"{_TRAINER}.evaluate((X, y)) gives the loss and metrics",
    "predict": f"model.eval()(X) predicts (eval mode: dropout off, batch norm's running statistics), "
               f"or {_TRAINER}.predict(X), batch by batch",
    "add": "a Sequential takes its layers at once, Sequential(layer1, layer2, ...), or model.append(layer)",
    "cuda": "model.to('cuda')",
    "cpu": "model.to('cpu')",
    "double": "model.to(dtype=numpy.float64)",
    "float": "model.to(dtype=numpy.float32)",
    "save": "gpunet.save(path, model) writes a checkpoint",
    "save_weights": "gpunet.save(path, model) writes a checkpoint",
    "load_weights": "gpunet.load(path, model) reads a checkpoint",
    "get_weights": "model.state_dict() maps names to NumPy arrays",
    "set_weights": "model.load_state_dict(state)",
    "requires_grad_": _FREEZE,
    "weights": "model.parameters() lists the Parameters (p.data is the array), model.state_dict() "
               "maps names to copies",
    "trainable_weights": "model.parameters() lists the Parameters (p.data is the array); all are trainable",
    "trainable_variables": "model.parameters() lists the Parameters (p.data is the array); all are trainable",
    "named_modules": "model.modules() yields every layer, depth first; model.named_children() names "
                     "the direct ones, model.named_parameters() every parameter",
    "apply": "for layer in model.modules(): fn(layer)",
    "register_forward_hook": "gpunet.diagnostics.activation_stats(model, x) gives each layer's output "
                             "mean, std and zero fraction; for the outputs themselves, run the layers in "
                             "eval mode one by one: for layer in model: x = layer(x)",
}


def _readable_values(state, keys, problems) -> dict:
    """``{k: state[k]}`` for ``keys``, each value an array or a number: anything else (a
    CPU ``torch.Tensor``, a list) through ``numpy.asarray``; a value it cannot read (a CUDA
    tensor) is left out and noted in ``problems``."""
    out = {}
    for k in keys:
        v = state[k]
        if not (is_array(v) or isinstance(v, (numbers.Number, numpy.generic))):
            try:
                v = numpy.asarray(v)
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                problems.append(f"{k!r}: expected an array, got {type(v).__name__} that NumPy cannot "
                                f"read ({first}){array_hint(v)}")
                continue
        out[k] = v
    return out


def _members(layer):
    """``(name, Parameter or Layer)`` for what ``layer``'s attributes hold, in assignment
    order: an attribute holding one is named by the attribute; a public list or tuple
    attribute holding only Parameters and Layers (``self.blocks = [Dense(...), ...]``, what
    PyTorch writes as ``nn.ModuleList``) gives ``"<attr>.<i>"`` for each, the names
    ``ModuleList`` gives. Before, such a list was passed over: its layers were left out of
    ``parameters()`` (so no optimizer trained them), ``state_dict``, ``to()`` and
    ``train()``/``eval()``, silently."""
    for k, v in vars(layer).items():
        if isinstance(v, (Parameter, Layer)):
            yield k, v
        elif type(v) in _SEQUENCES and _holds_members(k, v):
            for i, e in enumerate(v):
                yield f"{k}.{i}", e


_SEQUENCES = (list, tuple)


def _holds_members(k, v) -> bool:
    """Whether attribute ``k``, a list or tuple ``v``, is one ``_members`` looks into."""
    return bool(v) and k[0] != "_" and all(isinstance(e, (Parameter, Layer)) for e in v)


class Layer:
    """Base class: parameters are found among the instance attributes (in assignment
    order), child layers likewise, also inside a list or tuple attribute (PyTorch's
    ``nn.ModuleList``: ``self.blocks = [Dense(4, 4), Dense(4, 4)]`` gives the state_dict keys
    ``blocks.0.weight``, ...; a list is read at each call, so appending to it registers the
    new layer). Subclasses list buffer and counter attribute names in
    ``_buffers``; they travel in ``state_dict`` and move with ``to(device)``.

    Subclasses define ``forward`` and ``backward``; the base wraps both (see the module
    docstring) so that a backward never mixes caches and gradients of different calls.
    """

    _buffers: tuple = ()
    _container = False       # True: described by its children (Sequential, Residual)
    training = _args.flag_property(None, "training", "Training mode (a bool): set by train()/eval(); "
                                   "assigning anything else raises, as train() does.")

    @property
    def trainable(self) -> bool:
        """Always True, for Keras' ``layer.trainable``: an optimizer built over a layer's
        parameters trains them. Keras freezes a layer with ``trainable = False``; gpunet
        freezes what the optimizer is not given (``optim.Adam(model[1:].parameters())``
        trains all but ``model[0]``). Assigning True changes nothing; assigning False
        raises ``AttributeError`` saying so, instead of being stored and ignored while the
        layer goes on training."""
        return True

    @trainable.setter
    def trainable(self, value):
        if not _args.flag(type(self).__name__, "trainable", value):
            raise AttributeError(f"{type(self).__name__}: trainable = False (Keras' way to freeze a layer) "
                                 f"would change nothing here; {_FREEZE}")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        f = cls.__dict__.get("forward")
        if f is not None and not getattr(f, "_gpunet_wrapped", False):
            cls.forward = _wrap_forward(f)
        b = cls.__dict__.get("backward")
        if b is not None and not getattr(b, "_gpunet_wrapped", False):
            cls.backward = _wrap_backward(b)

    def __init__(self):
        self.training = True

    # -- the step ---------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(x): a Layer subclass "
                                  "defines forward(x), which returns the output and, in training mode, "
                                  "keeps what its backward needs")

    def backward(self, dy):
        # gpunet has no autograd (PyTorch derives backward from forward): say what to write
        raise NotImplementedError(f"{type(self).__name__} defines no backward(dy): gpunet has no autograd, "
                                  "so a Layer subclass defines backward(dy), which returns the gradient "
                                  "with respect to its input and adds each parameter's gradient with "
                                  "Parameter.accumulate(g) (help(gpunet.layers.base); gpunet.gradcheck(layer, "
                                  "x) checks it)")

    def __call__(self, x):
        return self.forward(x)

    def __getattr__(self, name):
        # only reached for a missing attribute: Keras' and PyTorch's model methods that gpunet
        # puts elsewhere name where (a model is only its layers; Trainer trains and predicts)
        hint = _ELSEWHERE.get(name)
        if name == "training" and "_training" not in self.__dict__:
            # PyTorch: "cannot assign module before Module.__init__() call"
            hint = (f"{type(self).__name__}.__init__ did not call super().__init__(), which "
                    "sets training mode (a new layer trains, as in PyTorch)")
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg if hint is None else f"{msg}; {hint}", name=name, obj=self)

    # -- structure ----------------------------------------------------------------------
    def children(self) -> list["Layer"]:
        return [v for _, v in _members(self) if isinstance(v, Layer)]

    def named_children(self):
        """Yield ``(name, layer)`` for the direct children (attribute names, ``"<attr>.<i>"``
        inside a list attribute, or indices in a Sequential)."""
        for k, v in _members(self):
            if isinstance(v, Layer):
                yield k, v

    def named_parameters(self, prefix: str = ""):
        """Yield ``(state_dict_name, Parameter)`` for this layer and its children (the
        names ``_members`` gives; written out here, since ``zero_grad`` walks it every step)."""
        for k, v in vars(self).items():
            if isinstance(v, Parameter):
                yield prefix + k, v
            elif isinstance(v, Layer):
                yield from v.named_parameters(prefix + k + ".")
            elif type(v) in _SEQUENCES and _holds_members(k, v):
                for i, e in enumerate(v):
                    if isinstance(e, Parameter):
                        yield f"{prefix}{k}.{i}", e
                    else:
                        yield from e.named_parameters(f"{prefix}{k}.{i}.")

    def named_buffers(self, prefix: str = ""):
        for k in self._buffers:
            yield prefix + k, self, k
        for k, v in _members(self):
            if isinstance(v, Layer):
                yield from v.named_buffers(prefix + k + ".")

    def parameters(self) -> list[Parameter]:
        """Every Parameter once, in ``named_parameters`` order. A Parameter shared by two
        layers (tied weights, ``b.weight = a.weight``) is listed once, as PyTorch's
        ``parameters()`` does, so an optimizer updates it once with the sum of both
        layers' gradients; ``state_dict`` keeps a key for each place, as PyTorch's does."""
        seen, out = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def count_params(self) -> int:
        """Total number of parameter elements (Keras' ``count_params``; PyTorch users write
        ``sum(p.numel() for p in model.parameters())``)."""
        return sum(p.size for p in self.parameters())

    def modules(self):
        """Yield this layer and every layer inside it, depth first."""
        yield self
        for c in self.children():
            yield from c.modules()

    def zero_grad(self, set_to_none=True):
        """Set the ``grad`` of every parameter (children's too) to None. ``set_to_none``:
        PyTorch's keyword; True, its default, is what this does, and False raises
        ``ValueError`` (gpunet keeps no zeroed gradients)."""
        if set_to_none is not True:
            _args.set_to_none(f"{type(self).__name__}.zero_grad", set_to_none)
        for _, p in self.named_parameters():     # a tied Parameter twice: harmless, no set
            p.grad = None

    def train(self, mode: bool = True):
        """Set training mode (``mode=True``) or eval mode on this layer and its children;
        returns ``self``. ``mode`` must be a bool (``numpy.bool_`` too).

        ``training`` is a checked property (``gpunet._args.flag_property``), so assigning
        ``layer.training = "no"`` raises ``TypeError`` too instead of being read as True
        by every forward. PyTorch checks neither. Its cost, measured on the small MLP's
        step (784-128-10, batch 64, SGD momentum, NumPy, one BLAS thread, a shared 2-core
        machine): cProfile counts 5 reads of ``training`` per ``Trainer.train_step`` (one
        per wrapped forward), each ~44 ns slower than a plain attribute (62 against 18 ns,
        timeit), so ~0.2 us against a step of 0.73-1.1 ms; six alternating runs against the
        code before (which also added SGD's checked hyper-parameters, 16 reads a step) gave
        medians of 928 and 932 us a step: no difference the machine can show, so the check
        stays."""
        if not isinstance(mode, (bool, numpy.bool_)):
            raise TypeError(f"{type(self).__name__}.train: expected mode to be a bool, got {mode!r}")
        self.training = bool(mode)
        for c in self.children():
            c.train(mode)
        return self

    def eval(self):
        """``train(False)``: eval mode on this layer and its children (dropout off, batch
        norm's running statistics); see ``train`` for the checked ``training`` flag."""
        return self.train(False)

    @property
    def device(self) -> str:
        """Device of the first parameter; for a layer without parameters, of its first array
        buffer (``BatchNorm(affine=False)``'s running statistics); ``"cpu"`` for a layer with
        neither (activations, pooling: they run where their input is). Reads the first
        parameter only (``parameters()`` would list them all first)."""
        for _, p in self.named_parameters():
            return device_of(p.data)
        for _, owner, k in self.named_buffers():
            v = getattr(owner, k)
            if hasattr(v, "shape"):
                return device_of(v)
        return "cpu"

    @property
    def dtype(self):
        """dtype of the first parameter (None for a layer without parameters)."""
        for _, p in self.named_parameters():
            return p.data.dtype
        return None

    def to(self, device=None, dtype=None):
        """Move and/or cast every parameter, gradient and floating-point buffer; returns self.

        ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"sim"``, or None to stay where
        each array is. ``dtype``: ``numpy.float32``/``float64`` (or their names), or None
        to keep it; ``numpy.float16`` (PyTorch's ``.half()``) is taken too (see
        ``gpunet.optim.Optimizer`` on its optimizers; half precision trains better through
        ``Trainer(..., precision="fp16")``). Integer buffers (dropout's counters) are left alone. Optimizers built
        over these parameters have their state moved and cast the same way, so training
        continues without a new optimizer. The caches of the last forward are invalidated
        (a backward before the next training-mode forward raises).
        """
        if device is not None:
            device = resolve_device(device, f"{type(self).__name__}.to")
        if dtype is not None:
            try:
                dtype = numpy.dtype(dtype)
            except TypeError:
                raise TypeError(f"{type(self).__name__}.to: expected a floating-point dtype "
                                f"(float32 or float64), got {dtype!r}") from None
            if dtype.kind != "f":
                raise ValueError(f"{type(self).__name__}.to: expected a floating-point dtype "
                                 f"(float32 or float64), got {dtype.name}")

        def move(a):
            if device is not None:
                a = to_device(a, device)
            if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
                a = a.astype(dtype)
            return a

        params = self.parameters()
        for p in params:
            p.data = move(p.data)
            if p.grad is not None:
                p.grad = move(p.grad)
        for _, owner, k in self.named_buffers():
            v = getattr(owner, k)
            if hasattr(v, "shape"):
                setattr(owner, k, move(v))
        seen = set()
        for p in params:
            for r in p._optimizers:
                opt = r()
                if opt is not None and id(opt) not in seen:
                    seen.add(id(opt))
                    opt._follow_parameters()
        self._invalidate_caches(_INVALID_CAST)
        return self

    def _invalidate_caches(self, why):
        """Make a backward before the next training-mode forward raise, saying ``why``: the
        caches of the last forward belong to arrays that ``to()`` or ``load_state_dict``
        replaced (PyTorch's autograd refuses a backward through tensors modified in place)."""
        for m in self.modules():
            if isinstance(m.__dict__.get("_cache_call"), int):
                m._cache_call = why

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every parameter and buffer by name (``"0.weight"``, ``"1.running_mean"``, ...), as a
        NumPy copy on the host whatever the layer's device (a host sync on a GPU). PyTorch's
        ``state_dict`` hands out its tensors themselves, on their device, so that a later step
        changes them; gpunet's copies are a snapshot that a later step leaves alone and that
        ``gpunet.save`` writes as it is, and ``load_state_dict`` copies values back onto the
        model's device, so a state taken on a GPU loads into a CPU model and back."""
        d = {}
        for k, p in self.named_parameters():
            d[k] = to_numpy(p.data).copy()
        for k, owner, attr in self.named_buffers():
            v = getattr(owner, attr)
            d[k] = to_numpy(v).copy() if hasattr(v, "shape") else numpy.asarray(v)
        return d

    def load_state_dict(self, state: dict, strict: bool = True):
        """Restore from ``state_dict()`` output (PyTorch's convention).

        ``strict=True`` (default): the keys must match exactly; missing and unexpected keys
        and shape mismatches raise one ``ValueError`` naming each of them, before anything
        is changed; returns ``self``. ``strict=False``: loads the keys that match (a shape
        mismatch still raises) and returns ``(missing, unexpected)``, two lists of keys.

        Values are arrays (NumPy, CuPy) or anything ``numpy.asarray`` reads, a CPU
        ``torch.Tensor`` included: a PyTorch model's ``state_dict()`` loads wherever its keys
        and shapes are gpunet's (``nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8,
        3))`` into ``Sequential(Dense(4, 8), ReLU(), Dense(8, 3))``: Dense's weight is ``(out,
        in)`` as ``nn.Linear``'s; BatchNorm's ``gamma``/``beta`` are PyTorch's
        ``weight``/``bias``). A value that cannot be read (a CUDA tensor) is named in the
        ``ValueError``. Values are copied into the parameters' dtype and device.
        """
        who = f"{type(self).__name__}.load_state_dict"
        strict = _args.flag(who, "strict", strict)
        if not hasattr(state, "keys"):
            raise TypeError(f"{who}: expected a dict of arrays, got {type(state).__name__}")
        params = dict(self.named_parameters())
        buffers = {k: (owner, attr) for k, owner, attr in self.named_buffers()}
        known = set(params) | set(buffers)
        missing = [k for k in list(params) + list(buffers) if k not in state]
        unexpected = [k for k in state if k not in known]
        problems = []
        if strict:
            if missing:
                problems.append("missing keys " + ", ".join(repr(k) for k in missing))
            if unexpected:
                problems.append("unexpected keys " + ", ".join(repr(k) for k in unexpected))
        state = _readable_values(state, [k for k in list(params) + list(buffers) if k in state], problems)

        def kind_problem(k, kinds, what):
            # a value that would not convert faithfully: None/objects (NaN), complex (the
            # imaginary part dropped), strings; a float for an integer counter (truncated)
            dt = getattr(state[k], "dtype", None)
            dt = numpy.asarray(state[k]).dtype if dt is None else dt
            if dt.kind not in kinds:
                problems.append(f"{k!r}: expected {what}, got dtype {dt.name}")

        for k, p in params.items():
            if k in state and tuple(numpy.shape(state[k])) != tuple(p.data.shape):
                problems.append(f"{k!r}: expected shape {tuple(p.data.shape)}, got {tuple(numpy.shape(state[k]))}")
            elif k in state:
                kind_problem(k, "biuf", "real numbers")
        for k, (owner, attr) in buffers.items():
            cur = getattr(owner, attr)
            if k in state and tuple(numpy.shape(state[k])) != tuple(numpy.shape(cur)):
                problems.append(f"{k!r}: expected shape {tuple(numpy.shape(cur))}, got {tuple(numpy.shape(state[k]))}")
            elif k in state:
                integral = isinstance(cur, (bool, int)) or getattr(cur, "dtype", numpy.dtype("f")).kind in "biu"
                n0 = len(problems)
                kind_problem(k, "biu" if integral else "biuf", "integers" if integral else "real numbers")
                if (len(problems) == n0 and attr in getattr(owner, "_nonnegative_buffers", ())
                        and bool((numpy.asarray(to_numpy(state[k])) < 0).any())):
                    problems.append(f"{k!r}: expected values >= 0, got a negative one")
        if problems:
            raise ValueError(f"{who}: " + "; ".join(problems))
        for k, p in params.items():
            if k in state:
                arr = numpy.array(to_numpy(state[k]), dtype=p.data.dtype)
                dev = device_of(p.data)
                p.data = arr if dev == "cpu" else to_device(arr, dev)
        for k, (owner, attr) in buffers.items():
            if k not in state:
                continue
            cur = getattr(owner, attr)
            v = numpy.asarray(to_numpy(state[k]))
            if hasattr(cur, "shape"):
                arr = numpy.array(v, dtype=cur.dtype)
                setattr(owner, attr, to_device(arr, device_of(cur)) if device_of(cur) != "cpu" else arr)
            elif isinstance(cur, bool):
                setattr(owner, attr, bool(v))
            elif isinstance(cur, int):
                setattr(owner, attr, int(v))
            else:  # Python float: never let a NumPy float64 scalar promote float32 arithmetic
                setattr(owner, attr, float(v))
        self._invalidate_caches(_INVALID_LOADED)
        return self if strict else (missing, unexpected)

    # -- description ----------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        """One line for a leaf layer; a container lists its children one per line, indented
        (PyTorch's layout), and so does a layer of your own that holds layers (a subclass
        that keeps ``Layer.extra_repr``: gpunet's layers describe a child, such as Dense's
        fused activation, in their ``extra_repr``)."""
        kids = (list(self.named_children())
                if self._container or type(self).extra_repr is Layer.extra_repr else [])
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        lines = [head if not self.extra_repr() else head + ","]
        for k, c in kids:
            sub = repr(c).replace("\n", "\n  ")
            lines.append(f"  ({k}): {sub}")
        return "\n".join(lines) + "\n)"

    def _summary_rows(self):
        """``(label, layer)`` pairs that compose in order (a Sequential's layers; a single
        layer otherwise)."""
        return [(_short(self), self)]

    def summary(self, input_shape=None, file=None) -> str:
        """Print (and return) a table: layer, output shape, parameter count, and the total.

        ``input_shape`` (without the batch axis) lets output shapes be computed by running
        a zero batch of one sample through the layer in eval mode (no state changes); an int
        ``n`` means ``(n,)``, as ``numpy.zeros(n)`` does.
        """
        rows = []
        x = None
        if input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, numbers.Integral) else input_shape
            if (not isinstance(shape, (tuple, list)) or not all(
                    isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shape)):
                raise TypeError(f"{type(self).__name__}.summary: expected input_shape as a tuple of positive "
                                f"ints without the batch axis, e.g. (64,) or (1, 8, 8), got {input_shape!r}")
            input_shape = tuple(int(s) for s in shape)
            p0 = next(iter(self.parameters()), None)
            dtype = p0.data.dtype if p0 is not None else numpy.float32
            xp = get_array_module(p0.data) if p0 is not None else numpy
            x = xp.zeros((1,) + tuple(input_shape), dtype=dtype)
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            for label, l in self._summary_rows():
                shape = "?"
                if x is not None:
                    x = l.forward(x)
                    shape = "(N, " + ", ".join(str(s) for s in x.shape[1:]) + ")"
                rows.append((label, shape, l.count_params()))
        finally:
            for m, t in modes:
                m.training = t
        w0 = max([len(r[0]) for r in rows] + [5])
        w1 = max([len(r[1]) for r in rows] + [12])
        lines = [f"{'layer':<{w0}}  {'output shape':<{w1}}  {'params':>10}", "-" * (w0 + w1 + 14)]
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>10,}" for a, b, c in rows]
        total = self.count_params()
        trainable_bytes = sum(p.data.nbytes for p in self.parameters())
        lines += ["-" * (w0 + w1 + 14), f"total parameters: {total:,} ({trainable_bytes / 2**20:.2f} MiB)"]
        text = "\n".join(lines)
        print(text, file=file or sys.stdout)
        return text


def _activation_class(name):
    """The class name of the activation layer called ``name`` (``"relu"`` -> ``"ReLU"``), or None:
    the names ``activation=`` takes (``layers.activations._BY_NAME``)."""
    from .activations import _BY_NAME
    cls = _BY_NAME.get(name.lower())
    return None if cls is None else cls.__name__


def _check_layer(who, what, l):
    """``l`` is a Layer, else ``TypeError`` naming ``who`` and ``what`` (``"argument 2"``)."""
    if not isinstance(l, Layer):
        # Sequential(Dense(...), gpunet.ReLU) or (..., "relu"): say what goes there
        hint = (f"; create one: {l.__name__}()" if isinstance(l, type) and issubclass(l, Layer) else
                f"; an activation goes as a layer, gpunet.{_activation_class(l)}(), or fused, "
                f"Dense(..., activation={l!r})" if isinstance(l, str) and _activation_class(l) else "")
        got = f"the class {l.__name__}" if isinstance(l, type) else type(l).__name__
        raise TypeError(f"{who}: {what} must be a Layer, got {got}{hint}")


# (class of layer i - 1, class of layer i) -> f(layer i - 1, layer i, dy): Sequential's
# backward runs such an adjacent pair through f, which runs both layers' backward (it may
# hand the gradient between them in a fused form) and returns the first one's dx, or
# NotImplemented, having run neither (then each runs as usual). Exact classes: a subclass
# is never paired. Registered where the pair's classes are defined (layers/pooling.py).
PAIRED_BACKWARD: dict = {}
# (class of layer i, class of layer i + 1) -> f(layer i, layer i + 1, x): Sequential's
# forward calls f just before layer i's forward (x: its input); f may arm the pair to run
# in a fused form (the two forwards then still run, one after the other, and consume what
# f set). Registered beside PAIRED_BACKWARD's entries.
PAIRED_FORWARD: dict = {}


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse (the chain rule).

    Indexable and iterable; ``state_dict`` keys are ``"<index>.<name>"``. As PyTorch's
    ``nn.Sequential``, it is edited in place with ``model[i] = layer`` (replacing a
    classifier head), ``del model[i]``, ``append``, ``insert`` and ``extend``, each checking
    that it is given layers; the keys follow the new indices. An optimizer built before
    does not hold the parameters of a layer added since (build it after the edit).
    """

    _container = True

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, l in enumerate(layers):
            _check_layer("Sequential", f"argument {i}", l)
        self.layers = list(layers)

    def children(self):
        return list(self.layers)

    def named_children(self):
        for i, l in enumerate(self.layers):
            yield str(i), l

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

    def __setitem__(self, i, layer):
        if isinstance(i, slice):
            layer = list(layer)
            for j, l in enumerate(layer):
                _check_layer("Sequential", f"item {j} of the assigned layers", l)
        else:
            _check_layer("Sequential", f"model[{i}]", layer)
        self.layers[i] = layer

    def __delitem__(self, i):
        del self.layers[i]

    def append(self, layer):
        """Add ``layer`` at the end; returns self (PyTorch's ``nn.Sequential.append``)."""
        _check_layer("Sequential.append", "layer", layer)
        self.layers.append(layer)
        return self

    def insert(self, index, layer):
        """Insert ``layer`` before ``index``; returns self."""
        _check_layer("Sequential.insert", "layer", layer)
        self.layers.insert(index, layer)
        return self

    def extend(self, layers):
        """Append each of ``layers``; returns self."""
        layers = list(layers)
        for j, l in enumerate(layers):
            _check_layer("Sequential.extend", f"item {j}", l)
        self.layers.extend(layers)
        return self

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        layers = self.layers
        last = len(layers) - 1
        try:
            for i, l in enumerate(layers):
                if i < last:
                    arm = PAIRED_FORWARD.get((l.__class__, layers[i + 1].__class__))
                    if arm is not None:
                        arm(l, layers[i + 1], x)
                x = l.forward(x)
        except (ValueError, TypeError) as e:
            # which of several alike layers refused its input (the error names its class only):
            # a note (Python 3.11+), shown under the message in the traceback, as Keras names
            # the layer; nested Sequentials make a path, the prefix of its state_dict keys
            if hasattr(e, "add_note"):
                i = next(i for i, m in enumerate(self.layers) if m is l)
                path = getattr(e, "_gpunet_path", None)
                if path is None:
                    path = e._gpunet_path = [i]
                    e._gpunet_layer = _short(l)
                    e.add_note("")
                else:
                    path.insert(0, i)
                e.__notes__[-1] = (f"(raised by model layer {'.'.join(map(str, path))}: "
                                   f"{e._gpunet_layer})") + self._mixed_dtypes_note(e)
            raise
        return x

    def _mixed_dtypes_note(self, e):
        """For a dtype error in a model whose parameters have more than one dtype (a layer
        added to a model cast to float64 is made in float32, as in PyTorch): which
        parameters have which dtype, and the cast that makes them one; else ``""``. Read
        only once a forward has failed."""
        if "dtype" not in str(e):
            return ""
        groups = {}
        for name, p in self.named_parameters():
            groups.setdefault(p.data.dtype.name, []).append(name)
        if len(groups) < 2:
            return ""
        first = next(iter(groups))
        listed = "; ".join(f"{dt}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                           for dt, names in groups.items())
        return (f"\n(the model's parameters are of {len(groups)} dtypes ({listed}), as when a "
                f"layer, made in float32, is added to a cast model: model.to(dtype=numpy.{first}) "
                f"makes them one)")

    def backward(self, dy):
        """The layers' backwards in reverse order, each handed the next one's ``dx``. A pair
        of adjacent layers listed in :data:`PAIRED_BACKWARD` (a ``Conv2D`` with ReLU, then a
        ``MaxPool2D``) may hand a gradient between them in a fused form: both backwards
        still run, and the model's gradients are the same bits."""
        layers = self.layers
        i = len(layers)
        while i and dy is not None:     # None: the data needs no gradient; nothing further
            i -= 1
            layer = layers[i]
            if i:
                paired = PAIRED_BACKWARD.get((layers[i - 1].__class__, layer.__class__))
                if paired is not None:
                    out = paired(layers[i - 1], layer, dy)
                    if out is not NotImplemented:
                        dy = out
                        i -= 1
                        continue
            dy = layer.backward(dy)
        return dy

    def _summary_rows(self):
        return [(f"{i}: {_short(l)}", l) for i, l in enumerate(self.layers)]
