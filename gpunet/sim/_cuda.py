"""``cupy.cuda`` for the sim device: one simulated GPU, device 0.

Only names that ``cupy.cuda`` has (tested against the installed ``cupy``). The device is
deliberately small: ``_MULTIPROCESSOR_COUNT`` streaming multiprocessors, so that the grids
gpunet's launchers size from ``attributes["MultiProcessorCount"]`` (at most 16 blocks per
SM for the grid-stride kernels, ``4 * SMs`` partial blocks per batch-norm reduction) stay
small enough to run block by block on a CPU, yet large enough that every launcher runs
several blocks and, on inputs of a few ten thousand elements, grid-stride loops of more
than one pass.
"""
import weakref as _weakref
import numpy as _np

from . import _counters

#: SMs of the simulated GPU (an H100 has 132). 2 SMs: grid-stride launches use at most 32
#: blocks of 256 threads, so any input above 8192 packs takes more than one pass, and a
#: batch-norm channel is split over up to 8 blocks once it holds 4096 values.
_MULTIPROCESSOR_COUNT = 2

_ATTRIBUTES = {
    "MultiProcessorCount": _MULTIPROCESSOR_COUNT,
    "MaxThreadsPerBlock": 1024,
    "MaxBlockDimX": 1024,
    "MaxBlockDimY": 1024,
    "MaxBlockDimZ": 64,
    "MaxGridDimX": 2**31 - 1,
    "MaxGridDimY": 65535,
    "MaxGridDimZ": 65535,
    "MaxSharedMemoryPerBlock": 49152,
    "WarpSize": 32,
    "ComputeCapabilityMajor": 8,
    "ComputeCapabilityMinor": 0,
}


class Device:
    """``cupy.cuda.Device`` of the sim: id 0 only; a context manager like CuPy's."""

    def __init__(self, device=None):
        if device is None:
            device = 0
        if isinstance(device, bool) or not isinstance(device, (int, _np.integer)):
            raise TypeError(f"sim Device: device id must be an int, got {device!r}")
        if int(device) != 0:
            raise RuntimeError(f"the sim has one device (id 0); device {int(device)} requested")
        self._id = 0

    @property
    def id(self):
        return self._id

    @property
    def attributes(self):
        return dict(_ATTRIBUTES)

    @property
    def compute_capability(self):
        return f"{_ATTRIBUTES['ComputeCapabilityMajor']}{_ATTRIBUTES['ComputeCapabilityMinor']}"

    def use(self):
        pass

    def synchronize(self):
        _counters.sync()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("sim", self._id))

    def __repr__(self):
        return f"<CUDA Device {self._id} (gpunet sim)>"


class MemoryPointer:
    """What ``ndarray.data`` is: ``ptr`` is the address of the array's first element."""

    def __init__(self, ptr, device_id=0):
        self.ptr = int(ptr)
        self.device_id = device_id

    @property
    def device(self):
        return Device(self.device_id)

    def __int__(self):
        return self.ptr

    def __repr__(self):
        return f"<sim MemoryPointer 0x{self.ptr:x}>"


class Stream:
    """``cupy.cuda.Stream`` of the sim. Work on the sim is done when the call returns, so
    a stream orders nothing by itself; what it models:

    * ``synchronize()`` is a host sync (counted);
    * CUDA-graph capture: ``begin_capture()`` / ``end_capture() -> Graph`` record the work
      issued in between (``gpunet.sim._counters``: launches, arguments, addresses,
      allocations, kept as the graph's memory); syncs and synchronous copies raise while
      capturing; ``is_capturing()``;
    * ordering: ``record(event)`` / ``wait_event(event)`` and the stream that an async
      copy ran on (``gpunet.sim.array.ndarray.set(..., stream=)``): reading an array whose
      copy on another stream has not been waited for raises (see ``_order``).
    """

    _current: list = []

    def __init__(self, null=False, non_blocking=False, priority=None):
        self.null = null
        self._non_blocking = bool(non_blocking)
        self._capturing = False
        self._ops = 0          # async operations enqueued on this stream so far
        # other stream -> the last of its operations waited for. Keyed by the stream itself,
        # weakly: an entry goes with its stream (a staged DataLoader makes a copy stream per
        # pass, which the compute stream waits for: one entry per pass, for good, when keyed
        # by a serial), and a new stream never inherits a freed one's waits, as it would by
        # id() (an unordered read would then go unnoticed)
        self._waits = _weakref.WeakKeyDictionary()

    def synchronize(self):
        _counters.sync()

    def use(self):
        Stream._current[:] = [self]
        return self

    def __enter__(self):
        Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        Stream._current.pop()
        return False

    @property
    def is_non_blocking(self):
        return self._non_blocking

    def begin_capture(self, mode=None):
        if self.null:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: the null stream cannot be "
                               "captured; capture on a Stream(non_blocking=True)")
        _counters.begin_capture()
        self._capturing = True

    def end_capture(self):
        if not self._capturing:
            raise RuntimeError("cudaErrorIllegalState: end_capture on a stream that is not "
                               "capturing")
        self._capturing = False
        return Graph(_counters.end_capture())

    def is_capturing(self):
        return self._capturing

    def _enqueue(self):
        self._ops += 1
        return self._ops

    def record(self, event=None):
        if event is None:
            event = Event()
        event._at = (self, self._ops)
        return event

    def wait_event(self, event):
        if event._at is not None:
            other, seq = event._at
            if other is not self:
                self._waits[other] = max(self._waits.get(other, 0), seq)

    def _has_waited(self, other, op):
        """Whether this stream waited for an event of ``other`` recorded after its
        operation number ``op``."""
        return other is self or self._waits.get(other, 0) >= op

    def __repr__(self):
        return "<sim null stream>" if self.null else f"<sim Stream 0x{id(self):x}>"


class Event:
    """``cupy.cuda.Event`` of the sim: a point of a stream (``Stream.record``); ``done``
    is always True and ``synchronize`` a host sync (the sim's work is done already)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._at = None

    def record(self, stream=None):
        (stream or get_current_stream()).record(self)

    @property
    def done(self):
        return True

    def synchronize(self):
        _counters.sync()


class Graph:
    """``cupy.cuda.Graph`` of the sim (from ``Stream.end_capture``). ``launch()`` replays
    it: the sim cannot run recorded host-side kernels apart from the Python that issued
    them, so it re-runs that Python (given by ``gpunet.cuda.graphs.CUDAGraph``, which
    sets it) in replay mode, where every launch, argument and address must be the
    captured one and allocations get the captured buffers back; it counts as one launch
    (``cudaGraphLaunch``). A graph captured with the bare CuPy calls has no such Python and
    cannot be launched on the sim."""

    def __init__(self, trace=None):
        self._trace = trace
        self._replay = None

    def launch(self, stream=None):
        if self._replay is None:
            raise RuntimeError("gpunet.sim: a graph captured with the bare Stream.begin_capture/"
                               "end_capture calls cannot be replayed on the sim; capture through "
                               "gpunet.cuda.graphs.CUDAGraph")
        _counters.replay(self._trace, self._replay)

    def upload(self, stream=None):
        pass


_null_stream = Stream(null=True)


def get_current_stream(device_id=-1):
    return Stream._current[-1] if Stream._current else _null_stream


class PinnedMemoryPointer(bytearray):
    """What ``alloc_pinned_memory`` returns: ``ptr`` and ``size``, and the buffer protocol
    (``numpy.frombuffer(pointer, dtype, count)`` views it, as with CuPy's)."""

    def __init__(self, size):
        super().__init__(max(int(size), 1))
        self.size = int(size)
        self.ptr = _np.frombuffer(self, _np.uint8).ctypes.data


def alloc_pinned_memory(size):
    """Page-locked host memory of ``size`` bytes (a plain host buffer on the sim; copies
    from it with ``ndarray.set(..., stream=)`` are counted as asynchronous)."""
    return PinnedMemoryPointer(size)


def is_available():
    return True


def get_device_id():
    return 0


class _Runtime:
    """``cupy.cuda.runtime``: the few queries gpunet makes."""

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDevice():
        return 0

    @staticmethod
    def getDeviceProperties(device):
        Device(device)
        return {"name": b"gpunet sim (CPU)", "multiProcessorCount": _MULTIPROCESSOR_COUNT,
                "major": _ATTRIBUTES["ComputeCapabilityMajor"],
                "minor": _ATTRIBUTES["ComputeCapabilityMinor"],
                "warpSize": 32, "maxThreadsPerBlock": 1024, "sharedMemPerBlock": 49152,
                "totalGlobalMem": 0}


runtime = _Runtime()
