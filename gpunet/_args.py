"""Checks of the arguments of public constructors and functions, shared by the whole package.

Each check returns the value as a plain Python ``bool``/``int``/``float`` or raises:
``ArgumentTypeError`` for a value of the wrong type (a string or an int where a bool is
expected, a float or a bool where an int is, a bool or a string where a number is),
``ValueError`` for a value of the right type outside its range (NaN, inf, a negative rate).
``ArgumentTypeError`` is a ``TypeError`` and also a ``ValueError`` (as NumPy's ``AxisError``
is both a ``ValueError`` and an ``IndexError``): several of gpunet's checks raised
``ValueError`` for a wrong type before they shared this module (PyTorch's ``DataLoader``
does too, for ``batch_size="8"``), and code that catches either keeps working. The message
names the caller (``who``: a class, ``Class.method`` or function), the argument, what was
expected and what was given::

    DataLoader: expected drop_last to be a bool (True or False), got 'no' (str)

NumPy's scalars count as what they hold (``numpy.bool_`` as a bool, ``numpy.int64`` as an
int, ``numpy.float32`` as a number): users pass them. A bool is never an int or a number
here, although Python's ``bool`` subclasses ``int``: ``Maxout(True)`` or ``lr=True`` is a
slip, not a request for 1.

These run in constructors and setters, once. Per training step they run only on a slow
path: the optimizer's check of a reassigned ``lr`` calls ``real`` only when ``lr`` is not
already a finite Python float >= 0 (``Optimizer._current_lr``), and the functions of
``gpunet.functional`` check their hyper-parameters (``inplace``, ``axis``, ``eps``,
``pieces``, a dropout draw's ints, ``need_dx``...) with one type test and a range test
(tens of nanoseconds, against microseconds for the op), calling a check here only for a
value that fails them: a NumPy scalar, or a wrong one.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy

_BOOLS = (bool, numpy.bool_)


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (see the module docstring: also a ``ValueError``)."""


def _got(value) -> str:
    """``value`` as a type error shows it: its repr and, unless the repr says it, its type."""
    r = repr(value)
    if len(r) > 80:
        r = r[:77] + "..."
    name = type(value).__name__
    return r if r.startswith(("np.", "numpy.", name)) or value is None else f"{r} ({name})"


def unexpected_keyword(who: str, unknown: dict, hints: dict) -> TypeError:
    """The ``TypeError`` Python raises for an unknown keyword (the first of ``unknown``),
    plus, for Keras' names in ``hints``, what gpunet takes instead. A hint may be a pair
    ``(hint, "PyTorch's")`` for a name that is another framework's."""
    k = next(iter(unknown))
    hint, whose = hints.get(k), "Keras'"
    if isinstance(hint, tuple):
        hint, whose = hint
    if hint is not None and not hint.startswith("gpunet"):
        hint = f"gpunet takes {hint}"
    return TypeError(f"{who}() got an unexpected keyword argument {k!r}"
                     + ("" if hint is None else f"; {hint} ({whose} {k}= is not one of its names)"))


def set_to_none(who: str, value) -> None:
    """``zero_grad``'s ``set_to_none`` (PyTorch's keyword): True, PyTorch's default, is what
    gpunet's ``zero_grad`` does; False (zeros kept in place) raises ``ValueError`` saying so,
    rather than leaving ``grad`` None where the caller expects zeros."""
    if flag(who, "set_to_none", value):
        return
    raise ValueError(f"{who}: set_to_none=False is not supported: gpunet's zero_grad sets every grad "
                     f"to None (PyTorch's default, set_to_none=True), and the next backward assigns the "
                     f"gradients, so the step is the same; for zeros to add into, assign p.grad = "
                     f"xp.zeros_like(p.data) yourself")


def flag(who: str, name: str, value) -> bool:
    """``value`` (a bool or ``numpy.bool_``) as a bool; anything else, even ``0``/``1`` or
    ``"no"``, raises ``TypeError`` (taken by truthiness, ``"no"`` would mean True)."""
    if isinstance(value, _BOOLS):
        return bool(value)
    raise ArgumentTypeError(f"{who}: expected {name} to be a bool (True or False), got {_got(value)}")


def checked_property(who: str, name: str, doc: str, check, *, then=None, child: bool = False,
                     **limits) -> property:
    """A public attribute that users assign (``Dense.input_grad``, ``DataLoader.batch_size``,
    ``SGD.momentum``), as a property: the assignment goes through ``check(who, name, value,
    **limits)`` (one of the checks here), so ``loader.batch_size = 2.5`` raises as the
    constructor's argument does instead of failing later, or being used as it is, and the
    value the check returns (a Python ``bool``/``int``/``float``) is stored in the
    instance's ``__dict__`` under ``_<name>``. Reading it calls a C ``operator.attrgetter``,
    no Python function (about 70 ns against 11 ns for a plain attribute): cheap enough for
    a few reads per step, not for one per element. ``who``: the class named in errors,
    None for the instance's class. ``then(self)``, when given, runs after each assignment
    and recomputes what the instance derived from the value (an activation's keyword
    arguments): the per-step path then reads what it read before, with no check on it.
    ``child=True``: a layer held by a layer (``Dense.activation``, ``Residual.block``), which
    ``Layer.named_children``/``named_parameters``/``state_dict`` find in ``vars(layer)`` by
    its name: it is stored under ``name`` itself (the property still comes first), so those
    keep their names; a read is then a Python function, ~35 ns more."""
    key = name if child else "_" + name

    def set_value(self, value):
        self.__dict__[key] = check(who or type(self).__name__, name, value, **limits)
        if then is not None:
            then(self)

    get = (lambda self: self.__dict__[key]) if child else operator.attrgetter(key)
    return property(get, set_value, doc=doc)


def read_only(who: str, name: str, doc: str, hint: str) -> property:
    """A public attribute fixed at construction because something was derived from it (a
    layer's weight shape from ``in_features``, a loader's device copy from ``X``): reading
    it is a C ``operator.attrgetter`` of ``_<name>`` (the constructor stores it there);
    assigning it raises ``AttributeError`` naming ``who`` and saying, in ``hint``, how to get
    what the assignment wanted (``"create a new DataLoader(X, y, ...)"``), instead of being
    stored and ignored, or breaking the next step."""
    def refuse(self, value):
        raise AttributeError(f"{who or type(self).__name__}: {name} cannot be assigned after "
                             f"construction; {hint}")

    return property(operator.attrgetter("_" + name), refuse, doc=doc)


def flag_property(who: str, name: str, doc: str) -> property:
    """A bool attribute checked on assignment by :func:`flag` (``layer.input_grad = "no"``
    raises instead of being read as True later); see :func:`checked_property`."""
    return checked_property(who, name, doc, flag)


def integer_property(who: str, name: str, doc: str, low: int | None = None) -> property:
    """An int attribute checked on assignment by :func:`integer` (``>= low``; a float, a
    bool or a string raises); see :func:`checked_property`."""
    return checked_property(who, name, doc, integer, low=low)


def real_property(who: str, name: str, doc: str, **limits) -> property:
    """A real-number attribute checked on assignment by :func:`real` with ``limits``
    (``low``, ``high``, ``low_open``, ``high_open``, ``finite``); see
    :func:`checked_property`."""
    return checked_property(who, name, doc, real, **limits)


def communicator(who: str, name: str, value, needs=("rank", "size"), none: bool = False):
    """``value`` when it has the attributes ``needs`` of a ``gpunet.distributed``
    communicator (by attribute, not by class: a wrapper or a test's fake world works too);
    ``none=True`` lets None through. Anything else raises ``ArgumentTypeError``."""
    if value is None and none:
        return None
    if value is None or not all(hasattr(value, a) for a in needs):
        raise ArgumentTypeError(f"{who}: expected {name} to be {'None or ' if none else ''}a gpunet.distributed "
                                f"communicator (gpunet.distributed.init()), got {_got(value)}")
    return value


def choice(who: str, name: str, value, choices: tuple):
    """``value`` when it is one of the strings ``choices``; a non-string raises
    ``ArgumentTypeError``, another string ``ValueError``, both naming the choices."""
    names = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}" if len(choices) > 1 else repr(choices[0])
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{who}: expected {name} to be {names}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{who}: expected {name} to be {names}, got {value!r}")
    return str(value)


def _int_text(low, none) -> str:
    what = ("an int" if low is None else "a positive int" if low == 1
            else f"an int >= {low}")
    return f"None or {what}" if none else what


def integer(who: str, name: str, value, low: int | None = None, none: bool = False):
    """``value`` (an int or ``numpy.integer``, not a bool) as an int ``>= low`` (None: any);
    ``none=True`` lets None through as None. A float, even ``3.0``, raises
    ``ArgumentTypeError``: a count is never rounded."""
    if value is None and none:
        return None
    if isinstance(value, _BOOLS) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{who}: expected {name} to be {_int_text(low, none)}, got {_got(value)}")
    if low is not None and value < low:
        raise ValueError(f"{who}: expected {name} to be {_int_text(low, none)}, got {value!r}")
    return int(value)


def _bounds(low, high, low_open, high_open) -> str:
    """The range as the messages write it: ``>= 0``, ``> 0``, ``in [0, 1)``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def real(who: str, name: str, value, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, finite: bool = True, none: bool = False):
    """``value`` (an int, a float or a NumPy real scalar; not a bool, not a string) as a
    Python float (a NumPy float64 scalar would promote float32 arithmetic) within the bounds:
    ``low``/``high`` (None: unbounded), excluded when ``low_open``/``high_open``. NaN is never
    accepted; ``finite=False`` lets ``inf`` through (a threshold such as ``max_norm=inf``
    that means "no limit"); ``none=True`` lets None through as None."""
    if value is None and none:
        return None
    if isinstance(value, _BOOLS) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{who}: expected {name} to be {'None or ' if none else ''}a real number, "
                                f"got {_got(value)}")
    v = float(value)
    ok = not math.isnan(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        if low is None and high is None:
            raise ValueError(f"{who}: expected {name} to be a number, got {value!r}")
        raise ValueError(f"{who}: expected {name} {_bounds(low, high, low_open, high_open)}, got {value!r}")
    if finite and not math.isfinite(v):
        raise ValueError(f"{who}: expected {name} to be finite, got {value!r}")
    return v
