// defines: dropout_apply<T> (T = float, double): y = x * keep * scale, the mask regenerated from (k1, k2)
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
// Each thread handles 16-byte packs (4 floats or 2 doubles) when both arrays are 16-byte
// aligned, with a scalar loop for the tail; n < 2**32 (the launcher checks it).
#include "common.cuh"

using gpunet::Pack;

template <typename T>
__global__ void dropout_apply(const T* __restrict__ x, T* __restrict__ y, long long n,
                              unsigned int k1, unsigned int k2, unsigned int threshold, T scale) {
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
                v.v[k] = v.v[k] * (keep ? scale : T(0));
            }
            yp[q] = v;
        }
        done = npacks * P;
    }
    for (long long i = done + t0; i < n; i += stride) {
        const bool keep =
            (gpunet::counter_bits(static_cast<unsigned int>(i), k1, k2) >> 8) >= threshold;
        y[i] = x[i] * (keep ? scale : T(0));
    }
}

template __global__ void dropout_apply<float>(const float*, float*, long long, unsigned int,
                                              unsigned int, unsigned int, float);
template __global__ void dropout_apply<double>(const double*, double*, long long, unsigned int,
                                               unsigned int, unsigned int, double);
