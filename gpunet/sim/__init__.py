"""``"sim"``: the simulated CUDA device (DESIGN §12).

Everything that happens on ``"cuda"`` happens on ``"sim"``, executed on the CPU:

* ``gpunet.sim.array`` is its array module, CuPy-compatible and backed by NumPy
  (``gpunet.backend.get_array_module`` returns it for sim arrays);
* ``gpunet.sim.runtime`` compiles ``kernels/*.cu`` with the host C++ compiler and runs
  them with CUDA semantics (``RawModule``/``RawKernel``, as ``cupy`` has them);
* ``counters()`` / ``reset_counters()`` are the GPU cost model that needs no GPU.

The simulated GPU has ``MULTIPROCESSOR_COUNT`` SMs (see ``gpunet.sim._cuda``).
"""
import os
import shutil

from . import _counters
from ._cuda import _MULTIPROCESSOR_COUNT as MULTIPROCESSOR_COUNT


def counters() -> dict:
    """The cost counters since the last reset: ``launches`` (kernel launches and array
    ops, each counted as CuPy would launch it), ``kernels`` (launches per kernel or op
    name), ``syncs`` (host synchronizations), ``h2d_bytes`` / ``d2h_bytes`` (bytes copied
    host-to-device / device-to-host), ``allocs`` (device allocations) and ``alloc_bytes``."""
    return _counters.snapshot()


def reset_counters() -> None:
    """Zero every counter."""
    _counters.reset()


_found: dict = {}   # (CXX, PATH) -> compiler path or None: every launcher asks


def compiler():
    """The host C++ compiler the sim builds kernels with (``$CXX``, else ``g++``, ``c++``
    or ``clang++`` on the PATH), or None when there is none."""
    cxx, path = os.environ.get("CXX"), os.environ.get("PATH")
    key = (cxx, path)
    if key not in _found:
        if cxx:
            _found[key] = shutil.which(cxx.split()[0], path=path)
        else:
            _found[key] = next(filter(None, (shutil.which(n, path=path)
                                             for n in ("g++", "c++", "clang++"))), None)
    return _found[key]


def require():
    """Return the sim array module, or raise a one-line ``RuntimeError`` saying why the
    sim device cannot run (it needs a host C++ compiler to build the kernels)."""
    if compiler() is None:
        raise RuntimeError("the 'sim' device needs a C++ compiler to build the CUDA kernels "
                           "for the CPU: none found ($CXX, g++, c++, clang++); install g++")
    from . import array
    return array


__all__ = ["counters", "reset_counters", "compiler", "require", "MULTIPROCESSOR_COUNT"]
