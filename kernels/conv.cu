// defines: im2col<T>, col2im<T>, conv_bias_act<T>, conv_act_grad<T> (T = float, double, __half): the non-GEMM passes of a whole-batch convolution, one launch each
//
// A convolution on the GPU is im2col, one cuBLAS GEMM, and an epilogue (gpunet/functional/
// conv.py): with K = C*kh*kw, P = OH*OW and L = N*P,
//     cols (K, L) = im2col(x)           row (c*kh + i)*kw + j, column (n*OH + p)*OW + q holds
//                                       xpad[n, c, p*sh + i, q*sw + j] (0 in the padding)
//     z (O, L)    = W (O, K) @ cols     CNHW memory
//     y (N, O, OH, OW) = act(z + b)     NCHW-contiguous (conv_bias_act)
// and backward
//     d2 (O, L)   = dy * act'(y)        CNHW again (conv_act_grad), so that
//     dW = d2 @ cols.T, db = row sums of d2, dcols = W.T @ d2 are plain 2-D GEMMs
//     dx          = col2im(dcols)       NCHW-contiguous
//
// col2im gathers: each input element sums, in kernel-offset order (i, then j, ascending),
// the columns that read it, so the result is deterministic and adds in the same order as
// the NumPy reference (no atomics).
//
// Launch shape: gridDim.y strides over "rows" (cols rows, or NCHW/CNHW planes), gridDim.x *
// blockDim.x over the elements of a row; both are grid-stride loops. Per-row quantities
// (channel, kernel offset) are divided once per row; the per-element ones use
// gpunet::FastDivmod (launchers pass the host-computed constants and check that every index
// inside a row is < 2**31). Inputs x and dy may have any strides (element strides, so a
// transposed view needs no copy); every output is C-contiguous.
//
// __half: storage only; sums, bias and ReLU in float (A = gpunet::Acc<T>::type, half.cuh),
// each output rounded once.
#include "common.cuh"
#include "half.cuh"

using gpunet::FastDivmod;

// x (N, C, H, W) with element strides (sxn, sxc, sxh, sxw) -> cols (K, L), K = C*kh*kw.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, int K, int H, int W,
                       long long sxn, long long sxc, long long sxh, long long sxw, int kh, int kw,
                       int sh, int sw, int ph, int pw, int L,
                       unsigned int p_d, unsigned int p_mul, unsigned int p_shr,
                       unsigned int ow_d, unsigned int ow_mul, unsigned int ow_shr) {
    const FastDivmod per_image{p_d, p_mul, p_shr}, per_row{ow_d, ow_mul, ow_shr};
    const int kk = kh * kw;
    for (int r = blockIdx.y; r < K; r += gridDim.y) {
        const int c = r / kk, ij = r - c * kk, i = ij / kw, j = ij - i * kw;
        const T* xc = x + c * sxc;
        T* row = cols + static_cast<long long>(r) * L;
        for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < L; col += gridDim.x * blockDim.x) {
            unsigned int n, pq, p, q;
            per_image.divmod(static_cast<unsigned int>(col), n, pq);
            per_row.divmod(pq, p, q);
            const int h = static_cast<int>(p) * sh + i - ph;
            const int w = static_cast<int>(q) * sw + j - pw;
            row[col] = (h >= 0 && h < H && w >= 0 && w < W) ? xc[n * sxn + h * sxh + w * sxw]
                                                            : gpunet::from_acc<T>(0);
        }
    }
}

// dcols (K, L) -> dx (N, C, H, W) C-contiguous; planes = N*C, HW = H*W.
template <typename T>
__global__ void col2im(const T* __restrict__ dcols, T* __restrict__ dx, int planes, int C, int H,
                       int kh, int kw, int sh, int sw, int ph, int pw, int OH, int OW, int L,
                       unsigned int w_d, unsigned int w_mul, unsigned int w_shr) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{w_d, w_mul, w_shr};
    const gpunet::Window2d win{kh, kw, sh, sw, ph, pw};
    const int W = static_cast<int>(w_d), HW = H * W;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / C, c = plane - n * C;
        const T* dc = dcols + static_cast<long long>(c) * kh * kw * L + static_cast<long long>(n) * OH * OW;
        T* out = dx + static_cast<long long>(plane) * HW;
        for (int hw = blockIdx.x * blockDim.x + threadIdx.x; hw < HW; hw += gridDim.x * blockDim.x) {
            const gpunet::Cover2d cv = win.cover(per_row, hw, OH, OW);
            A s = A(0);
            for (int p = cv.p_hi; p >= cv.p_lo; --p) {        // kernel row i = hh - p*sh ascending
                const int i = cv.hh - p * sh;
                for (int q = cv.q_hi; q >= cv.q_lo; --q) {
                    const int j = cv.ww - q * sw;
                    s += gpunet::to_acc(dc[static_cast<long long>(i * kw + j) * L + p * OW + q]);
                }
            }
            out[hw] = gpunet::from_acc<T>(s);
        }
    }
}

// z (O, N, P) (CNHW, contiguous) -> y (N, O, P) = z + bias[o], then max(., 0) when relu.
template <typename T>
__global__ void conv_bias_act(const T* __restrict__ z, const T* __restrict__ bias, T* __restrict__ y,
                              int planes, int O, int N, int P, int has_bias, int relu) {
    using A = typename gpunet::Acc<T>::type;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / O, o = plane - n * O;
        const T* src = z + (static_cast<long long>(o) * N + n) * P;
        T* dst = y + static_cast<long long>(plane) * P;
        const A b = has_bias ? gpunet::to_acc(bias[o]) : A(0);
        for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < P; k += gridDim.x * blockDim.x) {
            A v = gpunet::to_acc(src[k]);
            if (has_bias) v += b;
            if (relu && v < A(0)) v = A(0);  // NaN stays NaN, as NumPy's maximum(z, 0)
            dst[k] = gpunet::from_acc<T>(v);
        }
    }
}

// dy (N, O, OH, OW) with element strides (sn, so, sh, sw) -> d2 (O, N, P) (CNHW, contiguous),
// times (y > 0) when relu (y: the forward's NCHW-contiguous output).
template <typename T>
__global__ void conv_act_grad(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ d2,
                              int planes, int N, int O, long long sn, long long so, long long sh,
                              long long sw, int relu,
                              unsigned int p_d, unsigned int ow_d, unsigned int ow_mul,
                              unsigned int ow_shr) {
    using A = typename gpunet::Acc<T>::type;
    const FastDivmod per_row{ow_d, ow_mul, ow_shr};
    const int P = static_cast<int>(p_d);
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int o = plane / N, n = plane - o * N;
        const T* g = dy + n * sn + o * so;
        const T* yy = y + (static_cast<long long>(n) * O + o) * P;
        T* dst = d2 + static_cast<long long>(plane) * P;
        for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < P; k += gridDim.x * blockDim.x) {
            unsigned int p, q;
            per_row.divmod(static_cast<unsigned int>(k), p, q);
            A v = gpunet::to_acc(g[p * sh + q * sw]);
            if (relu) v = v * (gpunet::to_acc(yy[k]) > A(0) ? A(1) : A(0));  // dy * (y > 0), as NumPy
            dst[k] = gpunet::from_acc<T>(v);
        }
    }
}

#define GPUNET_CONV_INSTANTIATE(T)                                                                 \
    template __global__ void im2col<T>(const T*, T*, int, int, int, long long, long long, long long, \
                                       long long, int, int, int, int, int, int, int, unsigned int,   \
                                       unsigned int, unsigned int, unsigned int, unsigned int,       \
                                       unsigned int);                                                \
    template __global__ void col2im<T>(const T*, T*, int, int, int, int, int, int, int, int, int,   \
                                       int, int, int, unsigned int, unsigned int, unsigned int);     \
    template __global__ void conv_bias_act<T>(const T*, const T*, T*, int, int, int, int, int, int); \
    template __global__ void conv_act_grad<T>(const T*, const T*, T*, int, int, int, long long,      \
                                              long long, long long, long long, int, unsigned int,    \
                                              unsigned int, unsigned int, unsigned int);

GPUNET_CONV_INSTANTIATE(float)
GPUNET_CONV_INSTANTIATE(double)
GPUNET_CONV_INSTANTIATE(__half)
