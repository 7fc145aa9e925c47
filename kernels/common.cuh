// defines: gpunet::mix32, counter_bits, neg_inf, dev_exp/dev_log/dev_sqrt/dev_max, add_rn/sub_rn/mul_rn/div_rn/sqrt_rn, Pack, is_aligned16, umulhi32, FastDivmod, warp_sum, warp_max, block_reduce, block_sum, block_max, WelfordHiLo (+ two_sum, welford_hilo_combine, warp_welford_hilo, block_welford_hilo), online_lse_combine, covering, Cover2d, Window2d
//
// Shared device helpers of the gpunet kernels. Compiled at run time by NVRTC (through
// CuPy) and ahead of time by nvcc in CI, so: no host headers (<cmath>, <cfloat>), no
// host-only macros (INFINITY, FLT_MAX), and every helper is __device__ (or
// __host__ __device__ when a host test compiles it too).
//
// Conventions: reductions are over a full warp (32 lanes, mask 0xffffffff) or over a
// whole block whose size is a multiple of 32 and at most 1024. Block reductions take a
// __shared__ scratch array of at least 32 elements and return the result to every thread.
#pragma once

namespace gpunet {

// ---------------------------------------------------------------------------------------
// Counter-based hash, bit for bit the one in gpunet/random.py (Chris Wellons' lowbias32).
// The host computes the keys (k1, k2) of a stream (seed, offset); element i gets
//     bits[i] = mix32(mix32(i + k1) ^ k2)          (all arithmetic modulo 2**32)
// ---------------------------------------------------------------------------------------
__host__ __device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

__host__ __device__ __forceinline__ unsigned int counter_bits(unsigned int i, unsigned int k1,
                                                              unsigned int k2) {
    return mix32(mix32(i + k1) ^ k2);
}

// ---------------------------------------------------------------------------------------
// Element-type helpers: -inf without INFINITY, and math overloads that pick the float or
// double routine (accurate versions; CuPy adds -ftz=true, nothing else).
// ---------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dev_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dev_max(double a, double b) { return fmax(a, b); }

// Correctly rounded arithmetic that the compiler never contracts: nvcc and NVRTC fuse
// a * b + c into one FMA (rounded once) by default, where NumPy rounds the product and
// then the sum. A kernel whose result must equal the NumPy reference bit for bit writes
// each product (and the sum it feeds) with these.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

// 16-byte pack of T (float4- / double2-sized) for vectorized loads and stores; a pointer
// may be reinterpreted as Pack<T>* only when is_aligned16 says so (CuPy allocations are
// 256-byte aligned, views with an offset need not be).
template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

__device__ __forceinline__ bool is_aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// ---------------------------------------------------------------------------------------
// Division by a run-time constant d >= 1 without the ~20-instruction integer divide:
// q = umulhi(n, mul) >> shr, exact for 0 <= n < 2**31 (the host, gpunet/cuda.py
// fast_divmod_constants, computes mul = ceil(2**(31+l) / d), shr = l - 1 with
// l = ceil(log2 d); d == 1 is mul = 0 and handled by `is_one`). Launchers check n < 2**31.
// ---------------------------------------------------------------------------------------
__host__ __device__ __forceinline__ unsigned int umulhi32(unsigned int a, unsigned int b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
#endif
}

struct FastDivmod {
    unsigned int d;
    unsigned int mul;
    unsigned int shr;
    __host__ __device__ __forceinline__ unsigned int div(unsigned int n) const {
        return d == 1u ? n : (umulhi32(n, mul) >> shr);
    }
    // q = n / d, r = n % d
    __host__ __device__ __forceinline__ void divmod(unsigned int n, unsigned int& q,
                                                    unsigned int& r) const {
        q = div(n);
        r = n - q * d;
    }
};

// ---------------------------------------------------------------------------------------
// Warp and block reductions.
// ---------------------------------------------------------------------------------------
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = dev_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A block reduction from a warp one: each warp reduces its values (warp_op), lane 0 of
// each writes the result to scratch[warp], and every warp reduces those (`identity` past
// the last warp). Every thread of the block must call it and gets the result; `scratch`
// holds >= 32 elements.
template <typename T, typename WarpOp>
__device__ __forceinline__ T block_reduce(T v, T* scratch, T identity, WarpOp warp_op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_op(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : identity;
    return warp_op(v);
}

template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
    return block_reduce(v, scratch, T(0), [](T x) { return warp_sum(x); });
}

template <typename T> __device__ __forceinline__ T block_max(T v, T* scratch) {
    return block_reduce(v, scratch, neg_inf<T>(), [](T x) { return warp_max(x); });
}

// ---------------------------------------------------------------------------------------
// Welford statistics (count n, mean, m2 = sum of squared deviations, combined pairwise
// after Chan et al.) whose mean is an unevaluated sum hi + lo (hi the mean rounded to T,
// lo the rest, |lo| <= ulp(hi) / 2, kept exact by two_sum), for reductions that must not
// depend on a shift: every difference the combine forms is between partial means, so its
// rounding error is eps times the distance the mean moves, never eps times a shift's
// distance from the data (a first value that is an outlier), and a mean of 1e4 is held
// well below one float ulp (a spread of 0.01 survives the differences of means).
//     delta = (b.hi - a.hi) + (b.lo - a.lo),   n = a.n + b.n,   wb = b.n / n
//     (hi, lo) = two_sum(a.hi, a.lo + delta * wb),   m2 = a.m2 + b.m2 + delta^2 a.n wb
// An empty side (n = 0) returns the other unchanged. The count is held in T: exact below
// 2**24 per partial in float, which the launchers keep to.
// ---------------------------------------------------------------------------------------
template <typename T> struct WelfordHiLo {
    T n;
    T hi;
    T lo;
    T m2;
};

// s + e == a + b exactly (Knuth's branch-free TwoSum; additions only, so no FMA
// contraction can change it).
template <typename T> __host__ __device__ __forceinline__ void two_sum(T a, T b, T& s, T& e) {
    s = a + b;
    const T bb = s - a;
    e = (a - (s - bb)) + (b - bb);
}

template <typename T>
__host__ __device__ __forceinline__ WelfordHiLo<T> welford_hilo_combine(WelfordHiLo<T> a,
                                                                      WelfordHiLo<T> b) {
    if (b.n == T(0)) return a;
    if (a.n == T(0)) return b;
    const T n = a.n + b.n;
    const T delta = (b.hi - a.hi) + (b.lo - a.lo);
    const T wb = b.n / n;
    WelfordHiLo<T> r;
    r.n = n;
    two_sum(a.hi, a.lo + delta * wb, r.hi, r.lo);
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    return r;
}

template <typename T>
__device__ __forceinline__ WelfordHiLo<T> warp_welford_hilo(WelfordHiLo<T> w) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        WelfordHiLo<T> other;
        other.n = __shfl_xor_sync(0xffffffffu, w.n, o);
        other.hi = __shfl_xor_sync(0xffffffffu, w.hi, o);
        other.lo = __shfl_xor_sync(0xffffffffu, w.lo, o);
        other.m2 = __shfl_xor_sync(0xffffffffu, w.m2, o);
        w = welford_hilo_combine(w, other);
    }
    return w;
}

// `scratch` holds >= 32 WelfordHiLo<T>; every thread gets the block's statistics (up to
// rounding: lanes combine in different orders, so use one thread's result).
template <typename T>
__device__ __forceinline__ WelfordHiLo<T> block_welford_hilo(WelfordHiLo<T> w,
                                                           WelfordHiLo<T>* scratch) {
    const WelfordHiLo<T> empty{T(0), T(0), T(0), T(0)};
    return block_reduce(w, scratch, empty, [](WelfordHiLo<T> x) { return warp_welford_hilo(x); });
}

// ---------------------------------------------------------------------------------------
// Online log-sum-exp: a running (max m, sum s of exp(x - m)) pair; combining two pairs
// rescales the smaller-max sum. An empty pair is (-inf, 0) and combines to the other.
// ---------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void online_lse_combine(T& m, T& s, T m_other, T s_other) {
    const T mx = dev_max(m, m_other);
    if (mx == neg_inf<T>()) return;  // both empty: avoid exp(-inf - -inf) = nan
    s = s * dev_exp(m - mx) + s_other * dev_exp(m_other - mx);
    m = mx;
}

// ---------------------------------------------------------------------------------------
// Sliding windows (convolution's col2im, pooling's backward): the outputs p (0 <= p < out)
// whose window, moved by `stride` over a padded axis, covers padded position hp with
// kernel offset i = hp - p*stride in [0, k): p_lo <= p <= p_hi. Looping p from p_hi down
// visits the offsets i in ascending order (the NumPy path's summation order).
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ void covering(int hp, int k, int stride, int out, int& p_lo, int& p_hi) {
    p_lo = hp >= k ? (hp - k + stride) / stride : 0;
    p_hi = min(hp / stride, out - 1);
}

// Input element (h, w) seen from the padded plane: (hh, ww) = (h + ph, w + pw), and the
// outputs p_lo..p_hi (rows), q_lo..q_hi (columns) whose windows cover it (covering()).
struct Cover2d {
    int hh, ww, p_lo, p_hi, q_lo, q_hi;
};

// A kh x kw window moved by (sh, sw) over a plane padded by (ph, pw) on each side.
struct Window2d {
    int kh, kw, sh, sw, ph, pw;

    // Output element k of the row-major output plane (per_row divides by OW): the input
    // position (h0, w0) of its window's first element (negative inside the padding).
    __device__ __forceinline__ void origin(const FastDivmod& per_row, int k, int& h0, int& w0) const {
        unsigned int p, q;
        per_row.divmod(static_cast<unsigned int>(k), p, q);
        h0 = static_cast<int>(p) * sh - ph;
        w0 = static_cast<int>(q) * sw - pw;
    }

    // Input element hw of the row-major H x W input plane (per_row divides by W), for an
    // OH x OW output.
    __device__ __forceinline__ Cover2d cover(const FastDivmod& per_row, int hw, int OH, int OW) const {
        unsigned int uh, uw;
        per_row.divmod(static_cast<unsigned int>(hw), uh, uw);
        Cover2d c;
        c.hh = static_cast<int>(uh) + ph;
        c.ww = static_cast<int>(uw) + pw;
        covering(c.hh, kh, sh, OH, c.p_lo, c.p_hi);
        covering(c.ww, kw, sw, OW, c.q_lo, c.q_hi);
        return c;
    }
};

}  // namespace gpunet
