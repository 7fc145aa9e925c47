"""``cupy.cuda`` for the sim device: one simulated GPU, device 0.

Only names that ``cupy.cuda`` has (tested against the installed ``cupy``). The device is
deliberately small: ``_MULTIPROCESSOR_COUNT`` streaming multiprocessors, so that the grids
gpunet's launchers size from ``attributes["MultiProcessorCount"]`` (at most 16 blocks per
SM for the grid-stride kernels, ``4 * SMs`` partial blocks per batch-norm reduction) stay
small enough to run block by block on a CPU, yet large enough that every launcher runs
several blocks and, on inputs of a few ten thousand elements, grid-stride loops of more
than one pass.
"""
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
    """The null stream: work on the sim is done when the call returns; ``synchronize``
    is counted as a host sync."""

    def __init__(self, null=False, non_blocking=False, priority=None):
        self.null = null

    def synchronize(self):
        _counters.sync()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_null_stream = Stream(null=True)


def get_current_stream(device_id=-1):
    return _null_stream


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
