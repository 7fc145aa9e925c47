// gpunet's compiled CPU kernels: max pooling forward and backward on the NumPy path.
//
// Planes t (A, H, W, B), C-contiguous: each (H, W) plane holds B interleaved images (the
// layout gpunet.functional.pooling._to_planes gives). Every result is the same bits as the
// NumPy code in gpunet/functional/pooling.py computes: only exact operations (compare,
// select, a multiply by 1 or 0, one add per window in the same offset order), with
// -ffp-contract=off. Loops over B carry no branch on data (a mask by bit operations), so
// they vectorize on any x86-64 level; target_clones picks AVX-512/AVX2 where the CPU has it.
// The float32 forward's windows run 16 images at a time in AVX-512 registers on a CPU that
// has AVX-512F (gpunet_avx512 below): the compiler's own vectorization of the scalar loop
// packed and unpacked the byte-wide arg at every window member (one thread, (16, 28, 28, 64)
// planes: 0.101 -> 0.070 ms, 0.132 -> 0.11 ms with the ReLU read and pos).
#include <cstdint>
#include <cstring>
#include <limits>

#include "common.h"

#if GPUNET_AVX512_REGION
#pragma GCC push_options
#pragma GCC target("avx512f")
// float32 windows in AVX-512 registers (GCC's generic vectors take the register's mode only
// where the target has it when the type is declared, hence this region): the forward's
// loop below for the lanes [0, bv) of one window that lies wholly inside the input (w0: its
// first member), 16 lanes at a time kept in registers over the window's members, arg as
// 32-bit lanes narrowed to bytes once per block. Returns bv, where the scalar loop takes
// over. Lane by lane the same compares and selects as the scalar loop, in the same member
// order: the same bits.
namespace gpunet_avx512 {
typedef float V16f __attribute__((vector_size(64)));
typedef int32_t V16i __attribute__((vector_size(64)));
typedef uint8_t V16b __attribute__((vector_size(16)));

// K (> 0): a K x K window known at compile time (the member loop unrolled), else kh x kw
template <bool POS, bool RELU, int K>
static long forward_window(const float* __restrict__ w0, float* __restrict__ yo, uint8_t* __restrict__ ao,
                           uint8_t* __restrict__ po, unsigned* nan, long W, long B, long kh, long kw) {
    if (K > 0) kh = kw = K;
    const V16f zero = {};
    V16i nans = {};
    long bv = 0;
    for (; bv + 16 <= B; bv += 16) {
        V16f m;
        std::memcpy(&m, w0 + bv, sizeof m);
        if (RELU) m = ((m > zero) | (m != m)) ? m : zero;
        V16i g = {};
        for (long i = 0; i < kh; ++i)
            for (long j = 0; j < kw; ++j) {
                if (i == 0 && j == 0) continue;
                V16f v;
                std::memcpy(&v, w0 + (i * W + j) * B + bv, sizeof v);
                if (RELU) v = ((v > zero) | (v != v)) ? v : zero;
                const V16i k = V16i{} + (int32_t)(i * kw + j);
                g = (v > m) ? k : g;
                m = ((m > v) | (m != m)) ? m : v;
            }
        std::memcpy(yo + bv, &m, sizeof m);
        const V16b gb = __builtin_convertvector(g, V16b);
        std::memcpy(ao + bv, &gb, sizeof gb);
        if (POS) {          // the scalar pos loop's (y > 0), and whether a NaN needs a look-up
            const V16b pb = __builtin_convertvector((m > zero) & 1, V16b);
            std::memcpy(po + bv, &pb, sizeof pb);
            nans |= (m != m);
        }
    }
    if (POS)
        for (int l = 0; l < 16; ++l) *nan |= (unsigned)(nans[l] != 0);
    return bv;
}
}  // namespace gpunet_avx512

#pragma GCC pop_options
#endif

namespace {

using gpunet_host::one_or_zero;
using gpunet_host::relu_of;

// pos (POS): planes like arg, 1 where the input at arg (the window's first maximum) is
// > 0, else 0 (padding at arg: 0): exactly x[arg] > 0. RELU: the input is read through
// relu_of (NumPy's maximum(x, 0)) and not written: the pooling of relu(t), bit for bit
// WIDE (float32 on a CPU with AVX-512F): the lanes of a window that lies wholly inside the
// input run gpunet_avx512::forward_window first, the rest the loops here
template <typename T, bool POS, bool RELU, bool WIDE>
GPUNET_INLINE void forward(const T* __restrict__ t, T* __restrict__ y, uint8_t* __restrict__ arg,
                    uint8_t* __restrict__ pos, long A, long H, long W, long B, long kh, long kw,
                    long sh, long sw, long ph, long pw, long OH, long OW) {
    static_assert(!WIDE || sizeof(T) == sizeof(float), "the AVX-512 windows are float32's");
    const T neg_inf = -std::numeric_limits<T>::infinity();
    for (long a = 0; a < A; ++a) {
        const T* ta = t + a * H * W * B;
        for (long p = 0; p < OH; ++p) {
            for (long q = 0; q < OW; ++q) {
                T* __restrict__ yo = y + ((a * OH + p) * OW + q) * B;
                uint8_t* __restrict__ ao = arg + ((a * OH + p) * OW + q) * B;
                uint8_t* __restrict__ po = POS ? pos + ((a * OH + p) * OW + q) * B : nullptr;
                long b0 = 0;        // lanes [0, b0) done by the vector blocks (pos too)
                unsigned nan = 0;   // a NaN in y (pos: look x[arg] up)
#if GPUNET_AVX512_REGION
                if (WIDE) {
                    const long h0 = p * sh - ph, w0 = q * sw - pw;
                    if (h0 >= 0 && h0 + kh <= H && w0 >= 0 && w0 + kw <= W)
                        b0 = (kh == 2 && kw == 2 ? gpunet_avx512::forward_window<POS, RELU, 2>
                                                         : gpunet_avx512::forward_window<POS, RELU, 0>)(
                            (const float*)(ta + (h0 * W + w0) * B), (float*)yo, ao, po, &nan, W, B, kh, kw);
                }
#endif
                for (long i = 0; i < kh && b0 < B; ++i) {
                    for (long j = 0; j < kw; ++j) {
                        const long h = p * sh + i - ph, w = q * sw + j - pw;
                        const uint8_t k = (uint8_t)(i * kw + j);
                        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
                        if (k == 0) {                 // the window's first member
                            if (inside) {
                                const T* __restrict__ src = ta + (h * W + w) * B;
                                for (long b = b0; b < B; ++b) { yo[b] = RELU ? relu_of(src[b]) : src[b]; ao[b] = 0; }
                            } else {
                                for (long b = b0; b < B; ++b) { yo[b] = neg_inf; ao[b] = 0; }
                            }
                            continue;
                        }
                        // padding is -inf: never strictly greater, and max(m, -inf) is m
                        // (NaN included), so it changes nothing
                        if (!inside) continue;
                        const T* __restrict__ src = ta + (h * W + w) * B;
                        for (long b = b0; b < B; ++b) {
                            const T v = RELU ? relu_of(src[b]) : src[b], m = yo[b];
                            // NumPy: arg = max(arg, (v > m) * k), arg < k so far
                            ao[b] = v > m ? k : ao[b];
                            // NumPy's maximum(m, v): NaN propagates; on equal values the
                            // second operand (maximum(+0.0, -0.0) is -0.0 in NumPy 2)
                            yo[b] = (m > v || m != m) ? m : v;
                        }
                    }
                }
                if (POS) {
                    // without NaN, y is x[arg]'s value (up to the sign of a zero, which > 0
                    // does not see); a NaN makes y NaN and leaves arg on the earlier maximum
                    // (or on padding), which is then looked up
                    for (long b = b0; b < B; ++b) {
                        const T v = yo[b];
                        po[b] = (uint8_t)(v > 0);
                        nan |= (unsigned)(v != v);
                    }
                    if (nan) {
                        for (long b = 0; b < B; ++b) {
                            if (yo[b] == yo[b]) continue;
                            const long i = ao[b] / kw, j = ao[b] % kw;
                            const long h = p * sh + i - ph, w = q * sw + j - pw;
                            po[b] = (uint8_t)(h >= 0 && h < H && w >= 0 && w < W && ta[(h * W + w) * B + b] > 0);
                        }
                    }
                }
            }
        }
    }
}

// dx planes (A, HP, WP, B) of the padded input, C-contiguous, from arg (A, OH, OW, B)
// C-contiguous and dy (A, OH, OW, B) at element strides (sa, sp, sq, sb): any layout, read
// in place. disjoint (stride >= kernel both ways): each element gets at most one window's
// dy * (arg == k), written; else the windows' contributions are added in offset order
// k = 0, 1, ... (NumPy's loop order). tiled: the windows cover every element, so no zero
// fill first. mask (non-null): planes (A, HP, WP, B) like dx, C-contiguous; dx is then
// multiplied by (mask > 0), as NumPy's relu_mask_times(dx, mask) does after the routing
// (a ReLU's backward through its output, the pooling's input): in the same pass where the
// windows are disjoint, else in a last pass over dx. pos (non-null, disjoint windows only):
// the forward's pos planes, like arg: the same product with (x[arg] > 0) in place of
// (x > 0), which reads 1 byte per window instead of the whole input. The same bits: where
// arg != k the routed value is dy * 0 (a signed zero, or NaN), which a product by 1 or by
// +0 leaves as it is, so only x[arg]'s sign test matters.
template <typename T>
GPUNET_INLINE void route(const T* __restrict__ d, long sb, const uint8_t* __restrict__ g, T* __restrict__ o,
                  long B, uint8_t k, bool add, const T* __restrict__ m,
                  const uint8_t* __restrict__ ps) {
    if (ps) {                   // disjoint windows only: (dy * (arg == k)) * (x[arg] > 0)
        // one product by 1 or +0 for the two: a product by 1 leaves a value as it is, and a
        // second product by +0 leaves the first's signed zero or NaN as it is
        if (sb == 1)
            for (long b = 0; b < B; ++b)
                o[b] = d[b] * one_or_zero<T>((g[b] == k) & (ps[b] != 0));
        else
            for (long b = 0; b < B; ++b)
                o[b] = d[b * sb] * one_or_zero<T>((g[b] == k) & (ps[b] != 0));
        return;
    }
    if (m) {                    // disjoint windows only: (dy * (arg == k)) * (mask > 0)
        if (sb == 1)        // one product for the two, as above
            for (long b = 0; b < B; ++b)
                o[b] = d[b] * one_or_zero<T>((g[b] == k) & (m[b] > 0));
        else
            for (long b = 0; b < B; ++b)
                o[b] = d[b * sb] * one_or_zero<T>((g[b] == k) & (m[b] > 0));
        return;
    }
    if (sb == 1) {
        if (add) for (long b = 0; b < B; ++b) o[b] = o[b] + d[b] * one_or_zero<T>(g[b] == k);
        else for (long b = 0; b < B; ++b) o[b] = d[b] * one_or_zero<T>(g[b] == k);
    } else {
        if (add) for (long b = 0; b < B; ++b) o[b] = o[b] + d[b * sb] * one_or_zero<T>(g[b] == k);
        else for (long b = 0; b < B; ++b) o[b] = d[b * sb] * one_or_zero<T>(g[b] == k);
    }
}

template <typename T>
GPUNET_INLINE void backward(const T* __restrict__ dy, long sa, long sp, long sq, long sb,
                     const uint8_t* __restrict__ arg, T* __restrict__ dx,
                     long A, long HP, long WP, long B, long kh, long kw, long sh, long sw,
                     long OH, long OW, int disjoint, int tiled, const T* __restrict__ mask,
                     const uint8_t* __restrict__ pos) {
    if (!tiled) std::memset(dx, 0, sizeof(T) * (size_t)(A * HP * WP * B));
    for (long a = 0; a < A; ++a) {
        if (disjoint) {        // window by window: its dy and arg read once for all offsets
            for (long p = 0; p < OH; ++p) {
                for (long q = 0; q < OW; ++q) {
                    const T* d = dy + a * sa + p * sp + q * sq;
                    const uint8_t* g = arg + ((a * OH + p) * OW + q) * B;
                    const uint8_t* ps = pos ? pos + ((a * OH + p) * OW + q) * B : nullptr;
                    for (long i = 0; i < kh; ++i)
                        for (long j = 0; j < kw; ++j) {
                            const long at = ((a * HP + p * sh + i) * WP + q * sw + j) * B;
                            route<T>(d, sb, g, dx + at, B, (uint8_t)(i * kw + j), false,
                                     mask ? mask + at : nullptr, ps);
                        }
                }
            }
            continue;
        }
        for (long i = 0; i < kh; ++i)             // offset by offset: the adds in k order
            for (long j = 0; j < kw; ++j)
                for (long p = 0; p < OH; ++p)
                    for (long q = 0; q < OW; ++q)
                        route<T>(dy + a * sa + p * sp + q * sq, sb, arg + ((a * OH + p) * OW + q) * B,
                                 dx + ((a * HP + p * sh + i) * WP + q * sw + j) * B, B,
                                 (uint8_t)(i * kw + j), true, (const T*)nullptr, (const uint8_t*)nullptr);
    }
    if (mask && !disjoint) {    // overlapping windows: the mask once the sums are complete
        const long size = A * HP * WP * B;
        for (long e = 0; e < size; ++e) dx[e] = dx[e] * one_or_zero<T>(mask[e] > 0);
    }
}

// the forward for a run-time (pos, relu): each combination its own loop
template <typename T, bool WIDE>
GPUNET_INLINE void forward_any(const T* t, T* y, uint8_t* arg, uint8_t* pos, int relu, long A, long H,
                               long W, long B, long kh, long kw, long sh, long sw, long ph, long pw,
                               long OH, long OW) {
    if (pos && relu) forward<T, true, true, WIDE>(t, y, arg, pos, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW);
    else if (pos) forward<T, true, false, WIDE>(t, y, arg, pos, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW);
    else if (relu) forward<T, false, true, WIDE>(t, y, arg, nullptr, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW);
    else forward<T, false, false, WIDE>(t, y, arg, nullptr, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW);
}

}  // namespace

extern "C" {

int gpunet_host_abi(void) { return 8; }

// The vector windows the float32 max pooling forward uses: 2 (AVX-512 registers) or 0 (the
// scalar loop only, which the compiler vectorizes for the clone at hand). force -2: just
// ask; -1: the best this CPU runs (the default); 0 or 2: that level (capped at what the CPU
// runs), so that the tests compare both levels' bits with NumPy on an AVX-512 machine.
// (AVX2 windows of 8 lanes were tried: slower than the compiler's AVX2 loop, 0.188 against
// 0.111 ms through the ReLU with pos on (16, 28, 28, 64) planes.) Changed by tests only.
int gpunet_host_pool_isa(int force) {
    static int level = -1;
    if (force == -2 && level >= 0) return level;
    int best = 0;
#if GPUNET_AVX512_REGION
    best = gpunet_host::has_avx512f() ? 2 : 0;
#endif
    level = (force < 0 || force > best) ? best : (force >= 2 ? 2 : 0);
    return level;
}

}  // extern "C"

namespace {

// the arguments of one forward or backward call, shared by the two threads' channel ranges
struct PoolArgs {
    const void* t;          // forward: the input planes; backward: dy
    void* y;                // forward: y; backward: dx
    uint8_t* arg;
    uint8_t* pos;
    const void* mask;       // backward
    int relu, disjoint, tiled;
    long A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW;
    long sa, sp, sq, sb;    // backward: dy's element strides
};

// channels [lo, hi) of a forward (H, W: the input's) or backward (H, W: the padded input's)
template <typename T, bool WIDE>
GPUNET_INLINE void forward_range(const PoolArgs* a, long lo, long hi) {
    const long in = lo * a->H * a->W * a->B, out = lo * a->OH * a->OW * a->B;
    const T* t = (const T*)a->t + in;
    T* y = (T*)a->y + out;
    uint8_t* pos = a->pos ? a->pos + out : nullptr;
    forward_any<T, WIDE>(t, y, a->arg + out, pos, a->relu, hi - lo, a->H, a->W, a->B, a->kh, a->kw, a->sh,
                         a->sw, a->ph, a->pw, a->OH, a->OW);
}

template <typename T>
GPUNET_INLINE void backward_range(const PoolArgs* a, long lo, long hi) {
    const long in = lo * a->H * a->W * a->B, out = lo * a->OH * a->OW * a->B;
    backward<T>((const T*)a->t + lo * a->sa, a->sa, a->sp, a->sq, a->sb, a->arg + out, (T*)a->y + in, hi - lo,
                a->H, a->W, a->B, a->kh, a->kw, a->sh, a->sw, a->OH, a->OW, a->disjoint, a->tiled,
                a->mask ? (const T*)a->mask + in : nullptr, a->pos ? a->pos + out : nullptr);
}

// a pass of fewer bytes than this (input and output) runs on the caller's thread alone:
// handing half of it to the helper costs more than it saves
const long SPLIT_BYTES = 1L << 18;

}  // namespace

extern "C" {

GPUNET_CLONES void gpunet_max_pool_range_f32(const PoolArgs* a, long lo, long hi) {
#if GPUNET_AVX512_REGION
    if (gpunet_host_pool_isa(-2) == 2) {
        forward_range<float, true>(a, lo, hi);
        return;
    }
#endif
    forward_range<float, false>(a, lo, hi);
}

GPUNET_CLONES void gpunet_max_pool_range_f64(const PoolArgs* a, long lo, long hi) {
    forward_range<double, false>(a, lo, hi);
}

GPUNET_CLONES void gpunet_max_pool_backward_range_f32(const PoolArgs* a, long lo, long hi) {
    backward_range<float>(a, lo, hi);
}

GPUNET_CLONES void gpunet_max_pool_backward_range_f64(const PoolArgs* a, long lo, long hi) {
    backward_range<double>(a, lo, hi);
}

}  // extern "C"

namespace {

GPUNET_INLINE void run(void (*range)(const PoolArgs*, long, long), const PoolArgs& a, long bytes) {
    if (bytes < SPLIT_BYTES) {
        range(&a, 0, a.A);
        return;
    }
    gpunet_threads::split((gpunet_threads::Job)range, (void*)&a, a.A);
}

}  // namespace

extern "C" {

void gpunet_max_pool_f32(const float* t, float* y, uint8_t* arg, uint8_t* pos, int relu, long A, long H, long W,
                         long B, long kh, long kw, long sh, long sw, long ph, long pw, long OH, long OW) {
    const PoolArgs a = {t, y, arg, pos, nullptr, relu, 0, 0, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW, 0, 0, 0, 0};
    run(gpunet_max_pool_range_f32, a, A * (H * W + OH * OW) * B * (long)sizeof(float));
}

void gpunet_max_pool_f64(const double* t, double* y, uint8_t* arg, uint8_t* pos, int relu, long A, long H, long W,
                         long B, long kh, long kw, long sh, long sw, long ph, long pw, long OH, long OW) {
    const PoolArgs a = {t, y, arg, pos, nullptr, relu, 0, 0, A, H, W, B, kh, kw, sh, sw, ph, pw, OH, OW, 0, 0, 0, 0};
    run(gpunet_max_pool_range_f64, a, A * (H * W + OH * OW) * B * (long)sizeof(double));
}

void gpunet_max_pool_backward_f32(const float* dy, long sa, long sp, long sq, long sb, const uint8_t* arg, float* dx,
                                  long A, long HP, long WP, long B, long kh, long kw, long sh, long sw, long OH,
                                  long OW, int disjoint, int tiled, const float* mask, const uint8_t* pos) {
    const PoolArgs a = {dy, dx, (uint8_t*)arg, (uint8_t*)pos, mask, 0, disjoint, tiled, A, HP, WP, B, kh, kw,
                        sh, sw, 0, 0, OH, OW, sa, sp, sq, sb};
    run(gpunet_max_pool_backward_range_f32, a, A * (HP * WP + OH * OW) * B * (long)sizeof(float));
}

void gpunet_max_pool_backward_f64(const double* dy, long sa, long sp, long sq, long sb, const uint8_t* arg,
                                  double* dx, long A, long HP, long WP, long B, long kh, long kw, long sh, long sw,
                                  long OH, long OW, int disjoint, int tiled, const double* mask,
                                  const uint8_t* pos) {
    const PoolArgs a = {dy, dx, (uint8_t*)arg, (uint8_t*)pos, mask, 0, disjoint, tiled, A, HP, WP, B, kh, kw,
                        sh, sw, 0, 0, OH, OW, sa, sp, sq, sb};
    run(gpunet_max_pool_backward_range_f64, a, A * (HP * WP + OH * OW) * B * (long)sizeof(double));
}

}  // extern "C"
