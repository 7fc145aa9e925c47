"""The sim device's kernel runtime: ``RawModule`` and ``RawKernel`` as ``cupy`` has them,
compiling CUDA C++ with the host C++ compiler and running it with CUDA semantics.

    mod = RawModule(code=src, options=("-I<dir>",), name_expressions=["k<float>"])
    mod.compile()
    k = mod.get_function("k<float>")
    k((blocks,), (threads,), (x, y, numpy.int32(n)), shared_mem=0)

How a module is built (``g++`` or ``$CXX``): the code and one ``extern "C"`` entry point per
name expression are preprocessed with ``include/cuda_host.h`` force-included (the CUDA
dialect on the host); ``extern __shared__ T a[];`` becomes a pointer to the launch's
dynamic shared memory and every other ``__shared__`` becomes ``static`` (blocks run one at
a time on one OS thread, so static storage is per-block shared memory); the result is
compiled into a shared library. ``include/sim_runtime.cpp`` (built once, loaded with
``RTLD_GLOBAL``) runs a launch: blocks one after another, the threads of a block as
fibers, ``__syncthreads`` and the ``*_sync`` warp operations as real rendezvous; a barrier
or warp operation that not every thread reaches raises ``RuntimeError`` naming the kernel
and the block, as do ``__trap()``, a failed ``assert`` and a fault in kernel code (a wild
pointer, a stack overflow: CUDA's illegal address error); the runtime stays usable.

Arguments follow CuPy's rules (``cupy/cuda/function.pyx``): an array is passed as its
``.data.ptr`` (a memory pointer ``x.data`` as its ``.ptr``); ``None`` is a null pointer;
NumPy scalars are passed as their bytes; a Python ``int`` (``bool`` included) is an int64,
a ``float`` a float64, a ``complex`` a complex128; anything else, a ``numpy.ndarray`` included, raises ``TypeError``. Where a
real GPU would silently read garbage, the sim raises ``TypeError`` naming the kernel and
the parameter: a scalar whose kind or size differs from the parameter's type, an array
for a scalar parameter or a scalar for a pointer, an array whose dtype differs from the
pointee (``void*``, struct and 1-byte pointees take any array), a wrong argument count.

Compiled libraries are cached in ``$GPUNET_SIM_CACHE`` (default ``~/.cache/gpunet/sim``),
keyed on the sha256 of the code, the name expressions, both host sources, the compiler
flags and the compiler's version (like CuPy's cache, included files are not hashed;
gpunet's loader puts a hash of ``kernels/`` in the options for that). Files are written
to a temporary name and renamed, so concurrent processes never see a partial library.

``GPUNET_SIM_SANITIZE=1`` builds everything with AddressSanitizer and
UndefinedBehaviorSanitizer (a separate cache key); the process must then run with
g++'s libasan preloaded, as ``tools/sim_sanitize.py`` arranges.

Each launch counts in ``gpunet.sim.counters()`` under its name expression.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy

from . import _counters

INCLUDE_DIR = Path(__file__).resolve().parent / "include"
HEADER = INCLUDE_DIR / "cuda_host.h"
RUNTIME_SOURCE = INCLUDE_DIR / "sim_runtime.cpp"

SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer")
_COMMON_FLAGS = ("-fPIC", "-shared", "-fno-strict-aliasing", "-fno-threadsafe-statics", "-w")

# Limits of cuLaunchKernel (sm_80/sm_90) and of the runtime's dynamic shared memory.
_MAX_BLOCK = (1024, 1024, 64)
_MAX_GRID = (2**31 - 1, 65535, 65535)
_MAX_THREADS = 1024
_MAX_DYNAMIC_SHARED = 48 * 1024


class CompileError(RuntimeError):
    """The host compiler rejected a module; the message carries its output."""


def sanitizing() -> bool:
    """Whether this process builds and runs kernels under ASan + UBSan (fixed at first use)."""
    if _state.sanitize is None:
        _state.sanitize = os.environ.get("GPUNET_SIM_SANITIZE", "") not in ("", "0")
    return _state.sanitize


def cache_dir() -> Path:
    d = os.environ.get("GPUNET_SIM_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "gpunet" / "sim"


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.sanitize = None
        self.cxx = None          # (argv, version)
        self.runtime = None      # ctypes.CDLL of sim_runtime.cpp
        self.libs = {}           # path -> ctypes.CDLL


_state = _State()


# ---------------------------------------------------------------------------------------
# The host compiler
# ---------------------------------------------------------------------------------------

def compiler_command() -> tuple[list[str], str]:
    """``(argv, version)`` of the host C++ compiler: ``$CXX`` (may carry arguments), else
    ``g++``, ``c++`` or ``clang++`` on the PATH. Raises a one-line ``RuntimeError`` when
    there is none."""
    with _state.lock:
        if _state.cxx is None:
            env = os.environ.get("CXX")
            argv = None
            if env:
                parts = shlex.split(env)
                exe = shutil.which(parts[0]) if parts else None
                if exe:
                    argv = [exe, *parts[1:]]
            else:
                for name in ("g++", "c++", "clang++"):
                    exe = shutil.which(name)
                    if exe:
                        argv = [exe]
                        break
            if argv is None:
                raise RuntimeError("the 'sim' device needs a C++ compiler to build the CUDA kernels "
                                   "for the CPU: none found ($CXX, g++, c++, clang++); install g++")
            out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
            _state.cxx = (argv, out.stdout.strip() + out.stderr.strip())
        return _state.cxx


def _flags(std: str) -> list[str]:
    opt = ["-O1", "-g", *SANITIZE_FLAGS] if sanitizing() else ["-O2"]
    return [f"-std={std}", *_COMMON_FLAGS, *opt]


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _run_compiler(argv: list[str], what: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        out = (r.stderr or r.stdout).strip()
        if len(out) > 6000:
            out = out[:6000] + "\n..."
        raise CompileError(f"gpunet.sim: the host compiler failed on {what}:\n{out}")
    return r.stdout


def _build(name: str, key: str, make) -> Path:
    """The cached library ``<cache>/<name>-<key>.so``, built by ``make(tmpdir, out_path)``
    into a temporary file and renamed into place (atomic; a concurrent build of the same
    key writes the same bytes)."""
    d = cache_dir()
    path = d / f"{name}-{key}.so"
    if path.is_file():
        return path
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d, prefix=f".{name}-") as tmp:
        out = Path(tmp) / "out.so"
        make(Path(tmp), out)
        os.replace(out, path)
    return path


def libasan_preloaded() -> bool:
    """Whether this process has AddressSanitizer's runtime mapped (True where
    ``/proc/self/maps`` cannot be read: nothing to check there). The sim and
    ``gpunet.hostkernels`` refuse their sanitized builds without it."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return True
    return "libasan" in maps


def _check_sanitizer_preloaded():
    if not libasan_preloaded():
        raise RuntimeError("GPUNET_SIM_SANITIZE=1: this process must run with g++'s "
                           "AddressSanitizer runtime preloaded (LD_PRELOAD=$(g++ "
                           "-print-file-name=libasan.so)); tools/sim_sanitize.py does that")


def _runtime():
    """The execution engine (sim_runtime.cpp), built once, loaded with RTLD_GLOBAL so that
    every module resolves its barrier, shuffle and index symbols against it."""
    with _state.lock:
        if _state.runtime is None:
            argv, version = compiler_command()
            if sanitizing():
                _check_sanitizer_preloaded()
            flags = _flags("c++17")
            key = _digest(RUNTIME_SOURCE.read_bytes(), HEADER.read_bytes(), flags, argv, version)

            def make(tmp, out):
                _run_compiler([*argv, *flags, f"-I{INCLUDE_DIR}", "-x", "c++",
                               str(RUNTIME_SOURCE), "-o", str(out)], "the sim runtime")

            path = _build("runtime", key, make)
            _state.runtime = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        return _state.runtime


# ---------------------------------------------------------------------------------------
# NVRTC options -> host compiler options
# ---------------------------------------------------------------------------------------

# Options that only steer device code generation; the host build ignores them.
_DEVICE_ONLY = re.compile(
    r"^--?(ftz|prec-div|prec-sqrt|fmad|use_fast_math|use-fast-math|extra-device-vectorization|"
    r"dopt|restrict|default-device|device-as-default-execution-space|Xptxas|maxrregcount|"
    r"lineinfo|generate-line-info|G|device-debug|arch|gpu-architecture|rdc|"
    r"relocatable-device-code|dlink-time-opt|dlto|ewp|extensible-whole-program|w|"
    r"disable-warnings|Werror|Wreorder|Wno-deprecated-declarations|Wext-lambda-captures-this|"
    r"no-source-include|builtin-move-forward|builtin-initializer-list|optimization-info|"
    r"display-error-number|no-display-error-number|diag-error|diag-suppress|diag-warn|"
    r"brief-diagnostics|warn-spills|warn-lmem-usage|expt-relaxed-constexpr|"
    r"expt-extended-lambda|extended-lambda|split-compile|minimal|time|fdevice-time-trace)"
    r"(=.*)?$")
_WITH_VALUE = {"-I": "-I", "--include-path": "-I", "-D": "-D", "--define-macro": "-D",
               "-U": "-U", "--undefine-macro": "-U", "-include": "-include",
               "--pre-include": "-include", "-std": "-std", "--std": "-std",
               "-arch": None, "--gpu-architecture": None, "-maxrregcount": None,
               "--maxrregcount": None, "-Xptxas": None}


def host_options(options) -> tuple[str, list[str]]:
    """``(std, flags)``: the C++ standard and the ``-I``/``-D``/``-U``/``-include`` flags of
    NVRTC ``options``; device-only options are dropped, unknown ones raise ValueError."""
    std = "c++17"  # CuPy 14's default
    out = []
    opts = [str(o) for o in options]
    i = 0
    while i < len(opts):
        o = opts[i]
        i += 1
        if o in _WITH_VALUE:
            if i >= len(opts):
                raise ValueError(f"gpunet.sim: compiler option {o!r} lacks its value")
            name, value = _WITH_VALUE[o], opts[i]
            i += 1
        else:
            m = re.match(r"^(--include-path|--define-macro|--undefine-macro|--pre-include|--?std)=(.*)$", o)
            if m:
                name, value = _WITH_VALUE[m.group(1)], m.group(2)
            elif re.match(r"^-[IDU].", o):
                name, value = o[:2], o[2:]
            elif _DEVICE_ONLY.match(o):
                continue
            else:
                raise ValueError(f"gpunet.sim: compiler option {o!r} has no host equivalent "
                                 "(supported: -I, -D, -U, -include, -std; device-only options "
                                 "such as -arch or -ftz are ignored)")
        if name is None:
            continue
        if name == "-std":
            std = value
        elif name == "-include":
            out += ["-include", value]
        else:
            out.append(name + value)
    return std, out


# ---------------------------------------------------------------------------------------
# Source rewriting after preprocessing
# ---------------------------------------------------------------------------------------

_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+([^;{}()]*(?:\(\([^;{}]*?\)\)[^;{}()]*)*?)\s*\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_ATTRIBUTE = re.compile(r"__attribute__\s*\(\((?:[^()]|\([^()]*\))*\)\)")


def _rewrite_shared(text: str) -> str:
    def extern(m):
        decl = m.group(1)
        bare = _ATTRIBUTE.sub("", decl).strip()
        return (f"{bare}* const {m.group(2)} = "
                f"reinterpret_cast<{bare}*>(gpunet_sim_dynamic_smem);")

    text = _EXTERN_SHARED.sub(extern, text)
    if re.search(r"\bextern\s+__shared__\b", text):
        raise CompileError("gpunet.sim: cannot rewrite an `extern __shared__` declaration "
                           "(expected `extern __shared__ T name[];`)")
    return re.sub(r"\b__shared__\b", "static", text)


def _entries(names) -> str:
    lines = ["", "// gpunet.sim: entry points, one per name expression"]
    for i, n in enumerate(names):
        lines.append(f'extern "C" int gpunet_sim_entry_{i}(const gpunet_sim_launch* l) '
                     f"{{ return gpunet_sim::Entry<&{n}>::launch(l); }}")
        lines.append(f'extern "C" const char* gpunet_sim_signature_{i}() '
                     f"{{ return gpunet_sim::Entry<&{n}>::signature(); }}")
    return "\n".join(lines) + "\n"


def _compile_module(code: str, names: tuple, options: tuple):
    """The loaded library of ``code`` with entry points for ``names`` (memoized per process)."""
    argv, version = compiler_command()
    std, hopts = host_options(options)
    flags = _flags(std)
    source = code + "\n" + _entries(names)
    key = _digest(source, HEADER.read_bytes(), RUNTIME_SOURCE.read_bytes(), hopts, flags, argv,
                  version)

    def make(tmp, out):
        src = tmp / "sim_module.cu"
        src.write_text(source)
        # -I of the header's folder last: <cuda_fp16.h> and <cuda_runtime.h> are stubs there.
        pre = _run_compiler([*argv, f"-std={std}", "-E", "-x", "c++", "-include", str(HEADER),
                             *hopts, f"-I{INCLUDE_DIR}", str(src)],
                            "the kernel source (preprocessing)")
        ii = tmp / "sim_module.ii"
        ii.write_text(_rewrite_shared(pre))
        _run_compiler([*argv, *flags, "-x", "c++", str(ii), "-o", str(out)], "the kernel source")

    with _state.lock:
        _runtime()
        path = str(_build("module", key, make))
        lib = _state.libs.get(path)
        if lib is None:
            lib = ctypes.CDLL(path)
            _state.libs[path] = lib
        return lib


# ---------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------

class _Launch(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_ulonglong), ("args", ctypes.POINTER(ctypes.c_void_p)),
                ("name", ctypes.c_char_p), ("err", ctypes.c_char_p), ("errlen", ctypes.c_ulonglong)]


class _Param:
    __slots__ = ("kind", "size", "pkind", "psize", "spelling")

    def __init__(self, line: str):
        kind, size, pkind, psize, rest = line.split(" ", 4)
        self.kind, self.size, self.pkind, self.psize = kind, int(size), pkind, int(psize)
        m = re.search(r"\[with T = (.*)\]\s*$", rest)
        self.spelling = m.group(1) if m else rest


# CuPy's _pointer_numpy_types: numpy scalars passed as their bytes.
_NUMPY_SCALARS = {numpy.dtype(c).type for c in "?bhilqBHILQefdFD"}
_PTR_MASK = 2**64 - 1


def _kind(dtype) -> str:
    if dtype.kind == "f" and dtype.itemsize == 2:
        return "h"
    return dtype.kind  # b i u f c


_KIND_WORDS = {"b": "bool", "h": "half", "f": "float", "i": "signed integer",
               "u": "unsigned integer", "c": "complex", "s": "struct", "p": "pointer", "v": "void"}


def _describe(x) -> str:
    return f"{type(x).__module__}.{type(x).__name__}"


def _dims(what, v, limits):
    if not isinstance(v, tuple):
        v = (v,)
    if not 1 <= len(v) <= 3:
        raise ValueError(f"gpunet.sim: {what} must have 1 to 3 dimensions, got {v!r}")
    try:
        d = [max(1, int(x.__index__())) for x in v]  # CuPy launches max(1, dim)
    except (AttributeError, TypeError):
        raise TypeError(f"gpunet.sim: {what} dimensions must be integers, got {v!r}") from None
    d += [1] * (3 - len(d))
    for k, (x, hi) in enumerate(zip(d, limits)):
        if x > hi:
            raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: invalid argument ({what} dimension "
                               f"{k} is {x}, at most {hi})")
    return d


class RawKernel:
    """``cupy.RawKernel`` on the sim device: ``RawKernel(code, name, options=(),
    backend='nvrtc', translate_cucomplex=False, *, enable_cooperative_groups=False,
    jitify=None)``; ``kernel(grid, block, args, *, shared_mem=0)`` launches it."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=None):
        module = RawModule(code=code, options=options, backend=backend,
                           translate_cucomplex=translate_cucomplex,
                           enable_cooperative_groups=enable_cooperative_groups,
                           name_expressions=[name], jitify=jitify)
        self._init(module, name)

    @classmethod
    def _of_module(cls, module, name):
        k = cls.__new__(cls)
        k._init(module, name)
        return k

    def _init(self, module, name):
        self._module = module
        self.name = name
        self.code = module.code
        self.options = module.options
        self.backend = module.backend
        self.enable_cooperative_groups = module.enable_cooperative_groups
        self.file_path = None
        self._entry = None
        self._params = None
        self._name_bytes = name.encode()

    def compile(self, log_stream=None):
        """Build (or load from the cache) the kernel's library."""
        if self._entry is None:
            lib, index = self._module._library_for(self.name)
            entry = getattr(lib, f"gpunet_sim_entry_{index}")
            entry.restype = ctypes.c_int
            entry.argtypes = [ctypes.POINTER(_Launch)]
            sig = getattr(lib, f"gpunet_sim_signature_{index}")
            sig.restype = ctypes.c_char_p
            text = sig().decode()
            self._params = [_Param(line) for line in text.splitlines() if line.strip()]
            self._entry = entry

    @property
    def max_threads_per_block(self):
        return _MAX_THREADS

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        """Launch on ``grid`` blocks of ``block`` threads (ints or tuples of up to 3) with
        ``args`` (a tuple or list, one per kernel parameter) and ``shared_mem`` bytes of
        dynamic shared memory; ``stream`` is accepted and ignored (the sim runs every
        launch to completion, in order)."""
        self.compile()
        g = _dims("grid", grid, _MAX_GRID)
        b = _dims("block", block, _MAX_BLOCK)
        if b[0] * b[1] * b[2] > _MAX_THREADS:
            raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: invalid argument (a block of "
                               f"{b[0] * b[1] * b[2]} threads; at most {_MAX_THREADS})")
        shared_mem = int(shared_mem)
        if not 0 <= shared_mem <= _MAX_DYNAMIC_SHARED:
            raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: invalid argument ({shared_mem} bytes "
                               f"of dynamic shared memory; the sim allows 0 to "
                               f"{_MAX_DYNAMIC_SHARED})")
        buf, keep = self._pack(args)
        n = len(self._params)
        base = ctypes.addressof(buf)
        ptrs = (ctypes.c_void_p * max(n, 1))(*[base + 16 * i for i in range(n)])
        err = ctypes.create_string_buffer(2048)
        launch = _Launch((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), shared_mem,
                         ctypes.cast(ptrs, ctypes.POINTER(ctypes.c_void_p)), self._name_bytes,
                         ctypes.cast(err, ctypes.c_char_p), len(err))
        _counters.launch(self.name)
        if _counters._mode is not None:      # CUDA-graph capture/replay: the arguments' bytes
            _counters.event("args", (self.name, bytes(buf)))
        rc = self._entry(ctypes.byref(launch))
        del keep
        if rc != 0:
            raise RuntimeError(f"gpunet.sim: {err.value.decode(errors='replace')}")

    def _pack(self, args):
        """Arguments -> a buffer of 16-byte slots (one per parameter), checked against the
        kernel's parameter types."""
        params = self._params
        args = tuple(args)
        if len(args) != len(params):
            raise TypeError(f"gpunet.sim: kernel '{self.name}' takes {len(params)} arguments, "
                            f"got {len(args)}")
        raw = bytearray(16 * len(params))
        keep = []
        for i, (a, p) in enumerate(zip(args, params)):
            where = f"kernel '{self.name}' parameter {i} ({p.spelling})"
            if a is None:
                if p.kind != "p":
                    raise TypeError(f"gpunet.sim: {where}: None (a null pointer) for a "
                                    f"non-pointer parameter")
                continue  # the slot stays 0
            ptr = None
            if not isinstance(a, numpy.ndarray):
                ptr = getattr(getattr(a, "data", None), "ptr", None)
                if ptr is None and type(a) not in _NUMPY_SCALARS:
                    ptr = getattr(a, "ptr", None)  # a memory pointer (x.data), as CuPy takes
            if isinstance(ptr, int):
                if p.kind != "p":
                    raise TypeError(f"gpunet.sim: {where}: an array for a non-pointer parameter")
                dtype = getattr(a, "dtype", None)
                if (dtype is not None and p.pkind in "bhfiu" and p.psize > 1 and
                        (_kind(numpy.dtype(dtype)) != p.pkind
                         or numpy.dtype(dtype).itemsize != p.psize)):
                    raise TypeError(f"gpunet.sim: {where}: an array of {numpy.dtype(dtype)} for a "
                                    f"pointer to a {p.psize}-byte {_KIND_WORDS[p.pkind]}")
                raw[16 * i:16 * i + 8] = (ptr & _PTR_MASK).to_bytes(8, sys.byteorder)
                keep.append(a)
                if _counters._pending and hasattr(a, "_a"):     # a copy on another stream
                    _counters.check_ready(a._a)
                continue
            if type(a) in _NUMPY_SCALARS:
                x = a
            elif isinstance(a, int):
                x = numpy.int64(a)
            elif isinstance(a, float):
                x = numpy.float64(a)
            elif isinstance(a, complex):
                x = numpy.complex128(a)
            else:
                raise TypeError(f"Unsupported type {type(a)}")
            k = _kind(x.dtype)
            if p.kind == "p":
                raise TypeError(f"gpunet.sim: {where}: a scalar ({_describe(a)}) for a pointer "
                                f"parameter")
            if k != p.kind or x.dtype.itemsize != p.size:
                raise TypeError(f"gpunet.sim: {where}: {_describe(a)} (a {x.dtype.itemsize}-byte "
                                f"{_KIND_WORDS[k]}) for a {p.size}-byte {_KIND_WORDS[p.kind]} "
                                f"parameter")
            b = x.tobytes()
            raw[16 * i:16 * i + len(b)] = b
        buf = (ctypes.c_char * max(len(raw), 1)).from_buffer(raw) if raw else \
            ctypes.create_string_buffer(1)
        keep.append(raw)
        return buf, keep


class RawModule:
    """``cupy.RawModule`` on the sim device: ``RawModule(code=None, *, path=None,
    options=(), backend='nvrtc', translate_cucomplex=False, enable_cooperative_groups=False,
    name_expressions=None, jitify=None)``. ``get_function(name_expression)`` returns a
    ``RawKernel``; a name not among ``name_expressions`` (e.g. an ``extern "C"`` kernel)
    gets its entry point through a rebuild that adds it."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=None):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of code and path keyword arguments must be given.")
        if path is not None:
            raise ValueError("gpunet.sim: RawModule(path=...) loads a cubin or PTX file, which "
                             "the sim device cannot run; pass the CUDA source as code=")
        if backend not in ("nvrtc", "nvcc"):
            raise ValueError(f"Invalid backend {backend}")
        for flag, what in ((translate_cucomplex, "translate_cucomplex"),
                           (enable_cooperative_groups, "enable_cooperative_groups"),
                           (jitify, "jitify")):
            if flag:
                raise NotImplementedError(f"gpunet.sim: {what}=True is not supported on the sim "
                                          "device")
        self.code = code
        self.options = tuple(options)
        self.backend = backend
        self.enable_cooperative_groups = enable_cooperative_groups
        self.name_expressions = None if name_expressions is None else tuple(name_expressions)
        self.file_path = None
        self._names = list(self.name_expressions or ())
        self._lib = None
        self._kernels = {}

    def _library_for(self, name):
        with _state.lock:
            if name not in self._names:
                self._names.append(name)
                self._lib = None
            if self._lib is None:
                self._lib = _compile_module(self.code, tuple(self._names), self.options)
            return self._lib, self._names.index(name)

    def compile(self, log_stream=None):
        """Build (or load from the cache) the module's library."""
        if self._lib is None:
            with _state.lock:
                self._lib = _compile_module(self.code, tuple(self._names), self.options)

    @property
    def module(self):
        self.compile()
        return self._lib

    def get_function(self, name):
        k = self._kernels.get(name)
        if k is None:
            k = RawKernel._of_module(self, name)
            k.compile()
            self._kernels[name] = k
        return k


__all__ = ["RawModule", "RawKernel", "CompileError", "compiler_command", "cache_dir",
           "sanitizing", "host_options", "HEADER", "RUNTIME_SOURCE", "SANITIZE_FLAGS"]
