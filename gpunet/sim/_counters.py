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

* ``graph_launch()``: one CUDA-graph launch (``cudaGraphLaunch``): one launch, named
  ``"cudaGraphLaunch"``, and one ``graph_launches``.
* ``h2d_async(nbytes)``: bytes copied host-to-device from pinned memory, asynchronously
  (no sync; counted in ``h2d_bytes`` and ``h2d_async_bytes``).

``snapshot()`` returns a copy; ``reset()`` zeroes everything. ``gpunet.sim.counters()``
and ``gpunet.sim.reset_counters()`` are the public names.

CUDA-graph capture and replay (``cupy.cuda.Stream.begin_capture``/``end_capture``,
``cupy.cuda.Graph.launch`` of the sim, ``gpunet.sim._cuda``): while a stream captures,
every launch, kernel argument list, operand address and allocation is appended to a
``Trace`` (the capture still executes: the sim cannot defer work), and each allocation's
buffer is kept by the trace, as a graph-private memory pool keeps a graph's buffers. A
replay re-runs the Python that captured the work with the trace in *replay* mode: each
event must be the captured one (the same kernel, the same argument bytes, the same operand
addresses), each allocation gets the captured buffer back (same shape and dtype, else an
error), and launches are not counted (the graph launch is). A host sync or a synchronous
copy while capturing or replaying raises ``RuntimeError``, as CUDA refuses them
(``cudaErrorStreamCaptureUnsupported``).
"""
from __future__ import annotations

import contextlib
from collections import Counter

_state = {"launches": 0, "syncs": 0, "h2d_bytes": 0, "d2h_bytes": 0, "allocs": 0, "alloc_bytes": 0,
          "graph_launches": 0, "h2d_async_bytes": 0}
_kernels: Counter = Counter()


class GraphReplayError(RuntimeError):
    """A replay that does not repeat its capture: a CUDA graph would silently use the
    captured addresses and arguments."""


class Trace:
    """What a capture recorded: ``events`` (kind, value) in order, ``pool`` (the buffers
    allocated while capturing, kept alive: the graph's private memory)."""

    def __init__(self):
        self.events = []
        self.pool = []

    def __repr__(self):
        launches = sum(1 for k, _ in self.events if k == "launch")
        return f"<sim graph trace: {launches} launches, {len(self.pool)} buffers>"


_mode = None      # None, ["capture", trace] or ["replay", trace, event index, pool index]


def capturing() -> bool:
    return _mode is not None


def begin_capture() -> None:
    global _mode
    if _mode is not None:
        raise RuntimeError("cudaErrorIllegalState: a stream is already capturing (the sim "
                           "captures one graph at a time)")
    _mode = ["capture", Trace()]


def end_capture() -> Trace:
    global _mode
    if _mode is None or _mode[0] != "capture":
        raise RuntimeError("cudaErrorIllegalState: end_capture without begin_capture")
    trace, _mode = _mode[1], None
    return trace


@contextlib.contextmanager
def outside_capture():
    """Run the body as host code between launches would run, outside the capture being
    recorded (``CUDAGraph`` runs a hook registered during a sim capture there: on CUDA it
    would run before the graph's first launch, which on the sim is the capture itself)."""
    global _mode
    if _mode is None or _mode[0] != "capture":
        raise RuntimeError("gpunet.sim: outside_capture() is for the body of a capture")
    saved, _mode = _mode, None
    try:
        yield
    finally:
        _mode = saved


def _last_launch(trace, upto):
    for k, v in reversed(trace.events[:upto]):
        if k == "launch":
            return v
    return None


def replay(trace, run) -> None:
    """Run ``run()`` (the Python that captured ``trace``) in replay mode: see the module doc."""
    global _mode
    if _mode is not None:
        raise RuntimeError("cudaErrorIllegalState: a graph launch while a stream captures")
    graph_launch()
    _mode = ["replay", trace, 0, 0]
    try:
        run()
        pos, k = _mode[2], _mode[3]
        if pos != len(trace.events) or k != len(trace.pool):
            raise GraphReplayError(
                f"CUDA graph replay: the step issued {pos} of the {len(trace.events)} captured "
                f"events and {k} of the {len(trace.pool)} captured allocations (it stopped after "
                f"{_last_launch(trace, pos)!r}); a graph replays exactly what was captured")
    finally:
        _mode = None


def event(kind: str, value) -> None:
    """Record (capture) or check (replay) one event; nothing otherwise."""
    m = _mode
    if m is None:
        return
    if m[0] == "capture":
        m[1].events.append((kind, value))
        return
    trace, pos = m[1], m[2]
    want = trace.events[pos] if pos < len(trace.events) else None
    if want != (kind, value):
        last = _last_launch(trace, pos + (1 if want and want[0] == "launch" else 0))
        raise GraphReplayError(
            f"CUDA graph replay, event {pos} (at {last!r}): captured {_show(want)}, replayed "
            f"{_show((kind, value))}. A graph re-runs the captured kernels on the captured "
            "addresses with the captured arguments: a buffer was reallocated, or a host value "
            "changed, since capture; keep inputs in static buffers (copy each batch into "
            "them) and update state in place")
    m[2] = pos + 1


def _show(ev):
    if ev is None:
        return "nothing (the capture had ended)"
    kind, v = ev
    if kind == "args":
        name, raw = v
        return f"kernel {name} with arguments {raw.hex()}"
    if kind == "operand" and isinstance(v, tuple):
        return f"an operand at 0x{v[0]:x} ({v[1]} bytes)"
    return f"{kind} {v!r}"


def pool_buffer(shape, dtype):
    """In replay: the captured buffer of the next allocation (checked); None otherwise."""
    m = _mode
    if m is None or m[0] != "replay":
        return None
    trace, k = m[1], m[3]
    if k >= len(trace.pool):
        raise GraphReplayError(f"CUDA graph replay: an allocation of {shape} {dtype} that the "
                               f"capture did not make (it made {len(trace.pool)})")
    buf = trace.pool[k]
    if buf.shape != tuple(shape) or buf.dtype != dtype:
        raise GraphReplayError(f"CUDA graph replay: allocation {k} is {tuple(shape)} {dtype}, the "
                               f"captured one was {buf.shape} {buf.dtype}")
    m[3] = k + 1
    event("alloc", (buf.shape, buf.dtype.str))
    return buf


def pool_keep(a) -> None:
    """In capture: keep the new buffer ``a`` as the graph's (and note the allocation)."""
    m = _mode
    if m is not None and m[0] == "capture":
        m[1].pool.append(a)
        m[1].events.append(("alloc", (a.shape, a.dtype.str)))
    elif m is not None:
        event("alloc", (a.shape, a.dtype.str))


def _refuse(what):
    if _mode is not None:
        raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: operation not permitted when "
                           f"stream is capturing ({what} during CUDA-graph "
                           f"{'capture' if _mode[0] == 'capture' else 'replay'}: a graph cannot "
                           "wait for the host or copy from pageable host memory)")


# Host-to-device copies issued on a stream and not yet known to be waited for by the
# stream that reads their destination: (start, end, stream, op number, weak reference to
# the destination buffer: an entry goes with its buffer, whose memory NumPy may reuse).
_pending: list = []


def copy_on_stream(a, stream) -> None:
    """``a`` (a NumPy buffer of a sim array) was filled by an async copy enqueued on
    ``stream``: a read of it from another stream must first wait for an event recorded on
    ``stream`` after the copy (``Stream.wait_event``)."""
    import weakref
    start = a.ctypes.data
    _pending.append((start, start + a.nbytes, stream, stream._enqueue(), weakref.ref(a)))


def check_ready(a) -> None:
    """Raise if ``a`` (a NumPy buffer about to be read) overlaps a copy on another stream
    that the current stream has not waited for; forget the copies it has waited for."""
    from ._cuda import get_current_stream
    cur = get_current_stream()
    start = a.ctypes.data
    end = start + max(a.nbytes, 1)
    for entry in list(_pending):
        s0, e0, stream, q, alive = entry
        if alive() is None:              # the copy's destination is gone (never read)
            _pending.remove(entry)
            continue
        if s0 < end and start < e0:
            if not cur._has_waited(stream, q):
                raise RuntimeError(
                    f"gpunet.sim: an array is read on {cur!r} while its host-to-device copy on "
                    f"{stream!r} may still be running: record an event on the copy's stream "
                    "after the copy and make the reading stream wait for it "
                    "(stream.wait_event(event)); on a GPU this read could see stale data")
            _pending.remove(entry)


def launch(name: str, n: int = 1) -> None:
    if _mode is not None:
        event("launch", name)
        if _mode[0] == "replay":
            return
    _state["launches"] += n
    _kernels[name] += n


def graph_launch() -> None:
    _state["launches"] += 1
    _state["graph_launches"] += 1
    _kernels["cudaGraphLaunch"] += 1


def sync() -> None:
    _refuse("a host synchronization")
    _state["syncs"] += 1


def h2d(nbytes: int) -> None:
    _refuse("a synchronous host-to-device copy")
    _state["h2d_bytes"] += int(nbytes)


def h2d_async(nbytes: int) -> None:
    _state["h2d_bytes"] += int(nbytes)
    _state["h2d_async_bytes"] += int(nbytes)


def d2h(nbytes: int) -> None:
    _refuse("a device-to-host copy")
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
