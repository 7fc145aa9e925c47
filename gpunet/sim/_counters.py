"""The sim device's cost counters: the GPU cost model that needs no GPU.

Every place where the simulated device does something that costs on a real GPU counts it
here, at the moment it happens:

* ``launch(name)``: one kernel launch (a RawKernel call, or an array op that CuPy would
  run as one elementwise/reduction kernel); ``name`` is the kernel's name expression or
  the op's name.
* ``sync()``: one host synchronization (``.get()``, ``float()``, ``int()``, ``bool()``,
  ``.item()``, printing, a device-to-host copy).
* ``h2d(nbytes)`` / ``d2h(nbytes)``: bytes copied host-to-device / device-to-host.
* ``alloc(nbytes)``: one device allocation of ``nbytes``.

``snapshot()`` returns a copy; ``reset()`` zeroes everything. ``gpunet.sim.counters()``
and ``gpunet.sim.reset_counters()`` are the public names.
"""
from __future__ import annotations

from collections import Counter

_state = {"launches": 0, "syncs": 0, "h2d_bytes": 0, "d2h_bytes": 0, "allocs": 0, "alloc_bytes": 0}
_kernels: Counter = Counter()


def launch(name: str, n: int = 1) -> None:
    _state["launches"] += n
    _kernels[name] += n


def sync() -> None:
    _state["syncs"] += 1


def h2d(nbytes: int) -> None:
    _state["h2d_bytes"] += int(nbytes)


def d2h(nbytes: int) -> None:
    _state["d2h_bytes"] += int(nbytes)


def alloc(nbytes: int) -> None:
    _state["allocs"] += 1
    _state["alloc_bytes"] += int(nbytes)


def snapshot() -> dict:
    d = dict(_state)
    d["kernels"] = dict(_kernels)
    return d


def reset() -> None:
    for k in _state:
        _state[k] = 0
    _kernels.clear()
