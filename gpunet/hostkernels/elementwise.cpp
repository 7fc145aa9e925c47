// gpunet's compiled CPU kernels: elementwise passes of the NumPy path that NumPy runs as two.
//
// relu_mask_times: out = (y > 0 ? 1 : 0) * dy, ReLU's backward through its output, as
// gpunet.functional.activations.relu_mask_times computes it (the mask written as 1.0/0.0,
// then multiplied by dy): one pass instead of two, the same products.
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define GPUNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GPUNET_CLONES
#endif

namespace {

template <typename T> struct UInt;
template <> struct UInt<float> { typedef uint32_t U; };
template <> struct UInt<double> { typedef uint64_t U; };

template <typename T>
inline void relu_mask_times(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ out, long n) {
    typedef typename UInt<T>::U U;
    const T one = 1;
    U one_bits;
    std::memcpy(&one_bits, &one, sizeof one_bits);
    for (long i = 0; i < n; ++i) {
        U m = one_bits & ((U)0 - (U)(y[i] > 0));       // 1.0 or +0.0, without a branch
        T mask;
        std::memcpy(&mask, &m, sizeof mask);
        out[i] = mask * dy[i];
    }
}

}  // namespace

extern "C" {

GPUNET_CLONES void gpunet_relu_mask_times_f32(const float* dy, const float* y, float* out, long n) {
    relu_mask_times<float>(dy, y, out, n);
}

GPUNET_CLONES void gpunet_relu_mask_times_f64(const double* dy, const double* y, double* out, long n) {
    relu_mask_times<double>(dy, y, out, n);
}

}  // extern "C"
