// gpunet's compiled CPU kernels: elementwise passes of the NumPy path that NumPy runs as two.
//
// relu_mask_times: out = (y > 0 ? 1 : 0) * dy, ReLU's backward through its output, as
// gpunet.functional.activations.relu_mask_times computes it (the mask written as 1.0/0.0,
// then multiplied by dy): one pass instead of two, the same products.
// bias_relu: z = maximum(z + b, 0) over the rows of z (rows, cols), in place: a Dense
// layer's `z += bias` and its fused ReLU (NumPy's maximum: NaN stays, and on equal values
// the second operand, so -0.0 gives +0.0).
// relu: out = maximum(x, 0) as NumPy computes it (NaN stays, -0.0 gives +0.0), in place or
// into another array: NumPy 2.4's maximum against the scalar 0 has no vector loop and took
// 0.24 ms on 800 K float32 where this takes 0.05 ms.
// relu_mask_colsum: g = relu_mask_times(dy, y) and db = g.sum(axis=0) over (rows, cols) in
// one pass: NumPy reduces axis 0 of a C-contiguous array row after row into an output that
// starts at +0.0 (so a column of -0.0 sums to +0.0); so does this.
#include <cstdint>
#include <cstring>

#include "common.h"

namespace {

using gpunet_host::one_or_zero;
using gpunet_host::relu_of;

template <typename T>
GPUNET_INLINE void relu_mask_times(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ out, long n) {
    for (long i = 0; i < n; ++i) out[i] = one_or_zero<T>(y[i] > 0) * dy[i];
}

// two loops: one pointer (in place) and two that do not overlap; a single loop over maybe
// aliased pointers makes GCC check the overlap at run time and, in place, take its scalar path
template <typename T>
GPUNET_INLINE void relu_inplace(T* __restrict__ z, long n) {
    for (long i = 0; i < n; ++i) z[i] = relu_of(z[i]);
}

template <typename T>
GPUNET_INLINE void relu_into(const T* __restrict__ x, T* __restrict__ out, long n) {
    for (long i = 0; i < n; ++i) out[i] = relu_of(x[i]);
}

template <typename T>
GPUNET_INLINE void bias_relu(T* __restrict__ z, const T* __restrict__ b, long rows, long cols) {
    for (long i = 0; i < rows; ++i) {
        T* __restrict__ zi = z + i * cols;
        for (long j = 0; j < cols; ++j) {
            const T v = zi[j] + b[j];
            zi[j] = relu_of(v);
        }
    }
}

template <typename T>
GPUNET_INLINE void relu_mask_colsum(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ g,
                             T* __restrict__ db, long rows, long cols) {
    for (long j = 0; j < cols; ++j) db[j] = T(0);
    for (long i = 0; i < rows; ++i) {
        const T* __restrict__ dyi = dy + i * cols;
        const T* __restrict__ yi = y + i * cols;
        T* __restrict__ gi = g + i * cols;
        for (long j = 0; j < cols; ++j) {
            const T v = one_or_zero<T>(yi[j] > 0) * dyi[j];
            gi[j] = v;
            db[j] = db[j] + v;
        }
    }
}

}  // namespace

extern "C" {

GPUNET_CLONES void gpunet_relu_f32(const float* x, float* out, long n) {
    if (x == out) relu_inplace<float>(out, n);
    else relu_into<float>(x, out, n);
}

GPUNET_CLONES void gpunet_relu_f64(const double* x, double* out, long n) {
    if (x == out) relu_inplace<double>(out, n);
    else relu_into<double>(x, out, n);
}

GPUNET_CLONES void gpunet_bias_relu_f32(float* z, const float* b, long rows, long cols) {
    bias_relu<float>(z, b, rows, cols);
}

GPUNET_CLONES void gpunet_bias_relu_f64(double* z, const double* b, long rows, long cols) {
    bias_relu<double>(z, b, rows, cols);
}

GPUNET_CLONES void gpunet_relu_mask_colsum_f32(const float* dy, const float* y, float* g, float* db,
                                               long rows, long cols) {
    relu_mask_colsum<float>(dy, y, g, db, rows, cols);
}

GPUNET_CLONES void gpunet_relu_mask_colsum_f64(const double* dy, const double* y, double* g, double* db,
                                               long rows, long cols) {
    relu_mask_colsum<double>(dy, y, g, db, rows, cols);
}

GPUNET_CLONES void gpunet_relu_mask_times_f32(const float* dy, const float* y, float* out, long n) {
    relu_mask_times<float>(dy, y, out, n);
}

GPUNET_CLONES void gpunet_relu_mask_times_f64(const double* dy, const double* y, double* out, long n) {
    relu_mask_times<double>(dy, y, out, n);
}

}  // extern "C"
