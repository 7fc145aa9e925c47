"""Compiled CPU kernels for the NumPy path's memory-bound passes:

* max pooling forward and backward (``pooling.cpp``): NumPy runs it as one strided copy
  and ``kh*kw`` elementwise passes; the kernels read each input once and write each output
  once, with only exact operations (compare, select, a multiply by 1.0 or 0.0, the
  overlapping windows' adds in NumPy's order);
* the SGD (momentum, Nesterov, L2, L1) and Adam/AdamW updates (``optim.cpp``): one pass
  over each parameter instead of NumPy's four to fourteen, the same operations in the same
  order, each rounded to the parameter's dtype as NumPy rounds each pass;
* ReLU forward ``maximum(x, 0)`` (``elementwise.cpp``; NumPy 2.4's ``maximum`` against a
  scalar has no vector loop: 0.24 against 0.05 ms on 800 K float32) and backward
  ``dy * (y > 0)`` (one pass instead of two); in a Dense layer with a bias and a fused
  ReLU, the bias add and the ReLU in one pass forward, and the mask and the bias
  gradient's column sum in one pass backward.

They compute the **same bits** as the NumPy code they replace (``gpunet/functional/pooling.py``,
``gpunet/optim.py``), compiled with ``-ffp-contract=off`` (no fused multiply-adds). So a
machine without a compiler, or with the kernels switched off, gets identical results, only
slower; the tests check that bit for bit. Only the sign and payload of a NaN may differ.

They are built on first use with the host C++ compiler (``$CXX``, else ``g++``, ``c++`` or
``clang++``: the one the sim device uses) and cached in ``$GPUNET_HOST_CACHE`` (default
``~/.cache/gpunet/host``), keyed on the source, the flags, the compiler's version and the
machine (``x86_64``, ``aarch64``...); a build takes two to three seconds, once. x86-64 builds carry
AVX-512, AVX2 and baseline clones of each kernel, chosen at load time for the CPU at hand,
so a shared cache serves every host.

Switches:

* ``GPUNET_HOST_KERNELS=0`` in the environment: NumPy only (read at first use);
* :func:`set_enabled` in code (returns the previous setting; the tests use it);
* ``GPUNET_SIM_SANITIZE=1`` (read at first use): built with AddressSanitizer and
  UndefinedBehaviorSanitizer (``-O1 -g`` and the sim's ``SANITIZE_FLAGS`` in place of
  ``-O3``: another cache key, a ``host-asan-`` file) and loaded only into a process that
  runs with g++'s ``libasan`` preloaded; without it each use raises a ``RuntimeError`` that
  says so (a sanitized library loaded without its runtime ends the process: "ASan runtime
  does not come first in initial library list"; and a sanitizer run must not fall back to
  NumPy unnoticed). ``tools/host_sanitize.py`` arranges the preload and runs the kernels
  over their edge cases. The sim's switch rather than one of its own: it means "everything
  gpunet compiles into this process runs under the sanitizers"; a process that sets it has
  the runtime preloaded already (the sim requires it), and the sim's sanitizer run
  (``tools/sim_sanitize.py``) then checks these kernels too wherever its NumPy references
  call them, where a separate switch would leave them unchecked or need setting twice.

No compiler, or a failed build: NumPy only, with one ``RuntimeWarning`` for a failed build
(none for a missing compiler, the common case on a user's machine). :func:`status` says
which, and ``gpunet info`` prints it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import numpy

SOURCES = tuple(Path(__file__).with_name(n) for n in ("pooling.cpp", "optim.cpp", "elementwise.cpp", "threads.cpp"))
HEADERS = (Path(__file__).with_name("common.h"),)     # included by SOURCES: part of the key
# -fno-math-errno: sqrt (Adam's) is the IEEE square root either way, but a sqrt that may set
# errno is a library call in the loop, which then does not vectorize (an Adam update of 100 K
# float32 took 250 us with it, 17 us without)
FLAGS = ("-O3", "-std=c++11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-pthread", "-w")
ABI = 8    # gpunet_host_abi() in pooling.cpp: bump both when a signature changes

_lock = threading.Lock()


def _new_lock_after_fork():
    # a fork while another thread builds copies the lock held, by a thread the child lacks:
    # the child's first kernel call then waited on it for good
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)
_state = {"lib": None, "tried": False, "why": None, "enabled": None, "sanitize": None, "team": None}


def cache_dir() -> Path:
    """``$GPUNET_HOST_CACHE``, else ``~/.cache/gpunet/host``; ``RuntimeError`` when neither
    is known (``$HOME`` unset and a user id without a passwd entry, as in some containers)."""
    d = os.environ.get("GPUNET_HOST_CACHE")
    if d:
        return Path(d)
    try:
        return Path.home() / ".cache" / "gpunet" / "host"
    except RuntimeError:            # pathlib: 'Could not determine home directory.'
        raise RuntimeError("no cache directory: no home directory ($HOME unset, no passwd entry); "
                           "set GPUNET_HOST_CACHE") from None


def _compiler():
    """``argv`` of the host C++ compiler, or None."""
    env = os.environ.get("CXX")
    if env:
        parts = shlex.split(env)
        exe = shutil.which(parts[0]) if parts else None
        return [exe, *parts[1:]] if exe else None
    for name in ("g++", "c++", "clang++"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    return None


# seconds a compiler may take to say its version, and to build the kernels (2-3 s
# here): a compiler that hangs costs that once per process, then NumPy runs
VERSION_TIMEOUT, BUILD_TIMEOUT = 30.0, 300.0


def _run(argv, timeout):
    """``subprocess.run`` of the compiler: stdin closed (a wrapper that reads it must not
    wait on the user's terminal), output kept as bytes (a compiler's messages in the
    locale's charset, or garbage, must not raise UnicodeDecodeError), a time limit."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def sanitizing() -> bool:
    """Whether this process builds the kernels with ASan + UBSan (``GPUNET_SIM_SANITIZE``,
    read at first use with the sim's rule: set and not ``0``)."""
    if _state["sanitize"] is None:
        _state["sanitize"] = os.environ.get("GPUNET_SIM_SANITIZE", "") not in ("", "0")
    return _state["sanitize"]


def _flags(sanitize):
    """The compiler flags: :data:`FLAGS`, or with ``sanitize`` ``-O1 -g`` and the sim's
    sanitizer flags in place of ``-O3``."""
    if not sanitize:
        return FLAGS
    from ..sim.runtime import SANITIZE_FLAGS
    return ("-O1", "-g", *(f for f in FLAGS if f != "-O3"), *SANITIZE_FLAGS)


def _check_sanitizer_preloaded():
    from ..sim.runtime import libasan_preloaded
    if not libasan_preloaded():
        raise RuntimeError("gpunet.hostkernels: GPUNET_SIM_SANITIZE=1 builds the compiled CPU kernels "
                           "with AddressSanitizer, and this process runs without its runtime: "
                           "preload it (LD_PRELOAD=$(g++ -print-file-name=libasan.so)), as "
                           "tools/host_sanitize.py does, or unset GPUNET_SIM_SANITIZE")


def _build(argv, sources=SOURCES, sanitize=False) -> Path:
    """The cached library of ``sources`` (the kernels; the sanitizer tool's planted check
    passes its own) built with :func:`_flags` ``(sanitize)``, which are part of its key."""
    flags = _flags(sanitize)
    version = _run([*argv, "--version"], VERSION_TIMEOUT)
    h = hashlib.sha256()
    # the machine too: a cache shared by an x86-64 and an aarch64 host (an NFS home) whose
    # compilers print the same version must hold a library for each
    for part in (*(src.read_bytes() for src in (*sources, *HEADERS)), " ".join(flags), " ".join(argv),
                 version.stdout + version.stderr, f"{sys.platform} {platform.machine()}"):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    d = cache_dir()
    path = d / f"host-{'asan-' if sanitize else ''}{h.hexdigest()[:32]}.so"
    digest = path.with_suffix(".sha256")
    if _intact(path, digest):
        return path
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d, prefix=".host-") as tmp:
        out, sums = Path(tmp) / "out.so", Path(tmp) / "out.sha256"
        r = _run([*argv, *flags, *map(str, sources), "-o", str(out)], BUILD_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError((r.stderr or r.stdout).decode(errors="replace").strip()[:2000]
                               or f"{argv[0]} exited with status {r.returncode}")
        sums.write_text(hashlib.sha256(out.read_bytes()).hexdigest())
        os.replace(out, path)      # atomic: a concurrent build writes the same bytes
        os.replace(sums, digest)   # last: a library without its digest is rebuilt
    return path


def _intact(path, digest):
    """Whether the library ``path`` holds the bytes its build recorded in ``digest``: one cut
    short (a full disk or a crash before the data reached it, a partial copy of the cache)
    is rebuilt, as loading it killed the process with SIGBUS."""
    try:
        return digest.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return False


def _load():
    lib, why = None, None
    try:
        argv = _compiler()
    except ValueError as e:         # shlex: $CXX='g++ "-O2' has no closing quote
        why = f"$CXX is not a command line ({e}: {os.environ.get('CXX')!r}): NumPy only"
        warnings.warn(f"gpunet.hostkernels: {why}", RuntimeWarning, stacklevel=3)
        return None, why
    if argv is None:
        return None, "no C++ compiler ($CXX, g++, c++, clang++): NumPy only"
    sanitize = sanitizing()
    if sanitize:
        _check_sanitizer_preloaded()    # raises (each call): not a quiet fall back to NumPy
    try:
        path = _build(argv, sanitize=sanitize)
        lib = ctypes.CDLL(str(path))
        if lib.gpunet_host_abi() != ABI:
            raise RuntimeError(f"{path} has ABI {lib.gpunet_host_abi()}, expected {ABI}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        why = f"the build failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}): NumPy only"
        warnings.warn(f"gpunet.hostkernels: {why}", RuntimeWarning, stacklevel=3)
        return None, why
    p, l, i, d = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_double
    lib.gpunet_host_pool_isa.argtypes, lib.gpunet_host_pool_isa.restype = [i], i
    lib.gpunet_host_threads.argtypes, lib.gpunet_host_threads.restype = [i, l], i
    lib.gpunet_host_blas_install.argtypes, lib.gpunet_host_blas_install.restype = [p, p], None
    lib.gpunet_host_helpers.argtypes, lib.gpunet_host_helpers.restype = [], i
    lib.gpunet_host_blas_calls.argtypes, lib.gpunet_host_blas_calls.restype = [], l
    lib.gpunet_host_team_splits.argtypes, lib.gpunet_host_team_splits.restype = [], l
    for t in ("f32", "f64"):
        f = getattr(lib, f"gpunet_sgd_{t}")
        f.argtypes, f.restype = [p, p, p, l, d, d, d, d, i], None
        f = getattr(lib, f"gpunet_sgd_many_{t}")
        f.argtypes, f.restype = [p, l, d, d, d, d], None
        f = getattr(lib, f"gpunet_adam_many_{t}")
        f.argtypes, f.restype = [p, p, l] + [d] * 6, None
        f = getattr(lib, f"gpunet_adam_{t}")
        f.argtypes, f.restype = [p, p, p, p, l] + [d] * 9 + [i], None
        f = getattr(lib, f"gpunet_relu_mask_times_{t}")
        f.argtypes, f.restype = [p, p, p, l], None
        f = getattr(lib, f"gpunet_bias_relu_{t}")
        f.argtypes, f.restype = [p, p, l, l], None
        f = getattr(lib, f"gpunet_relu_{t}")
        f.argtypes, f.restype = [p, p, l], None
        f = getattr(lib, f"gpunet_relu_mask_colsum_{t}")
        f.argtypes, f.restype = [p, p, p, p, l, l], None
        f = getattr(lib, f"gpunet_max_pool_{t}")
        f.argtypes, f.restype = [p, p, p, p, i] + [l] * 12, None
        f = getattr(lib, f"gpunet_max_pool_backward_{t}")
        f.argtypes, f.restype = [p] + [l] * 4 + [p, p] + [l] * 10 + [i, i, p, p], None
    return lib, f"built with {argv[0]} ({path.name}{', ASan + UBSan' if sanitize else ''})"


def enabled() -> bool:
    """Whether the kernels are switched on (``GPUNET_HOST_KERNELS``, :func:`set_enabled`)."""
    if _state["enabled"] is None:
        _state["enabled"] = os.environ.get("GPUNET_HOST_KERNELS", "1").strip().lower() not in (
            "0", "off", "false", "no")
    return _state["enabled"]


def set_enabled(flag: bool) -> bool:
    """Switch the kernels on or off for this process; returns the previous setting. Off also
    gives NumPy's OpenBLAS its own threads back (see :func:`team`); on again takes them."""
    if flag.__class__ is not bool:
        raise TypeError(f"gpunet.hostkernels.set_enabled: expected True or False, got {flag!r}")
    previous = enabled()
    _state["enabled"] = flag
    if flag != previous and _state["lib"] is not None:
        if flag:
            _install_team(_state["lib"])
        else:
            _uninstall_team(_state["lib"])
    return previous


def _team_wanted() -> bool:
    return os.environ.get("GPUNET_HOST_THREADS", "1").strip().lower() not in ("0", "off", "false", "no")


def _install_team(lib):
    """Run NumPy's OpenBLAS's parallel jobs on the kernels' thread team (threads.cpp): where
    NumPy's BLAS is an OpenBLAS with pthreads and ``openblas_set_threads_callback_function``
    (0.3.27 and later), and ``GPUNET_HOST_THREADS`` is not ``0``. Else nothing changes, and the
    passes run on one thread."""
    _state["team"] = None
    if not _team_wanted():
        return
    from .. import threads
    libs = threads.blas_libraries()
    blas = libs[0] if libs else None
    if blas is None or blas.api != "openblas" or blas.threading != "pthreads":
        return
    try:
        handle = ctypes.CDLL(blas.path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
    except OSError:
        return
    setter = threads._symbol(handle, threads._openblas_names("set_threads_callback_function"))
    getter = threads._symbol(handle, threads._openblas_names("get_num_threads"))
    if setter is None or getter is None:
        return
    lib.gpunet_host_blas_install(ctypes.cast(setter, ctypes.c_void_p).value,
                                 ctypes.cast(getter, ctypes.c_void_p).value)
    _state["team"] = blas.label


def _uninstall_team(lib):
    if _state["team"] is not None:
        lib.gpunet_host_blas_install(None, None)
        _state["team"] = None


def team():
    """The BLAS library whose parallel jobs run on the kernels' threads (e.g. ``"OpenBLAS
    0.3.31"``), or None (NumPy's BLAS keeps its own threads; the passes run on one thread).

    A CNN step alternates GEMMs, which OpenBLAS splits over every core, with memory passes
    (max pooling). OpenBLAS's idle threads spin for about 0.1 s after each GEMM, so a pass
    split onto a thread of gpunet's own found the other core taken, and ran slower than on one
    thread. gpunet therefore hands OpenBLAS's jobs to its own team (OpenBLAS's public hook
    for that) and splits the passes over the same threads, as many as OpenBLAS's thread
    count (``gpunet.threads.set_num_threads`` sets both). The GEMMs are OpenBLAS's own code
    and partition: the same bits. ``GPUNET_HOST_THREADS=0`` (read when the kernels load)
    keeps OpenBLAS's own threads; :func:`set_enabled` ``(False)`` gives them back too."""
    library()
    return _state["team"] if enabled() else None


def pass_threads(force=None):
    """The threads the next max pooling pass splits over (OpenBLAS's count where
    :func:`team` is set, else 1); None when the kernels are not in use. ``force`` (tests): a
    count to use from now on, or 0 to follow OpenBLAS's count again. Any count gives the
    same bits: each thread computes whole channels."""
    lib = library()
    if lib is None:
        return None
    return lib.gpunet_host_threads(-1 if force is None else int(force), -1)


def helpers():
    """``(helper threads started in this process, OpenBLAS parallel calls run by the team,
    passes split over more than one thread)``; None when the kernels were never loaded (the
    counts go on while they are switched off)."""
    library()
    lib = _state["lib"]
    return None if lib is None else (lib.gpunet_host_helpers(), lib.gpunet_host_blas_calls(),
                                     lib.gpunet_host_team_splits())


def library():
    """The loaded kernels (a ``ctypes.CDLL``), or None: switched off, no compiler, or a
    failed build (then NumPy does the work). Built on the first call."""
    if not enabled():
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _state["lib"], _state["why"] = _load()
                _state["tried"] = True
                if _state["lib"] is not None:
                    _install_team(_state["lib"])
    return _state["lib"]


def status() -> str:
    """One line: whether the kernels are in use, and why not."""
    if not enabled():
        return "off (GPUNET_HOST_KERNELS=0 or set_enabled(False)): NumPy only"
    try:
        library()
    except RuntimeError as e:       # the sanitized build refused (``gpunet info`` says why)
        return f"refused: {e}"
    team = (f"; {_state['team']}'s threads are gpunet's (GPUNET_HOST_THREADS=0: its own)"
            if _state["team"] is not None else "")
    return ("on, " if _state["lib"] is not None else "") + _state["why"] + team


# native float32/float64 only (a dict of dtype objects: '>f4' on a little-endian host is not
# a key, and looking a dtype up is cheaper than its .name)
_SUFFIX = {numpy.dtype(numpy.float32): "f32", numpy.dtype(numpy.float64): "f64"}


def max_pool(t, kernel, stride, padding, out_hw, positive=False, relu=False):
    """``(y, arg)`` planes ``(A, OH, OW, B)`` of max pooling over planes ``t (A, H, W, B)``
    (``arg`` uint8), as ``gpunet.functional.pooling._max_pool`` computes them; None when the
    kernels are not in use or do not cover the case (then the caller runs NumPy).
    ``positive=True``: ``(y, arg, pos)``, ``pos`` (uint8, like ``arg``) 1 where the input at
    ``arg`` is > 0 (what :func:`max_pool_backward` takes for a ReLU's mask). ``relu=True``:
    the pooling of ``maximum(t, 0)`` (the same bits as after NumPy's ``maximum``), ``t``
    read through it and left as it is."""
    suffix = _SUFFIX.get(t.dtype)
    if suffix is None or kernel[0] * kernel[1] > 256:
        return None
    lib = library()
    if lib is None:
        return None
    t = numpy.ascontiguousarray(t)
    if not t.flags.aligned:     # C order, but a float's address not a multiple of its size: copied
        t = t.copy()
    a, h, w, b = t.shape
    y = numpy.empty((a,) + tuple(out_hw) + (b,), dtype=t.dtype)
    arg = numpy.empty(y.shape, dtype=numpy.uint8)
    pos = numpy.empty(y.shape, dtype=numpy.uint8) if positive else None
    getattr(lib, f"gpunet_max_pool_{suffix}")(
        t.ctypes.data, y.ctypes.data, arg.ctypes.data, None if pos is None else pos.ctypes.data,
        int(relu), a, h, w, b, kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], out_hw[0],
        out_hw[1])
    return (y, arg) if pos is None else (y, arg, pos)


POOL_ISA = {0: "scalar", 2: "AVX-512"}


def pool_isa(force=None):
    """The vector windows of the float32 max pooling forward, as a :data:`POOL_ISA` level:
    2 (AVX-512 registers, 16 images at a time) or 0 (the loop the compiler vectorizes for the
    CPU's clone); None when the kernels are not in use. ``force`` (the tests' switch, for this
    process): 0 or 2 to use from now on, capped at what the CPU runs, or -1 for the best it
    runs (the default). Both levels give the same bits."""
    lib = library()
    if lib is None:
        return None
    return lib.gpunet_host_pool_isa(-2 if force is None else int(force))


def max_pool_backward(dy, arg, padded, kernel, stride, disjoint, tiled, mask=None, positive=None):
    """``dx`` planes of the padded input ``padded = (A, HP, WP, B)`` (C-contiguous) from
    ``dy`` planes ``(A, OH, OW, B)`` (any strides: read in place, or copied when not aligned
    or when its ``B`` axis is not contiguous)
    and uint8 ``arg`` planes, as ``gpunet.functional.pooling._max_pool_backward`` computes
    them; None when the kernels are not in use or do not cover the case.

    ``mask``: planes of ``padded``'s shape and ``dy``'s dtype, C-contiguous and aligned (a
    ReLU's output that the pooling took as its input); ``dx`` is then multiplied by
    ``mask > 0`` in the same pass, the bits of ``relu_mask_times(dx, mask)`` after the
    routing. None (NumPy then) for a mask of any other shape, dtype or layout.
    ``positive``: instead of ``mask``, for disjoint windows: :func:`max_pool`'s ``pos`` planes
    (C-contiguous, ``arg``'s shape), the same bits from one byte per window."""
    suffix = _SUFFIX.get(dy.dtype)
    a, hp, wp, b = padded
    if (suffix is None or arg.dtype != numpy.uint8 or dy.shape != arg.shape or arg.ndim != 4
            or (a, b) != (arg.shape[0], arg.shape[3]) or (arg.shape[1] - 1) * stride[0] + kernel[0] > hp
            or (arg.shape[2] - 1) * stride[1] + kernel[1] > wp):
        return None         # (also planes that do not fit: the kernel would write past dx)
    if mask is not None and (mask.__class__ is not numpy.ndarray or mask.dtype != dy.dtype
                             or mask.shape != tuple(padded) or not mask.flags.c_contiguous
                             or not mask.flags.aligned):
        return None
    if positive is not None and (mask is not None or stride[0] < kernel[0] or stride[1] < kernel[1]
                                 or not disjoint or positive.__class__ is not numpy.ndarray
                                 or positive.dtype != numpy.uint8 or positive.shape != arg.shape
                                 or not positive.flags.c_contiguous):
        return None
    lib = library()
    if lib is None:
        return None
    arg = numpy.ascontiguousarray(arg)
    item = dy.itemsize
    if not dy.flags.aligned or any(s % item for s in dy.strides) or (b > 1 and dy.strides[3] != item):
        # C order, aligned (ascontiguousarray keeps a C-order misaligned one); also a dy whose
        # images are not adjacent (NCHW through Flatten for CHWN planes): one copy, then the
        # vectorized unit-stride loops (0.105 -> 0.092 ms with the copy, (32, 14, 14, 64) planes)
        dy = dy.copy()
    dx = numpy.empty(padded, dtype=dy.dtype)
    getattr(lib, f"gpunet_max_pool_backward_{suffix}")(
        dy.ctypes.data, *(s // item for s in dy.strides), arg.ctypes.data, dx.ctypes.data, a, hp, wp, b, kernel[0], kernel[1],
        stride[0], stride[1], dy.shape[1], dy.shape[2], int(disjoint), int(tiled),
        None if mask is None else mask.ctypes.data, None if positive is None else positive.ctypes.data)
    return dx


# the flags of optim.cpp
WD, L1, MOMENTUM, NESTEROV, DECOUPLED = 1, 2, 4, 8, 16


# id(array) -> (weak reference, data address) for the arrays an update writes (parameters
# and optimizer state live across steps): ``a.ctypes.data`` costs ~0.9 us, three or four
# times per parameter per step, a tenth of the small MLP's whole optimizer step
_ADDRESSES: dict = {}


def _address(a):
    """``a.ctypes.data``, remembered while ``a`` lives. Safe: NumPy refuses to resize an array
    that has a weak reference (``refcheck`` or not), so the buffer of one we hold a weak
    reference to never moves; a dead array's entry is removed, and ids are checked by
    identity."""
    entry = _ADDRESSES.get(id(a))
    if entry is not None and entry[0]() is a:
        return entry[1]
    address = a.ctypes.data
    key = id(a)
    try:
        ref = weakref.ref(a, lambda _r, k=key: _ADDRESSES.pop(k, None))
    except TypeError:
        return address
    _ADDRESSES[key] = (ref, address)
    return address


def _update_arrays(arrays):
    """``(suffix, addresses)`` for these same-shaped, same-dtype, C-contiguous, aligned,
    non-overlapping NumPy arrays (the parameter first; all but ``arrays[1]``, the gradient,
    writeable), else None (then the NumPy passes run): :func:`_many_addresses`' checks."""
    suffix = _SUFFIX.get(arrays[0].dtype)
    if suffix is None or library() is None:
        return None
    addresses = _many_addresses(arrays, suffix)
    return None if addresses is None else (suffix, addresses)


def sgd(w, g, buf, lr, momentum, weight_decay, l1, flags):
    """One SGD update of ``w`` in place (and of ``buf``, the momentum buffer, with
    ``MOMENTUM``), as ``gpunet.optim.SGD._update``'s NumPy passes compute it (not the first
    momentum step, which copies ``g``). ``flags``: ``WD``, ``L1``, ``MOMENTUM``,
    ``NESTEROV``. False when the kernels are not in use or the arrays do not qualify."""
    plan = _update_arrays((w, g) if buf is None else (w, g, buf))
    if plan is None:
        return False
    suffix, at = plan
    getattr(_state["lib"], f"gpunet_sgd_{suffix}")(
        at[0], at[1], None if buf is None else at[2], w.size, lr, momentum, weight_decay, l1, flags)
    return True


def _data_address(a):
    """``a.ctypes.data`` for a writeable, C-contiguous, non-empty ``a`` at a quarter of the
    cost (~0.2 against ~0.8 us: ``ctypes`` reads the buffer it exports); ``a.ctypes.data``
    for any other."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


def _many_addresses(arrays, suffix):
    """The data addresses of one update's arrays (the parameter, its gradient, its state)
    for :func:`_update_arrays` and the ``*_many`` calls, or None unless they are NumPy
    arrays of the parameter's dtype (``suffix``'s) and shape, C-contiguous, aligned, all but
    the gradient writeable, no two overlapping. ``None`` entries (no momentum buffer) are
    skipped."""
    w = arrays[0]
    if w.__class__ is not numpy.ndarray or _SUFFIX.get(w.dtype) != suffix:
        return None
    dtype, shape, nbytes = w.dtype, w.shape, w.nbytes
    at = []
    for k, a in enumerate(arrays):
        if a is None:
            continue
        if a.__class__ is not numpy.ndarray or a.dtype != dtype or a.shape != shape:
            return None
        f = a.flags
        if not (f.c_contiguous and f.aligned and (k == 1 or f.writeable)):
            return None
        address = _data_address(a) if k == 1 else _address(a)    # a new gradient every step
        for other in at:
            if address < other + nbytes and other < address + nbytes:
                return None
        at.append(address)
    return at


def sgd_many(items, lr, momentum, weight_decay, l1):
    """SGD updates of many parameters in one compiled call, in the order given: ``items``
    a sequence of ``(w, g, buf, flags)`` as :func:`sgd` takes them (``buf`` None without
    ``MOMENTUM``), with the same hyper-parameters. Each is checked as :func:`sgd` checks
    it, and all must share one dtype; False (nothing updated) when the kernels are not in
    use or any item does not qualify, so that the caller runs its own passes for all."""
    if library() is None or not items:
        return False
    suffix = _SUFFIX.get(items[0][0].dtype)
    if suffix is None:
        return False
    rows = []
    for w, g, buf, flags in items:
        if bool(flags & MOMENTUM) is (buf is None):
            return False
        at = _many_addresses((w, g, buf), suffix)
        if at is None:
            return False
        rows += (at[0], at[1], at[2] if buf is not None else 0, w.size, flags)
    table = (ctypes.c_int64 * len(rows))(*rows)
    getattr(_state["lib"], f"gpunet_sgd_many_{suffix}")(table, len(items), lr, momentum, weight_decay, l1)
    return True


def adam_many(items, b1, b2, eps, l1):
    """Adam/AdamW updates of many parameters in one compiled call, in the order given:
    ``items`` a sequence of ``(w, g, m, v, c2, step_size, weight_decay, flags)``, each as
    :func:`adam` takes them (the per-parameter values: a parameter's step count sets ``c2``
    and ``step_size``, its ``decay`` the factor and flags), with ``b1``, ``b2``, ``eps`` and
    ``l1`` shared. Checked as :func:`adam` checks each update, one dtype for all; False
    (nothing updated) when the kernels are not in use or any item does not qualify."""
    if library() is None or not items:
        return False
    suffix = _SUFFIX.get(items[0][0].dtype)
    if suffix is None:
        return False
    rows, reals = [], []
    for w, g, m, v, c2, step_size, weight_decay, flags in items:
        at = _many_addresses((w, g, m, v), suffix)
        if at is None:
            return False
        rows += (*at, w.size, flags)
        reals += (c2, step_size, weight_decay)
    getattr(_state["lib"], f"gpunet_adam_many_{suffix}")(
        (ctypes.c_int64 * len(rows))(*rows), (ctypes.c_double * len(reals))(*reals), len(items),
        b1, 1.0 - b1, b2, 1.0 - b2, eps, l1)
    return True


def adam(w, g, m, v, b1, b2, c2, eps, step_size, weight_decay, l1, flags):
    """One Adam update of ``w``, ``m`` and ``v`` in place, as ``gpunet.optim.Adam._update``'s
    NumPy passes compute it; ``flags``: ``WD``, ``L1``, or ``DECOUPLED`` (AdamW: then
    ``weight_decay`` is the factor ``1 - lr*weight_decay`` that ``w`` is multiplied by
    first). False when the kernels are not in use or the arrays do not qualify."""
    plan = _update_arrays((w, g, m, v))
    if plan is None:
        return False
    suffix, at = plan
    getattr(_state["lib"], f"gpunet_adam_{suffix}")(
        at[0], at[1], at[2], at[3], w.size, b1, 1.0 - b1, b2, 1.0 - b2, c2, eps, step_size,
        weight_decay, l1, flags)
    return True


def _dense(a):
    """Whether ``a`` covers its memory without gaps, in some order of its axes, with
    positive strides (C order, F order, a transposed view of either)."""
    size = a.itemsize
    for stride, dim in sorted(zip(a.strides, a.shape)):
        if dim == 1:
            continue
        if stride != size:
            return False
        size *= dim
    return True


def relu_mask_times(dy, y):
    """``dy * (y > 0)`` in ``y``'s memory order, as
    ``gpunet.functional.activations.relu_mask_times`` computes it, or None when the kernels
    are not in use or the arrays do not qualify (same dtype, shape and strides, dense)."""
    suffix = _SUFFIX.get(y.dtype)
    if (suffix is None or dy.dtype != y.dtype or dy.shape != y.shape or dy.strides != y.strides
            or dy.__class__ is not numpy.ndarray or y.__class__ is not numpy.ndarray or not _dense(y)
            or not (y.flags.aligned and dy.flags.aligned)):
        return None
    lib = library()
    if lib is None:
        return None
    out = numpy.empty_like(y)
    if out.strides != y.strides:
        return None
    # dense with positive strides: each array's data pointer is its lowest address, and
    # equal strides make element i of the three memories the same index
    getattr(lib, f"gpunet_relu_mask_times_{suffix}")(dy.ctypes.data, y.ctypes.data, out.ctypes.data, y.size)
    return out


def relu(x, inplace=False):
    """``maximum(x, 0)`` as NumPy computes it (NaN stays, ``-0.0`` gives ``+0.0``), written
    into ``x`` with ``inplace`` or into a new array of ``x``'s memory order; None when the
    kernels are not in use or ``x`` does not qualify (a dense, aligned NumPy array of native
    float32/float64; writable for ``inplace``)."""
    suffix = _SUFFIX.get(x.dtype)
    if (suffix is None or x.__class__ is not numpy.ndarray or not _dense(x) or not x.flags.aligned
            or (inplace and not x.flags.writeable)):
        return None
    lib = library()
    if lib is None:
        return None
    out = x if inplace else numpy.empty_like(x)
    if out.strides != x.strides:
        return None
    getattr(lib, f"gpunet_relu_{suffix}")(x.ctypes.data, out.ctypes.data, x.size)
    return out


def _rows(a, dtype):
    """Whether ``a`` is a C-contiguous 2-D NumPy array of ``dtype`` (kernels' row operand)."""
    return (a.__class__ is numpy.ndarray and a.ndim == 2 and a.dtype == dtype and a.flags.c_contiguous
            and a.flags.aligned)


def bias_relu(z, b):
    """``z = maximum(z + b, 0)`` in place over the rows of ``z (rows, cols)``, as a Dense
    layer's ``z += bias`` and fused ReLU compute it; True when done, False when the kernels
    are not in use or the arrays do not qualify (C-contiguous, writable ``z``; ``b`` 1-D,
    contiguous, the same dtype, not overlapping ``z``)."""
    suffix = _SUFFIX.get(z.dtype)
    if (suffix is None or not _rows(z, z.dtype) or not z.flags.writeable or b.__class__ is not numpy.ndarray
            or b.shape != z.shape[1:] or b.dtype != z.dtype or not b.flags.c_contiguous or not b.flags.aligned
            or numpy.may_share_memory(z, b)):
        return False
    lib = library()
    if lib is None:
        return False
    getattr(lib, f"gpunet_bias_relu_{suffix}")(z.ctypes.data, b.ctypes.data, z.shape[0], z.shape[1])
    return True


def relu_mask_colsum(dy, y):
    """``(g, db)``: ``g = dy * (y > 0)`` (as :func:`relu_mask_times`) and ``db =
    g.sum(axis=0)`` (as NumPy sums axis 0: row after row from +0.0) in one pass over
    ``(rows, cols)`` C-contiguous arrays of one dtype; None when the kernels are not in use
    or the arrays do not qualify. Not for one column: NumPy then sums the contiguous column
    pairwise (8 partial sums), other bits than row after row."""
    suffix = _SUFFIX.get(y.dtype)
    if (suffix is None or not _rows(y, y.dtype) or not _rows(dy, y.dtype) or dy.shape != y.shape
            or y.shape[1] == 1):
        return None
    lib = library()
    if lib is None:
        return None
    g = numpy.empty_like(y)
    db = numpy.empty(y.shape[1], dtype=y.dtype)
    getattr(lib, f"gpunet_relu_mask_colsum_{suffix}")(dy.ctypes.data, y.ctypes.data, g.ctypes.data,
                                                      db.ctypes.data, y.shape[0], y.shape[1])
    return g, db


__all__ = ["enabled", "set_enabled", "library", "status", "sanitizing", "cache_dir", "max_pool",
           "max_pool_backward", "sgd", "adam", "relu", "relu_mask_times", "bias_relu", "relu_mask_colsum"]
