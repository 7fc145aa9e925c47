"""The BLAS thread pool that NumPy's matrix products run on: which library, how many
threads, and a way to change it.

NumPy hands every matmul to the BLAS library it was built against (OpenBLAS in the PyPI
wheels, MKL in some distributions, sometimes BLIS). That library starts one thread per
CPU and, for all but tiny products, splits each GEMM among them. When another process
keeps one of the CPUs busy, a thread of every split GEMM waits for its time slice, and a
training step made of many small GEMMs (64 × 256 × 128: microseconds each) slows down
20-50×. One thread does not: see ``benchmarks/RESULTS.md``, "CPU threads under a busy
core". gpunet therefore picks one BLAS thread for small models (``default_threads``),
and ``gpunet train --threads N`` / ``set_num_threads`` override it.

The libraries are found among the shared objects mapped into this process
(``/proc/self/maps`` on Linux, the dyld image list on macOS) by file name, and driven
through their own C entry points with ctypes:

- OpenBLAS: ``openblas_{get,set}_num_threads``, also under the ``scipy_openblas`` prefix
  and ``64_`` suffix of the ILP64 builds that NumPy's wheels bundle;
- MKL: ``MKL_Get_Max_Threads`` / ``MKL_Set_Num_Threads``;
- BLIS: ``bli_thread_{get,set}_num_threads``.

Elsewhere (e.g. Windows) no library is found: ``blas_libraries()`` is empty, ``describe()``
says so and ``set_num_threads`` raises ``RuntimeError`` rather than pretend.
Setting the count is process-wide and affects every later NumPy matmul.
"""
from __future__ import annotations

import contextlib
import ctypes
import numbers
import os
import re
import sys
from dataclasses import dataclass, field

from . import _args

__all__ = ["BlasLibrary", "blas_libraries", "get_num_threads", "set_num_threads", "limit",
           "describe", "available_cpus", "default_threads", "SMALL_GEMM_MACS"]

# The file names of the BLAS libraries this module can drive, and which API each has.
_FILENAME = re.compile(r"(?:^|/)lib(?P<name>(?:scipy_)?openblas|mkl_rt|blis)[^/]*\.(?:so|dylib)[^/]*$")
_API = {"openblas": "openblas", "scipy_openblas": "openblas", "mkl_rt": "mkl", "blis": "blis"}


def _mapped_paths() -> list[str]:
    """Paths of the shared libraries loaded in this process, in load order."""
    if sys.platform.startswith("linux"):
        seen, out = set(), []
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    path = parts[5].strip()
                    if path not in seen:
                        seen.add(path)
                        out.append(path)
        return out
    if sys.platform == "darwin":
        libc = ctypes.CDLL(None)
        libc._dyld_image_count.restype = ctypes.c_uint32
        libc._dyld_get_image_name.restype = ctypes.c_char_p
        libc._dyld_get_image_name.argtypes = [ctypes.c_uint32]
        return [libc._dyld_get_image_name(i).decode() for i in range(libc._dyld_image_count())]
    return []


def _symbol(lib, names):
    for name in names:
        try:
            return getattr(lib, name)
        except AttributeError:
            continue
    return None


def _function(lib, names, restype):
    """The first of ``names`` that ``lib`` exports, as a C function of no arguments returning
    ``restype``; None when it exports none of them."""
    f = _symbol(lib, names)
    if f is not None:
        f.restype, f.argtypes = restype, []
    return f


def _thread_calls(lib, get_names, set_names, c_count):
    """``(get, set)``: the library's thread-count getter and setter (the count a
    ``c_count``), or None when it lacks either."""
    get, set_ = _function(lib, get_names, c_count), _symbol(lib, set_names)
    if get is None or set_ is None:
        return None
    set_.restype, set_.argtypes = None, [c_count]
    return get, set_


def _openblas_names(func):
    return [f"{prefix}_{func}{suffix}" for prefix in ("openblas", "scipy_openblas")
            for suffix in ("", "64_", "_64")]


@dataclass
class BlasLibrary:
    """One BLAS library loaded in this process and the C functions that steer its threads."""
    api: str                      # "openblas" | "mkl" | "blis"
    path: str
    version: str
    threading: str                # "pthreads", "openmp", "sequential" or "" when unknown
    _get: object = field(repr=False)
    _set: object = field(repr=False)
    # OpenBLAS: the kernels it picked for this CPU at load ("Haswell", "SkylakeX", ...; its
    # openblas_get_corename, which OPENBLAS_CORETYPE overrides); "" when unknown. They decide
    # a product's last bits as much as the thread count does (guide §9).
    kernels: str = ""

    def get_num_threads(self) -> int:
        return int(self._get())

    def set_num_threads(self, n: int) -> None:
        self._set(int(n))

    @property
    def label(self) -> str:
        """Name and version, e.g. ``"OpenBLAS 0.3.31"``."""
        name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}[self.api]
        return f"{name} {self.version}" if self.version else name

    def __str__(self):
        threading = f", {self.threading}" if self.threading else ""
        kernels = f", {self.kernels} kernels" if self.kernels else ""
        n = self.get_num_threads()
        return (f"{self.label} ({os.path.basename(self.path)}{threading}{kernels}): "
                f"{n} thread{'s' * (n != 1)}")


def _open(path, kind) -> BlasLibrary | None:
    mode = getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL
    try:
        lib = ctypes.CDLL(path, mode=mode)
    except OSError:
        return None
    if kind == "openblas":
        calls = _thread_calls(lib, _openblas_names("get_num_threads"),
                              _openblas_names("set_num_threads"), ctypes.c_int)
        if calls is None:
            return None
        version, threading = "", ""
        config = _function(lib, _openblas_names("get_config"), ctypes.c_char_p)
        if config is not None:
            words = (config() or b"").decode(errors="replace").split()
            if len(words) >= 2 and words[0] == "OpenBLAS":
                version = words[1]
        parallel = _function(lib, _openblas_names("get_parallel"), ctypes.c_int)
        if parallel is not None:
            threading = {0: "sequential", 1: "pthreads", 2: "openmp"}.get(parallel(), "")
        corename = _function(lib, _openblas_names("get_corename"), ctypes.c_char_p)
        kernels = (corename() or b"").decode(errors="replace").strip() if corename is not None else ""
        return BlasLibrary("openblas", path, version, threading, *calls, kernels=kernels)
    if kind == "mkl":
        calls = _thread_calls(lib, ["MKL_Get_Max_Threads"], ["MKL_Set_Num_Threads"], ctypes.c_int)
        if calls is None:
            return None
        version = ""
        vs = _symbol(lib, ["MKL_Get_Version_String"])
        if vs is not None:
            buf = ctypes.create_string_buffer(256)
            vs(buf, len(buf))
            m = re.search(r"\d+(\.\d+)+", buf.value.decode(errors="replace"))
            version = m.group(0) if m else ""
        return BlasLibrary("mkl", path, version, "", *calls)
    calls = _thread_calls(lib, ["bli_thread_get_num_threads"], ["bli_thread_set_num_threads"],
                          ctypes.c_long)
    if calls is None:
        return None
    version = ""
    vs = _function(lib, ["bli_info_get_version_str"], ctypes.c_char_p)
    if vs is not None:
        version = (vs() or b"").decode(errors="replace")
    return BlasLibrary("blis", path, version, "", *calls)


_cache: dict[str, BlasLibrary | None] = {}


def blas_libraries() -> list[BlasLibrary]:
    """The BLAS libraries loaded in this process (NumPy's first, as it is imported here)."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so it is mapped before the scan)
    libs = []
    for path in _mapped_paths():
        m = _FILENAME.search(path)
        if m is None:
            continue
        if path not in _cache:
            _cache[path] = _open(path, _API[m.group("name")])
        if _cache[path] is not None:
            libs.append(_cache[path])
    return libs


def get_num_threads() -> int | None:
    """The thread count of NumPy's BLAS (the first library found); None when none is found."""
    libs = blas_libraries()
    return libs[0].get_num_threads() if libs else None


def set_num_threads(n: int) -> int:
    """Give every loaded BLAS library ``n`` threads; return the previous count of the first.

    ``n`` must be a positive int (a NumPy integer too, as every count gpunet takes); anything
    else raises ``TypeError`` (also a ``ValueError``), a count below 1 ``ValueError``, both
    naming this function. Raises ``RuntimeError`` when no BLAS library this module can drive
    is loaded (then nothing can be set, and saying so beats ignoring ``n``).
    """
    if isinstance(n, _args._BOOLS) or not isinstance(n, numbers.Integral):
        raise _args.ArgumentTypeError(f"gpunet.threads.set_num_threads: the number of BLAS threads must be a "
                                      f"positive integer, got {n!r} ({type(n).__name__})")
    if n < 1:
        raise ValueError(f"gpunet.threads.set_num_threads: the number of BLAS threads must be a positive "
                         f"integer, got {n!r}")
    n = int(n)
    libs = blas_libraries()
    if not libs:
        raise RuntimeError("no BLAS library found in this process that gpunet can set the threads of "
                           "(it knows OpenBLAS, MKL and BLIS on Linux and macOS); "
                           "set OPENBLAS_NUM_THREADS / MKL_NUM_THREADS before starting Python instead")
    previous = libs[0].get_num_threads()
    for lib in libs:
        lib.set_num_threads(n)
    return previous


@contextlib.contextmanager
def limit(n: int):
    """``with gpunet.threads.limit(1): ...`` runs the block with ``n`` BLAS threads, then
    restores the previous count."""
    previous = set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def describe() -> str:
    """One line for ``gpunet info`` and ``gpunet train``: library, version, threads (and
    OpenBLAS's kernels)."""
    libs = blas_libraries()
    if not libs:
        return "no OpenBLAS/MKL/BLIS library found in this process (thread count unknown)"
    return "; ".join(str(lib) for lib in libs)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# Largest GEMM of a training step, in multiply-adds, below which gpunet picks one BLAS
# thread. Below it a GEMM lasts about a millisecond or less (2**26 MACs: ~1 ms at ~60
# GFLOP/s per core), so a second thread can save at most a fraction of that, while a
# thread that waits for a busy CPU costs a scheduler time slice (milliseconds), on every
# GEMM. Both models of ``gpunet train`` on the digits are below it (MLP: 2.1e6, CNN:
# 1.9e7); the benchmark models of ``gpunet bench`` (MLP 784-1024-1024-10 at batch 256:
# 2.7e8) are above. Measured in benchmarks/RESULTS.md ("CPU threads under a busy core").
SMALL_GEMM_MACS = 2 ** 26


def default_threads(largest_gemm_macs: int) -> int:
    """The BLAS thread count gpunet picks for a training step whose largest GEMM has
    ``largest_gemm_macs`` multiply-adds (M·N·K): 1 when it is below ``SMALL_GEMM_MACS``,
    else every available CPU."""
    return 1 if largest_gemm_macs < SMALL_GEMM_MACS else available_cpus()
