"""gpunet's CUDA kernels: where they live, how they are compiled, and their launchers.

One launcher module per ``kernels/*.cu`` file: ``softmax_xent``, ``batchnorm`` and
``dropout`` (the fused ops below), ``optim`` (multi-tensor optimizer updates and
sync-free gradient clipping, used by ``gpunet.optim``), ``conv`` (im2col, col2im and the
bias/activation epilogue around cuBLAS GEMMs, used by ``gpunet.functional.conv``) and
``pooling`` (max/average pooling, used by ``gpunet.functional.pooling``); ``loader``
finds, compiles and memoizes them. ``graphs`` captures a training step as a CUDA graph and
replays it (``CUDAGraph``, re-exported here).

The kernels are CUDA C++ sources in ``kernels/`` (a source checkout's top-level folder,
or ``gpunet/kernels/`` inside an installed wheel), compiled at run time by CuPy through
NVRTC::

    cupy.RawModule(code=<file>, options=compile_options(), name_expressions=KERNELS[file])

memoized per (file, device): a CUDA device id, or ``"sim"``, the simulated device, whose
``RawModule`` (``gpunet.sim.runtime``) compiles the same sources for the CPU and runs
them with CUDA semantics. ``compile_options()`` carries ``-I<kernels dir>`` so that
``#include "common.cuh"`` resolves, and ``-DGPUNET_KERNELS_HASH=<sha256 of every file in
kernels/>``: CuPy's on-disk cache key covers the source and the options but not the
included headers, so the hash makes an edit of ``common.cuh`` recompile every module.
CuPy appends ``-ftz=true`` and the device's ``-arch`` itself; ``compile_options(arch)``
adds both to give the exact NVRTC command line CuPy runs on a GPU of that architecture,
which ``tools/check_kernels.py`` compiles on machines without a GPU.

``KERNELS`` (file -> name expressions) and ``compile_options`` are the single source
that both this loader and the compile check use.

Launchers of the fused ops, re-exported here (inputs are CuPy arrays on one device, or sim
arrays; outputs are new arrays of that module, of the input's dtype, float32 or float64 —
and float16 for every launcher here, convolution and pooling, whose ``__half`` kernels
compute in float and round each output once (``kernels/half.cuh``; softmax-CE's loss and
batch norm's statistics and affine parameters stay float32 then); each mirrors a NumPy
reference in gpunet.functional):

* ``softmax_xent(logits, labels, label_smoothing=0.0, ignore_index=None, reduction="mean",
  grad_scale=1.0) -> (loss, dlogits)``
* ``batchnorm_forward(x, gamma, beta, eps) -> (y, mean, var, inv_std)``
* ``batchnorm_backward(dy, x, gamma, mean, inv_std) -> (dx, dgamma, dbeta)``
* ``dropout_forward(x, k1, k2, threshold, scale) -> y``
* ``dropout_backward(dy, k1, k2, threshold, scale) -> dx``
* ``draw_state(xp, seed, counter)``, ``next_draw(state)``,
  ``dropout_forward_state(x, state, start, threshold, scale)``,
  ``dropout_backward_state(dy, state, start, threshold, scale)``: the same with the draw
  counter on the device (a ``Dropout`` layer there; a CUDA graph replays fresh masks)

CuPy is imported lazily, through ``gpunet.backend.require_cuda``; importing this module
never needs a GPU. The launchers are written once, against the array module of their
input (``cupy``, or ``gpunet.sim.array`` on the sim), and run unchanged on both.
"""
from __future__ import annotations

from .loader import (CUPY_ADDED_OPTIONS, KERNELS, compile_options, fast_divmod_constants,
                     kernel, kernel_source, kernels_dir, kernels_hash, module)
from .loader import _device, _functions, _modules, _sm_count, _sm_counts  # noqa: F401 (tests)
from .softmax_xent import softmax_xent
from .batchnorm import batchnorm_backward, batchnorm_forward
from .batchnorm import _bn_chunks  # noqa: F401 (tests)
from .dropout import (dropout_backward, dropout_backward_state, dropout_forward,
                      dropout_forward_state, draw_state, next_draw)
from .graphs import CUDAGraph

__all__ = ["KERNELS", "CUPY_ADDED_OPTIONS", "kernels_dir", "kernels_hash", "compile_options",
           "kernel_source", "module", "kernel", "fast_divmod_constants", "softmax_xent",
           "batchnorm_forward", "batchnorm_backward", "dropout_forward", "dropout_backward",
           "draw_state", "next_draw", "dropout_forward_state", "dropout_backward_state",
           "CUDAGraph"]
