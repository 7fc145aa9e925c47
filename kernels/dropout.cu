// defines: dropout_apply<T>, dropout_apply_state<T> (T = float, double, __half), dropout_next_draw
//
// dropout_apply: y = x * keep * scale, the mask regenerated from (k1, k2); dropout_apply_state:
// the same with the keys read from a device draw state, which dropout_next_draw advances.
//
// Dropout without mask memory. Element i of the flat, C-ordered tensor is kept iff
//     (bits[i] >> 8) >= threshold,   bits[i] = mix32(mix32(i + k1) ^ k2)
// with (k1, k2) = gpunet.random.keys(seed, offset) and threshold =
// gpunet.random.keep_threshold(p), both computed on the host: the mask is bit for bit the
// one gpunet.random builds with NumPy. The same kernel is the forward (x -> y) and the
// backward (dy -> dx = dy * keep * scale): backward calls it again with the same keys, so
// the mask is recomputed instead of stored. scale is 1/(1-p) for inverted dropout and 1
// for the classic form. Dropped elements are x * 0 (so a NaN or inf input stays NaN).
//
// Each thread handles 16-byte packs (4 floats, 2 doubles or 8 halves) when both arrays are
// 16-byte aligned, with a scalar loop for the tail; n < 2**32 (the launcher checks it).
//
// __half: storage only. The product is taken in float and rounded to half once, with scale
// passed as a float holding the half-rounded 1/(1-p): the bits NumPy's float16 path gives
// (x * m, then *= scale, a Python float that NumPy rounds to float16 first).
#include <cuda_fp16.h>

#include "common.cuh"

using gpunet::Pack;

// The type of the scale argument: T, but float for __half (a float kernel argument is
// portable across CuPy versions; its value is a half).
template <typename T> struct DropoutScale { using type = T; };
template <> struct DropoutScale<__half> { using type = float; };

template <typename T>
__device__ __forceinline__ T dropout_one(T x, bool keep, T scale) {
    return x * (keep ? scale : T(0));
}
__device__ __forceinline__ __half dropout_one(__half x, bool keep, float scale) {
    return __float2half_rn(__half2float(x) * (keep ? scale : 0.0f));
}

template <typename T>
__device__ __forceinline__ void dropout_body(const T* __restrict__ x, T* __restrict__ y, long long n,
                                             unsigned int k1, unsigned int k2,
                                             unsigned int threshold,
                                             typename DropoutScale<T>::type scale) {
    constexpr int P = Pack<T>::N;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long t0 = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    long long done = 0;  // elements handled by the packed loop
    if (gpunet::is_aligned16(x) && gpunet::is_aligned16(y)) {
        const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
        Pack<T>* yp = reinterpret_cast<Pack<T>*>(y);
        const long long npacks = n / P;
        for (long long q = t0; q < npacks; q += stride) {
            Pack<T> v = xp[q];
            const unsigned int i0 = static_cast<unsigned int>(q * P);
#pragma unroll
            for (int k = 0; k < P; ++k) {
                const bool keep = (gpunet::counter_bits(i0 + k, k1, k2) >> 8) >= threshold;
                v.v[k] = dropout_one(v.v[k], keep, scale);
            }
            yp[q] = v;
        }
        done = npacks * P;
    }
    for (long long i = done + t0; i < n; i += stride) {
        const bool keep =
            (gpunet::counter_bits(static_cast<unsigned int>(i), k1, k2) >> 8) >= threshold;
        y[i] = dropout_one(x[i], keep, scale);
    }
}

template <typename T>
__global__ void dropout_apply(const T* __restrict__ x, T* __restrict__ y, long long n,
                              unsigned int k1, unsigned int k2, unsigned int threshold,
                              typename DropoutScale<T>::type scale) {
    dropout_body(x, y, n, k1, k2, threshold, scale);
}

// The draw state of a Dropout layer on a device, three 64-bit words:
//     state[0] = counter (the next draw's), state[1] = k1 of the seed (gpunet.random.keys),
//     state[2] = k2 of the last draw.
// dropout_next_draw (one thread) takes the next draw: k2 = keys(seed, counter)[1], as
// gpunet.random computes it on the host, and counter + 1. dropout_apply_state then reads
// (k1 + start, k2) from the state, so a CUDA graph that replays both draws a fresh mask at
// every replay, the one an eager step with the same counter draws.
__global__ void dropout_next_draw(unsigned long long* state) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const unsigned long long c = state[0];
        const unsigned int k1 = static_cast<unsigned int>(state[1]);
        const unsigned int lo = static_cast<unsigned int>(c);
        const unsigned int hi = static_cast<unsigned int>(c >> 32);
        state[2] = gpunet::mix32(k1 ^ gpunet::mix32(lo ^ gpunet::mix32(hi + 0x3c6ef372u)));
        state[0] = c + 1ull;
    }
}

template <typename T>
__global__ void dropout_apply_state(const T* __restrict__ x, T* __restrict__ y, long long n,
                                    const unsigned long long* __restrict__ state,
                                    unsigned int start, unsigned int threshold,
                                    typename DropoutScale<T>::type scale) {
    const unsigned int k1 = static_cast<unsigned int>(state[1]) + start;
    const unsigned int k2 = static_cast<unsigned int>(state[2]);
    dropout_body(x, y, n, k1, k2, threshold, scale);
}

template __global__ void dropout_apply<float>(const float*, float*, long long, unsigned int,
                                              unsigned int, unsigned int, float);
template __global__ void dropout_apply<double>(const double*, double*, long long, unsigned int,
                                               unsigned int, unsigned int, double);
template __global__ void dropout_apply<__half>(const __half*, __half*, long long, unsigned int,
                                               unsigned int, unsigned int, float);
template __global__ void dropout_apply_state<float>(const float*, float*, long long,
                                                    const unsigned long long*, unsigned int,
                                                    unsigned int, float);
template __global__ void dropout_apply_state<double>(const double*, double*, long long,
                                                     const unsigned long long*, unsigned int,
                                                     unsigned int, double);
template __global__ void dropout_apply_state<__half>(const __half*, __half*, long long,
                                                     const unsigned long long*, unsigned int,
                                                     unsigned int, float);
