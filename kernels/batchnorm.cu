// defines: bn_stats_partial<T>, bn_forward_apply<T>, bn_backward_reduce_partial<T>, bn_backward_apply<T> (T = float, double, __half), bn_stats_finalize<A>, bn_backward_finalize<A> (A = float, double)
//
// Batch normalization in training mode over an NCHW tensor x of shape (N, C, HW) in
// memory; an (N, C) input is the case HW = 1. Per channel c, over its M = N * HW values:
//     mean = sum x / M,   var = sum (x - mean)^2 / M   (biased),  inv_std = 1 / sqrt(var + eps)
//     xhat = (x - mean) * inv_std,   y = gamma * xhat + beta
// Backward, with dy the gradient of y:
//     dbeta = sum dy,   dgamma = sum dy * xhat
//     dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M)
//
// The reductions are two-level: a grid of (chunks, C) blocks writes one partial per block,
// and a small kernel (one thread per channel) combines a channel's partials. Statistics
// are Welford (count, mean, m2) with the mean held as hi + lo (gpunet::WelfordHiLo): each
// thread folds its values in groups of 4 (the group's mean and m2 by two passes in
// registers, relative to the thread's running mean), then warps, the block and the
// finalize kernel combine with Chan's pairwise formula. No raw sum of squares is formed
// and no fixed shift is used, so nothing cancels when the channel holds an outlier
// (x[0, c] = 1e3 among N(0, 1) values: a shift by it made s2 - s1^2/n lose ~1e6 relative,
// and K + mean_rel rounded the mean at ulp(1e3)); and the split mean keeps float data with
// a large mean and a small spread (1e4 + 0.01 noise) exact in the differences of means,
// where means rounded at 1e4 would lose the spread. One read of x for the statistics.
// Counts are held in T (exact below 2**24 in float).
//
// Elementwise kernels index the flat tensor; the channel of element i is (i / HW) % C,
// computed with gpunet::FastDivmod (the launcher passes the host-computed constants and
// checks N * C * HW < 2**31). They use 16-byte packs when HW is a multiple of the pack
// width (a pack then lies in one channel) and the arrays are 16-byte aligned.
//
// __half activations (mixed precision): x, y, dy and dx are half, everything else is
// float (A = acc_t<T>, half.cuh): the arithmetic, the partials, mean/var/inv_std,
// gamma/beta and dgamma/dbeta. Each y and dx element is computed in float and rounded
// once. The finalize kernels see only A, so they exist for float and double.
#include "common.cuh"
#include "half.cuh"

using gpunet::FastDivmod;
using gpunet::Pack;
using gpunet::WelfordHiLo;
using gpunet::acc_t;
using gpunet::add_rn;
using gpunet::from_acc;
using gpunet::mul_rn;
using gpunet::to_acc;

namespace {

// Channel c's m-th value (m in [0, N*HW)) lives at ((m / HW) * C + c) * HW + m % HW.
// Each thread walks its values with a fixed stride, keeping (n, hw) without dividing.
// (__host__ too: tests/test_kernels_compile.py runs the walk on the host.)
struct ChannelWalker {
    long long n, hw;      // position of the current value
    long long sq, sr;     // stride / HW, stride % HW
    long long HW, CHW;
    __host__ __device__ __forceinline__ void init(long long m, long long stride, long long HW_,
                                                  long long C) {
        HW = HW_;
        CHW = C * HW_;
        n = m / HW;
        hw = m - n * HW;
        sq = stride / HW;
        sr = stride - sq * HW;
    }
    __host__ __device__ __forceinline__ long long offset(long long c) const {
        return n * CHW + c * HW + hw;
    }
    __host__ __device__ __forceinline__ void advance() {
        hw += sr;
        n += sq;
        if (hw >= HW) {
            hw -= HW;
            ++n;
        }
    }
};

// The range [begin, end) of a channel's M values that chunk b of `chunks` covers.
__host__ __device__ __forceinline__ void chunk_range(long long M, int chunks, int b,
                                                     long long& begin, long long& end) {
    const long long len = (M + chunks - 1) / chunks;
    begin = len * b;
    end = begin + len < M ? begin + len : M;
}

// The channel of element i of an NCHW tensor (hw_div divides by HW, c_div by C).
__device__ __forceinline__ unsigned int channel_of(unsigned int i, const FastDivmod& hw_div,
                                                   const FastDivmod& c_div) {
    unsigned int n, c;
    c_div.divmod(hw_div.div(i), n, c);
    return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Forward: statistics.
// part has (C, chunks, 4) entries: the WelfordHiLo (count, mean hi, mean lo, m2) of each
// chunk.
// ---------------------------------------------------------------------------------------
// 256 threads (the launcher's), at least 4 blocks per SM: caps registers at 64 (the
// double variant's divisions would take more and leave 3 blocks per SM for a load-bound
// loop).
template <typename T>
__global__ void __launch_bounds__(256, 4) bn_stats_partial(const T* __restrict__ x, int N,
                                                           int C, int HW, int chunks,
                                                           acc_t<T>* __restrict__ part) {
    using A = acc_t<T>;
    __shared__ WelfordHiLo<A> scratch[32];
    const int c = blockIdx.y, b = blockIdx.x;
    const long long M = static_cast<long long>(N) * HW;
    long long begin, end;
    chunk_range(M, chunks, b, begin, end);
    WelfordHiLo<A> st;
    st.n = A(0);
    st.hi = A(0);  // the thread's mean is hi + lo; hi starts at its first value, so the
    st.lo = A(0);  // first group's differences are exact when |mean| >> spread (Sterbenz)
    st.m2 = A(0);
    int cnt = 0;   // exact count; st.n = A(cnt) (< 2**24 per block in float: the launcher)
    ChannelWalker w;
    w.init(begin + threadIdx.x, blockDim.x, HW, C);
    if (begin + threadIdx.x < end) st.hi = to_acc(x[w.offset(c)]);
    // Groups of G values (G loads in flight): the group's mean and m2 of d = x - hi by two
    // passes in registers, then Chan's combine into the running statistics, whose mean is
    // re-split into hi + lo after each group. No raw sum of squares is formed and the
    // shift is always the running mean, so no value (an outlier first one included) makes
    // anything cancel. One division per group next to G loads.
    constexpr int G = 4;
    for (long long m0 = begin + threadIdx.x; m0 < end; m0 += G * blockDim.x) {
        A d[G];
        A s = A(0);
        int g = 0;
#pragma unroll
        for (int k = 0; k < G; ++k) {
            const bool in = m0 + k * static_cast<long long>(blockDim.x) < end;
            d[k] = in ? to_acc(x[w.offset(c)]) - st.hi : A(0);
            s += d[k];
            g += in;
            w.advance();  // past the end: positions only, never read
        }
        const A gmean = s / A(g);
        A gm2 = A(0);
#pragma unroll
        for (int k = 0; k < G; ++k) {
            const A e = d[k] - gmean;
            if (k < g) gm2 += e * e;  // the group's valid values come first
        }
        cnt += g;
        const A n = A(cnt), delta = gmean - st.lo, wb = A(g) / n;
        st.m2 += gm2 + delta * delta * st.n * wb;
        st.n = n;
        gpunet::two_sum(st.hi, st.lo + delta * wb, st.hi, st.lo);
    }
    st = gpunet::block_welford_hilo(st, scratch);
    if (threadIdx.x == 0) {
        A* p = part + (static_cast<long long>(c) * chunks + b) * 4;
        p[0] = st.n;
        p[1] = st.hi;
        p[2] = st.lo;
        p[3] = st.m2;
    }
}

// One thread per channel: combine the chunks, write mean (hi + lo rounded once), biased
// var and inv_std. With update != 0 it also updates the running statistics in
// place, each operation rounded as in gpunet.layers.BatchNorm's NumPy path:
//     running_mean = running_mean * keep + mean * mom
//     running_var  = running_var * keep + (var * ratio) * mom
// (keep = 1 - momentum, ratio = M / (M - 1) for the unbiased variance, all in T; add_rn and
// mul_rn keep the compiler from contracting a product and its sum into an FMA).
template <typename T>
__global__ void bn_stats_finalize(const T* __restrict__ part, int C, int chunks, T eps,
                                  T* __restrict__ mean, T* __restrict__ var,
                                  T* __restrict__ inv_std, int update,
                                  T* __restrict__ running_mean, T* __restrict__ running_var,
                                  T ratio, T keep, T mom) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    WelfordHiLo<T> st;
    st.n = T(0);
    st.hi = T(0);
    st.lo = T(0);
    st.m2 = T(0);
    for (int b = 0; b < chunks; ++b) {
        const T* p = part + (static_cast<long long>(c) * chunks + b) * 4;
        WelfordHiLo<T> o;
        o.n = p[0];
        o.hi = p[1];
        o.lo = p[2];
        o.m2 = p[3];
        st = gpunet::welford_hilo_combine(st, o);
    }
    const T v = st.m2 / st.n;
    const T mu = st.hi + st.lo;
    mean[c] = mu;
    var[c] = v;
    inv_std[c] = T(1) / gpunet::dev_sqrt(v + eps);
    if (update) {
        running_mean[c] = add_rn(mul_rn(running_mean[c], keep), mul_rn(mu, mom));
        running_var[c] = add_rn(mul_rn(running_var[c], keep), mul_rn(mul_rn(v, ratio), mom));
    }
}

// ---------------------------------------------------------------------------------------
// Forward: y = (x - mean) * (gamma * inv_std) + beta.
// hw_div divides by HW, c_div by C; total = N * C * HW < 2**31.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void bn_forward_apply(const T* __restrict__ x, const acc_t<T>* __restrict__ mean,
                                 const acc_t<T>* __restrict__ inv_std,
                                 const acc_t<T>* __restrict__ gamma,
                                 const acc_t<T>* __restrict__ beta, T* __restrict__ y, int total,
                                 unsigned int hw_d, unsigned int hw_mul, unsigned int hw_shr,
                                 unsigned int c_d, unsigned int c_mul, unsigned int c_shr) {
    using A = acc_t<T>;
    const FastDivmod hw_div{hw_d, hw_mul, hw_shr}, c_div{c_d, c_mul, c_shr};
    constexpr int P = Pack<T>::N;
    const int stride = gridDim.x * blockDim.x;
    const int t0 = blockIdx.x * blockDim.x + threadIdx.x;
    const bool packed = hw_d % P == 0 && gpunet::is_aligned16(x) && gpunet::is_aligned16(y);
    if (packed) {
        const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
        Pack<T>* yp = reinterpret_cast<Pack<T>*>(y);
        for (long long q = t0; q < total / P; q += stride) {
            const unsigned int c = channel_of(static_cast<unsigned int>(q * P), hw_div, c_div);
            const A mu = mean[c], a = gamma[c] * inv_std[c], bt = beta[c];
            Pack<T> v = xp[q];
#pragma unroll
            for (int k = 0; k < P; ++k) v.v[k] = from_acc<T>((to_acc(v.v[k]) - mu) * a + bt);
            yp[q] = v;
        }
    } else {
        for (long long i = t0; i < total; i += stride) {
            const unsigned int c = channel_of(static_cast<unsigned int>(i), hw_div, c_div);
            y[i] = from_acc<T>((to_acc(x[i]) - mean[c]) * (gamma[c] * inv_std[c]) + beta[c]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward: per-chunk sums of dy and dy * (x - mean); part has (C, chunks, 2) entries.
// ---------------------------------------------------------------------------------------
template <typename T>
__global__ void bn_backward_reduce_partial(const T* __restrict__ dy, const T* __restrict__ x,
                                           const acc_t<T>* __restrict__ mean, int N, int C,
                                           int HW, int chunks, acc_t<T>* __restrict__ part) {
    using A = acc_t<T>;
    __shared__ A scratch[32];
    const int c = blockIdx.y, b = blockIdx.x;
    const long long M = static_cast<long long>(N) * HW;
    long long begin, end;
    chunk_range(M, chunks, b, begin, end);
    const A mu = mean[c];
    A sdy = A(0), sdyx = A(0);
    ChannelWalker w;
    w.init(begin + threadIdx.x, blockDim.x, HW, C);
    for (long long m = begin + threadIdx.x; m < end; m += blockDim.x, w.advance()) {
        const long long o = w.offset(c);
        const A g = to_acc(dy[o]);
        sdy += g;
        sdyx += g * (to_acc(x[o]) - mu);
    }
    sdy = gpunet::block_sum(sdy, scratch);
    sdyx = gpunet::block_sum(sdyx, scratch);
    if (threadIdx.x == 0) {
        A* p = part + (static_cast<long long>(c) * chunks + b) * 2;
        p[0] = sdy;
        p[1] = sdyx;
    }
}

// One thread per channel: dbeta = sum dy, dgamma = inv_std * sum dy (x - mean).
template <typename T>
__global__ void bn_backward_finalize(const T* __restrict__ part, int C, int chunks,
                                     const T* __restrict__ inv_std, T* __restrict__ dgamma,
                                     T* __restrict__ dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    T sdy = T(0), sdyx = T(0);
    for (int b = 0; b < chunks; ++b) {
        const T* p = part + (static_cast<long long>(c) * chunks + b) * 2;
        sdy += p[0];
        sdyx += p[1];
    }
    dbeta[c] = sdy;
    dgamma[c] = sdyx * inv_std[c];
}

// dx = gamma * inv_std * (dy - dbeta / M - (x - mean) * inv_std * dgamma / M), M = N * HW.
template <typename T>
__global__ void bn_backward_apply(const T* __restrict__ dy, const T* __restrict__ x,
                                  const acc_t<T>* __restrict__ mean,
                                  const acc_t<T>* __restrict__ inv_std,
                                  const acc_t<T>* __restrict__ gamma,
                                  const acc_t<T>* __restrict__ dgamma,
                                  const acc_t<T>* __restrict__ dbeta, T* __restrict__ dx,
                                  int total, acc_t<T> inv_M, unsigned int hw_d,
                                  unsigned int hw_mul, unsigned int hw_shr, unsigned int c_d,
                                  unsigned int c_mul, unsigned int c_shr) {
    using A = acc_t<T>;
    const FastDivmod hw_div{hw_d, hw_mul, hw_shr}, c_div{c_d, c_mul, c_shr};
    constexpr int P = Pack<T>::N;
    const int stride = gridDim.x * blockDim.x;
    const int t0 = blockIdx.x * blockDim.x + threadIdx.x;
    const bool packed = hw_d % P == 0 && gpunet::is_aligned16(dy) && gpunet::is_aligned16(x) &&
                        gpunet::is_aligned16(dx);
    if (packed) {
        const Pack<T>* dyp = reinterpret_cast<const Pack<T>*>(dy);
        const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
        Pack<T>* dxp = reinterpret_cast<Pack<T>*>(dx);
        for (long long q = t0; q < total / P; q += stride) {
            const unsigned int c = channel_of(static_cast<unsigned int>(q * P), hw_div, c_div);
            const A is = inv_std[c], mu = mean[c];
            const A a = gamma[c] * is, k1 = dbeta[c] * inv_M, k2 = dgamma[c] * is * inv_M;
            const Pack<T> g = dyp[q];
            Pack<T> v = xp[q];
#pragma unroll
            for (int k = 0; k < P; ++k)
                v.v[k] = from_acc<T>(a * (to_acc(g.v[k]) - k1 - (to_acc(v.v[k]) - mu) * k2));
            dxp[q] = v;
        }
    } else {
        for (long long i = t0; i < total; i += stride) {
            const unsigned int c = channel_of(static_cast<unsigned int>(i), hw_div, c_div);
            const A is = inv_std[c];
            dx[i] = from_acc<T>(gamma[c] * is *
                                (to_acc(dy[i]) - dbeta[c] * inv_M -
                                 (to_acc(x[i]) - mean[c]) * (dgamma[c] * is * inv_M)));
        }
    }
}

// T: the storage type of x, y, dy, dx; A = acc_t<T>: everything else.
#define GPUNET_BATCHNORM_INSTANTIATE(T, A)                                                     \
    template __global__ void bn_stats_partial<T>(const T*, int, int, int, int, A*);            \
    template __global__ void bn_forward_apply<T>(const T*, const A*, const A*, const A*,       \
                                                 const A*, T*, int, unsigned int,              \
                                                 unsigned int, unsigned int, unsigned int,     \
                                                 unsigned int, unsigned int);                  \
    template __global__ void bn_backward_reduce_partial<T>(const T*, const T*, const A*, int,  \
                                                           int, int, int, A*);                 \
    template __global__ void bn_backward_apply<T>(const T*, const T*, const A*, const A*,      \
                                                  const A*, const A*, const A*, T*, int, A,    \
                                                  unsigned int, unsigned int, unsigned int,    \
                                                  unsigned int, unsigned int, unsigned int);
#define GPUNET_BATCHNORM_FINALIZE_INSTANTIATE(A)                                               \
    template __global__ void bn_stats_finalize<A>(const A*, int, int, A, A*, A*, A*, int, A*,  \
                                                  A*, A, A, A);                                \
    template __global__ void bn_backward_finalize<A>(const A*, int, int, const A*, A*, A*);

GPUNET_BATCHNORM_INSTANTIATE(float, float)
GPUNET_BATCHNORM_INSTANTIATE(double, double)
GPUNET_BATCHNORM_INSTANTIATE(__half, float)
GPUNET_BATCHNORM_FINALIZE_INSTANTIATE(float)
GPUNET_BATCHNORM_FINALIZE_INSTANTIATE(double)
