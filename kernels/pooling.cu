// defines: max_pool_forward<T, I>, max_pool_backward<T, I> (T = float, double, __half; I = unsigned char, int: the argmax type), avg_pool_forward<T>, avg_pool_backward<T> (T = float, double, __half): 2-D pooling over NCHW, one launch per op
//
// A window of (kh, kw) moves by (sh, sw) over the input padded by (ph, pw) on each side;
// output (N, C, OH, OW). Semantics are gpunet/functional/pooling.py's, in the same order of
// operations, so results match the NumPy reference bit for bit:
//   max: padding is -inf; y = the window's first element, then for each later element k
//        (row-major, k = i*kw + j) arg = k where it is strictly greater, and y = max(y, v)
//        with NaN propagating (NumPy's maximum); backward routes dy to element arg.
//   avg: padding counts as 0 and every window divides by kh*kw (count_include_pad):
//        y = (sum in offset order) * scale, scale = 1/(kh*kw) in T; backward adds dy*scale,
//        the product rounded before the sum (mul_rn/add_rn: an FMA, which nvcc and NVRTC
//        form from `s += g * scale` by default, rounds once: last bits differ from NumPy).
// Backward kernels gather: each input element sums, in offset order (i, then j, ascending),
// what the windows that contain it send, so they need no atomics and are deterministic.
//
// Launch shape as in conv.cu: gridDim.y strides over the N*C planes, gridDim.x * blockDim.x
// over a plane's elements (grid-stride loops). Inputs x and dy may have any element strides
// (a transposed view needs no copy); arg is C-contiguous (N, C, OH, OW) and every output
// C-contiguous. Plane sizes and N*C are < 2**31 (the launchers check it).
// __half: storage only. Max pooling compares in float (A = gpunet::Acc<T>::type, half.cuh;
// exact); sums (average pooling, the backward kernels) and the products by scale (a float,
// 1/(kh*kw) rounded to float) are float, each output rounded once.
#include "common.cuh"
#include "half.cuh"

using gpunet::Cover2d;
using gpunet::FastDivmod;
using gpunet::Window2d;
using gpunet::add_rn;
using gpunet::mul_rn;

namespace {

// Output element k's window (the output plane row-major, per_row divides by OW), visited in
// offset order (i, then j, ascending): f(i, j, v), v the input element in A, or `pad` where
// the window lies in the padding.
template <typename A, typename T, typename F>
__device__ __forceinline__ void for_window(const T* xc, int H, int W, long long sxh, long long sxw,
                                           const Window2d& win, const FastDivmod& per_row, int k,
                                           A pad, F f) {
    int h0, w0;
    win.origin(per_row, k, h0, w0);
    for (int i = 0; i < win.kh; ++i) {
        const int h = h0 + i;
        for (int j = 0; j < win.kw; ++j) {
            const int w = w0 + j;
            f(i, j, (h >= 0 && h < H && w >= 0 && w < W) ? gpunet::to_acc(xc[h * sxh + w * sxw]) : pad);
        }
    }
}

}  // namespace

template <typename T, typename I>
__global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y, I* __restrict__ arg,
                                 int planes, int C, int H, int W, long long sxn, long long sxc,
                                 long long sxh, long long sxw, int kh, int kw, int sh, int sw,
                                 int ph, int pw, unsigned int ow_d, unsigned int ow_mul,
                                 unsigned int ow_shr, int P) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{ow_d, ow_mul, ow_shr};
    const Window2d win{kh, kw, sh, sw, ph, pw};
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / C, c = plane - n * C;
        const T* xc = x + n * sxn + c * sxc;
        T* yo = y + static_cast<long long>(plane) * P;
        I* ao = arg + static_cast<long long>(plane) * P;
        for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < P; k += gridDim.x * blockDim.x) {
            A best = gpunet::neg_inf<A>();
            int a = 0;
            for_window(xc, H, W, sxh, sxw, win, per_row, k, gpunet::neg_inf<A>(), [&](int i, int j, A v) {
                if (i == 0 && j == 0) {
                    best = v;
                } else {
                    const bool better = v > best;
                    if (better) a = i * kw + j;
                    if (better || v != v) best = v;
                }
            });
            yo[k] = gpunet::from_acc<T>(best);
            ao[k] = static_cast<I>(a);
        }
    }
}

template <typename T, typename I>
__global__ void max_pool_backward(const T* __restrict__ dy, const I* __restrict__ arg,
                                  T* __restrict__ dx, int planes, int C, int H, int kh, int kw,
                                  int sh, int sw, int ph, int pw, int OH, int OW, long long sdn,
                                  long long sdc, long long sdh, long long sdw,
                                  unsigned int w_d, unsigned int w_mul, unsigned int w_shr) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{w_d, w_mul, w_shr};
    const Window2d win{kh, kw, sh, sw, ph, pw};
    const int HW = H * static_cast<int>(w_d);
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / C, c = plane - n * C;
        const T* g = dy + n * sdn + c * sdc;
        const I* ai = arg + static_cast<long long>(plane) * OH * OW;
        T* out = dx + static_cast<long long>(plane) * HW;
        for (int hw = blockIdx.x * blockDim.x + threadIdx.x; hw < HW; hw += gridDim.x * blockDim.x) {
            const Cover2d cv = win.cover(per_row, hw, OH, OW);
            A s = A(0);
            for (int p = cv.p_hi; p >= cv.p_lo; --p) {        // offsets in ascending order
                const int i = cv.hh - p * sh;
                for (int q = cv.q_hi; q >= cv.q_lo; --q) {
                    if (static_cast<int>(ai[p * OW + q]) == i * kw + cv.ww - q * sw)
                        s += gpunet::to_acc(g[p * sdh + q * sdw]);
                }
            }
            out[hw] = gpunet::from_acc<T>(s);
        }
    }
}

template <typename T>
__global__ void avg_pool_forward(const T* __restrict__ x, T* __restrict__ y, int planes, int C,
                                 int H, int W, long long sxn, long long sxc, long long sxh,
                                 long long sxw, int kh, int kw, int sh, int sw, int ph, int pw,
                                 unsigned int ow_d, unsigned int ow_mul, unsigned int ow_shr,
                                 int P, typename gpunet::Acc<T>::type scale) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{ow_d, ow_mul, ow_shr};
    const Window2d win{kh, kw, sh, sw, ph, pw};
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / C, c = plane - n * C;
        const T* xc = x + n * sxn + c * sxc;
        T* yo = y + static_cast<long long>(plane) * P;
        for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < P; k += gridDim.x * blockDim.x) {
            A s = A(0);
            for_window(xc, H, W, sxh, sxw, win, per_row, k, A(0),
                       [&](int i, int j, A v) { s = (i == 0 && j == 0) ? v : s + v; });
            yo[k] = gpunet::from_acc<T>(s * scale);
        }
    }
}

template <typename T>
__global__ void avg_pool_backward(const T* __restrict__ dy, T* __restrict__ dx, int planes, int C,
                                  int H, int kh, int kw, int sh, int sw, int ph, int pw, int OH,
                                  int OW, long long sdn, long long sdc, long long sdh, long long sdw,
                                  unsigned int w_d, unsigned int w_mul, unsigned int w_shr,
                                  typename gpunet::Acc<T>::type scale) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{w_d, w_mul, w_shr};
    const Window2d win{kh, kw, sh, sw, ph, pw};
    const int HW = H * static_cast<int>(w_d);
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / C, c = plane - n * C;
        const T* g = dy + n * sdn + c * sdc;
        T* out = dx + static_cast<long long>(plane) * HW;
        for (int hw = blockIdx.x * blockDim.x + threadIdx.x; hw < HW; hw += gridDim.x * blockDim.x) {
            const Cover2d cv = win.cover(per_row, hw, OH, OW);
            A s = A(0);
            for (int p = cv.p_hi; p >= cv.p_lo; --p) {        // offsets in ascending order
                for (int q = cv.q_hi; q >= cv.q_lo; --q)
                    s = add_rn(s, mul_rn(gpunet::to_acc(g[p * sdh + q * sdw]), scale));
            }
            out[hw] = gpunet::from_acc<T>(s);
        }
    }
}

#define GPUNET_MAX_POOL_INSTANTIATE(T, I)                                                          \
    template __global__ void max_pool_forward<T, I>(const T*, T*, I*, int, int, int, int, long long, \
                                                    long long, long long, long long, int, int, int,  \
                                                    int, int, int, unsigned int, unsigned int,       \
                                                    unsigned int, int);                              \
    template __global__ void max_pool_backward<T, I>(const T*, const I*, T*, int, int, int, int,     \
                                                     int, int, int, int, int, int, int, long long,   \
                                                     long long, long long, long long, unsigned int,  \
                                                     unsigned int, unsigned int);
#define GPUNET_AVG_POOL_INSTANTIATE(T)                                                             \
    template __global__ void avg_pool_forward<T>(const T*, T*, int, int, int, int, long long,       \
                                                 long long, long long, long long, int, int, int,    \
                                                 int, int, int, unsigned int, unsigned int,         \
                                                 unsigned int, int, typename gpunet::Acc<T>::type); \
    template __global__ void avg_pool_backward<T>(const T*, T*, int, int, int, int, int, int, int,  \
                                                  int, int, int, int, long long, long long,         \
                                                  long long, long long, unsigned int, unsigned int, \
                                                  unsigned int, typename gpunet::Acc<T>::type);

GPUNET_MAX_POOL_INSTANTIATE(float, unsigned char)
GPUNET_MAX_POOL_INSTANTIATE(float, int)
GPUNET_MAX_POOL_INSTANTIATE(double, unsigned char)
GPUNET_MAX_POOL_INSTANTIATE(double, int)
GPUNET_MAX_POOL_INSTANTIATE(__half, unsigned char)
GPUNET_MAX_POOL_INSTANTIATE(__half, int)
GPUNET_AVG_POOL_INSTANTIATE(float)
GPUNET_AVG_POOL_INSTANTIATE(double)
GPUNET_AVG_POOL_INSTANTIATE(__half)
