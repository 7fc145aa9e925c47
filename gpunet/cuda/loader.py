"""Finding, compiling and memoizing the kernels; helpers every launcher shares.

``KERNELS`` (file -> name expressions) and ``compile_options`` are the single source that
both this loader and ``tools/check_kernels.py`` use. See the package docstring.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy

from ..backend import device_of, require_cuda, require_sim

_TYPES = ("float", "double")
_CTYPE = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
# the kernels with a __half instantiation (float arithmetic inside, kernels/half.cuh):
# softmax-CE, batch norm, dropout, convolution, pooling
_HALF_CTYPE = {**_CTYPE, numpy.dtype(numpy.float16): "__half"}


def _acc_dtype(dtype):
    """The arithmetic dtype of storage dtype ``dtype`` (``acc_t`` in kernels/half.cuh):
    float32 for float16, ``dtype`` otherwise."""
    dtype = numpy.dtype(dtype)
    return numpy.dtype(numpy.float32) if dtype == numpy.float16 else dtype

# Rows of at most 32 * ITEMS classes take the warp-per-row kernels.
_WARP_ITEMS = (8, 32)

KERNELS: dict[str, list[str]] = {
    "softmax_xent.cu": [
        *(f"softmax_xent_hard_warp<{t}, {i}>" for t in (*_TYPES, "__half") for i in _WARP_ITEMS),
        *(f"softmax_xent_hard_block<{t}>" for t in (*_TYPES, "__half")),
        *(f"softmax_xent_soft_warp<{t}, {i}>" for t in (*_TYPES, "__half") for i in _WARP_ITEMS),
        *(f"softmax_xent_soft_block<{t}>" for t in (*_TYPES, "__half")),
        *(f"softmax_xent_count_valid<{t}>" for t in _TYPES),
    ],
    # the elementwise passes and the partial reductions read and write __half; the
    # finalize kernels work on the float partials only
    "batchnorm.cu": [
        *(f"{k}<{t}>" for k in ("bn_stats_partial", "bn_forward_apply",
                                "bn_backward_reduce_partial", "bn_backward_apply")
          for t in (*_TYPES, "__half")),
        *(f"{k}<{t}>" for k in ("bn_stats_finalize", "bn_backward_finalize") for t in _TYPES),
    ],
    "dropout.cu": [f"dropout_apply{v}<{t}>" for v in ("", "_state") for t in (*_TYPES, "__half")]
                  + ["dropout_next_draw"],
    "optim.cu": [*(f"{k}<{t}>" for k in ("mt_sgd", "mt_adam", "mt_rmsprop", "mt_adagrad",
                                          "mt_grad_sumsq", "mt_grad_scale", "mt_grad_clamp")
                   for t in _TYPES), "amp_update_scale"],
    "conv.cu": [f"{k}<{t}>" for k in ("im2col", "col2im", "conv_bias_act", "conv_act_grad")
                for t in (*_TYPES, "__half")],
    "pooling.cu": [*(f"{k}<{t}, {i}>" for k in ("max_pool_forward", "max_pool_backward")
                   for t in (*_TYPES, "__half") for i in ("unsigned char", "int")),
                 *(f"{k}<{t}>" for k in ("avg_pool_forward", "avg_pool_backward")
                   for t in (*_TYPES, "__half"))],
}

# What CuPy appends to the options of every RawModule it compiles with NVRTC.
CUPY_ADDED_OPTIONS = ("-ftz=true",)


# ---------------------------------------------------------------------------------------
# Finding and compiling the sources
# ---------------------------------------------------------------------------------------

def kernels_dir() -> Path:
    """The folder holding the ``*.cu`` / ``*.cuh`` sources.

    An installed wheel carries them as ``gpunet/kernels/``; a source checkout has them in
    the top-level ``kernels/`` beside the ``gpunet/`` package (``gpunet/kernels`` is a
    symlink to it there, which is how the wheel build picks them up).
    """
    here = Path(__file__).resolve().parent.parent      # the gpunet package
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "common.cuh").is_file():
            return d.resolve()
    raise FileNotFoundError(
        f"gpunet: CUDA kernel sources not found in {here / 'kernels'} (installed wheel) "
        f"or {here.parent / 'kernels'} (source checkout)")


def kernels_hash(directory=None) -> str:
    """sha256 (hex) over the names and bytes of every ``*.cu`` and ``*.cuh`` file."""
    d = Path(directory) if directory is not None else kernels_dir()
    h = hashlib.sha256()
    for p in sorted([*d.glob("*.cu"), *d.glob("*.cuh")]):
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def compile_options(arch=None, directory=None) -> tuple[str, ...]:
    """NVRTC options for the kernels.

    ``arch=None``: the options gpunet hands to ``cupy.RawModule`` (CuPy adds ``-arch`` for
    the current device and ``-ftz=true``). ``arch=80`` (an int or ``"sm_80"``): the full
    command line CuPy would run on such a device, ``CUPY_ADDED_OPTIONS`` and
    ``-arch=sm_80`` included, as the compile check uses it.
    """
    d = Path(directory) if directory is not None else kernels_dir()
    opts = ("--std=c++17", f"-I{d}", f"-DGPUNET_KERNELS_HASH={kernels_hash(d)[:16]}")
    if arch is not None:
        sm = str(arch).removeprefix("sm_")
        opts += CUPY_ADDED_OPTIONS + (f"-arch=sm_{sm}",)
    return opts


def kernel_source(file: str, directory=None) -> str:
    d = Path(directory) if directory is not None else kernels_dir()
    return (d / file).read_text()


_modules: dict = {}     # (file, device) -> cupy.RawModule
_functions: dict = {}   # (file, name expression, device) -> cupy.RawKernel
_sm_counts: dict = {}   # device -> multiprocessor count


def _xp_of_device(device_id):
    """``(array module, its device index)`` for a CUDA device id or ``"sim"``."""
    if device_id == "sim":
        return require_sim(), 0
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        raise TypeError(f"gpunet.cuda: device must be a CUDA device id (int) or 'sim', "
                        f"got {device_id!r}")
    return require_cuda(device_id), device_id


def module(file: str, device_id=0):
    """The compiled ``RawModule`` of ``kernels/<file>`` on ``device_id`` (memoized):
    a CUDA device id (``cupy.RawModule``), or ``"sim"`` (the sim runtime's)."""
    key = (file, device_id)
    mod = _modules.get(key)
    if mod is None:
        if file not in KERNELS:
            raise ValueError(f"gpunet.cuda.module: unknown kernel file {file!r}; "
                             f"known: {sorted(KERNELS)}")
        cp, index = _xp_of_device(device_id)
        with cp.cuda.Device(index):
            mod = cp.RawModule(code=kernel_source(file), options=compile_options(),
                               name_expressions=KERNELS[file])
            mod.compile()
        _modules[key] = mod
    return mod


def kernel(file: str, name: str, device_id=0):
    """The ``cupy.RawKernel`` for name expression ``name`` (e.g. ``"dropout_apply<float>"``)."""
    key = (file, name, device_id)
    fn = _functions.get(key)
    if fn is None:
        fn = module(file, device_id).get_function(name)
        _functions[key] = fn
    return fn


def _sm_count(device_id) -> int:
    n = _sm_counts.get(device_id)
    if n is None:
        cp, index = _xp_of_device(device_id)
        n = int(cp.cuda.Device(index).attributes["MultiProcessorCount"])
        _sm_counts[device_id] = n
    return n


def fast_divmod_constants(d: int) -> tuple[int, int, int]:
    """``(d, mul, shr)`` with ``n // d == (n * mul) >> (32 + shr)`` for ``0 <= n < 2**31``.

    The device side is ``gpunet::FastDivmod`` in ``kernels/common.cuh``
    (``__umulhi(n, mul) >> shr``); ``d == 1`` is passed through with ``mul = 0``.
    ``mul = ceil(2**(31 + l) / d)`` and ``shr = l - 1`` with ``l = ceil(log2 d)``.
    """
    d = int(d)
    if not 1 <= d < 2**31:
        raise ValueError(f"fast_divmod_constants: divisor must lie in [1, 2**31), got {d}")
    if d == 1:
        return 1, 0, 0
    l = (d - 1).bit_length()
    mul = -(-(1 << (31 + l)) // d)
    return d, mul, l - 1


def _divmod_args(d):
    """``fast_divmod_constants(d)`` as the kernel arguments of a ``gpunet::FastDivmod``."""
    return tuple(numpy.uint32(v) for v in fast_divmod_constants(d))


# ---------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------

def _cupy_for(x):
    """The array module of x's device: the sim's for a sim array, else require_cuda for
    the device of x (device 0 for anything that is not a CuPy array)."""
    if device_of(x) == "sim":
        return require_sim()
    dev = getattr(getattr(x, "device", None), "id", 0)
    return require_cuda(dev if isinstance(dev, int) else 0)


def _device(x):
    """The memoization key of x's device: its CUDA device id, or ``"sim"``."""
    return "sim" if device_of(x) == "sim" else x.device.id


def _float_array(name, x, cp, half=False):
    """``x`` C-contiguous; TypeError unless a float32/float64 (and float16 with ``half``) array."""
    if not isinstance(x, cp.ndarray):
        raise TypeError(f"gpunet.cuda.{name}: expected a cupy.ndarray, got {type(x).__name__}")
    if x.dtype not in (_HALF_CTYPE if half else _CTYPE):
        raise TypeError(f"gpunet.cuda.{name}: expected {'float16, ' if half else ''}float32 or "
                        f"float64, got {x.dtype}")
    return cp.ascontiguousarray(x)


def _same_dtype(name, what, a, dtype, shape):
    if a.dtype != dtype:
        raise ValueError(f"gpunet.cuda.{name}: {what} must have dtype {dtype}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"gpunet.cuda.{name}: {what} must have shape {shape}, got {a.shape}")


def _grid(work: int, threads: int, device_id: int, per_sm: int = 16) -> int:
    return max(1, min(-(-work // threads), _sm_count(device_id) * per_sm))
