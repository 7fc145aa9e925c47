"""Optimizers, gradient clipping and learning-rate schedules.

Every optimizer takes ``params``: a list of :class:`gpunet.layers.base.Parameter`, or
anything with a ``.parameters()`` method (a Layer or a whole model), and updates
``Parameter.data`` in place from ``Parameter.grad``. The update formulas are PyTorch's
``torch.optim`` ones for the same hyper-parameters (one parameter group, ``maximize=False``,
SGD ``dampening=0``, non-centered RMSProp, AdaGrad without ``lr_decay``).

Conventions, stated once for the whole module:

* ``g`` is the gradient a step uses, ``w`` the parameter, ``lr`` the current
  ``optimizer.lr`` (a schedule changes it between steps).
* Regularization goes into ``g`` before the update: ``weight_decay`` is L2,
  ``g = grad + weight_decay*w``; ``l1`` is Lasso, ``g = grad + l1*sign(w)``. **Both apply
  only to parameters with ``decay=True``**: biases and batch-norm gamma/beta
  (``decay=False``) are exempt. PyTorch decays every parameter of a group; to reproduce
  gpunet with PyTorch, put the ``decay=False`` parameters in a group with
  ``weight_decay=0``. AdamW's decoupled decay is exempt on the same parameters.
* ``Parameter.grad`` is never modified by a step (regularization works in scratch
  memory). A parameter whose ``grad`` is None is skipped: neither its data, its state nor
  its step count change.
* Arithmetic runs in the parameter's dtype on the parameter's device (NumPy or CuPy,
  through ``xp = get_array_module(p.data)``): hyper-parameters are Python floats, so a
  float32 model stays float32. ``grad`` must have the shape and dtype of ``data``.
* ``state_dict()`` returns NumPy arrays only (it fits in an ``.npz`` read with
  ``allow_pickle=False``): hyper-parameters (``"lr"``, ``"momentum"``, ...), ``"num_params"``
  and, for parameter ``i`` (its index in ``params``), ``"state.<i>.step"`` and its buffers
  ``"state.<i>.<buffer>"``. ``load_state_dict`` restores all of it onto each parameter's
  device and dtype, so a resumed run continues bit for bit with the same BLAS kernels and
  thread count (guide §9); loading is also the way to move an optimizer's state after
  ``model.to(device)``.
* On a CUDA device (or the sim), ``step()`` is one kernel launch per dtype present, however
  many parameters, over every parameter with a gradient (``kernels/optim.cu``,
  multi-tensor apply), with the NumPy path's arithmetic operation for operation; a
  steady-state step neither copies to the device nor waits for it (see
  ``Optimizer._step_fused``). The learning rate and the step counts then live on the
  device (a changed ``lr`` costs one more launch, a fill, at the next step; reading
  ``optimizer.steps`` waits for the device once), so that a CUDA graph replaying a
  captured step (``gpunet.cuda.graphs``) follows a schedule. ``clip_grad_norm`` then
  returns a 0-d device array instead of a float.
"""
from __future__ import annotations

import math
import numbers
import operator
import weakref

import numpy

from . import _args, hostkernels
from .backend import device_of, get_array_module, to_device, to_numpy
from .cuda import graphs as _graphs
from .cuda import optim as _mt

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "AdaGrad",
    "clip_grad_norm", "clip_grad_value",
    "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearWarmup", "ReduceLROnPlateau",
]


# -- argument checks --------------------------------------------------------------------

# the dtypes of the multi-tensor kernels (kernels/optim.cu); other floating dtypes (float16)
# are updated on a device one parameter at a time, with the NumPy reference's array operations
_FUSED_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _listed(value, who, expected):
    """``list(value)`` for an argument that must be a list (or another iterable) of
    something: a string, bytes or an array (iterable, but never meant as such a list) or a
    non-iterable raises ``TypeError``: "``who``: expected ``expected``, got <type>"."""
    if hasattr(value, "shape") or isinstance(value, (str, bytes)):
        raise TypeError(f"{who}: expected {expected}, got {type(value).__name__}")
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{who}: expected {expected}, got {type(value).__name__}") from None


def _as_parameters(params, who, allow_empty=False):
    """A list of Parameters from a list/iterable of them or from an object with ``.parameters()``."""
    if callable(getattr(params, "parameters", None)):
        params = params.parameters()
    if callable(params) and not hasattr(params, "__iter__"):     # optim.SGD(model.parameters)
        raise TypeError(f"{who}: expected a list of Parameters or a Layer, got the "
                        f"{type(params).__name__} {getattr(params, '__name__', '?')!r}; call it: "
                        f"model.{getattr(params, '__name__', 'parameters')}()")
    iterator = hasattr(params, "__iter__") and iter(params) is params
    params = _listed(params, who, "a list of Parameters or a Layer")
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad") and hasattr(p, "decay")):
            # PyTorch habits: named_parameters() pairs, parameter-group dicts
            hint = ("; named_parameters() yields (name, parameter) pairs: pass model.parameters()"
                    if isinstance(p, tuple) and len(p) == 2 and hasattr(p[1], "decay") else
                    "; parameter groups (dicts) are PyTorch's: gpunet takes one list of parameters, "
                    "so give each group its own optimizer" if isinstance(p, dict) else "")
            raise TypeError(f"{who}: params[{i}] must be a Parameter (with .data, .grad and "
                            f".decay), got {type(p).__name__}{hint}")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{who}: expected each parameter once, got a list with duplicates")
    if not params and not allow_empty:
        # a generator or iterator is used up by the first optimizer built over it
        what = ("an empty iterator (used up already? model.parameters() returns a new list at "
                "each call)" if iterator else "an empty list")
        raise ValueError(f"{who}: expected at least one parameter, got {what}")
    return params


def _at_least(who, name, value, low=0.0, finite=True):
    """A finite real number ``>= low`` (a rate, a decay, an epsilon) as a Python float, never
    a NumPy float64 scalar; a bool, a string, NaN or inf raises (``gpunet._args.real``)."""
    return _args.real(who, name, value, low=low, finite=finite)


def _in_unit_interval(who, name, value):
    return _args.real(who, name, value, low=0.0, high=1.0, high_open=True)


def _count(who, name, value, low):
    return _args.integer(who, name, value, low=low)


def _on_device_of(arr, p):
    """A fresh copy of ``arr`` in ``p.data``'s dtype, on ``p.data``'s device."""
    host = numpy.array(to_numpy(arr), dtype=p.data.dtype)
    device = device_of(p.data)
    return host if device == "cpu" else to_device(host, device)


def _contiguous(g, xp):
    """``g`` itself when C-contiguous, else a C-contiguous copy (a kernel reads it flat)."""
    return g if g.flags.c_contiguous else xp.ascontiguousarray(g)


def _flag(cond, bit):
    return bit if cond else 0


def _state_value(key, template, value):
    """A saved hyper-parameter or count ``value`` as the Python type of ``template`` (bool,
    int, float, str, or a tuple of floats). Anything else raises ``ValueError`` naming
    ``key``, what was expected and what was found: another shape, a string or complex
    number where a number belongs, a float for an integer (``int()`` would truncate it)."""
    v = numpy.asarray(to_numpy(value))
    want = (len(template),) if isinstance(template, tuple) else ()
    if isinstance(template, str):       # a choice such as ReduceLROnPlateau's mode
        kinds, what = "U", "a string"
    elif isinstance(template, bool):
        kinds, what = "b", "a bool"
    elif isinstance(template, int):
        kinds, what = "iu", "an integer"
    else:
        kinds, what = "iuf", "real numbers" if want else "a real number"
    if v.shape != want:
        raise ValueError(f"{key!r}: expected shape {want}, got {v.shape}")
    if v.dtype.kind not in kinds:
        raise ValueError(f"{key!r}: expected {what}, got dtype {v.dtype.name}")
    if isinstance(template, tuple):
        return tuple(float(x) for x in v)
    return type(template)(v.item())


def _hinted_getattr(hints: dict):
    """A ``__getattr__`` (reached only for a missing attribute) that adds, for PyTorch's
    names in ``hints``, where gpunet keeps the same thing."""
    def __getattr__(self, name):
        hint = hints.get(name)
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg if hint is None else f"{msg}; {hint}", name=name, obj=self)
    return __getattr__


# -- optimizers -------------------------------------------------------------------------

#: Keras' optimizer keywords and what gpunet takes instead (named in the TypeError)
_PENALTIES = {"weight_decay": "weight decay (L2)", "l1": "L1 penalty"}

_KERAS_OPTIMIZER = {
    "learning_rate": "lr=",
    "beta_1": "betas=(beta_1, beta_2)",
    "beta_2": "betas=(beta_1, beta_2)",
    "epsilon": "eps=",
    "rho": "alpha= (the decay of the squared-gradient average)",
    "clipnorm": "gpunet.optim.clip_grad_norm(params, max_norm) between backward and step, or "
                "Trainer(..., clip_grad_norm=max_norm)",
    "global_clipnorm": "gpunet.optim.clip_grad_norm(params, max_norm) between backward and step, or "
                       "Trainer(..., clip_grad_norm=max_norm)",
    "clipvalue": "gpunet.optim.clip_grad_value(params, clip) between backward and step, or "
                 "Trainer(..., clip_grad_value=clip)",
}

def _hyper(name, names="_hyper_names", check="_check"):
    """A hyper-parameter as a property: assigning it runs the owner's own check (method
    ``check``) on all its hyper-parameters (listed in attribute ``names``) with the new
    value, as the constructor does, and stores what it returns. Optimizers: every one but
    ``lr`` (which schedules rewrite, checked at each step by ``Optimizer._current_lr``):
    ``opt.momentum = "0.9"`` or ``True`` raises, ``SGD.momentum = 0`` with ``nesterov=True``
    raises. Schedules (``_hyper``, ``_checked``): ``sched.gamma = -1`` raises instead of
    giving negative or NaN rates, or a TypeError inside the next ``step``. A read is a C
    ``operator.attrgetter`` (about 70 ns against 11 ns for a plain attribute), a few per
    parameter and step."""
    key = "_" + name

    def set_hyper(self, value):
        listed = getattr(self, names)
        if name not in listed:          # AdamW has no l1
            raise AttributeError(f"{type(self).__name__} has no hyper-parameter {name!r}; its "
                                 f"hyper-parameters are {', '.join(listed)}")
        h = {k: getattr(self, k) for k in listed}
        h[name] = value
        self.__dict__[key] = getattr(self, check)(h)[name]

    return property(operator.attrgetter(key), set_hyper,
                    doc=f"The {name} hyper-parameter (checked on assignment as in the constructor).")


class Optimizer:
    """Base class: parameter list, per-parameter state and step counts, scratch memory,
    ``zero_grad``, ``state_dict``/``load_state_dict``.

    Subclasses define ``_check(h) -> h`` (validate and normalize hyper-parameters, a dict
    in signature order), ``_buffers(h)`` (names of the per-parameter state arrays, given
    the hyper-parameters) and ``_update(i, p, g, lr)`` (one parameter's step, the NumPy
    reference); for arrays on a CUDA device or the sim, ``_fused_state(i, p, xp)`` (the
    parameter's state buffers, created at its first step) and ``_fused_apply(table, grads,
    found)`` (the multi-tensor launch, see ``_step_fused``).

    ``steps`` (the per-parameter step counts) is a list; after a step on a device it is
    read back from the device's counters when asked for (one host sync).

    float16 parameters (a model cast with ``model.to(dtype=numpy.float16)``, PyTorch's
    ``.half()``) are updated as on the CPU, one parameter at a time with ``_update``'s
    array operations, on a device too: the multi-tensor kernels have float and double
    variants only. The step counts then stay on the host. As in PyTorch, ``eps=1e-8``
    (Adam, RMSProp) and ``1e-10`` (AdaGrad) are 0 in float16, so a gradient element that
    is 0 at the first step makes 0/0: a float16 model takes SGD, a larger ``eps``, or
    ``Trainer(..., precision="fp16")`` (float32 master weights).

    ``params`` is fixed: the state, the step counts and the parameters' link back to the
    optimizer (``model.to`` moves the state) were made for that list, so assigning it raises
    ``AttributeError`` (before, ``opt.params = other.parameters()`` was stored and the next step
    applied the old momentum to the new parameters, or failed broadcasting their shapes).
    """

    __getattr__ = _hinted_getattr({
        "param_groups": "a gpunet optimizer has one parameter group: its rate is opt.lr (read it, or "
                        "assign it), its other hyper-parameters attributes too (opt.momentum, "
                        "opt.weight_decay, ...); for groups with other settings, build one optimizer each",
        "add_param_group": "a gpunet optimizer has one parameter group: build another optimizer over "
                           "the new parameters"})
    params = _args.read_only(None, "params", "The Parameters updated, a list (fixed at construction).",
                             "the state and the step counts were made for them; create a new optimizer "
                             "over the parameters you want")

    def __init__(self, params, _unknown=None, **hyper):
        name = type(self).__name__
        if _unknown:
            k = next(iter(_unknown))
            if k in _PENALTIES:      # the course's L1/L2, on an optimizer that lacks them
                raise TypeError(f"{name}() got an unexpected keyword argument {k!r}: {name} has no "
                                f"{_PENALTIES[k]}; SGD and Adam take weight_decay= (L2) and l1= (L1), "
                                f"AdamW a decoupled weight_decay=")
            raise _args.unexpected_keyword(name, _unknown, _KERAS_OPTIMIZER)
        self._params = _as_parameters(params, name)
        self._hyper_names = tuple(hyper)
        self._store(self._check(hyper))
        self.state = [{} for _ in self.params]   # per parameter: buffer name -> array
        self._steps = [0] * len(self.params)     # per parameter: updates applied so far
        self._work = {}                          # scratch arrays, keyed by slot/dtype/device
        self._tables = {}                        # fused path: dtype -> (key, table)
        self._dev = None                         # fused path: _mt.DeviceScalars (lr, steps)
        self._steps_on_device = False            # the device's counters are ahead of _steps
        self._link_parameters()

    def _link_parameters(self):
        """Register with each parameter, so that ``model.to(...)`` moves our state too."""
        for p in self.params:
            p._optimizers = [r for r in p._optimizers if r() is not None] + [weakref.ref(self)]

    def __setstate__(self, state):
        """Unpickled (or deep-copied): link to the parameters again, which drop their links
        to optimizers when pickled (``Parameter.__getstate__``)."""
        self.__dict__.update(state)
        self._link_parameters()

    def _store(self, h):
        """Set the hyper-parameters ``h``, already checked together by ``_check``: those
        that are checked properties (``_hyper``) straight into their slots."""
        for k, v in h.items():
            if isinstance(getattr(type(self), k, None), property):
                self.__dict__["_" + k] = v
            else:
                setattr(self, k, v)

    @property
    def steps(self) -> list:
        """Per parameter, the number of updates applied so far (a host sync after a step
        on a device: the counts are the device's)."""
        if self._steps_on_device:
            self._steps = [int(n) for n in self._dev.steps.get()]
            self._steps_on_device = False
        return self._steps

    @steps.setter
    def steps(self, value):
        who = f"{type(self).__name__}.steps"
        value = _listed(value, who, "a list of ints >= 0, one per parameter")
        if len(value) != len(self.params):
            raise ValueError(f"{who}: expected {len(self.params)} step counts (one per parameter), "
                             f"got {len(value)}")
        self._steps = [_args.integer(who, f"steps[{i}]", n, low=0) for i, n in enumerate(value)]
        self._steps_on_device = False
        self._dev = None          # recreated from the host counts at the next device step
        self._tables = {}

    # -- the step -----------------------------------------------------------------------
    def _current_lr(self) -> float:
        """``self.lr``, checked at each step: a plain attribute, it may have been reassigned
        (a Python float that is finite and >= 0, what schedules set, costs one comparison)."""
        lr = self.lr
        if type(lr) is float and 0.0 <= lr < math.inf:
            return lr
        return _at_least(type(self).__name__, "lr", lr)

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        self._step()

    def _step(self, found=None):
        """``step()``; on a device, ``found`` (a 0-d float64 device array, the loss
        scaler's sum of squares of the gradients) skips the step when not finite."""
        lr = self._current_lr()
        if not isinstance(self.params[0].data, numpy.ndarray):
            return self._step_fused(lr, found)
        self._step_per_parameter(lr)

    def _step_per_parameter(self, lr):
        """The step one parameter at a time, with ``_update`` (the NumPy reference; on a
        device, the same array operations there): the CPU's step, and a device's for the
        dtypes that the multi-tensor kernels lack (float16)."""
        # every gradient is checked before any parameter changes (as on a device): a
        # refused step leaves no parameter, state or step count half-updated
        active = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if self._host_step(active, lr):
            return
        for i, p in active:
            self._check_step(i, p, p.grad)
        for i, p in active:
            self.steps[i] += 1
            self._update(i, p, p.grad, lr)

    def _host_step(self, active, lr):
        """The whole step in one compiled call (:mod:`gpunet.hostkernels`), or False (then
        the step runs parameter by parameter). None here; SGD has one."""
        return False

    def _check_step(self, i, p, g):
        if not (hasattr(g, "shape") and hasattr(g, "dtype")):
            raise TypeError(f"{type(self).__name__}: params[{i}] ({p.name or 'unnamed'}) has a grad "
                            f"that is not an array: {type(g).__name__}")
        if isinstance(g, numpy.ndarray) is not isinstance(p.data, numpy.ndarray):
            # a host gradient on a device parameter or the reverse: one device per step (the
            # fused path also names a grad on another GPU-like device)
            dg, dp = device_of(g), device_of(p.data)
            raise TypeError(f"{type(self).__name__}: params[{i}] ({p.name or 'unnamed'}) has data on "
                            f"{dp} but grad on {dg}; a gradient must be on its parameter's device: "
                            f"move it with gpunet.to_device(grad, {dp!r})")
        if p.data.dtype.kind != "f":
            raise ValueError(f"{type(self).__name__}: params[{i}] ({p.name or 'unnamed'}) has data of "
                             f"dtype {p.data.dtype}; expected floating point (float32 or float64)")
        if g.shape != p.data.shape or g.dtype != p.data.dtype:
            raise ValueError(
                f"{type(self).__name__}: params[{i}] ({p.name or 'unnamed'}) has data "
                f"{tuple(p.data.shape)} {p.data.dtype} but grad {tuple(g.shape)} {g.dtype}")
        st = self.state[i]
        if st:
            get_array_module(p.data, *st.values())  # TypeError if the devices differ
            for k, v in st.items():
                if v.dtype != p.data.dtype:
                    raise ValueError(
                        f"{type(self).__name__}: params[{i}] ({p.name or 'unnamed'}) is "
                        f"{p.data.dtype} but its state {k!r} is {v.dtype}; cast the model "
                        "with model.to(dtype=...), which casts its optimizers' state too")

    def _step_fused(self, lr, found=None):
        """The step on a CUDA device (or the sim): one multi-tensor kernel launch
        (``kernels/optim.cu``) per dtype present, whatever the number of parameters, for
        every parameter with a gradient; the same arithmetic as ``_update``.

        The launch reads a device table of the parameters' data and state addresses,
        sizes, step-counter addresses and decay flags, built on the first step and rebuilt
        (one host-to-device copy of 64 bytes per parameter) only when one of those
        changes: a parameter gains or loses its gradient, its data or state is replaced
        (``model.to``, ``load_state_dict``). The first 64 gradients of a dtype are kernel
        arguments; a gradient past them is read from the table, which is rebuilt when one
        of those moved (in a steady loop CuPy's memory pool and a CUDA graph give them
        the same address every step). The learning rate is read from a device buffer,
        rewritten (one fill launch) only when ``lr`` changed, and the step counts are
        device counters the kernel increments: a steady-state step copies nothing to the
        device and never waits for it. Under CUDA-graph capture the lr buffer is rewritten
        before each replay instead (``gpunet.cuda.graphs``).
        """
        who = type(self).__name__
        active, device = [], None
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            self._check_step(i, p, g)
            for a in (p.data, g):
                d = device_of(a)
                if device is None:
                    device = d
                elif d != device:
                    raise TypeError(f"{who}: every parameter and gradient must be on one "
                                    f"device; params[{i}] ({p.name or 'unnamed'}) has "
                                    f"{'data' if a is p.data else 'grad'} on {d}, others on "
                                    f"{device}")
            if not p.data.flags.c_contiguous:
                raise ValueError(f"{who}: params[{i}] ({p.name or 'unnamed'}) data must be "
                                 "C-contiguous on a device")
            active.append(i)
        if not active:
            return
        groups = {}
        for i in active:
            groups.setdefault(self.params[i].data.dtype, []).append(i)
        if not all(dtype in _FUSED_DTYPES for dtype in groups):
            # a model cast to float16 (model.to(dtype=numpy.float16), PyTorch's .half()): the
            # kernels have float and double variants only, so the step goes one parameter
            # at a time, with the host's step counts (read back once: a host sync)
            if _graphs.capturing() is not None:
                # the update's scalars (lr, Adam's bias corrections) are host numbers that a
                # replay would repeat forever, silently on a real GPU
                bad = next(dtype for dtype in groups if dtype not in _FUSED_DTYPES)
                raise RuntimeError(f"{type(self).__name__}: {bad.name} parameters are updated one at "
                                   f"a time with host scalars, which a CUDA graph cannot capture "
                                   f"(the multi-tensor kernels have float32 and float64 variants "
                                   f"only); train without cuda_graph, or in float32 (half precision: "
                                   f"Trainer(..., precision='fp16'))")
            if found is not None and not bool(numpy.isfinite(float(found))):
                return                        # the loss scaler found an inf/NaN: skip the step
            self.steps = self.steps
            return self._step_per_parameter(lr)
        xp = get_array_module(self.params[active[0]].data)
        dev = self._device_scalars(xp, lr)
        for dtype, idx in groups.items():
            rows, grads = [], []
            for i in idx:
                p = self.params[i]
                s1, s2 = self._fused_state(i, p, xp)
                g = _contiguous(p.grad, xp)
                rows.append((p.data, s1, s2, p.data.size, dev.step_address(i), p.decay, g))
                grads.append(g)
            table = self._fused_table(dtype, rows, xp)
            self._fused_apply(table, grads, found)
        self._steps_on_device = True

    def _device_scalars(self, xp, lr):
        """The device's lr buffer and step counters (created from the host counts at the
        first device step, and again after a load or a move), with ``lr`` written."""
        dev = self._dev
        if dev is None or device_of(dev.steps) != device_of(self.params[0].data):
            if _graphs.capturing() is not None:
                raise RuntimeError(f"{type(self).__name__}: the first step on a device copies the "
                                   "step counts and lr to it; run one step before capturing a "
                                   "CUDA graph")
            steps = self.steps                 # the device's, if a previous one had them
            dev = self._dev = _mt.DeviceScalars(xp, steps, lr)
            self._tables = {}
        cap = _graphs.capturing()
        if cap is None:
            dev.set_lr(lr)
        else:       # a fill captured now would replay today's lr forever
            cap.before_replay(self._before_replay)
            cap.keep(dev)
        return dev

    def _before_replay(self):
        """Before a graph replay: write the current ``lr`` to the device, and note that the
        replay advances the device's step counts."""
        if self._dev is None:
            raise RuntimeError(f"{type(self).__name__}: its device state (lr, step counts) was "
                               "replaced since the CUDA graph was captured (load_state_dict, "
                               "model.to); capture the step again")
        lr = self._current_lr()
        self._dev.set_lr(lr)
        self._steps_on_device = True

    def _fused_table(self, slot, rows, xp):
        """The device table of ``rows``, reused while its contents stay the same."""
        key = _mt.table_key(rows)
        hit = self._tables.get(slot)
        cap = _graphs.capturing()
        if cap is not None:
            # the eager table, or, where gradients past the 64th are new arrays in the
            # capture, the graph's own patched copy; anything else cannot be captured
            table = _mt.captured_table(cap, self, slot, hit, rows)
            if table is None:
                raise RuntimeError(
                    f"{type(self).__name__}: its table of parameters changed during CUDA-graph "
                    "capture (a parameter gained or lost its gradient, or an array moved); "
                    "run an eager step with the same parameters before capturing")
            return table
        if hit is None or hit[0] != key:
            hit = self._tables[slot] = (key, _mt.tensor_table(xp, rows))
        return hit[1]

    def _follow_parameters(self):
        """Move and cast every state buffer to its parameter's device and dtype (called by
        ``Layer.to``); the scratch memory is dropped and reallocated on the next step."""
        self.steps = self.steps      # read back from a device, recreated there if needed
        for i, p in enumerate(self.params):
            st = self.state[i]
            for k, v in st.items():
                if v.dtype != p.data.dtype or device_of(v) != device_of(p.data):
                    st[k] = _on_device_of(v, p)
        self._work = {}
        self._tables = {}

    def zero_grad(self, set_to_none=True):
        """Set every parameter's ``grad`` to None. ``set_to_none``: PyTorch's keyword; True,
        its default, is what this does, and False raises ``ValueError`` (gpunet keeps no
        zeroed gradients)."""
        if set_to_none is not True:
            _args.set_to_none(f"{type(self).__name__}.zero_grad", set_to_none)
        for p in self.params:
            p.grad = None

    def _scratch(self, p, slot):
        """A work array shaped like ``p.data`` (same dtype and device), reused across steps.

        One flat buffer per (slot, dtype, device), as large as the largest parameter, so
        that a step allocates nothing after the first one.
        """
        data = p.data
        key = (slot, data.dtype, device_of(data))
        buf = self._work.get(key)
        n = data.size
        if buf is None or buf.size < n:
            xp = get_array_module(data)
            buf = xp.empty_like(data, shape=(n,))
            self._work[key] = buf
        return buf[:n].reshape(data.shape)

    def _host_kernels_apply(self):
        """Whether this optimizer's NumPy update is the library's own, so that a compiled
        pass (:mod:`gpunet.hostkernels`, the same arithmetic) may stand in for it: a
        subclass that overrides ``_regularize`` or ``_decayed_grad`` keeps its own NumPy
        passes."""
        cls = type(self)
        return (cls._regularize is Optimizer._regularize
                and getattr(cls, "_decayed_grad", None) in (None, Adam._decayed_grad, AdamW._decayed_grad))

    @staticmethod
    def _regularize(xp, w, g, s, t, weight_decay, l1):
        """``g + weight_decay*w + l1*sign(w)`` written into ``s`` (``t`` is scratch) and
        returned. Elementwise, so :func:`_in_blocks` runs it a block at a time inside an
        update's passes; ``p.grad`` stays untouched."""
        if weight_decay != 0.0:
            xp.multiply(w, weight_decay, out=s)
            s += g
        else:
            xp.copyto(s, g)
        if l1 != 0.0:
            xp.sign(w, out=t)
            t *= l1
            s += t
        return s

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Hyper-parameters, step counts and state buffers as NumPy arrays (see the module doc)."""
        d = {"num_params": numpy.asarray(len(self.params), dtype=numpy.int64)}
        for k in self._hyper_names:
            d[k] = numpy.asarray(getattr(self, k))
        steps = self.steps
        for i, st in enumerate(self.state):
            d[f"state.{i}.step"] = numpy.asarray(steps[i], dtype=numpy.int64)
            for k, v in st.items():
                d[f"state.{i}.{k}"] = numpy.array(to_numpy(v), copy=True)
        return d

    def load_state_dict(self, d):
        """Restore from ``state_dict()`` output onto the parameters' devices and dtypes.

        Scalars come back as Python floats/ints/bools, so nothing promotes float32
        arithmetic to float64. Raises ``ValueError`` naming every missing key, shape
        mismatch, value of another kind (a string or complex number; a float where a count
        is an int) and a different number of parameters, before changing anything; a state
        whose hyper-parameters are not this optimizer's (another kind of optimizer saved it,
        e.g. Adam's loaded into SGD or AdamW) raises naming both sets, strictly, as a
        model's ``load_state_dict`` refuses unexpected keys.

        The saved hyper-parameters replace the constructor's, as PyTorch's
        ``optimizer.load_state_dict`` replaces its ``param_groups``' ``lr``, ``betas``,
        ``weight_decay``...: ``Adam(params, lr=0.5)`` loaded with a state saved at ``lr=1e-3``
        goes on at ``1e-3`` (the saved run's rate). To resume with other hyper-parameters,
        assign them after loading (``opt.lr = 0.5``, ``opt.weight_decay = ...``).
        """
        who = f"{type(self).__name__}.load_state_dict"
        if not hasattr(d, "keys"):
            raise TypeError(f"{who}: expected a dict of arrays, got {type(d).__name__}")
        problems = []

        def value(key, template):        # None, with the problem noted, when it is not one
            try:
                return _state_value(key, template, d[key])
            except ValueError as e:
                problems.append(str(e))

        n = value("num_params", 0) if "num_params" in d else problems.append("missing key 'num_params'")
        if n is not None and n != len(self.params):
            problems.append(f"expected state for {len(self.params)} parameters, got {n}")
        hyper = {}
        for k in self._hyper_names:
            if k not in d:
                problems.append(f"missing key {k!r}")
                continue
            v = value(k, getattr(self, k))
            if v is not None:
                hyper[k] = v
        held = sorted(k for k in d.keys() if k != "num_params" and not str(k).startswith("state."))
        if set(held) != set(self._hyper_names):    # most often another optimizer's state
            problems.append(f"the state holds the hyper-parameters {', '.join(held) or 'none'}, "
                            f"expected {', '.join(sorted(self._hyper_names))}: another kind of "
                            f"optimizer's state? load it into an optimizer of the kind that saved it")
        if problems:
            raise ValueError(f"{who}: " + "; ".join(problems))
        hyper = self._check(hyper)
        names = self._buffers(hyper)
        steps = []
        for i, p in enumerate(self.params):
            key = f"state.{i}.step"
            if key not in d:
                problems.append(f"missing key {key!r}")
                steps.append(0)
                continue
            n = value(key, 0)
            if n is not None and n < 0:
                problems.append(f"{key!r}: expected a count >= 0, got {n}")
            steps.append(n or 0)
            if not n:
                continue
            for b in names:
                key = f"state.{i}.{b}"
                if key not in d:
                    problems.append(f"missing key {key!r}")
                elif tuple(numpy.shape(d[key])) != tuple(p.data.shape):
                    problems.append(f"{key!r}: expected shape {tuple(p.data.shape)}, "
                                    f"got {tuple(numpy.shape(d[key]))}")
                elif numpy.asarray(to_numpy(d[key])).dtype.kind not in "iuf":
                    problems.append(f"{key!r}: expected real numbers, got dtype "
                                    f"{numpy.asarray(to_numpy(d[key])).dtype.name}")
        if problems:
            raise ValueError(f"{who}: " + "; ".join(problems))
        self._store(hyper)
        self.steps = steps
        self.state = [{b: _on_device_of(d[f"state.{i}.{b}"], p) for b in names} if steps[i] else {}
                      for i, p in enumerate(self.params)]
        self._work = {}
        self._tables = {}
        self._loaded = True       # Trainer.fit's resume check reads (and clears) it
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper_names)
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"


# NumPy updates of parameters larger than this run block by block (elements; 64 Ki float32
# = 256 KiB a block and array: measured on the 784-1024-1024-10 MLP's parameters, one
# thread, SGD with momentum: 2.23 -> 1.44 ms a step; 16 Ki: 1.68, 256 Ki: 1.81; Adam, in
# the step: 9.5 -> 7.7 and 10.9 -> 9.4 ms)
UPDATE_CHUNK = 65536


def _in_blocks(xp, arrays, passes, work=()):
    """Run ``passes(*arrays)`` (elementwise passes over same-shaped arrays, None allowed)
    a cache-sized block at a time: each block's passes then run from L2 instead of
    streaming the whole arrays once per pass. Same results, element for element. Whole
    arrays at once off NumPy, at or below ``UPDATE_CHUNK`` elements, or when an array is
    not C-contiguous.

    ``work``: the positions in ``arrays`` of scratch arrays, whose contents nobody reads
    after the passes. Every block gets the same first elements of each of them, so the
    scratch stays in cache instead of streaming a parameter-sized array through memory
    (the SGD-momentum update of MLP 784-1024-1024-10 alone: 3.5 -> 2.9 ms with cold
    caches, 1.65 -> 1.45 ms warm, on the Intel host of ``benchmarks/RESULTS.md``)."""
    first = arrays[0]
    if (xp is not numpy or first.size <= UPDATE_CHUNK
            or not all(a is None or a.flags.c_contiguous for a in arrays)):
        passes(*arrays)
        return
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    for start in range(0, first.size, UPDATE_CHUNK):
        blk = slice(start, start + UPDATE_CHUNK)
        n = min(UPDATE_CHUNK, first.size - start)
        passes(*[None if a is None else a[:n] if k in work else a[blk]
                 for k, a in enumerate(flat)])


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, L2 and L1.

    With ``g = grad (+ weight_decay*w + l1*sign(w) on decay=True parameters)``::

        momentum == 0:   w -= lr * g
        momentum  > 0:   b = g at the first step, else b = momentum*b + g   (dampening 0)
                         w -= lr * b                    (nesterov=False)
                         w -= lr * (g + momentum*b)     (nesterov=True)

    as ``torch.optim.SGD``. State: ``momentum_buffer`` (when ``momentum > 0``).
    """

    momentum = _hyper("momentum")
    nesterov = _hyper("nesterov")
    weight_decay = _hyper("weight_decay")
    l1 = _hyper("l1")

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, **unknown):
        super().__init__(params, _unknown=unknown, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, l1=l1)

    def _check(self, h):
        who = type(self).__name__
        h = dict(h)
        h["lr"] = _at_least(who, "lr", h["lr"])
        h["momentum"] = _at_least(who, "momentum", h["momentum"])
        h["nesterov"] = _args.flag(who, "nesterov", h["nesterov"])
        h["weight_decay"] = _at_least(who, "weight_decay", h["weight_decay"])
        h["l1"] = _at_least(who, "l1", h["l1"])
        if h["nesterov"] and h["momentum"] == 0.0:
            raise ValueError(f"{who}: expected momentum > 0 with nesterov=True, got momentum={h['momentum']!r}")
        return h

    def _buffers(self, h):
        return ("momentum_buffer",) if h["momentum"] != 0.0 else ()

    def _host_step(self, active, lr):
        """Every parameter's update in one call of the compiled SGD (``sgd_many``: the same
        bits as ``_update``'s passes, one parameter after another) when all qualify: NumPy
        arrays of one float dtype, gradients of their parameter's shape and dtype, not the
        first momentum step (which copies the gradient), the library's own regularization.
        Anything else, a gradient that ``_check_step`` would refuse included, returns False
        before any update, and the step runs parameter by parameter (and raises there).
        On the small MLP's step this saves ~15 us of Python per step (six parameters of the
        CNN: 38 -> ~15 us)."""
        if not active or not self._host_kernels_apply():
            return False
        m, wd, l1 = float(self.momentum), float(self.weight_decay), float(self.l1)
        base = (hostkernels.MOMENTUM if m != 0.0 else 0) | (hostkernels.NESTEROV if self.nesterov else 0)
        decay = ((hostkernels.WD if wd != 0.0 else 0) | (hostkernels.L1 if l1 != 0.0 else 0))
        state = self.state
        items = []
        for i, p in active:
            buf = None
            if m != 0.0:
                buf = state[i].get("momentum_buffer")
                if buf is None:
                    return False
            items.append((p.data, p.grad, buf, base | decay if p.decay else base))
        if not hostkernels.sgd_many(items, lr, m, wd, l1):
            return False
        steps = self.steps
        for i, _ in active:
            steps[i] += 1
        return True

    def _update(self, i, p, g, lr):
        xp = get_array_module(p.data)
        m, wd, l1 = float(self.momentum), float(self.weight_decay), float(self.l1)
        reg = p.decay and (wd != 0.0 or l1 != 0.0)
        st = self.state[i]
        buf = st.get("momentum_buffer") if m != 0.0 else None
        fresh = m != 0.0 and buf is None
        if fresh:
            buf = st["momentum_buffer"] = xp.empty_like(p.data)
        nesterov = self.nesterov
        if not fresh and xp is numpy and self._host_kernels_apply() and hostkernels.sgd(
                p.data, g, buf, lr, m, wd, l1,
                (hostkernels.WD if reg and wd != 0.0 else 0) | (hostkernels.L1 if reg and l1 != 0.0 else 0)
                | (hostkernels.MOMENTUM if buf is not None else 0) | (hostkernels.NESTEROV if nesterov else 0)):
            return          # the compiled pass: the same bits as the passes below

        def passes(w, g, s, t, buf):
            if reg:
                g = self._regularize(xp, w, g, s, t, wd, l1)
            if buf is not None:
                if fresh:
                    xp.copyto(buf, g)           # PyTorch's first step: buf = g
                else:
                    buf *= m
                    buf += g
                if nesterov:
                    xp.multiply(buf, m, out=t)
                    t += g
                    t *= lr
                else:
                    xp.multiply(buf, lr, out=t)
            else:
                xp.multiply(g, lr, out=t)
            w -= t

        _in_blocks(xp, (p.data, g, self._scratch(p, 0) if reg else None, self._scratch(p, 1), buf),
                   passes, work=(2, 3))

    def _fused_state(self, i, p, xp):
        if self.momentum == 0.0:
            return None, None
        st = self.state[i]
        if "momentum_buffer" not in st:  # the kernel sets b = g at step 1 (zeros: m*0 + g later)
            st["momentum_buffer"] = xp.zeros_like(p.data)
        return st["momentum_buffer"], None

    def _fused_apply(self, table, grads, found):
        m, wd, l1 = float(self.momentum), float(self.weight_decay), float(self.l1)
        flags = (_flag(wd != 0.0, _mt.WD) | _flag(l1 != 0.0, _mt.L1)
                 | _flag(m != 0.0, _mt.MOMENTUM) | _flag(m != 0.0 and self.nesterov, _mt.NESTEROV))
        _mt.sgd_step(table, grads, self._dev, momentum=m, weight_decay=wd, l1=l1, flags=flags,
                     found=found)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam`` (``amsgrad=False``).

    With ``g = grad (+ weight_decay*w + l1*sign(w) on decay=True parameters)`` and ``t``
    the parameter's step count (1 at its first update)::

        m = beta1*m + (1-beta1)*g
        v = beta2*v + (1-beta2)*g*g
        w -= lr/(1-beta1**t) * m / (sqrt(v)/sqrt(1-beta2**t) + eps)

    State: ``exp_avg`` (m) and ``exp_avg_sq`` (v), zeros before the first step.
    """

    betas = _hyper("betas")
    eps = _hyper("eps")
    weight_decay = _hyper("weight_decay")
    l1 = _hyper("l1")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, **unknown):
        super().__init__(params, _unknown=unknown, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1)

    def _check(self, h):
        who = type(self).__name__
        h = dict(h)
        h["lr"] = _at_least(who, "lr", h["lr"])
        h["betas"] = _betas(who, h["betas"])
        h["eps"] = _at_least(who, "eps", h["eps"])
        h["weight_decay"] = _at_least(who, "weight_decay", h["weight_decay"])
        if "l1" in h:
            h["l1"] = _at_least(who, "l1", h["l1"])
        return h

    def _buffers(self, h):
        return ("exp_avg", "exp_avg_sq")

    def _decays(self, p):
        return p.decay and (float(self.weight_decay) != 0.0 or float(self.l1) != 0.0)

    def _decayed_grad(self, xp, w, g, s, t, lr):
        """The gradient the update uses, for one block (``s``, ``t``: scratch): L2/L1 added
        to it (see :meth:`Optimizer._regularize`)."""
        return self._regularize(xp, w, g, s, t, float(self.weight_decay), float(self.l1))

    def _host_step(self, active, lr):
        """Every parameter's update in one call of the compiled Adam (``adam_many``: the same
        bits as ``_update``'s passes, one parameter after another) when all qualify (see
        :meth:`SGD._host_step`; here not the first step, which creates the zeroed moments).
        Anything else returns False before any update, and the step runs parameter by
        parameter."""
        if not active or not self._host_kernels_apply():
            return False
        b1, b2 = (float(b) for b in self.betas)
        eps, wd = float(self.eps), float(self.weight_decay)
        l1 = 0.0 if self._decoupled else float(self.l1)
        steps, state = self.steps, self.state
        items = []
        for i, p in active:
            st = state[i]
            m, v = st.get("exp_avg"), st.get("exp_avg_sq")
            if m is None or v is None:
                return False
            n = steps[i] + 1
            step_size = lr / (1.0 - b1 ** n)
            c2 = math.sqrt(1.0 - b2 ** n)
            if not self._decays(p):
                flags, factor = 0, 0.0
            elif self._decoupled:
                flags, factor = hostkernels.DECOUPLED, 1.0 - lr * wd
            else:
                flags, factor = ((hostkernels.WD if wd != 0.0 else 0) | (hostkernels.L1 if l1 != 0.0 else 0)), wd
            items.append((p.data, p.grad, m, v, c2, step_size, factor, flags))
        if not hostkernels.adam_many(items, b1, b2, eps, l1):
            return False
        for i, _ in active:
            steps[i] += 1
        return True

    def _update(self, i, p, g, lr):
        xp = get_array_module(p.data)
        b1, b2 = (float(b) for b in self.betas)
        decays = self._decays(p)
        st = self.state[i]
        if not st:
            st["exp_avg"] = xp.zeros_like(p.data)
            st["exp_avg_sq"] = xp.zeros_like(p.data)
        n = self.steps[i]
        step_size = lr / (1.0 - b1 ** n)
        c2, eps = math.sqrt(1.0 - b2 ** n), float(self.eps)
        if xp is numpy and self._host_kernels_apply():
            wd = float(self.weight_decay)
            if not decays:
                flags, factor = 0, 0.0
            elif self._decoupled:
                flags, factor = hostkernels.DECOUPLED, 1.0 - lr * wd
            else:
                flags, factor = ((hostkernels.WD if wd != 0.0 else 0)
                                 | (hostkernels.L1 if float(self.l1) != 0.0 else 0)), wd
            if hostkernels.adam(p.data, g, st["exp_avg"], st["exp_avg_sq"], b1, b2, c2, eps, step_size,
                                factor, float(self.l1) if not self._decoupled else 0.0, flags):
                return      # the compiled pass: the same bits as the passes below

        def passes(w, g, m, v, s, t):
            if decays:
                g = self._decayed_grad(xp, w, g, s, t, lr)
            m *= b1
            xp.multiply(g, 1.0 - b1, out=t)
            m += t
            v *= b2
            xp.multiply(g, g, out=t)
            t *= 1.0 - b2
            v += t
            xp.sqrt(v, out=t)
            t /= c2
            t += eps
            xp.divide(m, t, out=t)
            t *= step_size
            w -= t

        _in_blocks(xp, (p.data, g, st["exp_avg"], st["exp_avg_sq"],
                        self._scratch(p, 0) if decays else None, self._scratch(p, 1)),
                   passes, work=(4, 5))

    def _fused_state(self, i, p, xp):
        st = self.state[i]
        if not st:
            st["exp_avg"] = xp.zeros_like(p.data)
            st["exp_avg_sq"] = xp.zeros_like(p.data)
        return st["exp_avg"], st["exp_avg_sq"]

    _decoupled = False

    def _fused_apply(self, table, grads, found):
        b1, b2 = (float(b) for b in self.betas)
        wd, l1 = float(self.weight_decay), float(getattr(self, "l1", 0.0))
        flags = _flag(wd != 0.0, _mt.WD) | _flag(l1 != 0.0 and not self._decoupled, _mt.L1)
        flags |= _flag(self._decoupled, _mt.DECOUPLED)
        _mt.adam_step(table, grads, self._dev, beta1=b1, beta2=b2, eps=float(self.eps),
                      weight_decay=wd, l1=l1, flags=flags, found=found)


def _betas(who, betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"{who}: expected betas to be a pair (beta1, beta2), got {betas!r}") from None
    return (_in_unit_interval(who, "betas[0]", b1), _in_unit_interval(who, "betas[1]", b2))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Before the Adam update of a ``decay=True`` parameter: ``w *= 1 - lr*weight_decay``
    (``w -= lr*weight_decay*w``); the gradient itself is not regularized. The Adam update
    is :class:`Adam`'s. ``decay=False`` parameters are not decayed (PyTorch would).
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **unknown):
        Optimizer.__init__(self, params, _unknown=unknown, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _decays(self, p):
        return p.decay and float(self.weight_decay) != 0.0

    def _decayed_grad(self, xp, w, g, s, t, lr):
        w *= 1.0 - lr * float(self.weight_decay)
        return g


class RMSProp(Optimizer):
    """RMSProp (Hinton), as ``torch.optim.RMSprop`` with ``centered=False``::

        v = alpha*v + (1-alpha)*g*g
        momentum == 0:  w -= lr * g / (sqrt(v) + eps)
        momentum  > 0:  b = momentum*b + g / (sqrt(v) + eps);  w -= lr * b

    State: ``square_avg`` (v) and, with momentum, ``momentum_buffer`` (b); zeros before
    the first step.
    """

    alpha = _hyper("alpha")
    eps = _hyper("eps")
    momentum = _hyper("momentum")

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, **unknown):
        super().__init__(params, _unknown=unknown, lr=lr, alpha=alpha, eps=eps, momentum=momentum)

    def _check(self, h):
        who = type(self).__name__
        h = dict(h)
        h["lr"] = _at_least(who, "lr", h["lr"])
        h["alpha"] = _in_unit_interval(who, "alpha", h["alpha"])
        h["eps"] = _at_least(who, "eps", h["eps"])
        h["momentum"] = _at_least(who, "momentum", h["momentum"])
        return h

    def _buffers(self, h):
        return ("square_avg", "momentum_buffer") if h["momentum"] != 0.0 else ("square_avg",)

    def _update(self, i, p, g, lr):
        xp = get_array_module(p.data)
        a, mom = float(self.alpha), float(self.momentum)
        st = self.state[i]
        if not st:
            st["square_avg"] = xp.zeros_like(p.data)
        if mom != 0.0 and "momentum_buffer" not in st:
            st["momentum_buffer"] = xp.zeros_like(p.data)
        eps = float(self.eps)

        def passes(w, g, v, t, buf):
            v *= a
            xp.multiply(g, g, out=t)
            t *= 1.0 - a
            v += t
            xp.sqrt(v, out=t)
            t += eps
            xp.divide(g, t, out=t)
            if buf is not None:
                buf *= mom
                buf += t
                xp.multiply(buf, lr, out=t)
            else:
                t *= lr
            w -= t

        _in_blocks(xp, (p.data, g, st["square_avg"], self._scratch(p, 1),
                        st["momentum_buffer"] if mom != 0.0 else None), passes, work=(3,))

    def _fused_state(self, i, p, xp):
        st = self.state[i]
        if not st:
            st["square_avg"] = xp.zeros_like(p.data)
        if self.momentum != 0.0 and "momentum_buffer" not in st:
            st["momentum_buffer"] = xp.zeros_like(p.data)
        return st["square_avg"], st.get("momentum_buffer") if self.momentum != 0.0 else None

    def _fused_apply(self, table, grads, found):
        mom = float(self.momentum)
        _mt.rmsprop_step(table, grads, self._dev, alpha=float(self.alpha), eps=float(self.eps),
                         momentum=mom, flags=_flag(mom != 0.0, _mt.MOMENTUM), found=found)


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al.), as ``torch.optim.Adagrad`` (``lr_decay=0``,
    ``initial_accumulator_value=0``)::

        s += g*g
        w -= lr * g / (sqrt(s) + eps)

    State: ``sum`` (s), zeros before the first step.
    """

    eps = _hyper("eps")

    def __init__(self, params, lr=0.01, eps=1e-10, **unknown):
        super().__init__(params, _unknown=unknown, lr=lr, eps=eps)

    def _check(self, h):
        who = type(self).__name__
        return {"lr": _at_least(who, "lr", h["lr"]), "eps": _at_least(who, "eps", h["eps"])}

    def _buffers(self, h):
        return ("sum",)

    def _update(self, i, p, g, lr):
        xp = get_array_module(p.data)
        st = self.state[i]
        if not st:
            st["sum"] = xp.zeros_like(p.data)
        eps = float(self.eps)

        def passes(w, g, s, t):
            xp.multiply(g, g, out=t)
            s += t
            xp.sqrt(s, out=t)
            t += eps
            xp.divide(g, t, out=t)
            t *= lr
            w -= t

        _in_blocks(xp, (p.data, g, st["sum"], self._scratch(p, 1)), passes, work=(3,))

    def _fused_state(self, i, p, xp):
        st = self.state[i]
        if not st:
            st["sum"] = xp.zeros_like(p.data)
        return st["sum"], None

    def _fused_apply(self, table, grads, found):
        _mt.adagrad_step(table, grads, self._dev, eps=float(self.eps), found=found)


# -- gradient clipping ------------------------------------------------------------------

def clip_grad_norm(params, max_norm):
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    ``total = sqrt(sum over parameters of ||grad||^2)``; when
    ``c = max_norm / (total + 1e-6)`` is below 1, every ``grad *= c`` in place (as
    ``torch.nn.utils.clip_grad_norm_``). Parameters without a gradient are ignored.
    A non-finite ``total`` is returned with the gradients left as they are, for the
    caller to inspect. ``params``: a list of Parameters or a Layer.

    Returns ``total`` (before clipping): a Python float for NumPy gradients, 0.0 when there
    is no gradient. On a CUDA device (or the sim) the norm is computed and the scaling
    applied on the device, without a host sync (one reduction launch and one scaling
    launch per dtype, the sum of squares in float64), and ``total`` is a
    0-d float64 array on that device: ``float(total)`` (or printing it) waits for the
    device, so read it only when needed.

    float16 gradients (a model cast with ``model.to(dtype=numpy.float16)``): their norm is
    taken in float32 on the CPU (in float16 a sum of squares past 65504 would be inf, and
    nothing clipped), in float64 on a device, and they are scaled in float32 and rounded
    once; on a device that takes array operations, not the multi-tensor kernels (which
    have no float16 variant), still without a host sync.
    """
    params = _as_parameters(params, "clip_grad_norm", allow_empty=True)
    max_norm = _at_least("clip_grad_norm", "max_norm", max_norm, finite=False)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = _grads_module("clip_grad_norm", params, grads)
    if xp is not numpy:
        if all(g.dtype in _FUSED_DTYPES for g in grads):
            return _on_grad_lists(grads, xp, lambda tables, lists: _mt.grad_norm_and_scale(
                tables, lists, max_norm))
        return _clip_norm_by_array_ops(grads, xp, max_norm)
    # a float16 gradient's norm is taken in float32: in float16 a sum of squares past 65504
    # is inf (a gradient of 300 elements of 20), which would leave every gradient unclipped
    norms = xp.stack([xp.linalg.norm((g.astype(numpy.float32) if g.dtype.itemsize < 4 else g).ravel())
                      for g in grads])
    total = float(xp.linalg.norm(norms))
    if not math.isfinite(total):
        return total
    c = max_norm / (total + 1e-6)
    if c < 1.0:
        for g in grads:
            if g.dtype.itemsize < 4:    # in float32, rounded once (NumPy would round c to float16)
                g[...] = (g.astype(numpy.float32) * c).astype(g.dtype)
            else:
                g *= c
    return total


def _clip_norm_by_array_ops(grads, xp, max_norm):
    """``clip_grad_norm`` on a device when a gradient has a dtype that the multi-tensor
    kernels lack (float16, a model cast with ``model.to(dtype=numpy.float16)``): the same
    float64 sum of squares and scaling, by array operations, still without a host sync;
    a float16 gradient is scaled in float32 and rounded once."""
    sumsq = xp.zeros((), numpy.float64)
    for g in grads:
        sumsq += xp.square(g.astype(numpy.float64)).sum()
    total = xp.sqrt(sumsq)
    c = xp.minimum(max_norm / (total + 1e-6), 1.0)
    c = xp.where(xp.isfinite(total), c, 1.0)        # a non-finite total: gradients as they are
    for g in grads:
        if g.dtype.itemsize < 4:
            g[...] = (g.astype(numpy.float32) * c.astype(numpy.float32)).astype(g.dtype)
        else:
            g *= c.astype(g.dtype)
    return total


def _grads_module(who, params, grads):
    """The array module of ``grads`` (the gradients of ``params`` that have one), else, when
    they are on more than one device, ``TypeError`` naming ``who``, two of the parameters and
    their devices (the one-device rule of every gpunet call: never a silent transfer; the
    norm of gradients on two devices would need one)."""
    try:
        return get_array_module(*grads)
    except TypeError:
        pass
    held = [(i, p) for i, p in enumerate(params) if p.grad is not None]
    (i0, p0), d0 = held[0], device_of(held[0][1].grad)
    for i, p in held[1:]:
        d = device_of(p.grad)
        if d != d0:
            raise TypeError(f"{who}: the gradients are on more than one device: params[{i0}] "
                            f"({p0.name or 'unnamed'}) has its grad on {d0}, params[{i}] "
                            f"({p.name or 'unnamed'}) on {d}; a model's gradients are on its "
                            f"device: move the model with model.to(device)") from None
    raise TypeError(f"{who}: the gradients are on more than one device")


def _unscale_on_device(grads, inv_scale, found_any):
    """``GradScaler.unscale_`` on device gradients (float32/float64): ``g *= inv_scale``
    and the float64 sum of squares (returned, a 0-d device array; ``found_any`` set to 1
    when it is not finite), one reduction and one scaling launch per dtype, no sync."""
    xp = get_array_module(*grads)
    return _on_grad_lists(grads, xp, lambda tables, lists: _mt.unscale_and_check(
        tables, lists, inv_scale, found_any))


def clip_grad_value(params, clip):
    """Clamp every gradient element into ``[-clip, clip]`` in place (as
    ``torch.nn.utils.clip_grad_value_``). ``params``: a list of Parameters or a Layer.
    On a device, one launch per dtype; float16 gradients (no multi-tensor kernel) are
    clamped by ``xp.clip``, as on the CPU."""
    params = _as_parameters(params, "clip_grad_value", allow_empty=True)
    clip = _at_least("clip_grad_value", "clip", clip, finite=False)
    grads = [p.grad for p in params if p.grad is not None]
    if (grads and _grads_module("clip_grad_value", params, grads) is not numpy   # one launch per dtype
            and all(g.dtype in _FUSED_DTYPES for g in grads)):
        xp = get_array_module(*grads)
        _on_grad_lists(grads, xp, lambda tables, lists: [
            _mt.grad_clamp(t, gs, clip) for t, gs in zip(tables, lists)])
        return
    # the CPU, and float16 gradients on a device (no multi-tensor kernel for them)
    for p in params:
        if p.grad is not None:
            xp = get_array_module(p.grad)
            xp.clip(p.grad, -clip, clip, out=p.grad)


_grad_tables: dict = {}   # (device, dtype, sizes) -> (table key, device table of a gradient list)


def _on_grad_lists(grads, xp, launch):
    """Run ``launch(tables, grad_lists)`` over ``grads`` (device arrays, one device) cut
    into same-dtype lists; a gradient that is not C-contiguous is worked on in a
    contiguous copy, written back afterwards. The clipping kernels read only the sizes
    (and, past the first 64 gradients, the addresses) from a table, so tables are cached
    by (device, dtype, sizes) and rebuilt, or under CUDA-graph capture patched, when one
    of those addresses moved."""
    lists = {}
    for g in grads:
        lists.setdefault(g.dtype, []).append(g)
    tables, grad_lists, back = [], [], []
    for dtype, gs in lists.items():
        flat = []
        for g in gs:
            c = _contiguous(g, xp)
            if c is not g:
                back.append((g, c))
            flat.append(c)
        rows = [(None, None, None, g.size, 0, False, g) for g in flat]
        slot = (device_of(flat[0]), dtype, tuple(g.size for g in flat))
        hit = _grad_tables.get(slot)
        key = _mt.table_key(rows)
        cap = _graphs.capturing()
        table = None
        if cap is not None:    # see Optimizer._fused_table
            table = _mt.captured_table(cap, _grad_tables, slot, hit, rows)
            if table is None:
                raise RuntimeError("gpunet.optim: a gradient list changed during CUDA-graph "
                                   "capture; run an eager step with the same parameters first")
        else:
            if hit is None or hit[0] != key:
                if len(_grad_tables) >= 256:
                    _grad_tables.clear()
                hit = _grad_tables[slot] = (key, _mt.tensor_table(xp, rows))
            table = hit[1]
        tables.append(table)
        grad_lists.append(flat)
    out = launch(tables, grad_lists)
    for g, c in back:
        g[...] = c
    return out


# -- learning-rate schedules ------------------------------------------------------------

class _Schedule:
    """Base class: sets ``optimizer.lr = lr_at(last_epoch)`` from a closed form.

    ``base_lr`` is ``optimizer.lr`` when the schedule is created; creating it sets the
    epoch-0 rate (as PyTorch does), and each ``step()`` advances ``last_epoch`` by one.
    Call ``scheduler.step()`` after ``optimizer.step()``. Closed forms (rather than
    PyTorch's chained products) make a restored schedule exact; they agree with
    PyTorch's to rounding.

    One consequence differs from PyTorch: an ``optimizer.lr`` set by hand holds only until
    the next ``step()``, which sets the closed form's rate again (PyTorch's chained
    ``StepLR`` and ``ExponentialLR`` would go on from the hand-set rate: at ``gamma=0.5``,
    ``opt.lr = 1.0`` then ``step()`` gives 0.5 there, ``base_lr·0.5**epoch`` here). To
    change a scheduled run's rates, assign ``base_lr``: every later rate follows it.
    (``ReduceLROnPlateau`` is no closed form: it reads ``optimizer.lr`` at each step, as
    PyTorch's does, so a hand-set rate carries on there.)

    ``state_dict()`` holds ``last_epoch``, ``base_lr``, the hyper-parameters ``_hyper``
    and the counters ``_counters`` (a schedule that is not a closed form keeps its position
    there: ``ReduceLROnPlateau``), each as a 0-d NumPy array.

    The hyper-parameters, ``base_lr``, ``last_epoch`` (and ``ReduceLROnPlateau``'s counters
    and ``monitor``) may be assigned: each assignment is checked as the constructor (or
    ``load_state_dict``) checks the value, so ``sched.gamma = -1`` raises there instead of
    giving negative or NaN rates, and the next ``step()`` uses the new value.
    """

    _hyper: tuple = ()
    _counters: tuple = ()
    __getattr__ = _hinted_getattr({
        name: "sched.lr (or optimizer.lr) is the current rate, a float (PyTorch's get_last_lr() is a "
              "list, one rate per group)" for name in ("get_last_lr", "get_lr")})
    base_lr = _args.checked_property(None, "base_lr", "The rate the closed form starts from (a finite "
                                     "number >= 0, checked on assignment).", _at_least)
    last_epoch = _args.integer_property(None, "last_epoch", "Steps taken (an int >= 0, checked on "
                                        "assignment; the next step() goes on from it).", low=0)

    def __init_subclass__(cls, **kwargs):
        """Each hyper-parameter a subclass lists in ``_hyper`` becomes a property checked on
        assignment by the subclass's ``_checked`` (:func:`_hyper`)."""
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("_hyper", ()):
            setattr(cls, name, _hyper(name, names="_hyper", check="_checked"))

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer (with .lr), "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._base_lr = float(optimizer.lr)
        self._last_epoch = 0
        self._start()
        optimizer.lr = self.lr

    def _store(self, hyper: dict):
        """Store checked hyper-parameters (the constructor's) behind their properties."""
        for k, v in hyper.items():
            self.__dict__["_" + k] = v

    def _start(self):
        """Set the counters of ``_counters`` to their values at creation (none here)."""

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        """The rate of the current epoch."""
        return self.lr_at(self.last_epoch)

    def step(self) -> float:
        """Advance one epoch (or step) and set ``optimizer.lr``; returns the new rate."""
        self._last_epoch += 1
        self.optimizer.lr = lr = self.lr_at(self.last_epoch)
        return lr

    def state_dict(self) -> dict:
        d = {"last_epoch": numpy.asarray(self.last_epoch, dtype=numpy.int64),
             "base_lr": numpy.asarray(self.base_lr, dtype=numpy.float64)}
        for k in self._hyper + self._counters:
            d[k] = numpy.asarray(getattr(self, k))
        return d

    @staticmethod
    def _checked(hyper: dict) -> dict:
        """``hyper`` (the values of ``_hyper``) checked as the constructor checks them."""
        return hyper

    def _checked_counters(self, counters: dict) -> dict:
        """``counters`` (the values of ``_counters``) checked: values a run can reach."""
        return counters

    def load_state_dict(self, d):
        """Restore ``last_epoch``, ``base_lr``, the hyper-parameters (and counters), and set
        ``optimizer.lr`` to the restored epoch's rate. The saved hyper-parameters replace the
        constructor's (``ExponentialLR(opt, gamma=0.9)`` loaded with a state saved at
        ``gamma=0.5`` goes on with 0.5), as PyTorch's ``load_state_dict`` restores the
        schedule's ``__dict__``; assign one after loading to change it. Raises ``ValueError`` naming each
        missing key, and a value that is not what the constructor accepts (a count that is
        not an int >= 0, a rate that is not a number >= 0, ...), before changing anything."""
        who = f"{type(self).__name__}.load_state_dict"
        if not hasattr(d, "keys"):
            raise TypeError(f"{who}: expected a dict, got {type(d).__name__}")
        names = ("last_epoch", "base_lr") + tuple(self._hyper) + tuple(self._counters)
        missing = [k for k in names if k not in d]
        if missing:
            raise ValueError(f"{who}: " + "; ".join(f"missing key {k!r}" for k in missing))
        try:
            values = {k: _state_value(k, getattr(self, k), d[k]) for k in names}
            if values["last_epoch"] < 0:
                raise ValueError(f"'last_epoch': expected an int >= 0, got {values['last_epoch']}")
            _at_least(type(self).__name__, "base_lr", values["base_lr"])
            values.update(self._checked({k: values[k] for k in self._hyper}))
            values.update(self._checked_counters({k: values[k] for k in self._counters}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{who}: {e}") from None
        for k, v in values.items():
            setattr(self, k, v)
        self.optimizer.lr = self.lr
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


class StepLR(_Schedule):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self._store(self._checked({"step_size": step_size, "gamma": gamma}))
        super().__init__(optimizer)

    @staticmethod
    def _checked(h):
        return {"step_size": _count("StepLR", "step_size", h["step_size"], 1),
                "gamma": _gamma("StepLR", h["gamma"])}

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Schedule):
    """``lr = base_lr * gamma ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR``)."""

    _hyper = ("gamma",)

    def __init__(self, optimizer, gamma):
        self._store(self._checked({"gamma": gamma}))
        super().__init__(optimizer)

    @staticmethod
    def _checked(h):
        return {"gamma": _gamma("ExponentialLR", h["gamma"])}

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(_Schedule):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``
    (``torch.optim.lr_scheduler.CosineAnnealingLR``; past ``T_max`` the cosine rises
    again, as in PyTorch, without a restart)."""

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self._store(self._checked({"T_max": T_max, "eta_min": eta_min}))
        super().__init__(optimizer)

    @staticmethod
    def _checked(h):
        return {"T_max": _count("CosineAnnealingLR", "T_max", h["T_max"], 1),
                "eta_min": _at_least("CosineAnnealingLR", "eta_min", h["eta_min"])}

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0


class LinearWarmup(_Schedule):
    """Linear warm-up from ``start_factor*base_lr`` to ``base_lr`` over ``warmup_steps``:
    ``lr = base_lr * (start_factor + (1 - start_factor) * min(epoch, warmup_steps) / warmup_steps)``,
    and exactly ``base_lr`` from ``warmup_steps`` on (PyTorch's ``LinearLR`` with
    ``end_factor=1``, ``total_iters=warmup_steps``, default ``start_factor=1/3`` as
    there). ``start_factor`` in ``(0, 1]``; ``warmup_steps=0`` means no warm-up."""

    _hyper = ("warmup_steps", "start_factor")

    def __init__(self, optimizer, warmup_steps, start_factor=1.0 / 3.0):
        self._store(self._checked({"warmup_steps": warmup_steps, "start_factor": start_factor}))
        super().__init__(optimizer)

    @staticmethod
    def _checked(h):
        steps = _count("LinearWarmup", "warmup_steps", h["warmup_steps"], 0)
        f = _args.real("LinearWarmup", "start_factor", h["start_factor"], low=0.0, high=1.0, low_open=True)
        return {"warmup_steps": steps, "start_factor": f}

    def lr_at(self, epoch):
        if epoch >= self.warmup_steps:
            return self.base_lr
        f = self.start_factor
        return self.base_lr * (f + (1.0 - f) * epoch / self.warmup_steps)


def _gamma(who, gamma):
    return _args.real(who, "gamma", gamma, low=0.0, low_open=True)


def _metric_value(who, value) -> float:
    """The monitored value given to ``ReduceLROnPlateau.step`` as a Python float: a real
    number (Python or NumPy, not a bool) or a 0-d array (NumPy, CuPy: reading one is a host
    sync; a 0-d torch tensor works too). NaN and inf pass (they count as epochs without
    improvement); anything else raises ``TypeError``."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numpy.bool_)):
        return float(value)
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if getattr(value, "ndim", None) == 0 and kind not in ("b", "c", "O", "S", "U", "V"):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise _args.ArgumentTypeError(
        f"{who}: expected metrics to be the monitored value, a real number or a 0-d array (e.g. "
        f"scheduler.step(val_loss)), got {_args._got(value)}")


def _monitor_name(who, value):
    """``ReduceLROnPlateau``'s ``monitor``: None or a string (the Trainer checks the key
    against the logs before the first epoch)."""
    if value is not None and not isinstance(value, str):
        raise _args.ArgumentTypeError(
            f"{who}: expected monitor to be None or the name of a logged value "
            f"('loss', 'accuracy', 'val_loss', 'val_accuracy'), got {_args._got(value)}")
    return value


class ReduceLROnPlateau(_Schedule):
    """Multiply the rate by ``factor`` when a monitored value has stopped improving
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``, same arguments and the same decisions).

    Call ``scheduler.step(metrics)`` once per epoch, after validation, with the value it
    watches (``metrics``: a number or a 0-d array, e.g. the validation loss); it returns
    the rate for the next epoch. Creating it leaves ``optimizer.lr`` as it is. At each step:

    * the value improves on ``best`` when, with ``mode="min"``, it is below
      ``best * (1 - threshold)`` (``threshold_mode="rel"``) or ``best - threshold``
      (``"abs"``); with ``mode="max"``, above ``best * (1 + threshold)`` or
      ``best + threshold``. ``best`` starts at +inf (``"min"``) or -inf (``"max"``), so the
      first finite value improves. An improvement sets ``best`` and resets
      ``num_bad_epochs`` to 0, anything else adds 1 to it.
    * during a cooldown (``cooldown_counter > 0``) the counter goes down by one and
      ``num_bad_epochs`` is set back to 0: bad epochs are not counted then.
    * when ``num_bad_epochs > patience`` (``patience=0``: the first epoch that does not
      improve), ``new = max(lr * factor, min_lr)`` becomes ``optimizer.lr`` if it is more
      than ``eps`` below the current rate (else the rate stays: PyTorch's ``eps`` rule),
      ``cooldown_counter = cooldown`` and ``num_bad_epochs = 0``. ``lr`` is read from
      the optimizer then, so a rate you set by hand in between is the one reduced.

    A NaN value never improves (every comparison with NaN is false, as in PyTorch and Keras):
    it counts as a bad epoch, and so does ``inf`` in ``"min"`` mode; neither becomes ``best``.
    With ``threshold_mode="rel"`` and a negative ``best``, ``best * (1 - threshold)`` lies
    above ``best`` (in ``"min"`` mode), so a value slightly worse than ``best`` counts as an
    improvement: PyTorch's rule, kept as it is; use ``"abs"`` for values that can be negative.

    Arguments (checked, ``ValueError``/``TypeError`` naming the argument): ``mode`` "min"
    or "max"; ``factor`` in ``[0, 1)``; ``patience`` and ``cooldown`` ints >= 0;
    ``threshold``, ``min_lr``, ``eps`` finite numbers >= 0; ``threshold_mode`` "rel" or
    "abs". ``min_lr`` is one number: a gpunet optimizer has one rate (PyTorch also takes a
    list, one per parameter group).

    ``monitor`` (gpunet's, keyword only; not in PyTorch) is the key of the epoch's logs that
    a ``Trainer(scheduler=...)`` steps it with: ``"loss"``, ``"accuracy"``, ``"val_loss"``
    or ``"val_accuracy"``; None (the default) watches ``"val_loss"`` when ``fit`` has
    validation data and ``"loss"`` otherwise, as Keras' callback watches ``val_loss``. The
    Trainer steps it once per epoch after validation (``scheduler_interval="step"`` is
    refused), and refuses a ``mode`` that contradicts the key (accuracy with ``"min"``, a
    loss with ``"max"``). A hand-written loop ignores ``monitor``.

    ``state_dict()`` holds the hyper-parameters, ``last_epoch`` (steps taken), ``best``,
    ``num_bad_epochs``, ``cooldown_counter`` and ``last_lr`` (the rate after the last
    step); ``load_state_dict`` checks them all and sets ``optimizer.lr = last_lr``, so a
    run resumed from a checkpoint (``gpunet.save(..., scheduler=)``) reduces the rate at
    the same epochs as the run it continues. ``monitor`` is not saved: it is the resumed
    Trainer's choice. ``base_lr`` is the rate at creation, for reference.
    """

    _hyper = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    _counters = ("best", "num_bad_epochs", "cooldown_counter", "last_lr")
    # the counters, checked when assigned (a resumed or hand-steered run), written by step()
    # behind the properties
    best = _args.real_property("ReduceLROnPlateau", "best", "The best monitored value so far (a number or "
                               "+-inf, not NaN).", finite=False)
    num_bad_epochs = _args.integer_property("ReduceLROnPlateau", "num_bad_epochs", "Epochs without "
                                            "improvement since the last (an int >= 0).", low=0)
    cooldown_counter = _args.integer_property("ReduceLROnPlateau", "cooldown_counter", "Epochs of cooldown "
                                              "left (an int >= 0).", low=0)
    last_lr = _args.checked_property("ReduceLROnPlateau", "last_lr", "The rate after the last step (a "
                                     "finite number >= 0).", _at_least)
    monitor = _args.checked_property("ReduceLROnPlateau", "monitor", "The logged value a Trainer steps it "
                                     "with (None or a name; checked on assignment).",
                                     lambda who, name, value: _monitor_name(who, value))

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8, *, monitor=None):
        self._store(self._checked({
            "mode": mode, "factor": factor, "patience": patience, "threshold": threshold,
            "threshold_mode": threshold_mode, "cooldown": cooldown, "min_lr": min_lr, "eps": eps}))
        self.monitor = monitor
        super().__init__(optimizer)

    @staticmethod
    def _checked(h):
        who = "ReduceLROnPlateau"
        return {"mode": _args.choice(who, "mode", h["mode"], ("min", "max")),
                "factor": _args.real(who, "factor", h["factor"], low=0.0, high=1.0, high_open=True),
                "patience": _count(who, "patience", h["patience"], 0),
                "threshold": _at_least(who, "threshold", h["threshold"]),
                "threshold_mode": _args.choice(who, "threshold_mode", h["threshold_mode"], ("rel", "abs")),
                "cooldown": _count(who, "cooldown", h["cooldown"], 0),
                "min_lr": _at_least(who, "min_lr", h["min_lr"]),
                "eps": _at_least(who, "eps", h["eps"])}

    def _checked_counters(self, c):
        who = "ReduceLROnPlateau"
        if math.isnan(c["best"]):
            raise ValueError("'best': expected a number or +-inf, got nan")
        return {"best": c["best"],
                "num_bad_epochs": _count(who, "num_bad_epochs", c["num_bad_epochs"], 0),
                "cooldown_counter": _count(who, "cooldown_counter", c["cooldown_counter"], 0),
                "last_lr": _at_least(who, "last_lr", c["last_lr"])}

    def _start(self):
        self._best = math.inf if self.mode == "min" else -math.inf
        self._num_bad_epochs = 0
        self._cooldown_counter = 0
        self._last_lr = self.base_lr

    @property
    def lr(self) -> float:
        """The rate after the last ``step`` (at creation: the optimizer's rate then)."""
        return self.last_lr

    def lr_at(self, epoch):
        raise TypeError("ReduceLROnPlateau has no closed form: its rate depends on the values "
                        "given to step(); read .lr (the current rate)")

    def _is_better(self, value, best) -> bool:
        """Whether ``value`` improves on ``best`` under ``mode``, ``threshold_mode`` and
        ``threshold`` (False for NaN)."""
        t = self.threshold
        if self.mode == "min":
            return value < (best * (1.0 - t) if self.threshold_mode == "rel" else best - t)
        return value > (best * (t + 1.0) if self.threshold_mode == "rel" else best + t)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metrics=None) -> float:
        """One epoch with the monitored value ``metrics``; reduces ``optimizer.lr`` after
        more than ``patience`` epochs without improvement (see the class docstring) and
        returns the rate for the next epoch."""
        current = _metric_value("ReduceLROnPlateau.step", metrics)
        self._last_epoch += 1
        if self._is_better(current, self.best):
            self._best = current
            self._num_bad_epochs = 0
        else:
            self._num_bad_epochs += 1
        if self.in_cooldown:
            self._cooldown_counter -= 1
            self._num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = _at_least("ReduceLROnPlateau.step", "optimizer.lr", self.optimizer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self._cooldown_counter = self.cooldown
            self._num_bad_epochs = 0
        self._last_lr = lr = float(self.optimizer.lr)
        return lr

    def __repr__(self):
        monitor = "" if self.monitor is None else f", monitor={self.monitor!r}"
        return f"{super().__repr__()[:-1]}{monitor}, best={self.best!r}, num_bad_epochs={self.num_bad_epochs})"
