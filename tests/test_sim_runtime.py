"""The sim device's kernel runtime (gpunet.sim.runtime): CUDA C++ compiled for the host and
run with CUDA semantics.

* every kernel of ``gpunet.cuda.KERNELS`` compiles, and runs through its launcher on sim
  arrays, matching the NumPy reference;
* small hand-written kernels pin down the semantics: block/grid indices, __syncthreads and
  shared memory, dynamic (``extern __shared__``) shared memory, the four shuffles with
  every width, votes, barrier reductions, atomics, partial-warp masks, __half;
* a barrier or warp operation that not every thread reaches raises RuntimeError naming the
  kernel and the block (and the runtime keeps working afterwards);
* arguments are checked against the kernel's parameter types, as CuPy passes them;
* the compile cache (location, key, atomic writes) and the missing-compiler message.

Hand-written kernels take a stand-in for device arrays (any object with ``.data.ptr``,
as the runtime requires) so that these tests do not depend on the array module.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy
import pytest

import gpunet
from gpunet import cuda as gcuda
from gpunet import functional as F
from gpunet import sim
from gpunet.sim import runtime

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="no host C++ compiler")

REPO = Path(__file__).resolve().parents[1]


class Dev:
    """A device-array stand-in: a NumPy buffer whose address is ``.data.ptr``."""

    def __init__(self, a):
        self.a = numpy.ascontiguousarray(a)
        self.dtype = self.a.dtype
        self.data = SimpleNamespace(ptr=self.a.ctypes.data)


SOURCE = r"""
extern "C" __global__ void reverse_shared(const float* x, float* y) {
    __shared__ float s[1024];
    const int t = threadIdx.x, o = blockIdx.x * blockDim.x;
    s[t] = x[o + t];
    __syncthreads();
    y[o + t] = s[blockDim.x - 1 - t];
}

extern "C" __global__ void many_barriers(int* out, int rounds) {
    __shared__ int s[1024];
    const int t = threadIdx.x, n = blockDim.x;
    int v = t;
    for (int r = 0; r < rounds; ++r) {   // rotate by one, `rounds` times
        s[t] = v;
        __syncthreads();
        v = s[(t + 1) % n];
        __syncthreads();
    }
    out[blockIdx.x * n + t] = v;
}

extern "C" __global__ void indices(int* out) {
    const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int* o = out + 8 * (bid * blockDim.x * blockDim.y * blockDim.z + tid);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x * blockDim.y * blockDim.z; o[7] = gridDim.x * gridDim.y * gridDim.z;
}

template <typename T, int W>
__global__ void shuffles(const T* x, T* out, int delta, int src) {
    const int t = threadIdx.x;
    const T v = x[t];
    T* o = out + 4 * t;
    o[0] = __shfl_xor_sync(0xffffffffu, v, delta, W);
    o[1] = __shfl_down_sync(0xffffffffu, v, delta, W);
    o[2] = __shfl_up_sync(0xffffffffu, v, delta, W);
    o[3] = __shfl_sync(0xffffffffu, v, src, W);
}
template __global__ void shuffles<int, 32>(const int*, int*, int, int);
template __global__ void shuffles<int, 16>(const int*, int*, int, int);
template __global__ void shuffles<int, 8>(const int*, int*, int, int);
template __global__ void shuffles<double, 32>(const double*, double*, int, int);
template __global__ void shuffles<long long, 4>(const long long*, long long*, int, int);

extern "C" __global__ void split_warps(const int* x, int* out) {
    const int t = threadIdx.x;
    int v = x[t];
    if ((t & 31) < 16) v = __shfl_xor_sync(0x0000ffffu, v, 1);
    else v = __shfl_down_sync(0xffff0000u, v, 2);
    out[t] = v;
}

extern "C" __global__ void votes(const int* p, unsigned int* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = p[i];
    unsigned int* o = out + 6 * i;
    o[0] = __ballot_sync(0xffffffffu, v);
    o[1] = __any_sync(0xffffffffu, v);
    o[2] = __all_sync(0xffffffffu, v);
    o[3] = __syncthreads_count(v);
    o[4] = __syncthreads_and(v);
    o[5] = __syncthreads_or(v);
}

extern "C" __global__ void atomics(const int* x, int n, unsigned int* bins, float* fsum,
                                   double* dsum, int* imax, unsigned long long* cas_count,
                                   int* tickets, int* next) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        atomicAdd(&bins[x[i]], 1u);
        atomicAdd(fsum, 1.0f);
        atomicAdd(dsum, static_cast<double>(x[i]));
        atomicMax(imax, x[i]);
        unsigned long long old = *cas_count, assumed;
        do {
            assumed = old;
            old = atomicCAS(cas_count, assumed, assumed + 1ull);
        } while (old != assumed);
        tickets[i] = atomicAdd(next, 1);
        __syncwarp(__activemask());
    }
}

extern "C" __global__ void dyn_sum(const float* x, float* out) {
    extern __shared__ float buf[];
    const int t = threadIdx.x;
    buf[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

extern "C" __global__ void dyn_bytes(double* out) {
    extern __shared__ __align__(16) unsigned char raw[];
    double* d = reinterpret_cast<double*>(raw);
    d[threadIdx.x] = 0.5 * threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = d[blockDim.x - 1 - threadIdx.x] + static_cast<double>(reinterpret_cast<size_t>(raw) % 16);
}

extern "C" __global__ void bar_in_branch(float* x) {
    if (blockIdx.x != 2 || threadIdx.x < 16) __syncthreads();
    x[threadIdx.x] += 1.0f;
}

extern "C" __global__ void shfl_missing_lane(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x == 5) return;
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}

extern "C" __global__ void two_barriers(float* x) {
    if (threadIdx.x & 1) {
        __syncthreads();
        x[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        x[threadIdx.x] = 2.0f;
    }
}

extern "C" __global__ void shfl_vs_barrier(float* x) {
    float v = x[threadIdx.x];
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else __syncthreads();
    x[threadIdx.x] = v;
}

extern "C" __global__ void mask_without_caller(float* x) {
    x[threadIdx.x] = __shfl_xor_sync(0xfffffffeu, x[threadIdx.x], 1);
}

extern "C" __global__ void reads_outside_mask(float* x) {
    if (threadIdx.x < 2) x[threadIdx.x] = __shfl_sync(0x3u, x[threadIdx.x], 5);
}

extern "C" __global__ void partial_warp_full_mask(float* x) {
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 16);
}

extern "C" __global__ void traps(const float* x) {
    if (x[threadIdx.x] < 0.0f) __trap();
    assert(x[threadIdx.x] < 100.0f);
}

extern "C" __global__ void wild(float* x) {
    if (blockIdx.x == 1 && threadIdx.x == 3) x[1ll << 34] = 1.0f;
}

__device__ int deep(int n) {
    volatile char frame[512];
    frame[0] = static_cast<char>(n);
    return n ? deep(n - 1) + frame[0] : 0;
}

extern "C" __global__ void overflow_stack(int* out, int depth) {
    out[threadIdx.x] = deep(threadIdx.x == 1 ? depth : 1);
}

extern "C" __global__ void typed(const float* x, float* y, int n, long long m, unsigned int u,
                                 double d, float f) {
    if (threadIdx.x == 0 && y != nullptr)
        y[0] = x[0] + static_cast<float>(n) + static_cast<float>(m) + static_cast<float>(u) +
               static_cast<float>(d) + f;
}

extern "C" __global__ void half_convert(const unsigned short* h, float* f, const float* x,
                                        unsigned short* hx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        f[i] = __half2float(__ushort_as_half(h[i]));
        hx[i] = __half_as_ushort(__float2half(x[i]));
    }
}

#include <cuda_fp16.h>

extern "C" __global__ void half_ops(const __half* a, const __half* b, __half* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[4 * i + 0] = a[i] + b[i];
    out[4 * i + 1] = a[i] * b[i];
    out[4 * i + 2] = __hsub(a[i], b[i]);
    out[4 * i + 3] = __shfl_xor_sync(__activemask(), a[i], 1);
}
"""

NAMES = ["reverse_shared", "many_barriers", "indices", "shuffles<int, 32>", "shuffles<int, 16>",
         "shuffles<int, 8>", "shuffles<double, 32>", "shuffles<long long, 4>", "split_warps",
         "votes", "atomics", "dyn_sum", "dyn_bytes", "bar_in_branch", "shfl_missing_lane",
         "two_barriers", "shfl_vs_barrier", "mask_without_caller", "reads_outside_mask",
         "partial_warp_full_mask", "traps", "wild", "overflow_stack", "typed", "half_convert",
         "half_ops"]


@pytest.fixture(scope="module")
def mod():
    m = runtime.RawModule(code=SOURCE, options=("--std=c++17",), name_expressions=NAMES)
    m.compile()
    return m


# ---------------------------------------------------------------------------------------
# gpunet's kernels
# ---------------------------------------------------------------------------------------

ALL_NAMES = [(f, n) for f, names in gcuda.KERNELS.items() for n in names]
# The fused ops whose kernels take their input array first and are driven by _run_op below;
# the optimizer, convolution and pooling kernels are run against NumPy by their own tests
# (tests/test_optim_fused.py, tests/test_conv_device.py), which assert their launches.
ELEMENTWISE_FILES = ("softmax_xent.cu", "batchnorm.cu", "dropout.cu")
RUN_NAMES = [(f, n) for f, n in ALL_NAMES       # the __half kernels: tests/test_amp_precision.py
             if f in ELEMENTWISE_FILES and not n.startswith("softmax_xent_count_valid")
             and "<__half" not in n]


@pytest.mark.parametrize("file", sorted(gcuda.KERNELS))
def test_every_gpunet_kernel_compiles_with_its_parameter_types(file):
    m = runtime.RawModule(code=gcuda.kernel_source(file), options=gcuda.compile_options(),
                          name_expressions=gcuda.KERNELS[file])
    m.compile()
    for name in gcuda.KERNELS[file]:
        k = m.get_function(name)
        T = "double" if "<double" in name else "__half" if "<__half" in name else "float"
        size = 8 if T == "double" else 4
        floats = [p for p in k._params if p.kind == "p" and p.pkind == "f"]
        if T == "__half":   # half storage; its scalars (dropout's scale) are float
            assert k._params[0].spelling == "const __half*", (name, [p.spelling for p in k._params])
        elif name == "dropout_next_draw":      # integers only: the draw state
            assert [p.spelling for p in k._params] == ["long long unsigned int*"]
        elif file in ELEMENTWISE_FILES and not name.startswith("softmax_xent_count_valid"):
            # (others may accumulate in double, e.g. the optimizers' sum of squares)
            assert floats and all(p.psize == size for p in floats), (name, [p.spelling for p in k._params])
            assert k._params[0].spelling == f"const {T}*"


def _sim():
    return gpunet.backend.require_sim()


def _run_op(name, rng):
    """Run the functional op whose launcher picks kernel ``name``; compare with NumPy."""
    sp = _sim()
    dtype = numpy.float64 if "<double" in name else numpy.float32
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == numpy.float64 else dict(rtol=2e-5, atol=2e-6)
    if name.startswith("softmax_xent"):
        C = 37 if ", 8>" in name else 300 if ", 32>" in name else 1500
        N = 5
        z = rng.standard_normal((N, C)).astype(dtype)
        if "_soft_" in name:
            q = rng.random((N, C)).astype(dtype)
            labels = q / q.sum(1, keepdims=True)
        else:
            labels = rng.integers(0, C, N)
        want = F.softmax_cross_entropy(z, labels, label_smoothing=0.1)
        got = F.softmax_cross_entropy(sp.asarray(z), sp.asarray(labels), label_smoothing=0.1)
    elif name.startswith("bn_"):
        x = rng.standard_normal((6, 3, 5, 4)).astype(dtype) * 2 + 1
        g = rng.standard_normal(3).astype(dtype)
        b = rng.standard_normal(3).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        y, mean, var, inv = F.batch_norm_forward(x, g, b)
        want = (y, mean, var, inv, *F.batch_norm_backward(dy, x, g, mean, inv))
        ys, ms, vs, ivs = F.batch_norm_forward(sp.asarray(x), sp.asarray(g), sp.asarray(b))
        got = (ys, ms, vs, ivs, *F.batch_norm_backward(sp.asarray(dy), sp.asarray(x), sp.asarray(g), ms, ivs))
    else:
        x = rng.standard_normal(1003).astype(dtype)
        want = F.dropout_forward(x, 0.3, seed=7, counter=2)
        if "_state" in name or "next_draw" in name:     # the counter on the device
            st = gcuda.draw_state(sp, 7, 2)
            gcuda.next_draw(st)
            got = F.dropout_forward_state(sp.asarray(x), 0.3, st)
        else:
            got = F.dropout_forward(sp.asarray(x), 0.3, seed=7, counter=2)
    for w, g in zip(want, got):
        numpy.testing.assert_allclose(gpunet.to_numpy(g), w, **tol)


@pytest.mark.parametrize("file,name", RUN_NAMES, ids=[n for _, n in RUN_NAMES])
def test_every_gpunet_kernel_runs_and_matches_numpy(file, name, rng):
    sim.reset_counters()
    _run_op(name, rng)
    assert sim.counters()["kernels"].get(name, 0) >= 1, sorted(sim.counters()["kernels"])


# ---------------------------------------------------------------------------------------
# Semantics
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [32, 96, 1024])
def test_syncthreads_orders_shared_memory(mod, threads, rng):
    x = rng.standard_normal(3 * threads).astype(numpy.float32)
    y = Dev(numpy.zeros_like(x))
    mod.get_function("reverse_shared")((3,), (threads,), (Dev(x), y))
    numpy.testing.assert_array_equal(y.a, x.reshape(3, threads)[:, ::-1].ravel())


def test_many_barriers_in_a_full_block(mod):
    out = Dev(numpy.zeros(2 * 1024, numpy.int32))
    mod.get_function("many_barriers")(2, 1024, (out, numpy.int32(37)))
    want = (numpy.arange(1024) + 37) % 1024
    numpy.testing.assert_array_equal(out.a, numpy.concatenate([want, want]))


def test_indices_of_3d_grid_and_blocks(mod):
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = 12, 24
    out = Dev(numpy.full(8 * nb * nt, -1, numpy.int32))
    mod.get_function("indices")(grid, block, (out,))
    o = out.a.reshape(nb, nt, 8)
    bz, by, bx = numpy.meshgrid(range(2), range(2), range(3), indexing="ij")
    tz, ty, tx = numpy.meshgrid(range(2), range(3), range(4), indexing="ij")
    for k, v in enumerate([tx, ty, tz]):
        numpy.testing.assert_array_equal(o[:, :, k], numpy.broadcast_to(v.ravel(), (nb, nt)))
    for k, v in enumerate([bx, by, bz]):
        numpy.testing.assert_array_equal(o[:, :, 3 + k], numpy.broadcast_to(v.ravel()[:, None], (nb, nt)))
    assert (o[:, :, 6] == nt).all() and (o[:, :, 7] == nb).all()


def _shuffle_reference(v, W, delta, src):
    """CUDA's documented shuffle results for a 32-lane warp (each width-W segment apart)."""
    out = numpy.empty((32, 4), v.dtype)
    for l in range(32):
        s0 = l - l % W
        j = l ^ delta
        out[l, 0] = v[j] if j < s0 + W else v[l]           # later segments: own value
        out[l, 1] = v[l + delta] if l % W + delta < W else v[l]
        out[l, 2] = v[l - delta] if l % W - delta >= 0 else v[l]
        out[l, 3] = v[s0 + src % W]
    return out


@pytest.mark.parametrize("T,W", [("int", 32), ("int", 16), ("int", 8), ("double", 32), ("long long", 4)])
@pytest.mark.parametrize("delta,src", [(1, 0), (3, 7), (16, 31)])
def test_shuffles_match_cuda_semantics(mod, T, W, delta, src, rng):
    dtype = {"int": numpy.int32, "double": numpy.float64, "long long": numpy.int64}[T]
    v = (rng.standard_normal(64) * 1e6).astype(dtype) if T == "double" else \
        rng.integers(-2**30, 2**30, 64).astype(dtype)
    out = Dev(numpy.zeros(64 * 4, dtype))
    mod.get_function(f"shuffles<{T}, {W}>")((1,), (64,), (Dev(v), out, numpy.int32(delta), numpy.int32(src)))
    got = out.a.reshape(64, 4)
    for w in range(2):
        numpy.testing.assert_array_equal(got[32 * w:32 * w + 32],
                                         _shuffle_reference(v[32 * w:32 * w + 32], W, delta, src))


def test_two_groups_with_disjoint_masks_in_one_warp(mod, rng):
    v = rng.integers(0, 1000, 64).astype(numpy.int32)
    out = Dev(numpy.zeros(64, numpy.int32))
    mod.get_function("split_warps")(1, 64, (Dev(v), out))
    want = v.copy()
    for l in range(64):
        lane = l % 32
        if lane < 16:
            want[l] = v[l ^ 1]
        elif lane + 2 < 32:
            want[l] = v[l + 2]
    numpy.testing.assert_array_equal(out.a, want)


def test_votes_and_barrier_reductions(mod, rng):
    p = (rng.random(2 * 64) < 0.5).astype(numpy.int32)
    p[64:96] = 1  # block 1, warp 0: all set
    out = Dev(numpy.zeros(6 * 128, numpy.uint32))
    mod.get_function("votes")(2, 64, (Dev(p), out))
    o = out.a.reshape(128, 6)
    for i in range(128):
        warp = p[i - i % 32: i - i % 32 + 32]
        block = p[i - i % 64: i - i % 64 + 64]
        assert o[i, 0] == int(sum(int(b) << k for k, b in enumerate(warp)))
        assert (o[i, 1], o[i, 2]) == (int(warp.any()), int(warp.all()))
        assert (o[i, 3], o[i, 4], o[i, 5]) == (block.sum(), int(block.all()), int(block.any()))


def test_atomics(mod, rng):
    n = 5000
    x = rng.integers(0, 17, n).astype(numpy.int32)
    bins = Dev(numpy.zeros(17, numpy.uint32))
    fsum, dsum = Dev(numpy.zeros(1, numpy.float32)), Dev(numpy.zeros(1, numpy.float64))
    imax = Dev(numpy.full(1, -5, numpy.int32))
    cas = Dev(numpy.zeros(1, numpy.uint64))
    tickets, nxt = Dev(numpy.full(n, -1, numpy.int32)), Dev(numpy.zeros(1, numpy.int32))
    mod.get_function("atomics")(7, 96, (Dev(x), numpy.int32(n), bins, fsum, dsum, imax, cas, tickets, nxt))
    numpy.testing.assert_array_equal(bins.a, numpy.bincount(x, minlength=17))
    assert fsum.a[0] == n and dsum.a[0] == x.sum() and imax.a[0] == x.max() and cas.a[0] == n
    assert nxt.a[0] == n and sorted(tickets.a.tolist()) == list(range(n))  # atomicAdd returns the old value


def test_dynamic_shared_memory(mod, rng):
    x = rng.standard_normal(4 * 256).astype(numpy.float32)
    out = Dev(numpy.zeros(4, numpy.float32))
    mod.get_function("dyn_sum")(4, 256, (Dev(x), out), shared_mem=256 * 4)
    numpy.testing.assert_allclose(out.a, x.reshape(4, 256).sum(1), rtol=1e-5)
    d = Dev(numpy.zeros(100))
    mod.get_function("dyn_bytes")(1, 100, (d,), shared_mem=800)
    numpy.testing.assert_array_equal(d.a, 0.5 * numpy.arange(100)[::-1])  # and 16-byte aligned
    with pytest.raises(RuntimeError, match="dynamic shared memory"):
        mod.get_function("dyn_sum")(1, 32, (Dev(x), out), shared_mem=64 * 1024)


# ---------------------------------------------------------------------------------------
# Errors: deadlocks, bad masks, traps — and the runtime keeps working after them
# ---------------------------------------------------------------------------------------

def _still_works(mod):
    x = numpy.arange(64, dtype=numpy.float32)
    y = Dev(numpy.zeros(64, numpy.float32))
    mod.get_function("reverse_shared")(1, 64, (Dev(x), y))
    numpy.testing.assert_array_equal(y.a, x[::-1])


def test_barrier_not_reached_by_every_thread_names_kernel_and_block(mod):
    x = Dev(numpy.zeros(64, numpy.float32))
    with pytest.raises(RuntimeError) as e:
        mod.get_function("bar_in_branch")(4, 64, (x,))
    msg = str(e.value)
    assert "'bar_in_branch'" in msg and "block (2, 0, 0)" in msg, msg
    assert "16 thread(s) wait at __syncthreads()" in msg and "48 exited" in msg, msg
    assert "\n" not in msg
    _still_works(mod)


def test_shuffle_with_an_exited_lane_names_kernel_block_and_lane(mod):
    x = Dev(numpy.ones(64, numpy.float32))
    with pytest.raises(RuntimeError) as e:
        mod.get_function("shfl_missing_lane")((1, 2), 64, (x,))
    msg = str(e.value)
    assert "'shfl_missing_lane'" in msg and "block (0, 0, 0)" in msg, msg
    assert "__shfl_xor_sync" in msg and "lanes 5 exited" in msg and "warp 0" in msg, msg
    _still_works(mod)


def test_threads_at_different_barriers(mod):
    with pytest.raises(RuntimeError, match=r"'two_barriers' block \(0, 0, 0\) thread .*__syncthreads\(\) at sim_module.cu:\d+ while other threads wait at __syncthreads\(\) at sim_module.cu:\d+"):
        mod.get_function("two_barriers")(1, 32, (Dev(numpy.zeros(32, numpy.float32)),))
    _still_works(mod)


def test_half_a_warp_at_a_shuffle_and_half_at_a_barrier(mod):
    with pytest.raises(RuntimeError) as e:
        mod.get_function("shfl_vs_barrier")(1, 32, (Dev(numpy.zeros(32, numpy.float32)),))
    msg = str(e.value)
    assert "'shfl_vs_barrier' block (0, 0, 0)" in msg and "deadlocked" in msg, msg
    assert "lanes 0-15 wait in __shfl_xor_sync" in msg and "lanes 16-31 wait at __syncthreads()" in msg, msg
    _still_works(mod)


@pytest.mark.parametrize("name,threads,pattern", [
    ("mask_without_caller", 32, r"mask 0xfffffffe does not include the calling lane 0"),
    ("reads_outside_mask", 32, r"lane 0 reads lane 5, which is not in the mask 0x00000003"),
    ("partial_warp_full_mask", 48, r"names lanes 16-31, which do not exist in a block of 48 threads"),
])
def test_invalid_warp_operations(mod, name, threads, pattern):
    with pytest.raises(RuntimeError, match=f"'{name}' block \\(0, 0, 0\\) thread .*" + pattern):
        mod.get_function(name)(1, threads, (Dev(numpy.zeros(threads, numpy.float32)),))
    _still_works(mod)


def test_trap_and_assert_raise(mod):
    k = mod.get_function("traps")
    k(1, 32, (Dev(numpy.ones(32, numpy.float32)),))
    x = numpy.ones(32, numpy.float32)
    x[7] = -1
    with pytest.raises(RuntimeError, match=r"'traps' block \(0, 0, 0\) thread \(7, 0, 0\): __trap\(\)"):
        k(1, 32, (Dev(x),))
    x[7], x[9] = 1, 1000
    with pytest.raises(RuntimeError, match=r"thread \(9, 0, 0\): assertion failed"):
        k(1, 32, (Dev(x),))
    _still_works(mod)


@pytest.mark.skipif(runtime.sanitizing(), reason="AddressSanitizer reports faults itself")
def test_illegal_address_and_stack_overflow_raise_instead_of_crashing(mod):
    with pytest.raises(RuntimeError, match=r"'wild' block \(1, 0, 0\) thread \(3, 0, 0\): illegal memory access"):
        mod.get_function("wild")(2, 32, (Dev(numpy.zeros(32, numpy.float32)),))
    _still_works(mod)
    out = Dev(numpy.zeros(32, numpy.int32))
    mod.get_function("overflow_stack")(1, 32, (out, numpy.int32(10)))  # a modest depth runs
    assert out.a[1] == sum(range(11)) and out.a[0] == 1
    with pytest.raises(RuntimeError, match=r"'overflow_stack' block \(0, 0, 0\) thread \(1, 0, 0\): illegal memory access"):
        mod.get_function("overflow_stack")(1, 32, (out, numpy.int32(10**6)))
    _still_works(mod)


# ---------------------------------------------------------------------------------------
# Arguments, as CuPy passes them, checked against the parameter types
# ---------------------------------------------------------------------------------------

def test_arguments_follow_cupys_mapping(mod):
    k = mod.get_function("typed")
    x = Dev(numpy.array([1.0], numpy.float32))
    y = Dev(numpy.zeros(1, numpy.float32))
    # Python int -> int64 (long long), Python float -> float64 (double)
    k(1, 32, [x, y, numpy.int32(2), 3, numpy.uint32(4), 0.5, numpy.float32(0.25)])
    assert y.a[0] == 1 + 2 + 3 + 4 + 0.5 + 0.25
    k(1, 32, (x, None, numpy.int32(2), True, numpy.uint32(4), 0.5, numpy.float32(0.25)))  # null y
    k(1, 32, (x.data, y.data, numpy.int32(1), 0, numpy.uint32(0), 0.0, numpy.float32(0)))  # pointers
    assert y.a[0] == 2


@pytest.mark.parametrize("index,bad,pattern", [
    (0, numpy.zeros(1, numpy.float32), r"^Unsupported type <class 'numpy.ndarray'>$"),
    (0, "x", r"^Unsupported type <class 'str'>$"),
    (0, Dev(numpy.zeros(1, numpy.float64)), r"parameter 0 \(const float\*\): an array of float64"),
    (0, numpy.float32(1), r"parameter 0 \(const float\*\): a scalar"),
    (2, numpy.int64(2), r"parameter 2 \(int\): numpy.int64 \(a 8-byte signed integer\) for a 4-byte signed integer"),
    (2, Dev(numpy.zeros(1, numpy.int32)), r"parameter 2 \(int\): an array for a non-pointer"),
    (2, None, r"parameter 2 \(int\): None"),
    (3, numpy.uint64(3), r"parameter 3 \(long long int\).*unsigned integer\) for a 8-byte signed"),
    (4, numpy.int32(4), r"parameter 4 \(unsigned int\).*signed integer\) for a 4-byte unsigned"),
    (5, numpy.float32(0.5), r"parameter 5 \(double\)"),
    (6, 0.25, r"parameter 6 \(float\): builtins.float \(a 8-byte float\) for a 4-byte float"),
])
def test_argument_type_errors_name_kernel_and_parameter(mod, index, bad, pattern):
    k = mod.get_function("typed")
    args = [Dev(numpy.zeros(1, numpy.float32)), Dev(numpy.zeros(1, numpy.float32)), numpy.int32(2),
            numpy.int64(3), numpy.uint32(4), 0.5, numpy.float32(0.25)]
    args[index] = bad
    sim.reset_counters()
    with pytest.raises(TypeError, match=pattern) as e:
        k(1, 32, tuple(args))
    if "Unsupported" not in pattern:
        assert "kernel 'typed'" in str(e.value)
    assert sim.counters()["launches"] == 0  # nothing launched


def test_argument_count_and_launch_shape_errors(mod):
    k = mod.get_function("typed")
    x = Dev(numpy.zeros(1, numpy.float32))
    with pytest.raises(TypeError, match="kernel 'typed' takes 7 arguments, got 2"):
        k(1, 1, (x, x))
    args = (x, x, numpy.int32(1), 1, numpy.uint32(1), 1.0, numpy.float32(1))
    with pytest.raises(RuntimeError, match="a block of 1089 threads"):
        k(1, (33, 33), args)
    with pytest.raises(RuntimeError, match="block dimension 2 is 65"):
        k(1, (1, 1, 65), args)
    with pytest.raises(ValueError, match="1 to 3 dimensions"):
        k((1, 1, 1, 1), 1, args)
    with pytest.raises(RuntimeError, match="grid dimension 1 is 65536"):
        k((1, 65536), 1, args)
    k(0, (0,), args)  # CuPy launches max(1, dim)


def test_launches_are_counted_per_name_expression(mod):
    sim.reset_counters()
    x = Dev(numpy.zeros(32, numpy.float32))
    for _ in range(3):
        mod.get_function("reverse_shared")(1, 32, (x, x))
    mod.get_function("shuffles<int, 8>")(1, 32, (Dev(numpy.zeros(32, numpy.int32)),
                                               Dev(numpy.zeros(128, numpy.int32)),
                                               numpy.int32(1), numpy.int32(0)))
    c = sim.counters()
    assert c["launches"] == 4
    assert c["kernels"] == {"reverse_shared": 3, "shuffles<int, 8>": 1}


# ---------------------------------------------------------------------------------------
# __half
# ---------------------------------------------------------------------------------------

def _conversion_inputs(h, rng):
    x = numpy.concatenate([
        rng.integers(0, 2**32, 200000, dtype=numpy.uint64).astype(numpy.uint32).view(numpy.float32),
        h.view(numpy.float16).astype(numpy.float32),           # exact halves
        # midpoints between neighbouring halves (ties to even) and their float neighbours
        (h[:-1].view(numpy.float16).astype(numpy.float64) / 2
         + h[1:].view(numpy.float16).astype(numpy.float64) / 2).astype(numpy.float32),
        numpy.array([65504, 65519.996, 65520, 1e9, 2**-25, 2**-24, 1.5 * 2**-25, 2**-26], numpy.float32),
    ])
    return numpy.concatenate([x, -x, numpy.nextafter(x, numpy.float32(numpy.inf)),
                              numpy.nextafter(x, numpy.float32(-numpy.inf))])


def test_half_conversions_match_numpy(mod, rng):
    h = numpy.arange(2**16, dtype=numpy.uint16)             # every half
    with numpy.errstate(invalid="ignore", over="ignore"):
        x = _conversion_inputs(h, rng)
    n = max(len(h), len(x))
    hh = numpy.resize(h, n)
    xx = numpy.resize(x, n)
    f, hx = Dev(numpy.zeros(n, numpy.float32)), Dev(numpy.zeros(n, numpy.uint16))
    mod.get_function("half_convert")(64, 256, (Dev(hh), f, Dev(xx), hx, numpy.int32(n)))
    numpy.testing.assert_array_equal(f.a.view(numpy.uint32), hh.view(numpy.float16).astype(numpy.float32).view(numpy.uint32))
    with numpy.errstate(over="ignore", invalid="ignore"):
        want = xx.astype(numpy.float16)
    nan = numpy.isnan(xx)
    numpy.testing.assert_array_equal(hx.a[~nan], want.view(numpy.uint16)[~nan])
    assert numpy.isnan(hx.a[nan].view(numpy.float16)).all()


def test_half_arithmetic_and_shuffle(mod, rng):
    a = rng.standard_normal(64).astype(numpy.float16)
    b = rng.standard_normal(64).astype(numpy.float16) + numpy.float16(3)
    out = Dev(numpy.zeros(4 * 64, numpy.float16))
    mod.get_function("half_ops")(2, 32, (Dev(a), Dev(b), out, numpy.int32(64)))
    o = out.a.reshape(64, 4)
    numpy.testing.assert_array_equal(o[:, 0], a + b)
    numpy.testing.assert_array_equal(o[:, 1], a * b)
    numpy.testing.assert_array_equal(o[:, 2], a - b)
    numpy.testing.assert_array_equal(o[:, 3], a[numpy.arange(64) ^ 1])


# ---------------------------------------------------------------------------------------
# Compilation: options, cache, errors
# ---------------------------------------------------------------------------------------

def test_host_options_translate_nvrtc_options():
    d = gcuda.kernels_dir()
    std, flags = runtime.host_options(gcuda.compile_options(90))
    assert std == "c++17"
    assert flags == [f"-I{d}", f"-DGPUNET_KERNELS_HASH={gcuda.kernels_hash()[:16]}"]
    assert runtime.host_options(("-std=c++20", "-I", "/a", "--define-macro=X=1", "-arch", "sm_80",
                                 "--use_fast_math")) == ("c++20", ["-I/a", "-DX=1"])
    with pytest.raises(ValueError, match="'--frobnicate' has no host equivalent"):
        runtime.host_options(("--frobnicate",))


def test_compile_error_carries_the_compiler_message(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_SIM_CACHE", str(tmp_path))
    m = runtime.RawModule(code="extern \"C\" __global__ void k(float* x) { x[0] = undeclared; }",
                          name_expressions=["k"])
    with pytest.raises(runtime.CompileError, match="undeclared"):
        m.compile()
    assert not list(tmp_path.glob("module-*.so")) and not list(tmp_path.glob(".module-*"))


def test_cache_location_key_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_SIM_CACHE", str(tmp_path))
    code = "extern \"C\" __global__ void k(float* x) { x[threadIdx.x] = GPUNET_TEST_VALUE; }"
    runtime.RawModule(code=code, options=("-DGPUNET_TEST_VALUE=1.5f",)).get_function("k")
    first = list(tmp_path.glob("module-*.so"))
    assert len(first) == 1 and not list(tmp_path.glob(".module-*"))
    mtime = first[0].stat().st_mtime_ns
    x = Dev(numpy.zeros(4, numpy.float32))
    runtime.RawModule(code=code, options=("-DGPUNET_TEST_VALUE=1.5f",)).get_function("k")(1, 4, (x,))
    assert x.a.tolist() == [1.5] * 4
    assert first[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    runtime.RawModule(code=code, options=("-DGPUNET_TEST_VALUE=2.5f",)).get_function("k")(1, 4, (x,))
    assert x.a.tolist() == [2.5] * 4 and len(list(tmp_path.glob("module-*.so"))) == 2


def test_two_processes_compiling_at_once_share_the_cache(tmp_path):
    script = textwrap.dedent("""
        import numpy, sys
        from types import SimpleNamespace
        from gpunet.sim.runtime import RawKernel
        k = RawKernel('extern "C" __global__ void k(int* x) { x[threadIdx.x] = 7 * threadIdx.x; }', "k")
        a = numpy.zeros(8, numpy.int32)
        k(1, 8, (SimpleNamespace(dtype=a.dtype, data=SimpleNamespace(ptr=a.ctypes.data)),))
        assert a.tolist() == [7 * i for i in range(8)], a
    """)
    env = {**os.environ, "GPUNET_SIM_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert len(list(tmp_path.glob("module-*.so"))) == 1
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_missing_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr(runtime._state, "cxx", None)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(RuntimeError) as e:
        runtime.RawModule(code="__global__ void k() {}", name_expressions=["k"]).compile()
    assert "needs a C++ compiler" in str(e.value) and "\n" not in str(e.value)


def test_rawmodule_refuses_what_the_sim_cannot_do():
    with pytest.raises(ValueError, match="cubin or PTX"):
        runtime.RawModule(path="k.cubin")
    with pytest.raises(NotImplementedError, match="jitify"):
        runtime.RawModule(code="", jitify=True)
    with pytest.raises(TypeError):
        runtime.RawModule()


def test_signatures_match_cupy():
    cupy = pytest.importorskip("cupy")
    import inspect

    def params(doc):
        return doc.split("(", 1)[1].rsplit(")", 1)[0]

    for ours, theirs in ((runtime.RawModule, cupy.RawModule), (runtime.RawKernel, cupy.RawKernel)):
        sig = str(inspect.signature(ours))
        names = [p.split("=")[0].split()[-1] for p in params(theirs.__doc__.splitlines()[0]).split(",")
                 if p.strip() not in ("*", "")]
        assert [p for p in inspect.signature(ours).parameters] == names, (sig, names)
    for name in ("compile", "get_function"):
        assert hasattr(cupy.RawModule, name) and hasattr(runtime.RawModule, name)
    for name in ("compile", "name", "code", "options", "backend", "max_threads_per_block"):
        assert hasattr(cupy.RawKernel, name)


# ---------------------------------------------------------------------------------------
# Batch-norm statistics of float32 data with a large mean and a small spread (issue 11)
# ---------------------------------------------------------------------------------------

def _bn_var_errors(shape, seed):
    """Max relative error of the variance per channel: (kernel on the sim, NumPy reference),
    both in float32, against float64 statistics of the same float32 values; and the
    kernel's max mean error."""
    sp = _sim()
    x = (1e4 + 0.01 * numpy.random.default_rng(seed).standard_normal(shape)).astype(numpy.float32)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    true_var = x.astype(numpy.float64).var(axis=axes)
    true_mean = x.astype(numpy.float64).mean(axis=axes)
    _, _, var_np, _ = F.batch_norm_forward(x, None, None)
    _, mean_k, var_k, _ = F.batch_norm_forward(sp.asarray(x), None, None)
    err = lambda v: float(numpy.abs(gpunet.to_numpy(v) / true_var - 1).max())  # noqa: E731
    return err(var_k), err(var_np), float(numpy.abs(gpunet.to_numpy(mean_k) - true_mean).max())


# One partial per channel on the sim (fewer than 4096 values, or 8+ channels).
@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (8, 2), (64, 3, 5, 5), (33, 4, 3, 3), (256, 16),
                                   (2, 8, 16, 16), (1000, 3), (16, 1, 8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_batchnorm_variance_of_large_mean_small_spread_no_worse_than_numpy(shape, seed):
    k, ref, mean_err = _bn_var_errors(shape, seed)
    assert k <= max(ref, 2.0**-22), f"kernel var off by {k:.2e}, NumPy by {ref:.2e}"
    assert mean_err <= numpy.spacing(numpy.float32(1e4))  # the mean within one float32 ulp


# Several partials per channel: the partials stay relative to the channel's first value
# and the finalize kernel adds that shift back once, so the chunked path is as good.
@pytest.mark.parametrize("shape", [(16384, 3), (4096, 2, 2, 2), (8192, 1)])
def test_batchnorm_variance_across_chunks_of_large_mean_small_spread(shape):
    N, C = shape[:2]
    HW = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert gcuda._bn_chunks(N, C, HW, numpy.dtype(numpy.float32), "sim") > 1
    for seed in range(3):
        k, ref, mean_err = _bn_var_errors(shape, seed)
        assert k <= max(ref, 2.0**-22), f"kernel var off by {k:.2e} (NumPy {ref:.2e})"
        assert mean_err <= numpy.spacing(numpy.float32(1e4))
