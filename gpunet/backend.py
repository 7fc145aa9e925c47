"""The one place that decides between NumPy and CuPy.

Everything else in gpunet writes ``xp = get_array_module(x)`` and calls ``xp.<op>``.
CuPy is imported lazily, on the first question that needs it, and the import error is
kept so that asking for CUDA can say *why* it is unavailable.

Devices are strings: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and ``"sim"``, the simulated CUDA
device (``gpunet.sim``): its arrays belong to ``gpunet.sim.array``, a CuPy-compatible module
backed by NumPy, so code written against ``xp`` takes the CUDA branch on it.
"""
from __future__ import annotations

import os
import platform

import numpy

from .sim import array as _sim_array
from .sim.array import ndarray as _SimArray

_cupy = None            # the module, once imported
_cupy_error = None      # why importing it failed
_cupy_tried = False
_device_count = (None, 0)   # (cupy module, CUDA devices it sees), once asked successfully


def _import_cupy():
    """Return the cupy module, or None (the reason is kept in ``_cupy_error``)."""
    global _cupy, _cupy_error, _cupy_tried
    if not _cupy_tried:
        _cupy_tried = True
        try:
            import cupy
            _cupy = cupy
        except Exception as e:  # ImportError, or a broken CUDA install raising anything
            _cupy_error = e
    return _cupy


def cupy_module():
    """The cupy module if it is importable, else None."""
    return _import_cupy()


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return bool(cp.cuda.is_available())
    except Exception:
        return False


def _is_cupy_array(x) -> bool:
    # Checked by type name so that asking never imports CuPy; once CuPy is imported, its
    # subclasses count too (a softmax-CE loss is one: gpunet.cuda.softmax_xent).
    if type(x).__module__.split(".")[0] == "cupy":
        return hasattr(x, "device")
    nd = getattr(_cupy, "ndarray", None)
    return nd is not None and isinstance(x, nd)


def _is_sim_array(x) -> bool:
    return isinstance(x, _SimArray)


def is_array(x) -> bool:
    """True for what layers and losses compute on: a NumPy, CuPy or sim array (an ``ndim``, a
    ``shape`` and a NumPy ``dtype``). A ``torch.Tensor`` has the first two but torch's dtype,
    and NumPy's operations on it fail deep inside: it is not one (see ``array_hint``)."""
    return isinstance(x, numpy.ndarray) or (hasattr(x, "ndim") and hasattr(x, "shape")
                                            and isinstance(getattr(x, "dtype", None), numpy.dtype))


def array_hint(x) -> str:
    """The way from ``x`` to an array, for the error that refuses it: a PyTorch tensor's
    ``.numpy()`` (gpunet never converts another framework's tensors behind your back)."""
    if type(x).__module__.split(".")[0] == "torch":
        return "; a torch.Tensor becomes a NumPy array with x.numpy() (x.detach().cpu().numpy() on a GPU)"
    return ""


def device_mismatch(x, ref):
    """``None`` when ``x`` is on ``ref``'s device (two NumPy arrays: one type comparison, the
    CPU's every call), else ``(device of x, device of ref)`` for the caller's error."""
    if type(x) is type(ref) is numpy.ndarray:
        return None
    dx, dr = device_of(x), device_of(ref)
    return None if dx == dr else (dx, dr)


def device_of(x) -> str:
    """The device string of an array: ``"cpu"``, ``"cuda:N"`` or ``"sim"``."""
    if _is_cupy_array(x):
        return f"cuda:{x.device.id}"
    if _is_sim_array(x):
        return "sim"
    return "cpu"


def get_array_module(*arrays):
    """Return ``numpy``, ``cupy`` or the sim's ``gpunet.sim.array``, whichever module the
    array arguments belong to.

    Non-array arguments (Python scalars, None) are ignored. Mixing arrays of different
    devices raises ``TypeError`` naming both: gpunet never transfers data silently.
    """
    xp = None
    first = None
    for a in arrays:
        if isinstance(a, numpy.ndarray) or isinstance(a, numpy.generic):
            mod = numpy
        elif _is_cupy_array(a):
            mod = _cupy if _cupy is not None else _import_cupy()
        elif _is_sim_array(a):
            mod = _sim_array
        else:
            continue
        if xp is None:
            xp, first = mod, a
        elif mod is not xp:
            raise TypeError(
                f"arrays on different devices in one call: {device_of(first)} and "
                f"{device_of(a)}; move them with gpunet.to_device(x, device) first")
    return numpy if xp is None else xp


def _parse(device, who=None) -> tuple[str, int]:
    """``(kind, index)`` of a device string; the errors start with ``who`` (the caller) when
    given."""
    if device is None:
        device = default_device()
    if not isinstance(device, str):
        raise TypeError(f"{who + ': ' if who else ''}device must be a string like 'cpu', 'cuda', 'cuda:0' or 'sim', "
                        f"got {device!r}")
    d = device.strip().lower()
    if d == "cpu":
        return "cpu", 0
    if d == "sim":
        return "sim", 0
    if d == "cuda":
        return "cuda", 0
    if d.startswith("cuda:") and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise ValueError(f"{who + ': ' if who else ''}unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'sim'")


def require_cuda(index: int = 0):
    """Return cupy, or raise ``RuntimeError`` saying why CUDA cannot be used.

    The device count is asked once and cached (CUDA does not add devices to a running
    process), so per-step callers (``to_device``, the kernel launchers) make no query."""
    global _device_count
    if _device_count[0] is not None and _device_count[0] is _cupy and 0 <= index < _device_count[1]:
        return _cupy
    cp = _import_cupy()
    if cp is None:
        raise RuntimeError(
            "CUDA was requested but CuPy is not installed "
            f"({type(_cupy_error).__name__}: {_cupy_error}). Install the extra for your "
            "CUDA toolkit: pip install 'gpunet[cuda12]' or pip install 'gpunet[cuda13]'.")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise RuntimeError(
            f"CUDA was requested; CuPy {cp.__version__} is installed but cannot reach a GPU "
            f"({type(e).__name__}: {e}). Check the NVIDIA driver and CUDA_VISIBLE_DEVICES, "
            "or use device='cpu'.") from e
    if n == 0:
        raise RuntimeError(
            f"CUDA was requested; CuPy {cp.__version__} is installed but no CUDA device is "
            "visible. Check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use device='cpu'.")
    if index >= n:
        raise RuntimeError(f"cuda:{index} requested but only {n} CUDA device(s) are visible")
    _device_count = (cp, n)
    return cp


def require_sim():
    """Return the sim array module, or raise a one-line ``RuntimeError`` saying why the
    sim device is unavailable (no host C++ compiler)."""
    from . import sim
    return sim.require()


def default_device() -> str:
    """The device from ``GPUNET_DEVICE`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` |
    ``sim``, any case; default ``auto``).

    ``auto`` means CUDA when CuPy is importable and sees a device, else the CPU (never the
    sim unless asked). ``cuda`` where there is none, or ``sim`` without a C++ compiler,
    raises ``RuntimeError`` with the reason.
    """
    choice = os.environ.get("GPUNET_DEVICE", "auto").strip().lower() or "auto"
    if choice == "auto":
        return "cuda" if cuda_available() else "cpu"
    try:
        kind, index = _parse(choice)
    except ValueError:
        raise ValueError(f"GPUNET_DEVICE={os.environ['GPUNET_DEVICE']!r}: expected 'auto', 'cpu', "
                         "'cuda', 'cuda:N' (N a device index) or 'sim'") from None
    if kind == "sim":
        require_sim()
    elif kind == "cuda":
        require_cuda(index)
    return choice


def resolve_device(device=None, who=None) -> str:
    """Normalize a device argument (None = default device) and check it is usable. A device
    that is not a string raises ``TypeError``, an unknown name ``ValueError``, both starting
    with ``who`` (the caller, e.g. ``"DataLoader"``) when given."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return default_device()
    kind, index = _parse(device, who)
    if kind == "cpu":
        return "cpu"
    if kind == "sim":
        require_sim()
        return "sim"
    require_cuda(index)
    return f"cuda:{index}"


def host_array(x):
    """``x`` (not an array) as a NumPy array, with PyTorch's default dtypes: through
    ``numpy.asarray``, except that Python floats (a float, or lists/tuples holding floats)
    become float32, as ``torch.tensor([0.5, 1.0])`` makes them (torch's default dtype, and
    gpunet's parameters'); NumPy would make them float64, which a float32 model's first layer
    refuses. Python ints stay int64 and bools bool, as in PyTorch. Anything with a dtype of
    its own (a NumPy scalar, a CPU ``torch.Tensor``, whose ``__array__`` NumPy uses) keeps
    it, as ``torch.from_numpy`` keeps a NumPy array's."""
    typed = hasattr(x, "dtype")
    a = numpy.asarray(x)
    if a.dtype == numpy.float64 and not typed:
        a = a.astype(numpy.float32)
    return a


def to_device(x, device):
    """Return ``x`` as an array on ``device`` (a copy only when it has to move).

    An array (NumPy, CuPy, sim; a NumPy scalar too) keeps its dtype, as ``torch.from_numpy``
    does. Anything else goes through ``host_array`` first: Python floats and lists of them
    become float32, as ``torch.tensor`` makes them (``to_device([0.5, 1.0], "cpu")`` is
    float32, ``to_device(numpy.array([0.5, 1.0]), "cpu")`` stays float64), ints int64."""
    kind, index = _parse(resolve_device(device, "to_device"))
    if not is_array(x):
        x = host_array(x)
    if kind == "cpu":
        return to_numpy(x)
    if kind == "sim":
        if _is_sim_array(x):
            return x
        return _sim_array.asarray(to_numpy(x))
    cp = require_cuda(index)
    if _is_cupy_array(x) and x.device.id == index:
        return x
    if _is_sim_array(x):
        x = x.get()
    with cp.cuda.Device(index):
        return cp.asarray(x)


def to_numpy(x):
    """Return ``x`` as a NumPy array (copying from the GPU when needed). Anything that is
    not an array goes through ``numpy.asarray`` as it is (Python floats become float64, as
    in NumPy); ``to_device(x, "cpu")`` gives PyTorch's float32 for them instead."""
    if _is_cupy_array(x) or _is_sim_array(x):
        return x.get()
    return numpy.asarray(x)


def synchronize(x=None):
    """Wait for queued GPU work (a no-op on the CPU; a counted sync on the sim); used by
    timing code."""
    if _is_sim_array(x):
        _sim_array.cuda.get_current_stream().synchronize()
        return
    if _cupy is not None and (x is None or _is_cupy_array(x)):
        try:
            _cupy.cuda.get_current_stream().synchronize()
        except Exception:
            pass


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name", read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
